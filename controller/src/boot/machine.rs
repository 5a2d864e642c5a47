//! The booted guest: `systemd-nspawn --boot` over the view, in the container's network
//! namespace, and the commands the check runs inside it.
//!
//! * nspawn runs with `--register=no` (nothing asks systemd-machined), a unique machine
//!   name, `--capability=CAP_NET_ADMIN` (the guest's own network config sets its addresses;
//!   the namespace is the check's own), and leaves the guest's `/etc/resolv.conf`, time zone
//!   and journal alone. Where the node was not booted with systemd, `--keep-unit` keeps it
//!   from asking a system bus for a scope. Its console (`--console=read-only`, so the guest
//!   sees a terminal and systemd prints its status lines) is kept for the report.
//! * The guest's init is the process of the container's network namespace that is PID 1 of
//!   its own PID namespace.
//! * Commands run in the guest with `nsenter` into all of the init's namespaces and root,
//!   under `setpriv` with the init's own capability bounding set: what runs there is the
//!   guest's program, and it gets no capability nspawn did not give the guest.
//! * Shutdown: systemd halts on nspawn's SIGTERM (it sends SIGRTMIN+3); other inits get
//!   `poweroff` inside; after [`SHUTDOWN_GRACE`] everything left is killed.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2c_common::sync::Locked;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::cmd::{self, Output};
use super::tools::Tools;
use super::{BootError, InitKind, InitState};

/// How long an orderly shutdown may take before everything is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long one command in the guest may take.
pub(super) const GUEST_LIMIT: Duration = Duration::from_secs(15);
/// Console lines kept (the last ones).
const CONSOLE_LINES: usize = 300;
/// How often the init is asked whether it has settled.
const POLL: Duration = Duration::from_millis(300);

/// Capability names by number, as `setpriv --bounding-set` spells them.
const CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

pub(super) struct Machine {
    name: String,
    kind: InitKind,
    tools: Tools,
    ct_ns: PathBuf,
    child: Option<tokio::process::Child>,
    nspawn_pid: Option<u32>,
    init_pid: Option<i32>,
    /// `setpriv --bounding-set=` for commands in the guest (the init's own set).
    bounding: Option<String>,
    console: Arc<Mutex<VecDeque<String>>>,
    exit: Option<String>,
}

