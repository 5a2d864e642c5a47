//! Node programs the check drives (`ip`, `nsenter`), each bounded in time. Arguments are a
//! vector (no shell); output is read as lossy UTF-8.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::BootError;

/// How long a node-side command may take.
pub(super) const NODE_LIMIT: Duration = Duration::from_secs(20);

/// What a finished command printed.
#[derive(Debug, Default)]
pub(super) struct Output {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// The command line as text, for messages.
pub(super) fn show<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs `program args` to completion within `limit` (killed after it); a non-zero exit is
/// not an error here.
pub(super) async fn output<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Output, BootError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child =
        cmd.spawn().map_err(|source| BootError::Spawn { program: program.display().to_string(), source })?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Ok(Err(source)) => Err(BootError::Spawn { program: program.display().to_string(), source }),
        Err(_) => Err(BootError::TimedOut { cmd: show(program, args), secs: limit.as_secs() }),
    }
}

/// [`output`], failing unless the command exits 0.
pub(super) async fn run<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<Output, BootError> {
    let out = output(program, args, &[], NODE_LIMIT).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(BootError::Command {
            cmd: show(program, args),
            status: match out.code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_string(),
            },
            stderr: out.stderr,
        })
    }
}

/// The synchronous form, for teardown in `Drop`: runs and reports failure as text.
pub(super) fn run_sync<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            show(program, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
