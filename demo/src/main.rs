//! `p2c`: the operator's CLI. `p2c demo` runs here (it needs an agent in the process); every
//! other command goes to the controller through `p2c_controller::cli`.

#![forbid(unsafe_code)]

use clap::Parser;
use p2c_controller::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    p2c_common::telemetry::init(cli.log.log_format, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Demo(args) => rt.block_on(p2c_demo::run(args)),
        _ => rt.block_on(p2c_controller::cli::run(cli)),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
