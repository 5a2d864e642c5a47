//! Disk quotas of a migrated container: planning them and applying them on the node.
//!
//! * [`plan`] computes a [`QuotaPlan`] from the inventory and the migrate options (which
//!   source partition keeps its quotas, the container's `DISKSPACE`/`DISKINODES`, the
//!   second-level user and group limits, `QUOTATIME`, `QUOTAUGIDLIMIT`).
//! * [`select`] looks at the node and picks one [`QuotaBackend`]; every method it
//!   considered is reported with the reason it was or was not usable:
//!   - [`vztools`]: a Virtuozzo/OpenVZ node (`vzctl` and `vzquota`): `vzctl set` and
//!     `vzdqload` / `vzquota setlimit2`;
//!   - [`ploop`]: the `ploop` layout: an ext4 image sized from `DISKSPACE` with the
//!     user/group limits in the image's own quota files, in the format of the target
//!     platform's ploop (raw for legacy OpenVZ; ploop1 with a GPT partition, [`ploop1`],
//!     [`ploop_disk`], attached without the ploop tool by [`ploop_attach`], for vz7/vz9);
//!   - [`btrfs`]: private area on btrfs: a subvolume per container with a qgroup limit;
//!   - [`projquota`]: ext4/xfs project quota where the kernel and the mount allow it;
//!   - otherwise nothing is enforced: the limits are recorded and the outcome says so.
//!
//! What the migration calls, in order:
//! 1. `QuotaPlan::compute(&inventory, &options)` (before the first pass: a bad choice of
//!    partition or bad limits stop the migration before anything is copied);
//! 2. `let sel = quota::select(&Node::linux(), options.layout, target, private_root)`;
//! 3. `sel.backend.prepare(ctid, private, &plan)` before the first file is received
//!    (btrfs: creates the subvolume; projquota: tags the directory; ploop: creates the
//!    image); for ploop then `ploop::Ploop::new(node, format).mount(private, mountpoint)`
//!    and receive into the mount point, dropping the guard (or `unmount()`) when the passes
//!    are done;
//! 4. `sel.backend.apply(ctid, private, &plan)` after the last pass (ploop: unmounted),
//!    and store the returned [`QuotaOutcome`] with the migration; write
//!    `plan.conf_keys()` into the container config.

pub mod btrfs;
pub mod cmd;
pub mod plan;
pub mod ploop;
pub mod ploop1;
pub mod ploop_attach;
pub mod ploop_disk;
pub mod probe;
pub mod projquota;
pub mod vztools;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use p2c_common::inventory::{QuotaChoiceError, QuotaLimit};
use p2c_common::migration::{Layout, Target};
use serde::{Deserialize, Serialize};

pub use cmd::{Cmd, CmdOutput, CommandRunner, SystemRunner};
pub use plan::{Headroom, QuotaPlan};
pub use probe::{LinuxProbe, NodeProbe};

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(transparent)]
    Choice(#[from] QuotaChoiceError),
    #[error("{what} soft limit {soft} is above its hard limit {hard} (or the hard limit is 0)")]
    InvalidLimit { what: &'static str, soft: u64, hard: u64 },
    #[error("{0}")]
    InvalidOption(String),
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("{path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("{what} {value} does not fit the {format} format (at most {max})")]
    TooLarge { what: String, value: u64, max: u64, format: &'static str },
    #[error("container {ctid}: {method} cannot be used: {reason}")]
    Unavailable { ctid: u32, method: Method, reason: String },
}

pub type Result<T, E = QuotaError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> QuotaError {
    let path = path.to_path_buf();
    move |source| QuotaError::Io { path, op, source }
}

/// How quotas are applied on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `vzctl`/`vzquota` on a Virtuozzo/OpenVZ node.
    Vztools,
    /// An ext4 image in `root.hdd/` (the `ploop` layout).
    Ploop,
    /// A btrfs subvolume with a qgroup limit.
    BtrfsQgroup,
    /// ext4/xfs project quota.
    ProjectQuota,
    /// Nothing enforces the limits; they are recorded only.
    RecordOnly,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Vztools => "vztools",
            Method::Ploop => "ploop",
            Method::BtrfsQgroup => "btrfs-qgroup",
            Method::ProjectQuota => "project-quota",
            Method::RecordOnly => "record-only",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits as planned, kept with the outcome whatever was enforced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedLimits {
    /// `DISKSPACE`, `DISKINODES`, `QUOTATIME`, `QUOTAUGIDLIMIT`.
    pub conf: Vec<(String, String)>,
    pub users: Vec<QuotaLimit>,
    pub groups: Vec<QuotaLimit>,
}

impl RecordedLimits {
    pub fn of(plan: &QuotaPlan) -> RecordedLimits {
        RecordedLimits { conf: plan.conf_keys(), users: plan.users.clone(), groups: plan.groups.clone() }
    }
}

/// What applying the plan did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaOutcome {
    pub method: Method,
    /// The container total (`DISKSPACE` hard limit at least) is enforced by the node.
    pub applied: bool,
    /// The user/group limits are enforced (or stored where the container's own kernel
    /// quota will enforce them).
    pub second_level_applied: bool,
    /// What was done and what was not, one line each.
    pub details: Vec<String>,
    /// Command lines run, in order.
    pub commands: Vec<String>,
    pub limits: RecordedLimits,
}

impl QuotaOutcome {
    pub(crate) fn new(method: Method, plan: &QuotaPlan) -> QuotaOutcome {
        QuotaOutcome {
            method,
            applied: false,
            second_level_applied: false,
            details: Vec::new(),
            commands: Vec::new(),
            limits: RecordedLimits::of(plan),
        }
    }
}

/// One way of applying quotas.
pub trait QuotaBackend: Send + Sync {
    fn method(&self) -> Method;

    fn name(&self) -> &'static str {
        self.method().as_str()
    }

    /// Called before the first file is received into `private`.
    fn prepare(&self, ctid: u32, private: &Path, plan: &QuotaPlan) -> Result<()>;

    /// Called after the last pass; applies what the node can enforce and says what it did.
    fn apply(&self, ctid: u32, private: &Path, plan: &QuotaPlan) -> Result<QuotaOutcome>;
}

/// The node's programs and facts, as the backends see them.
#[derive(Clone)]
pub struct Node {
    pub runner: Arc<dyn CommandRunner>,
    pub probe: Arc<dyn NodeProbe>,
}

impl Node {
    /// The real node.
    pub fn linux() -> Node {
        let runner: Arc<dyn CommandRunner> = Arc::new(SystemRunner);
        Node { probe: Arc::new(LinuxProbe::new(runner.clone())), runner }
    }

    pub(crate) fn missing(&self, programs: &[&str]) -> Vec<String> {
        programs.iter().filter(|p| self.runner.which(p).is_none()).map(|p| p.to_string()).collect()
    }
}

/// A method considered by [`select`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub method: Method,
    pub usable: bool,
    pub reason: String,
}

