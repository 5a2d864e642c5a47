//! The boot check as a step of a migration and as `p2c boot-check N`; the engine that boots a
//! throw-away view of a tree is [`crate::boot`].
//!
//! - Before a cutover (`--boot-check`, or `node.boot_check`), after the last live pass and
//!   before any service of the source stops: the copy is not finalised yet, so the guest
//!   rewrite runs inside the view (the copy itself is not touched). A failed check aborts the
//!   cutover, the source keeps serving, unless the migration was started with `--force`.
//! - After the cutover, on the finished container: the result goes into the summary and
//!   never fails the migration, which is done by then.
//! - `p2c boot-check N`: either, whichever the container is (a synced copy is rewritten in
//!   the view, a finished container is booted as it is).
//!
//! Without the node's tools (systemd-nspawn, overlayfs) the check says so and the migration
//! goes on.

use std::path::PathBuf;
use std::time::Duration;

use p2c_common::findings::Severity;
use p2c_common::inventory::Inventory;
use p2c_common::migration::{BootCheckSummary, BootStage, Layout, MigrateOptions, MigrationState};

use crate::boot::{self, BootError, BootReport, BootRequest, Rewrite};
use crate::context::Controller;
use crate::ctconf::CtConf;
use crate::migration::{MigrateError, MigrationHandle};

/// How long the guest's init may take to settle unless the operator says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether migration `opts` runs the check: asked for, or `node.boot_check`.
pub fn wanted(ctl: &Controller, opts: &MigrateOptions) -> bool {
    opts.boot_check || ctl.settings.boot_check
}

/// The timeout for `secs` (0: the default), at most an hour.
pub fn timeout(secs: u64) -> Duration {
    if secs == 0 { DEFAULT_TIMEOUT } else { Duration::from_secs(secs.min(3600)) }
}

/// Where the checks' overlay upper and work directories go (removed after each check).
pub fn work_dir(ctl: &Controller) -> PathBuf {
    ctl.settings.state_dir.join("boot-check")
}

/// The result as a migration keeps it.
pub fn summary(stage: BootStage, r: &BootReport) -> BootCheckSummary {
    BootCheckSummary {
        stage,
        passed: r.passed(),
        init: r.init.as_str().to_string(),
        boot_secs: r.boot_secs,
        findings: r.findings.clone(),
        when_unix: crate::state::now(),
        report: serde_json::to_value(r).unwrap_or_default(),
    }
}

/// One line for logs and errors: what failed, by finding.
fn blockers(r: &BootReport) -> String {
    let list: Vec<String> = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .map(|f| {
            let first: Vec<&str> = f.evidence.iter().take(3).map(String::as_str).collect();
            if first.is_empty() { f.title.clone() } else { format!("{} ({})", f.title, first.join(", ")) }
        })
        .collect();
    list.join("; ")
}

/// Boots the tree at `root` as container `ctid` with `conf`'s addresses and platform, and
/// `inv`'s listeners; with `rewrite`, the guest rewrite runs in the view first.
async fn boot_tree(
    ctl: &Controller,
    ctid: u32,
    root: PathBuf,
    conf: &CtConf,
    inv: &Inventory,
    rewrite: bool,
    timeout: Duration,
) -> Result<BootReport, BootError> {
    let req = BootRequest {
        ctid,
        root,
        addresses: conf.addresses.iter().map(|a| a.address).collect(),
        target: conf.target,
        listeners: inv.listeners.clone(),
        timeout,
        work_dir: work_dir(ctl),
        rewrite: rewrite
            .then(|| Rewrite { inventory: inv.clone(), options: crate::preflight::guest_options(conf) }),
    };
    boot::run(&req).await
}

fn conf_for(ctl: &Controller, ctid: u32, agent: &str, opts: &MigrateOptions, inv: &Inventory) -> CtConf {
    CtConf::from_inventory(ctid, agent, &ctl.settings.vz_root, opts.layout, opts.made_for(), inv)
}

/// Records that the check could not run on this node (the migration goes on).
fn skipped(h: &MigrationHandle, why: &str) {
    let w = format!("boot check not run: {why}");
    h.log(w.clone());
    h.update_summary(|s| s.warnings.push(w));
}

