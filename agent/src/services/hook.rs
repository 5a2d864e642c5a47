//! The operator's hooks around a cutover (`RunHook`): a command line run by `/bin/sh -c` on
//! the source, killed with its process group after its timeout, its output kept (the last
//! 64 KiB of each stream) for the report.

use std::path::Path;
use std::time::Duration;

use p2c_common::services::{HookReport, MAX_OUTPUT};
use tokio::process::Command;
use tracing::{info, warn};

use super::exec;

/// Timeout when the controller gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest command line accepted.
pub const MAX_COMMAND: usize = 64 * 1024;

/// Runs `command` in `root` (also `P2C_ROOT` in its environment) with `sh` at `shell`.
pub async fn run_with(shell: &Path, root: &Path, command: &str, timeout: Duration) -> HookReport {
    let mut report = HookReport { command: command.to_string(), ..Default::default() };
    if command.trim().is_empty() {
        report.stderr = "the hook command is empty".into();
        return report;
    }
    if command.len() > MAX_COMMAND {
        report.stderr = format!("the hook command is longer than {MAX_COMMAND} bytes");
        return report;
    }
    let mut c = Command::new(shell);
    c.arg("-c").arg(command).current_dir(root).env("P2C_ROOT", root);
    match exec::run(c, timeout, MAX_OUTPUT).await {
        Err(e) => report.stderr = format!("cannot run {}: {e}", shell.display()),
        Ok(f) => {
            report.exit_code = f.exit_code();
            report.signal = f.signal();
            report.timed_out = f.timed_out;
            report.seconds = f.elapsed.as_secs_f64();
            report.stdout = f.stdout.text();
            report.stderr = f.stderr.text();
            report.stdout_dropped = f.stdout.dropped();
            report.stderr_dropped = f.stderr.dropped();
        }
    }
    report
}

/// One line for the operator about a finished hook.
pub fn message(r: &HookReport, timeout: Duration) -> String {
    let cmd = exec::last_chars(&r.command, 120);
    if r.ok() {
        return format!("hook `{cmd}` finished in {:.1}s", r.seconds);
    }
    let why = if r.timed_out {
        format!("did not finish within {}s and was killed", timeout.as_secs())
    } else if let Some(c) = r.exit_code {
        format!("exited with code {c}")
    } else if let Some(s) = r.signal {
        format!("was killed by signal {s}")
    } else {
        "could not run".to_string()
    };
    let out = if r.stderr.trim().is_empty() { &r.stdout } else { &r.stderr };
    let out = exec::last_chars(out, 400);
    if out.is_empty() { format!("hook `{cmd}` {why}") } else { format!("hook `{cmd}` {why}: {out}") }
}

/// Answers `RunHook`: (ok, message, JSON payload of a [`HookReport`]).
pub async fn run_hook(root: &Path, command: &str, timeout_secs: u32) -> (bool, String, Vec<u8>) {
    let timeout = match timeout_secs {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(u64::from(s)).min(MAX_TIMEOUT),
    };
    let r = run_with(Path::new("/bin/sh"), root, command, timeout).await;
    let msg = message(&r, timeout);
    if r.ok() {
        info!(seconds = r.seconds, "hook finished");
    } else {
        warn!(exit_code = ?r.exit_code, timed_out = r.timed_out, "{msg}");
    }
    (r.ok(), msg, serde_json::to_vec(&r).unwrap_or_default())
}