impl Machine {
    /// Starts the guest's init on `root` in the network namespace `ct_ns`.
    pub fn start(
        tools: &Tools,
        root: &Path,
        ct_ns: &Path,
        name: &str,
        kind: InitKind,
    ) -> Result<Machine, BootError> {
        let mut args: Vec<String> = vec![
            "--boot".into(),
            format!("--directory={}", root.display()),
            format!("--machine={name}"),
            "--register=no".into(),
            format!("--network-namespace-path={}", ct_ns.display()),
            "--capability=CAP_NET_ADMIN".into(),
            "--resolv-conf=off".into(),
            "--timezone=off".into(),
            "--link-journal=no".into(),
            "--console=read-only".into(),
        ];
        if !Path::new("/run/systemd/system").is_dir() {
            args.push("--keep-unit".into());
        }
        let mut child = tokio::process::Command::new(&tools.nspawn)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BootError::Spawn { program: tools.nspawn.display().to_string(), source })?;
        let console = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(collect(out, console.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect(err, console.clone()));
        }
        tracing::debug!(machine = name, pid = child.id(), "systemd-nspawn started");
        Ok(Machine {
            name: name.to_string(),
            kind,
            tools: tools.clone(),
            ct_ns: ct_ns.to_path_buf(),
            nspawn_pid: child.id(),
            child: Some(child),
            init_pid: None,
            bounding: None,
            console,
            exit: None,
        })
    }

    /// The guest's init as the node sees it, once found.
    pub fn init_pid(&self) -> Option<i32> {
        self.init_pid
    }

    /// Whether nspawn has exited (and how).
    fn exited(&mut self) -> Option<String> {
        if self.exit.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            self.exit = Some(status.to_string());
        }
        self.exit.clone()
    }

    /// Looks for the guest's init: PID 1 of its own PID namespace, in the container's network
    /// namespace, no longer systemd-nspawn's own child process.
    fn find_init(&mut self) -> Option<i32> {
        if self.init_pid.is_some() {
            return self.init_pid;
        }
        let net = ns_inode(&self.ct_ns)?;
        let pid = pids_in("net", net).into_iter().find(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let nspid: Vec<&str> = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|v| v.split_whitespace().collect())
                .unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let comm = comm.trim();
            nspid.len() >= 2
                && nspid.last() == Some(&"1")
                && comm != "systemd-nspawn"
                && !comm.starts_with('(')
        })?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
        self.bounding = Some(bounding_set(u64::from_str_radix(bnd.trim(), 16).ok()?));
        self.init_pid = Some(pid);
        tracing::debug!(machine = %self.name, pid, "guest init found");
        Some(pid)
    }

    /// Runs `argv` in the guest (its namespaces and root, its capability bounding set).
    pub async fn exec(&self, argv: &[&str], limit: Duration) -> Result<Output, BootError> {
        let (Some(pid), Some(bounding)) = (self.init_pid, self.bounding.as_ref()) else {
            return Err(BootError::Command {
                cmd: argv.join(" "),
                status: "not run".to_string(),
                stderr: "the guest's init has not started".to_string(),
            });
        };
        let mut args: Vec<String> = vec![
            format!("--bounding-set={bounding}"),
            "--".into(),
            self.tools.nsenter.display().to_string(),
            format!("--target={pid}"),
        ];
        args.extend(
            ["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd", "--"]
                .map(String::from),
        );
        args.extend(argv.iter().map(|a| a.to_string()));
        let env = [("SYSTEMD_COLORS", "0"), ("SYSTEMD_PAGER", ""), ("TERM", "dumb")];
        cmd::output(&self.tools.setpriv, &args, &env, limit).await
    }

    /// Waits until the init settles or `deadline` passes.
    pub async fn settle(&mut self, deadline: Instant) -> InitState {
        let mut last = String::from("not started");
        loop {
            if let Some(status) = self.exited() {
                return InitState::Exited { status };
            }
            if self.find_init().is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(state) =
                    self.settled(left.min(GUEST_LIMIT).max(Duration::from_millis(50)), &mut last).await
                {
                    return state;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return InitState::StartingTimedOut { last };
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    /// One look at the init: its final state, or `None` (with `last` updated) while it boots.
    async fn settled(&self, limit: Duration, last: &mut String) -> Option<InitState> {
        match self.kind {
            InitKind::Systemd => {
                let out = self.exec(&["systemctl", "is-system-running"], limit).await.ok()?;
                let state = out.stdout.trim().to_string();
                if !state.is_empty() {
                    *last = state.clone();
                }
                match state.as_str() {
                    "running" => Some(InitState::Running),
                    "degraded" => Some(InitState::Degraded),
                    "maintenance" => Some(InitState::Maintenance),
                    // "offline" and errors: the manager is not answering yet.
                    "initializing" | "starting" | "offline" | "unknown" | "" => None,
                    other => Some(InitState::Other { state: other.to_string() }),
                }
            }
            InitKind::Openrc => {
                let out = self.exec(&["rc-status", "--runlevel"], limit).await.ok()?;
                let level = out.stdout.trim().to_string();
                *last =
                    if level.is_empty() { "no runlevel".to_string() } else { format!("runlevel {level}") };
                let busy = self
                    .guest_comms()
                    .iter()
                    .any(|c| c == "openrc" || c.starts_with("openrc-run") || c == "rc");
                (!level.is_empty() && !busy && level != "sysinit" && level != "boot")
                    .then_some(InitState::Running)
            }
            InitKind::Sysvinit | InitKind::Upstart | InitKind::Unknown => {
                let out = self.exec(&["runlevel"], limit).await.ok()?;
                let level = out.stdout.split_whitespace().nth(1).unwrap_or_default().to_string();
                *last = format!("runlevel {}", if level.is_empty() { "unknown" } else { &level });
                let busy = self.guest_comms().iter().any(|c| matches!(c.as_str(), "rc" | "startpar" | "rcS"));
                match level.as_str() {
                    "2" | "3" | "4" | "5" if !busy => Some(InitState::Running),
                    "1" | "S" if !busy => Some(InitState::Maintenance),
                    _ => None,
                }
            }
        }
    }

    /// The `comm` of every process in the guest's PID namespace.
    fn guest_comms(&self) -> Vec<String> {
        let Some(pid) = self.init_pid else { return Vec::new() };
        let Some(ns) = ns_inode(Path::new(&format!("/proc/{pid}/ns/pid"))) else { return Vec::new() };
        pids_in("pid", ns)
            .into_iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .map(|c| c.trim().to_string())
            .collect()
    }

    /// Shuts the guest down in order, then kills what is left; what could not be stopped.
    pub async fn shutdown(&mut self) -> Vec<String> {
        if self.exited().is_none() {
            match self.kind {
                InitKind::Systemd => self.signal_nspawn(rustix::process::Signal::TERM),
                _ => {
                    if let Err(e) = self.exec(&["poweroff"], GUEST_LIMIT).await {
                        tracing::debug!(machine = %self.name, error = %e, "poweroff in the guest failed");
                    }
                }
            }
            if let Some(c) = self.child.as_mut() {
                match tokio::time::timeout(SHUTDOWN_GRACE, c.wait()).await {
                    Ok(Ok(status)) => self.exit = Some(status.to_string()),
                    Ok(Err(e)) => {
                        tracing::warn!(machine = %self.name, error = %e, "waiting for systemd-nspawn")
                    }
                    Err(_) => {
                        tracing::warn!(machine = %self.name, "the guest did not shut down in time; killing it")
                    }
                }
            }
        }
        self.kill()
    }

    fn signal_nspawn(&self, sig: rustix::process::Signal) {
        if let Some(pid) =
            self.nspawn_pid.and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Kills the guest's PID namespace (through its init), every process left in its network
    /// namespace and nspawn; what is still alive afterwards.
    pub fn kill(&mut self) -> Vec<String> {
        let kill = |pid: i32| {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        };
        let running = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if let Some(pid) = self.init_pid.filter(|_| running || self.init_alive()) {
            kill(pid);
        }
        let net = ns_inode(&self.ct_ns);
        if let Some(net) = net {
            pids_in("net", net).into_iter().for_each(kill);
        }
        if running {
            self.signal_nspawn(rustix::process::Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left;
        loop {
            let nspawn_alive = match self.child.as_mut() {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => false,
            };
            left = net.map(|n| pids_in("net", n)).unwrap_or_default();
            if !nspawn_alive && left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                if nspawn_alive {
                    left.push(i32::try_from(self.nspawn_pid.unwrap_or_default()).unwrap_or_default());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = None;
        if left.is_empty() {
            Vec::new()
        } else {
            vec![format!("processes of the boot check's guest {} still run: {left:?}", self.name)]
        }
    }

    fn init_alive(&self) -> bool {
        self.init_pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    }

    /// The last lines the guest's console and nspawn printed.
    pub fn console_tail(&self) -> Vec<String> {
        self.console.locked().iter().cloned().collect()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for p in self.kill() {
            tracing::error!(problem = %p, "boot check guest left behind");
        }
    }
}

/// The bounding set for `setpriv`: drop all, add back the capabilities set in `mask`.
fn bounding_set(mask: u64) -> String {
    let mut s = String::from("-all");
    for (bit, name) in CAPS.iter().enumerate() {
        if mask & (1u64 << bit) != 0 {
            s.push_str(",+");
            s.push_str(name);
        }
    }
    s
}

/// The inode of a namespace file (`/run/netns/<name>`, `/proc/<pid>/ns/pid`).
pub(super) fn ns_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Every process whose `kind` namespace (`net`, `pid`) has inode `ns`.
pub(super) fn pids_in(kind: &str, ns: u64) -> Vec<i32> {
    let want = format!("{kind}:[{ns}]");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).is_ok_and(|l| l.as_os_str() == want.as_str())
        })
        .collect()
}

/// Keeps the last [`CONSOLE_LINES`] lines of `r`, without terminal escapes.
async fn collect(r: impl AsyncRead + Unpin, console: Arc<Mutex<VecDeque<String>>>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = plain(&String::from_utf8_lossy(&buf));
                if line.is_empty() {
                    continue;
                }
                let mut c = console.locked();
                if c.len() == CONSOLE_LINES {
                    c.pop_front();
                }
                c.push_back(line);
            }
        }
    }
}

/// A console line without ANSI escape sequences, carriage returns and trailing space.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, up to the final byte (@ to ~).
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_their_escapes() {
        assert_eq!(
            plain("[\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39mcron.service\u{1b}[0m.\r\n"),
            "[  OK  ] Started cron.service."
        );
        assert_eq!(plain("\r\n"), "");
    }

    #[test]
    fn bounding_set_names_the_bits() {
        assert_eq!(bounding_set(0), "-all");
        assert_eq!(bounding_set(1 | 1 << 12 | 1 << 21), "-all,+chown,+net_admin,+sys_admin");
        // A full set without CAP_SYS_RESOURCE (this test machine's own bounding set).
        let s = bounding_set(0x000001fffeffffff);
        assert!(s.contains("+sys_admin") && !s.contains("sys_resource"), "{s}");
    }

    #[test]
    fn finds_processes_by_namespace() {
        let me = i32::try_from(std::process::id()).unwrap();
        let ns = ns_inode(Path::new("/proc/self/ns/net")).unwrap();
        assert!(pids_in("net", ns).contains(&me));
        assert!(pids_in("net", 1).is_empty());
    }
}
