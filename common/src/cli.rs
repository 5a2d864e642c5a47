//! Command-line flags shared by every p2c binary (flattened into each command).

use std::path::PathBuf;

use crate::telemetry::LogFormat;

/// Logging flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "P2C_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Machine-readable output.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct JsonArg {
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The controller's state directory.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerStateArg {
    /// Controller state directory (config, CA, database, admin socket).
    #[arg(long, env = "P2C_STATE_DIR", default_value = "/var/lib/p2c")]
    pub state_dir: PathBuf,
}
