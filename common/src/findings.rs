//! The pre-flight report: findings with stable codes, severities, evidence and what the
//! migration will do about each.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Stops the migration unless the operator overrides it.
    Blocker,
    /// Something will change or may break; the migration goes on.
    Warning,
    /// Worth knowing; nothing breaks.
    Info,
}

impl Severity {
    /// As reports print it: `BLOCKER`, `WARNING`, `info`.
    pub fn tag(self) -> &'static str {
        match self {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "WARNING",
            Severity::Info => "info",
        }
    }
}

/// Stable finding codes (part of the CLI's JSON contract).
pub mod codes {
    pub const FS_MERGE: &str = "fs-merge";
    pub const IP_VENET0: &str = "ip-venet0";
    pub const QUOTA_PARTITION: &str = "quota-partition";
    pub const SELINUX: &str = "selinux";
    pub const XATTRS: &str = "xattrs";
    pub const RAW_DEVICE: &str = "raw-device";
    pub const MAC_BOUND: &str = "mac-bound";
    pub const PARTIAL_RETRY: &str = "partial-retry";
    pub const WINDOWS_VERSION: &str = "windows-version";
    pub const DISK_SPACE: &str = "disk-space";
    pub const KERNEL_MODULES: &str = "kernel-modules";
    pub const NESTED_CONTAINERS: &str = "nested-containers";
    pub const HIGH_IDS: &str = "high-ids";
    pub const NETWORK_MOUNTS: &str = "network-mounts";
    pub const DHCP: &str = "dhcp";
    pub const CHANGED_DURING_COPY: &str = "changed-during-copy";
    pub const SKIPPED: &str = "skipped-entries";
    pub const NODE_TARGET: &str = "node-target";
    pub const NODE_BOOT_CHECK: &str = "node-boot-check";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub severity: Severity,
    /// One line saying what was found.
    pub title: String,
    /// Human-readable evidence, one item per line (paths, addresses, counts).
    pub evidence: Vec<String>,
    /// What the migration will do about it.
    pub action: String,
    /// The same evidence, structured, for `--json` consumers.
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub agent: String,
    pub hostname: String,
    pub generated_unix: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn blockers(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Blocker)
    }

    pub fn has_blockers(&self) -> bool {
        self.blockers().next().is_some()
    }

    pub fn find(&self, code: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }

    /// The report as text for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!("Pre-flight report for {} ({})\n", self.agent, self.hostname);
        let mut sorted: Vec<&Finding> = self.findings.iter().collect();
        sorted.sort_by_key(|f| f.severity);
        for f in sorted {
            let tag = f.severity.tag();
            out.push_str(&format!("\n[{tag}] {} — {}\n", f.code, f.title));
            for e in &f.evidence {
                out.push_str(&format!("    {e}\n"));
            }
            out.push_str(&format!("  → {}\n", f.action));
        }
        let blockers = self.blockers().count();
        out.push_str(&format!("\n{} finding(s), {} blocker(s)\n", self.findings.len(), blockers));
        out
    }
}
