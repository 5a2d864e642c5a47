//! The boot check: boots a throw-away copy-on-write view of a container tree with the guest's
//! own init, in network namespaces of its own, and reports whether it came up and serves what
//! the source served.
//!
//! ```text
//!  work_dir/<name>/{upper,work}        node-side namespace            container namespace
//!  overlay: lower = the tree (r/o) ┐   lo: node addresses            venet0 (NOARP veth, or a
//!                 merged ──────────┼─► p2c-peer ◄── veth ──────────►  routed veth for vz9)
//!  systemd-nspawn --boot ──────────┘   host routes to every address  the guest's own network
//!   (the guest's init, PID 1)          probes run here               config brings it up
//! ```
//!
//! * [`view`]: the overlay (lower = the tree, upper and work below `work_dir`): nothing the
//!   guest does reaches the tree.
//! * [`net`]: a namespace for the container whose only device is venet0 and a second one for
//!   the node side with the peer and a host route to every address, so nothing reaches the
//!   real network and the node's own routing is never touched.
//! * [`machine`]: `systemd-nspawn --boot` in that namespace, commands run in the guest
//!   (`nsenter` under the guest's own capability bounding set), waiting for the init to
//!   settle, the console, the shutdown.
//! * [`units`] (failed units and whether the isolated network explains them), [`sockets`]
//!   (the guest's listening sockets), [`compare`] (against the source's), [`probe`] (TCP and
//!   HTTP from the node side), [`findings`] (stable codes and severities).
//!
//! Everything that was set up is removed when the check ends, also on error, on timeout and
//! when the future is dropped ([`Check`] tears down in its `Drop`). One check runs at a time
//! in a process.

mod cmd;
mod compare;
mod findings;
mod machine;
mod net;
mod probe;
mod sockets;
mod tools;
mod units;
mod view;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use p2c_common::findings::{Finding, Severity};
use p2c_common::inventory::Listener;
use p2c_common::migration::Target;
use serde::{Deserialize, Serialize};

use crate::guest::InitSystem;

pub use compare::{ListenerCheck, ListenerStatus, compare};
pub use findings::codes;
pub use probe::{HttpOutcome, ProbeResult, TcpOutcome};
pub use tools::{Missing, tools};

use machine::Machine;
use net::Net;
use view::View;

/// What to boot and what to expect of it.
#[derive(Clone, Debug)]
pub struct BootRequest {
    pub ctid: u32,
    /// The container's root tree (a simfs tree, or a mounted ploop image's root). Read only:
    /// the check boots an overlay over it.
    pub root: PathBuf,
    /// Every address the container has (the source's former addresses).
    pub addresses: Vec<IpAddr>,
    /// The platform the container is for: venet0 is a NOARP veth (openvz, vz7) or a routed
    /// veth (vz9).
    pub target: Target,
    /// The source's listening sockets (the inventory's).
    pub listeners: Vec<Listener>,
    /// How long the guest's init may take to settle.
    pub timeout: Duration,
    /// A directory on the node for the overlay's upper and work directories (not inside
    /// `root`); the check's own subdirectory in it is removed at the end.
    pub work_dir: PathBuf,
    /// The guest rewrite to run in the view before booting, for a copy that is not finalised
    /// yet (the check before a cutover); `None` for a finished container.
    pub rewrite: Option<Rewrite>,
}

/// What the guest rewrite needs to turn a copy into a container, inside the view only.
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub inventory: p2c_common::inventory::Inventory,
    pub options: crate::guest::GuestOptions,
}

/// Where the guest's init got to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "init", rename_all = "kebab-case")]
pub enum InitState {
    /// Booted, nothing failed (systemd `running`; sysvinit/OpenRC: the runlevel is reached).
    Running,
    /// Booted with failed units (systemd `degraded`).
    Degraded,
    /// systemd gave up booting and waits in its rescue/emergency shell.
    Maintenance,
    /// The timeout passed first; `last` is what the init said last (`starting`, ...).
    StartingTimedOut { last: String },
    /// The init (or systemd-nspawn) exited while booting.
    Exited { status: String },
    /// The init answered something unexpected (`stopping`, `offline`...).
    Other { state: String },
}

impl InitState {
    pub fn as_str(&self) -> &str {
        match self {
            InitState::Running => "running",
            InitState::Degraded => "degraded",
            InitState::Maintenance => "maintenance",
            InitState::StartingTimedOut { .. } => "starting-timed-out",
            InitState::Exited { .. } => "exited",
            InitState::Other { state } => state,
        }
    }

