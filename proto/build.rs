//! Compiles `proto/p2c/v1/*.proto` with protox (pure Rust, no system `protoc`).

#![forbid(unsafe_code)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/p2c/v1/agent.proto", "proto/p2c/v1/admin.proto", "proto/p2c/v1/bundle.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().bytes(".p2c.v1.ChunkData.data").compile_fds(fds)?;
    Ok(())
}