/// The chosen backend and why.
pub struct Selection {
    pub backend: Box<dyn QuotaBackend>,
    pub considered: Vec<Candidate>,
}

impl Selection {
    pub fn method(&self) -> Method {
        self.backend.method()
    }
}

/// Picks how quotas are applied for a container of `layout` made for `target` whose private
/// area will be a directory under `private_root` (e.g. `/vz/private`).
pub fn select(node: &Node, layout: Layout, target: Target, private_root: &Path) -> Selection {
    let mut considered: Vec<Candidate> = Vec::new();
    let note =
        |considered: &mut Vec<Candidate>, method: Method, detected: std::result::Result<String, String>| {
            let usable = detected.is_ok();
            considered.push(Candidate { method, usable, reason: detected.unwrap_or_else(|why| why) });
            usable
        };
    let chosen =
        |backend: Box<dyn QuotaBackend>, considered: Vec<Candidate>| Selection { backend, considered };

    if layout == Layout::Ploop {
        let format = ploop::Format::of(target);
        if note(&mut considered, Method::Ploop, ploop::detect(node, format)) {
            return chosen(Box::new(ploop::PloopBackend::new(node.clone(), format)), considered);
        }
    } else {
        let why = format!("the container's layout is {}", layout.as_str());
        note(&mut considered, Method::Ploop, Err(why));
    }

    if layout == Layout::Simfs {
        if note(&mut considered, Method::Vztools, vztools::detect(node)) {
            return chosen(Box::new(vztools::VzToolsBackend::new(node.clone())), considered);
        }
        if note(&mut considered, Method::BtrfsQgroup, btrfs::detect(node, private_root)) {
            return chosen(Box::new(btrfs::BtrfsBackend::new(node.clone())), considered);
        }
        match projquota::detect(node, private_root) {
            Ok(support) => {
                note(&mut considered, Method::ProjectQuota, Ok(support.describe()));
                let backend = projquota::ProjQuotaBackend::new(node.clone(), support);
                return chosen(Box::new(backend), considered);
            }
            Err(why) => {
                note(&mut considered, Method::ProjectQuota, Err(why));
            }
        }
    }

    let why: Vec<String> = considered.iter().map(|c| format!("{}: {}", c.method, c.reason)).collect();
    note(&mut considered, Method::RecordOnly, Ok("no quota method is available on this node".into()));
    chosen(Box::new(RecordOnly { why }), considered)
}

/// No method works here: record the limits and say why nothing is enforced.
pub struct RecordOnly {
    why: Vec<String>,
}

impl RecordOnly {
    pub fn new(why: Vec<String>) -> RecordOnly {
        RecordOnly { why }
    }
}

impl QuotaBackend for RecordOnly {
    fn method(&self) -> Method {
        Method::RecordOnly
    }

    fn prepare(&self, _ctid: u32, _private: &Path, _plan: &QuotaPlan) -> Result<()> {
        Ok(())
    }

    fn apply(&self, ctid: u32, _private: &Path, plan: &QuotaPlan) -> Result<QuotaOutcome> {
        let mut out = QuotaOutcome::new(Method::RecordOnly, plan);
        out.details.push(format!(
            "container {ctid}: quotas are NOT enforced on this node; the limits are recorded in the container config and the migration record only"
        ));
        out.details.extend(self.why.iter().cloned());
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod select_tests;