    /// Whether the init reached its target at all (with or without failed units).
    pub fn booted(&self) -> bool {
        matches!(self, InitState::Running | InitState::Degraded)
    }
}

/// The init system the guest boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    Systemd,
    Sysvinit,
    Openrc,
    Upstart,
    Unknown,
}

impl InitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InitKind::Systemd => "systemd",
            InitKind::Sysvinit => "sysvinit",
            InitKind::Openrc => "openrc",
            InitKind::Upstart => "upstart",
            InitKind::Unknown => "unknown",
        }
    }
}

impl From<InitSystem> for InitKind {
    fn from(i: InitSystem) -> Self {
        match i {
            InitSystem::Systemd => InitKind::Systemd,
            InitSystem::Sysvinit => InitKind::Sysvinit,
            InitSystem::Openrc => InitKind::Openrc,
            InitSystem::Upstart => InitKind::Upstart,
            InitSystem::Unknown => InitKind::Unknown,
        }
    }
}

/// A unit (or service) that failed during the boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedUnit {
    pub name: String,
    pub description: String,
    /// systemd's `Result` (`exit-code`, `timeout`, `resources`...), if known.
    pub result: String,
    /// The unit's last journal lines.
    pub log_tail: Vec<String>,
    /// It fails only because the check's network is isolated (a remote mount, a wait for
    /// the network to be online, a server elsewhere it could not reach).
    pub isolated: bool,
    /// Why it counts as isolated.
    pub isolated_because: Option<String>,
}

/// Whether a former address is up on the container's venet0 after the boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressCheck {
    pub address: IpAddr,
    pub up: bool,
}

/// What one boot check found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootReport {
    pub ctid: u32,
    pub target: Target,
    pub init_kind: InitKind,
    pub init: InitState,
    /// Seconds from starting the guest until its init settled (or the timeout).
    pub boot_secs: f64,
    pub failed_units: Vec<FailedUnit>,
    /// Jobs systemd still had queued when the timeout passed.
    pub pending_jobs: Vec<String>,
    pub addresses: Vec<AddressCheck>,
    pub listeners: Vec<ListenerCheck>,
    /// The node-side addresses the probes came from (a guest firewall may need to allow them).
    pub probe_sources: Vec<IpAddr>,
    /// The last lines of the guest's console (systemd-nspawn's output).
    pub console_tail: Vec<String>,
    /// What could not be removed afterwards (empty when everything was).
    pub cleanup_problems: Vec<String>,
    pub findings: Vec<Finding>,
}

impl BootReport {
    /// Passed: no blocker among the findings.
    pub fn passed(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Blocker)
    }

    pub fn find(&self, code: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }

    /// The report as text for a terminal.
    pub fn render(&self) -> String {
        findings::render(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error("boot check of CT {ctid}: {problem}")]
    Request { ctid: u32, problem: String },
    #[error("boot check: cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "boot check: cannot mount the overlay view of {lower} at {at}: {source}; the node's kernel needs overlayfs and {work_dir} must be on a file system that supports it (ext4, xfs, btrfs)"
    )]
    Overlay { lower: PathBuf, at: PathBuf, work_dir: PathBuf, source: std::io::Error },
    #[error("boot check: cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("boot check: `{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("boot check: `{cmd}` did not finish within {secs} s")]
    TimedOut { cmd: String, secs: u64 },
    #[error("boot check: cannot enter the network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Guest(#[from] crate::guest::GuestError),
    #[error(transparent)]
    Tree(#[from] crate::tree::TreeError),
}