/// The check before a cutover: stops it (the source keeps serving) when the copy does not
/// boot cleanly, unless the migration was started with `--force`.
pub async fn before_cutover(
    ctl: &Controller,
    h: &MigrationHandle,
    inv: &Inventory,
) -> Result<(), MigrateError> {
    let opts = h.options();
    if let Err(m) = boot::tools() {
        skipped(h, &m.to_string());
        return Ok(());
    }
    h.log("boot check: booting a view of the copy with its own init, on an isolated network, before anything on the source stops");
    let conf = conf_for(ctl, h.ctid(), h.agent(), opts, inv);
    let root = crate::finalise::ct_root(ctl, h);
    let report =
        boot_tree(ctl, h.ctid(), root, &conf, inv, true, timeout(opts.boot_check_timeout_secs)).await;
    let ctid = h.ctid();
    let failure = match report {
        Ok(r) => {
            let passed = r.passed();
            h.log(format!(
                "boot check before the cutover {}: init {} after {:.1}s",
                if passed { "passed" } else { "FAILED" },
                r.init.as_str(),
                r.boot_secs
            ));
            let why = blockers(&r);
            h.update_summary(|s| s.record_boot_check(summary(BootStage::BeforeCutover, &r)));
            if passed {
                return Ok(());
            }
            format!("the boot check failed: {why}")
        }
        Err(e) => format!("the boot check could not run: {e}"),
    };
    if opts.force {
        h.log(format!("{failure}; cutting over anyway (--force)"));
        h.update_summary(|s| s.warnings.push(format!("{failure} (cut over anyway with --force)")));
        return Ok(());
    }
    Err(MigrateError::CutoverAborted(format!(
        "{failure}. Nothing on the source was stopped; see `p2c status {ctid} --json` for the units and listeners, fix the source (or use --force to cut over anyway) and run `p2c cutover {ctid}` again"
    )))
}

/// The check of the finished container: its result goes into the summary (a warning when
/// it fails); it never fails the migration.
pub async fn after_cutover(ctl: &Controller, h: &MigrationHandle, inv: &Inventory) {
    let opts = h.options();
    if let Err(m) = boot::tools() {
        skipped(h, &m.to_string());
        return;
    }
    h.log("boot check: booting a view of the finished container");
    let conf = conf_for(ctl, h.ctid(), h.agent(), opts, inv);
    match boot_container(ctl, h.ctid(), opts, None, &conf, inv, false, timeout(opts.boot_check_timeout_secs))
        .await
    {
        Ok(r) => {
            let passed = r.passed();
            h.log(format!(
                "boot check of the finished container {}: init {} after {:.1}s",
                if passed { "passed" } else { "FAILED" },
                r.init.as_str(),
                r.boot_secs
            ));
            if !passed {
                h.update_summary(|s| {
                    s.warnings.push(format!("the finished container's boot check failed: {}", blockers(&r)))
                });
            }
            h.update_summary(|s| s.record_boot_check(summary(BootStage::AfterCutover, &r)));
        }
        Err(e) => {
            h.log(format!("the boot check of the finished container could not run: {e}"));
            h.update_summary(|s| {
                s.warnings.push(format!("the finished container's boot check could not run: {e}"))
            });
        }
    }
}

/// Boots container `ctid`: the root a running migration holds (`held`), else its tree, or
/// its ploop image mounted for the time of the check.
#[allow(clippy::too_many_arguments, reason = "the two call sites in this module each pass every one")]
async fn boot_container(
    ctl: &Controller,
    ctid: u32,
    opts: &MigrateOptions,
    held: Option<PathBuf>,
    conf: &CtConf,
    inv: &Inventory,
    rewrite: bool,
    timeout: Duration,
) -> Result<BootReport, BootError> {
    if let Some(root) = held {
        return boot_tree(ctl, ctid, root, conf, inv, rewrite, timeout).await;
    }
    if opts.layout != Layout::Ploop {
        let tree = ctl.settings.private_area(ctid, opts).tree();
        return boot_tree(ctl, ctid, tree, conf, inv, rewrite, timeout).await;
    }
    let (mp, guard) = crate::finalise::mount_image(ctl, ctid, opts).map_err(|e| BootError::Request {
        ctid,
        problem: format!("cannot mount the container image: {e}"),
    })?;
    let r = boot_tree(ctl, ctid, mp.clone(), conf, inv, rewrite, timeout).await;
    if let Err(e) = guard.unmount() {
        tracing::warn!(ctid, mountpoint = %mp.display(), "cannot unmount the container image after its boot check: {e}; unmount it by hand");
    }
    r
}

