//! The real binaries (`p2c-agent`, `p2c`) as processes: found next to the test binary in the
//! cargo target dir, built by the test command (`cargo build --bins` before the tests).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::netns::NetHost;

/// The path of binary `name` of this workspace (`target/<profile>/<name>`, the directory
/// above the test binary's `deps/`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test binary")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in a cargo target dir", exe.display()))?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries before the tests (`cargo build --bins`, as the test command does)",
            path.display()
        );
    }
    Ok(path)
}

/// A real `p2c-agent` process running inside a network namespace host.
#[derive(Debug)]
pub struct HostAgent {
    pub name: String,
    pub state: tempfile::TempDir,
    pub pid: u32,
}

impl HostAgent {
    /// Enrols agent `name` from inside `host` with `token`, dialling `controller`
    /// (`addr:port` as the host sees the node), then starts `p2c-agent run --root ROOT` there
    /// with `extra` arguments. Its output goes to `agent.log` in its state dir.
    pub fn start(
        host: &NetHost,
        name: &str,
        token: &str,
        controller: &str,
        root: &Path,
        extra: &[&str],
    ) -> anyhow::Result<HostAgent> {
        let agent = bin("p2c-agent")?;
        let state = tempfile::Builder::new().prefix("p2c-hostagent").tempdir()?;
        let state_dir = state.path().to_string_lossy().into_owned();
        let agent = agent.to_string_lossy().into_owned();
        host.exec(&[
            agent.as_str(),
            "enroll",
            "--token",
            token,
            "--state-dir",
            &state_dir,
            "--controller",
            controller,
        ])
        .with_context(|| format!("enrolling agent {name} from netns {}", host.name()))?;
        let log = state.path().join("agent.log").to_string_lossy().into_owned();
        let root = root.to_string_lossy().into_owned();
        let mut args = vec![
            "/bin/sh",
            "-c",
            r#"log="$1"; shift; exec "$@" >>"$log" 2>&1"#,
            "sh",
            &log,
            &agent,
            "run",
            "--state-dir",
            &state_dir,
            "--root",
            &root,
            "--max-backoff",
            "1",
        ];
        args.extend_from_slice(extra);
        let pid = host.spawn(&args)?;
        Ok(HostAgent { name: name.to_string(), state, pid })
    }

    /// The last lines of the agent's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
