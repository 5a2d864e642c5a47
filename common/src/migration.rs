//! What the operator asks of a migration and what it reports back.

use serde::{Deserialize, Serialize};

use crate::findings::Report;
use crate::manifest::Problem;

/// How the container's files are kept on the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A plain directory tree in the private area (VZFS/simfs style).
    #[default]
    Simfs,
    /// An ext4 image in `root.hdd/` with a `DiskDescriptor.xml`: raw for legacy OpenVZ, a
    /// ploop1 image with a GPT partition for OpenVZ 7 / Virtuozzo 7 and 9.
    Ploop,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Simfs => "simfs",
            Layout::Ploop => "ploop",
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The platform a container is made for: what the node's own tools expect of its private
/// area, its config and its guest network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Legacy OpenVZ (vzctl 4.x): the tree or image directly in the private area, a regular
    /// config file, venet0.
    Openvz,
    /// OpenVZ 7 / Virtuozzo 7 (libvzctl 7): a layout-versioned private area holding its
    /// `ve.conf`, the config directory's entry a symlink to it, venet0.
    Vz7,
    /// Virtuozzo 9 (libvzctl 8): the private area as on Virtuozzo 7; no venet, every address
    /// on a routed veth named venet0.
    Vz9,
}

impl Target {
    /// What a node that shows none of the platforms' marks is taken to be.
    pub const DEFAULT: Target = Target::Vz7;
    pub const ALL: [Target; 3] = [Target::Openvz, Target::Vz7, Target::Vz9];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Openvz => "openvz",
            Target::Vz7 => "vz7",
            Target::Vz9 => "vz9",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The platform's name as its operators know it.
    pub fn title(self) -> &'static str {
        match self {
            Target::Openvz => "legacy OpenVZ (vzctl 4)",
            Target::Vz7 => "OpenVZ 7 / Virtuozzo 7",
            Target::Vz9 => "Virtuozzo 9",
        }
    }

    /// Whether the private area is versioned (`.ve.layout`, `ve.conf`, the tree in `fs/`).
    pub fn versioned_private(self) -> bool {
        !matches!(self, Target::Openvz)
    }

    /// The private-area layout version libvzctl reads from `.ve.layout`: 4 for a directory
    /// tree in `fs/`, 5 for a ploop image in `root.hdd/`. None where there is no such link.
    pub fn ve_layout(self, layout: Layout) -> Option<u8> {
        self.versioned_private().then_some(match layout {
            Layout::Simfs => 4,
            Layout::Ploop => 5,
        })
    }

    /// Whether the node has venet (a real venet device), or a routed veth named venet0.
    pub fn has_venet(self) -> bool {
        !matches!(self, Target::Vz9)
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::DEFAULT
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options that change what the pre-flight report says.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssessOptions {
    /// Mount point of the source partition whose quotas the container keeps.
    pub quota_partition: Option<String>,
    /// Keep extended attributes where the node's file system can.
    pub keep_xattrs: bool,
    /// Paths of the source not to copy.
    pub excludes: Vec<String>,
    /// The container the report is for (to look at an earlier, partial run).
    pub ctid: Option<u32>,
    /// Skip the source scan (MAC search, xattr census); inventory-only findings.
    pub quick: bool,
    /// The platform the container is for (`None`: the node's).
    pub target: Option<Target>,
}

/// Everything `p2c migrate` asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateOptions {
    pub agent: String,
    pub ctid: u32,
    /// What the pre-flight report considers (shared with `p2c assess`).
    pub assess: AssessOptions,
    /// Bytes per second for this migration's transfer; 0 for no limit.
    pub bwlimit: u64,
    /// Services stopped on the source before the final pass.
    pub stop_services: Vec<String>,
    /// Stop services, run the final pass and finalise the container in this run.
    pub cutover: bool,
    /// Go on despite blockers in the report.
    pub force: bool,
    pub layout: Layout,
    /// The platform the container is for; `None` asks for the node's (its configured
    /// `node.target`, else what the node is detected to be). The controller records the one it
    /// chose, so a stored migration always has one; a row from before targets existed reads
    /// as `None` and was made for legacy OpenVZ.
    pub target: Option<Target>,
    /// Operator-given first-level quota in 1 KiB blocks (soft, hard); computed otherwise.
    pub diskspace: Option<(u64, u64)>,
    /// Operator-given inode limits (soft, hard); computed otherwise.
    pub diskinodes: Option<(u64, u64)>,
    /// Extra room above the source's usage for computed limits, in percent.
    pub headroom_percent: Option<u32>,
    /// Live passes before giving up on convergence (0 = the controller's default).
    pub max_passes: u32,
    /// A pass that changes fewer bytes than this counts as converged.
    pub converge_bytes: Option<u64>,
    /// Commands run on the source through the agent around the final pass.
    pub pre_cutover_hook: Option<String>,
    pub post_cutover_hook: Option<String>,
    /// Boot the container before the cutover (a failed boot stops it unless `force`) and
    /// after it (the result is in the summary); `boot_check = true` in controller.toml too.
    pub boot_check: bool,
    /// How long each boot check lets the guest's init settle (0: the default, 120 s).
    pub boot_check_timeout_secs: u64,
}

