//! The pre-flight report (`p2c assess`): what moving a server into a container will change
//! or break, judged from the agent's inventory, the source scan and the node's facts.
//!
//! Every finding has a stable code from [`p2c_common::findings::codes`], a severity, the
//! evidence as lines and as structured `data`, and the action the migration takes. The
//! rules are pure functions of their inputs ([`assess`]); only [`probe_node`] looks at the
//! node. One module per area: `storage` (fs-merge, network-mounts, disk-space), `quota`,
//! `network` (ip-venet0, dhcp, mac-bound), `security` (selinux, xattrs, high-ids),
//! `devices` (raw-device), `system` (kernel-modules, nested-containers, windows-version,
//! skipped-entries, partial-retry).

mod devices;
mod network;
mod node;
mod quota;
mod security;
mod storage;
mod system;

use p2c_common::findings::{Finding, Report, Severity};
use p2c_common::inventory::Inventory;
use p2c_common::migration::AssessOptions;
use p2c_common::scan::{ScanOptions, ScanResult};
use serde::{Deserialize, Serialize};

pub use node::{ProbeError, probe_node};

/// What the node offers the container, probed under its private root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// Bytes available below the private root.
    pub free_bytes: u64,
    /// Inodes available; `u64::MAX` when the file system has no fixed inode count (btrfs).
    pub free_inodes: u64,
    /// File-system type under the private root (`ext4`, `xfs`, `btrfs`...).
    pub fs_type: String,
    /// Whether that file system stores `user.*` extended attributes.
    pub xattrs_supported: bool,
    pub os: NodeOs,
    /// `PRETTY_NAME` of the node's os-release.
    pub os_name: String,
    /// What an earlier, unfinished run left in the container's private area.
    pub existing_private: Option<ExistingPrivate>,
    /// Facts that could not be probed, each with the reason.
    pub gaps: Vec<String>,
    /// The platform the node is taken to be, and why (unknown outside a controller).
    #[serde(default)]
    pub target: Option<crate::platform::NodeTarget>,
    /// What the boot check would use here, or what it lacks (unknown outside a controller).
    #[serde(default)]
    pub boot_tools: Option<Result<String, MissingTool>>,
}

/// A tool the node lacks, and the package that brings it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingTool {
    pub what: String,
    pub package: String,
}

impl Default for NodeFacts {
    fn default() -> Self {
        NodeFacts {
            free_bytes: 0,
            free_inodes: 0,
            fs_type: String::new(),
            xattrs_supported: false,
            os: NodeOs::Linux,
            os_name: String::new(),
            existing_private: None,
            gaps: Vec::new(),
            target: None,
            boot_tools: None,
        }
    }
}

/// The node's operating system, for the Windows version rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "family")]
pub enum NodeOs {
    Linux,
    /// A Windows Server container node (`2008`, `2003`, `2008 R2`...).
    Windows {
        version: String,
    },
}

/// A private area left by an earlier run for the same container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingPrivate {
    pub path: String,
    /// Disk space its files use.
    pub bytes: u64,
    /// Entries in it.
    pub files: u64,
}

/// Everything a rule may look at.
pub(crate) struct Ctx<'a> {
    pub inv: &'a Inventory,
    pub scan: Option<&'a ScanResult>,
    pub node: &'a NodeFacts,
    pub opts: &'a AssessOptions,
}

/// Evidence lines shown per finding; `data` always has everything.
const MAX_EVIDENCE: usize = 40;

/// Builds a finding, capping its evidence lines.
pub(crate) fn finding(
    code: &str,
    severity: Severity,
    title: impl Into<String>,
    mut evidence: Vec<String>,
    action: impl Into<String>,
    data: serde_json::Value,
) -> Finding {
    if evidence.len() > MAX_EVIDENCE {
        let more = evidence.len() - (MAX_EVIDENCE - 1);
        evidence.truncate(MAX_EVIDENCE - 1);
        evidence.push(format!("... and {more} more (all of them in --json)"));
    }
    Finding { code: code.to_string(), severity, title: title.into(), evidence, action: action.into(), data }
}

/// The container's tree as the report names it: `/vz/private/<CTID>`-style when the
/// container id is known.
pub(crate) fn ct_path(opts: &AssessOptions, mountpoint: &str) -> String {
    let mp = if mountpoint == "/" { "" } else { mountpoint };
    match opts.ctid {
        Some(id) => format!("private/{id}{mp}/"),
        None => format!("<container>{mp}/"),
    }
}

/// What to ask the agent to scan for `inv`: the MACs of its interfaces (loopback and
/// all-zero ones left out) under the default roots, with the operator's excludes.
pub fn scan_options(inv: &Inventory, opts: &AssessOptions) -> ScanOptions {
    ScanOptions::for_inventory(inv, &opts.excludes)
}

/// Judges a server: the pre-flight report for `agent`. `scan` is `None` for a quick
/// assessment (inventory only); rules that need it then say they were not checked.
pub fn assess(
    agent: &str,
    inv: &Inventory,
    scan: Option<&ScanResult>,
    node: &NodeFacts,
    opts: &AssessOptions,
) -> Report {
    let cx = Ctx { inv, scan, node, opts };
    let mut out = Vec::new();
    storage::fs_merge(&cx, &mut out);
    storage::network_mounts(&cx, &mut out);
    storage::disk_space(&cx, &mut out);
    network::ip_venet0(&cx, &mut out);
    network::dhcp(&cx, &mut out);
    network::mac_bound(&cx, &mut out);
    quota::quota_partition(&cx, &mut out);
    security::selinux(&cx, &mut out);
    security::xattrs(&cx, &mut out);
    security::high_ids(&cx, &mut out);
    devices::raw_device(&cx, &mut out);
    system::kernel_modules(&cx, &mut out);
    system::nested_containers(&cx, &mut out);
    system::windows_version(&cx, &mut out);
    system::skipped_entries(&cx, &mut out);
    system::partial_retry(&cx, &mut out);
    system::node_target(&cx, &mut out);
    system::node_boot_check(&cx, &mut out);
    Report {
        agent: agent.to_string(),
        hostname: inv.hostname.clone(),
        generated_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        findings: out,
    }
}

#[cfg(test)]
mod tests;
