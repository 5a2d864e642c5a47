//! `p2c-controller`: the node-side daemon.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use p2c_common::cli::{JsonArg, LogArgs};

#[derive(Debug, Parser)]
#[command(name = "p2c-controller", version, about = "The p2c controller daemon on the container node")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the node's CA, server certificate, config and state database.
    Init {
        #[arg(long, env = "P2C_STATE_DIR", default_value = "/var/lib/p2c")]
        state_dir: PathBuf,
        /// Address agents connect to, host:port (e.g. 0.0.0.0:7443).
        #[arg(long)]
        listen: String,
        /// Address agents dial, written into tokens (repeatable; default: --listen).
        #[arg(long)]
        advertise: Vec<String>,
        /// Node storage root (private areas in <R>/private/<CTID>).
        #[arg(long)]
        vz_root: Option<PathBuf>,
        /// Container config directory (<C>/<CTID>.conf).
        #[arg(long)]
        conf_dir: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run the daemon (systemd runs this).
    Serve {
        #[arg(long, env = "P2C_STATE_DIR", default_value = "/var/lib/p2c")]
        state_dir: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    p2c_common::telemetry::init(cli.log.log_format, "info");
    let code = match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init { state_dir, listen, advertise, vz_root, conf_dir, json } => {
            let r = p2c_controller::init::init(&p2c_controller::init::InitOptions {
                state_dir,
                listen,
                advertise,
                vz_root,
                conf_dir,
            })?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "initialised {}\n  config          {}\n  CA fingerprint  {}\n  agents dial     {}\n  containers in   {}/private, configs in {}\nstart it with: p2c-controller serve --state-dir {}",
                    r.state_dir,
                    r.config,
                    r.ca_fingerprint,
                    r.advertise.join(", "),
                    r.vz_root,
                    r.conf_dir,
                    r.state_dir
                );
            }
            Ok(())
        }
        Command::Serve { state_dir } => {
            let settings = p2c_controller::config::Settings::load(&state_dir)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(p2c_controller::server::run(settings))?;
            Ok(())
        }
    }
}