impl MigrateOptions {
    /// The platform a begun migration is for: the one the controller recorded, or legacy
    /// OpenVZ for a migration recorded before targets existed.
    pub fn made_for(&self) -> Target {
        self.target.unwrap_or(Target::Openvz)
    }
}

/// Where a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// Created, nothing copied yet.
    Pending,
    /// A copy pass is running.
    Copying,
    /// Live passes done; the source still runs; waiting for a cutover.
    Synced,
    /// Services stopped, final pass running.
    CuttingOver,
    /// Writing the config, quotas, network and guest rewrite.
    Finalising,
    /// The container is ready.
    Done,
    /// Stopped with an error; running the same migrate again resumes.
    Failed,
}

impl MigrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Pending => "pending",
            MigrationState::Copying => "copying",
            MigrationState::Synced => "synced",
            MigrationState::CuttingOver => "cutting-over",
            MigrationState::Finalising => "finalising",
            MigrationState::Done => "done",
            MigrationState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "copying" => Self::Copying,
            "synced" => Self::Synced,
            "cutting-over" => Self::CuttingOver,
            "finalising" => Self::Finalising,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// States in which nothing runs for the migration.
    pub fn is_idle(self) -> bool {
        matches!(self, Self::Pending | Self::Synced | Self::Done | Self::Failed)
    }
}

/// One copy pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PassSummary {
    pub pass: u32,
    /// Entries the source listed.
    pub entries: u64,
    /// Entries created or changed in the container tree.
    pub written: u64,
    /// Entries removed because the source no longer has them.
    pub deleted: u64,
    /// File data the pass stands for.
    pub data_bytes: u64,
    /// Chunk bytes received from the agent (before decompression).
    pub wire_bytes: u64,
    /// Chunk bytes copied from data already on the node.
    pub local_bytes: u64,
    /// Bytes of files whose content changed in this pass.
    pub changed_bytes: u64,
    pub seconds: f64,
    /// Files that changed or vanished while being read (retried next pass).
    pub changed_during_read: Vec<Problem>,
    /// Entries not carried (sockets, unreadable files).
    pub skipped: Vec<Problem>,
    /// Extended attributes the node's file system refused (with `--keep-xattrs`).
    pub xattr_errors: u64,
    /// Entries the agent sent; fewer than `entries` when it listed only what changed.
    pub listed: u64,
    /// Set when the agent listed only what changed since that pass (change tracking)
    /// instead of walking the whole tree.
    pub changes_since: Option<u32>,
    /// What the pass copied by: excludes and attribute policy. A pass lists changes only
    /// against a base of the same scope.
    pub scope: String,
}

/// Outcome of `p2c verify` (and the check at the end of every migration).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifySummary {
    pub ok: bool,
    pub checked: u64,
    /// Paths rewritten on purpose by the guest rewrite, not compared.
    pub rewritten: u64,
    /// Differences, one line each.
    pub mismatches: Vec<String>,
    /// The paths that differ (a pass copies them again).
    pub mismatched_paths: Vec<crate::paths::RelPath>,
    /// Files whose content was re-read; the others had their metadata checked and their
    /// content proved by an earlier verification of the same, untouched file.
    pub content_checked: u64,
}

/// What `p2c migrate` prints at the end (and `p2c status` shows per migration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationSummary {
    pub ctid: u32,
    pub agent: String,
    pub state: MigrationState,
    pub private_dir: String,
    pub conf_path: String,
    /// The platform the container is made for (none in summaries from before targets).
    #[serde(default)]
    pub target: Option<Target>,
    /// Once the container is ready: the commands that register (where the platform needs
    /// it) and start it on this node, in order.
    #[serde(default)]
    pub start_commands: Vec<String>,
    pub passes: Vec<PassSummary>,
    pub error: Option<String>,
    pub report: Option<Report>,
    pub verify: Option<VerifySummary>,
    /// From services stopped to container ready, when a cutover ran.
    pub downtime_seconds: Option<f64>,
    /// Files rewritten or removed in the guest, with their backups.
    pub guest_changes: Vec<GuestChange>,
    /// How the quotas were applied (method, what is enforced, commands run).
    #[serde(default)]
    pub quota: Option<serde_json::Value>,
    /// The container's boot checks, one per stage (before the cutover, after it, on
    /// demand), the latest last.
    #[serde(default)]
    pub boot_checks: Vec<BootCheckSummary>,
    pub warnings: Vec<String>,
    pub started_unix: u64,
    pub updated_unix: u64,
}

