//! The seams between a migration and the modules that judge and reshape the guest:
//! the pre-flight report, the quota plan and the guest rewrite.

use std::path::Path;

use p2c_common::findings::{Finding, Report, Severity, codes};
use p2c_common::inventory::{Inventory, MountKind};
use p2c_common::migration::{AssessOptions, GuestChange, MigrateOptions};

use crate::ctconf::CtConf;
use crate::migrate::MigrationHandle;
use crate::server::Controller;

/// The pre-flight report for an agent's inventory.
pub async fn report(_ctl: &Controller, agent: &str, inv: &Inventory, _opts: &AssessOptions) -> Report {
    let mut findings = Vec::new();
    let local: Vec<String> = inv
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Local)
        .map(|m| {
            format!(
                "{} ({}, {}) on {}",
                m.device,
                m.fs_type,
                p2c_common::units::human_bytes(m.used_bytes),
                m.mountpoint
            )
        })
        .collect();
    findings.push(Finding {
        code: codes::FS_MERGE.into(),
        severity: Severity::Info,
        title: format!("{} local file system(s) are merged into one container tree", local.len()),
        evidence: local,
        action: "every local file system is copied into /vz/private/<CTID>; pseudo and network file systems are not copied".into(),
        data: serde_json::Value::Null,
    });
    let addrs = crate::ctconf::source_addresses(inv);
    findings.push(Finding {
        code: codes::IP_VENET0.into(),
        severity: Severity::Info,
        title: format!("{} address(es) move onto venet0", addrs.len()),
        evidence: addrs.iter().map(|a| a.to_string()).collect(),
        action: "all addresses are listed in IP_ADDRESS and configured on venet0 in the guest".into(),
        data: serde_json::Value::Null,
    });
    Report {
        agent: agent.to_string(),
        hostname: inv.hostname.clone(),
        generated_unix: crate::state::now(),
        findings,
    }
}

/// DISKSPACE/DISKINODES and the other quota keys of the container config.
pub fn quota_keys(_h: &MigrationHandle, inv: &Inventory, opts: &MigrateOptions) -> Vec<(String, String)> {
    let used_kb: u64 =
        inv.mounts.iter().filter(|m| m.kind == MountKind::Local).map(|m| m.used_bytes / 1024).sum();
    let used_inodes: u64 =
        inv.mounts.iter().filter(|m| m.kind == MountKind::Local).map(|m| m.inodes_used).sum();
    let (ds, dh) = opts.diskspace.unwrap_or((used_kb * 6 / 5 + 1024 * 1024, used_kb * 5 / 4 + 1024 * 1024));
    let (is, ih) = opts.diskinodes.unwrap_or((used_inodes * 6 / 5 + 100_000, used_inodes * 5 / 4 + 100_000));
    vec![
        ("DISKSPACE".into(), format!("{ds}:{dh}")),
        ("DISKINODES".into(), format!("{is}:{ih}")),
        ("QUOTATIME".into(), "0".into()),
        ("QUOTAUGIDLIMIT".into(), "0".into()),
    ]
}

/// Rewrites the guest so it starts as a container.
pub fn containerise(_private: &Path, _inv: &Inventory, _conf: &CtConf) -> Result<Vec<GuestChange>, String> {
    Ok(Vec::new())
}