/// One check at a time per process: each boots a whole guest, and a small node has two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Boots the container's tree as the request says, reports, and removes everything again.
pub async fn run(req: &BootRequest) -> Result<BootReport, BootError> {
    let tools = tools::find()?;
    let _turn = ONE_AT_A_TIME.lock().await;
    let init_kind = guest_init(req)?;
    let name = unique_name(req.ctid);
    tracing::info!(ctid = req.ctid, machine = %name, root = %req.root.display(), target = %req.target,
        init = ?init_kind, "boot check starting");

    let mut check = Check::default();
    let view = check.view.insert(View::mount(req.ctid, &req.root, &req.work_dir, &name)?);
    let merged = view.root().to_path_buf();
    if let Some(rw) = &req.rewrite {
        // Into the overlay's upper directory only: the copy itself stays as it is.
        let tree = crate::tree::Tree::open(&merged)?;
        let changes = crate::guest::containerise(&tree, &rw.inventory, &rw.options)?;
        tracing::info!(ctid = req.ctid, changes = changes.len(), "guest rewritten in the boot view");
    }
    let mut addresses: Vec<IpAddr> = Vec::new();
    for a in &req.addresses {
        if !addresses.contains(a) {
            addresses.push(*a);
        }
    }
    let net = Net::create(&tools, &name, req.target, &addresses).await?;
    let net = check.net.insert(net);
    let (ct_ns, node_ns) = (net.ct_path(), net.node_path());
    let probe_sources = net.node_addresses();

    let started = Instant::now();
    let deadline = started + req.timeout;
    let machine = check.machine.insert(Machine::start(&tools, &merged, &ct_ns, &name, init_kind)?);
    let init = machine.settle(deadline).await;
    let boot_secs = started.elapsed().as_secs_f64();
    tracing::info!(ctid = req.ctid, state = init.as_str(), boot_secs, "guest init settled");

    let (failed_units, pending_jobs) = if init_kind == InitKind::Systemd && machine.init_pid().is_some() {
        let failed = units::failed(machine).await;
        let jobs = if matches!(init, InitState::StartingTimedOut { .. }) {
            units::pending_jobs(machine).await
        } else {
            Vec::new()
        };
        (failed, jobs)
    } else if init_kind == InitKind::Openrc && machine.init_pid().is_some() {
        (units::openrc_crashed(machine).await, Vec::new())
    } else {
        (Vec::new(), Vec::new())
    };
    let guest_listeners = match machine.init_pid() {
        Some(pid) => sockets::listeners(pid).unwrap_or_else(|e| {
            tracing::warn!(ctid = req.ctid, error = %e, "cannot read the guest's sockets");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let up = net.guest_addresses(&tools).await.unwrap_or_default();
    let mut listeners = compare(&req.listeners, &guest_listeners, &addresses);
    if init.booted() || matches!(init, InitState::StartingTimedOut { .. }) {
        probe::run(&node_ns, &mut listeners, &addresses).await;
    }
    let addresses: Vec<AddressCheck> =
        addresses.iter().map(|a| AddressCheck { address: *a, up: up.contains(a) }).collect();

    let mut cleanup_problems = machine.shutdown().await;
    let console_tail = machine.console_tail();
    cleanup_problems.extend(check.close());

    let mut report = BootReport {
        ctid: req.ctid,
        target: req.target,
        init_kind,
        init,
        boot_secs,
        failed_units,
        pending_jobs,
        addresses,
        listeners,
        probe_sources,
        console_tail,
        cleanup_problems,
        findings: Vec::new(),
    };
    report.findings = findings::build(&report, req.timeout);
    tracing::info!(
        ctid = req.ctid,
        passed = report.passed(),
        findings = report.findings.len(),
        "boot check finished"
    );
    Ok(report)
}

/// The guest's init system, from its tree; refuses a tree nothing can boot.
fn guest_init(req: &BootRequest) -> Result<InitKind, BootError> {
    let problem = |problem: String| BootError::Request { ctid: req.ctid, problem };
    if !req.root.is_dir() {
        return Err(problem(format!("the container tree {} is not a directory", req.root.display())));
    }
    let tree = crate::tree::Tree::open(&req.root)?;
    let kind = InitKind::from(crate::guest::detect(&tree)?.init);
    if kind == InitKind::Unknown {
        return Err(problem(format!(
            "{} has no init the check knows (systemd, sysvinit, OpenRC or upstart as /sbin/init)",
            req.root.display()
        )));
    }
    Ok(kind)
}

/// A name for this check's machine, namespaces and directories, unique on the node.
fn unique_name(ctid: u32) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("p2c-boot-{ctid}-{:x}", (std::process::id() ^ nanos).wrapping_add(n) & 0x00ff_ffff)
}

/// Everything one check set up. Fields drop in order: the guest's processes first (they hold
/// the namespaces and the overlay), then the namespaces, then the overlay.
#[derive(Default)]
struct Check {
    machine: Option<Machine>,
    net: Option<Net>,
    view: Option<View>,
}

impl Check {
    /// Removes everything now; what could not be removed, one line each.
    fn close(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut m) = self.machine.take() {
            problems.extend(m.kill());
        }
        if let Some(mut n) = self.net.take() {
            problems.extend(n.remove());
        }
        if let Some(mut v) = self.view.take() {
            problems.extend(v.remove());
        }
        problems
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        for p in self.close() {
            tracing::error!(problem = %p, "boot check left something behind");
        }
    }
}