/// Why `p2c boot-check N` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum OnDemandError {
    #[error("CT {0} is not a p2c migration")]
    Unknown(u32),
    #[error("CT {0} is being migrated ({1}); run the boot check when it is synced or done")]
    Busy(u32, &'static str),
    #[error("CT {0} has no copy yet (its migration is {1}); nothing to boot")]
    NoCopy(u32, &'static str),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
}

/// `p2c boot-check N`: boots container `ctid` (a synced copy with the guest rewrite in the
/// view, a finished container as it is) and records the result in its migration.
pub async fn on_demand(ctl: &Controller, ctid: u32, timeout_secs: u64) -> Result<BootReport, OnDemandError> {
    let row = ctl.store.migration(ctid)?.ok_or(OnDemandError::Unknown(ctid))?;
    if let Some(h) = ctl.migrations.get(ctid)
        && h.is_running()
    {
        return Err(OnDemandError::Busy(ctid, h.state().as_str()));
    }
    let done = match row.state {
        MigrationState::Done => true,
        MigrationState::Synced => false,
        other => return Err(OnDemandError::NoCopy(ctid, other.as_str())),
    };
    boot::tools().map_err(BootError::from)?;
    // The source as the controller last saw it (listeners, addresses); a bundle's source may
    // have none on record, and then the config's addresses are what the check expects.
    let inv: Inventory = ctl
        .store
        .inventory(&row.agent)?
        .and_then(|j| crate::preflight::parse_inventory(j.as_bytes()).ok())
        .unwrap_or_default();
    let mut conf = conf_for(ctl, ctid, &row.agent, &row.options, &inv);
    if conf.addresses.is_empty() {
        conf.addresses = conf_file_addresses(&ctl.settings.private_area(ctid, &row.options).conf_file());
    }
    // A synced migration of this run may still hold its image mounted.
    let held = if done {
        None
    } else {
        ctl.migrations.get(ctid).and_then(|h| h.with_quota(|q| q.as_ref().map(|q| q.root.clone())))
    };
    let r = boot_container(ctl, ctid, &row.options, held, &conf, &inv, !done, timeout(timeout_secs)).await?;
    let result = summary(BootStage::OnDemand, &r);
    match ctl.migrations.get(ctid) {
        Some(h) => {
            h.update_summary(|s| s.record_boot_check(result.clone()));
            ctl.store.set_migration_state(ctid, row.state, Some(&h.summary()))?;
        }
        None => {
            if let Some(mut s) = row.summary {
                s.record_boot_check(result);
                ctl.store.set_migration_state(ctid, row.state, Some(&s))?;
            }
        }
    }
    Ok(r)
}

/// The addresses of a written config's `IP_ADDRESS` (prefixes where it has them).
fn conf_file_addresses(path: &std::path::Path) -> Vec<p2c_common::inventory::IfAddr> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let kv = crate::ctconf::parse(&text);
    kv.get("IP_ADDRESS")
        .map(|v| {
            v.split([' ', ',', '\t'])
                .filter_map(|a| {
                    let (ip, prefix) = a.split_once('/').unwrap_or((a, ""));
                    let address: std::net::IpAddr = ip.parse().ok()?;
                    let max = if address.is_ipv4() { 32 } else { 128 };
                    Some(p2c_common::inventory::IfAddr { address, prefix: prefix.parse().unwrap_or(max) })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_default_and_are_capped() {
        assert_eq!(timeout(0), DEFAULT_TIMEOUT);
        assert_eq!(timeout(30), Duration::from_secs(30));
        assert_eq!(timeout(1 << 40), Duration::from_secs(3600));
    }

    #[test]
    fn a_configs_addresses_are_read_back_with_their_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ve.conf");
        std::fs::write(&p, "HOSTNAME=\"w\"\nIP_ADDRESS=\"192.0.2.10 2001:db8::1/64 198.51.100.7/24\"\n")
            .unwrap();
        let a: Vec<String> =
            conf_file_addresses(&p).iter().map(|a| format!("{}/{}", a.address, a.prefix)).collect();
        assert_eq!(a, ["192.0.2.10/32", "2001:db8::1/64", "198.51.100.7/24"]);
        assert!(conf_file_addresses(&d.path().join("missing")).is_empty());
    }
}