impl MigrationSummary {
    /// The summary of a migration that has done nothing yet, as of `now` (unix seconds).
    pub fn new(
        ctid: u32,
        agent: &str,
        state: MigrationState,
        private_dir: String,
        conf_path: String,
        now: u64,
    ) -> Self {
        MigrationSummary {
            ctid,
            agent: agent.to_string(),
            state,
            private_dir,
            conf_path,
            target: None,
            start_commands: Vec::new(),
            passes: Vec::new(),
            error: None,
            report: None,
            verify: None,
            downtime_seconds: None,
            guest_changes: Vec::new(),
            quota: None,
            boot_checks: Vec::new(),
            warnings: Vec::new(),
            started_unix: now,
            updated_unix: now,
        }
    }
}

/// `p2c boot-check N`: which container, and how long its init may take to settle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootCheckRequest {
    pub ctid: u32,
    /// 0: the default (120 s).
    pub timeout_secs: u64,
}

/// When a boot check ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootStage {
    /// After the last live pass, on the rewritten view of the copy, before any service stops.
    BeforeCutover,
    /// On the finished container.
    AfterCutover,
    /// `p2c boot-check N`.
    OnDemand,
}

impl BootStage {
    pub fn as_str(self) -> &'static str {
        match self {
            BootStage::BeforeCutover => "before the cutover",
            BootStage::AfterCutover => "after the cutover",
            BootStage::OnDemand => "on demand",
        }
    }
}

/// A boot check's result as a migration keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootCheckSummary {
    pub stage: BootStage,
    /// No blocker among the findings.
    pub passed: bool,
    /// Where the guest's init got to (`running`, `degraded`, `starting-timed-out`...).
    pub init: String,
    pub boot_secs: f64,
    pub findings: Vec<crate::findings::Finding>,
    pub when_unix: u64,
    /// The whole report (units, listeners, probes, console), for `--json`.
    #[serde(default)]
    pub report: serde_json::Value,
}

/// One file the guest rewrite changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestChange {
    /// Absolute path inside the container.
    pub path: String,
    /// `rewritten`, `created`, `removed`, `disabled`.
    pub action: String,
    /// Absolute path of the backup inside the container, if the file existed.
    pub backup: Option<String>,
    pub reason: String,
}

/// A line of `p2c status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub ctid: u32,
    pub agent: String,
    pub state: MigrationState,
    pub pass: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bytes_per_sec: u64,
    pub eta_seconds: Option<u64>,
    pub error: Option<String>,
    pub updated_unix: u64,
    /// What the migration waits for before it can copy (a copy slot, its agent), if anything.
    #[serde(default)]
    pub waiting: Option<String>,
    /// The container's last boot check (without the whole report; `p2c status N --json`
    /// has that in the migration's summary).
    #[serde(default)]
    pub boot_check: Option<BootCheckSummary>,
}

impl MigrationSummary {
    /// Records a boot check's result, replacing an earlier one of the same stage.
    pub fn record_boot_check(&mut self, b: BootCheckSummary) {
        self.boot_checks.retain(|o| o.stage != b.stage);
        self.boot_checks.push(b);
    }

    /// The latest boot check, if any ran.
    pub fn last_boot_check(&self) -> Option<&BootCheckSummary> {
        self.boot_checks.last()
    }
}

impl BootCheckSummary {
    /// One line: "passed after the cutover (init running, 3.2s)".
    pub fn line(&self) -> String {
        format!(
            "{} {} (init {}, {:.1}s)",
            if self.passed { "passed" } else { "FAILED" },
            self.stage.as_str(),
            self.init,
            self.boot_secs
        )
    }
}

/// A line of `p2c agents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub connected: bool,
    pub revoked: bool,
    pub peer: Option<String>,
    pub hostname: Option<String>,
    pub os: Option<String>,
    pub enrolled_unix: u64,
    pub last_seen_unix: Option<u64>,
    pub summary: Option<String>,
}
