//! `p2c`: the operator's CLI.

use clap::Parser;

fn main() {
    let cli = p2c_controller::cli::Cli::parse();
    p2c_common::telemetry::init(cli.log.log_format, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(p2c_controller::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
