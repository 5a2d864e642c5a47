//! The seams between a migration and the modules that judge and reshape the guest:
//! the pre-flight report, the quota plan and the guest rewrite.

use std::path::Path;

use p2c_common::findings::Report;
use p2c_common::inventory::{INVENTORY_SCHEMA, Inventory};
use p2c_common::migration::{AssessOptions, GuestChange};
use p2c_common::scan::ScanResult;

use crate::context::Controller;
use crate::ctconf::CtConf;
use crate::migration::MigrateError;
use crate::port::Source;

/// The pre-flight report for a source's inventory: a scan of the source (unless quick or
/// the source cannot scan), the node's facts, then the rules of [`crate::assess`].
pub async fn report<S: Source>(
    ctl: &Controller,
    src: &S,
    inv: &Inventory,
    opts: &AssessOptions,
) -> (Report, Option<ScanResult>) {
    let scan = if opts.quick { None } else { src.scan(&crate::assess::scan_options(inv, opts)).await };
    (assess_with(ctl, src.name(), inv, scan.as_ref(), opts).await, scan)
}

/// Reads an inventory as an agent (or a bundle) reports it, refusing what this controller
/// cannot read.
pub fn parse_inventory(json: &[u8]) -> Result<Inventory, MigrateError> {
    if json.len() > 8 * 1024 * 1024 {
        return Err(MigrateError::Inventory("larger than 8 MiB".into()));
    }
    let inv: Inventory = serde_json::from_slice(json).map_err(|e| MigrateError::Inventory(e.to_string()))?;
    if inv.schema != INVENTORY_SCHEMA {
        return Err(MigrateError::Inventory(format!(
            "schema {} (this controller reads {INVENTORY_SCHEMA}); run the same p2c release on both sides",
            inv.schema
        )));
    }
    Ok(inv)
}

/// The pre-flight report for an inventory and a scan already at hand (a bundle's): the
/// node's facts, then the rules of [`crate::assess`].
pub async fn assess_with(
    ctl: &Controller,
    agent: &str,
    inv: &Inventory,
    scan: Option<&ScanResult>,
    opts: &AssessOptions,
) -> Report {
    let private_root = ctl.settings.vz_root.join("private");
    // What an earlier run of a migration left is in the store; walking a large private area
    // at every `p2c migrate` would cost seconds. Only an unknown directory is measured.
    let known = opts.ctid.and_then(|id| earlier_run(ctl, id));
    let ctid = if known.is_some() { None } else { opts.ctid };
    let mut node = tokio::task::spawn_blocking(move || crate::assess::probe_node(&private_root, ctid))
        .await
        .unwrap_or_else(|_| crate::assess::probe_node(Path::new("/nonexistent"), None));
    if known.is_some() {
        node.existing_private = known;
    }
    node.target = Some(ctl.node_target.clone());
    node.boot_tools = Some(
        crate::boot::tools()
            .map_err(|m| crate::assess::MissingTool { what: m.what.clone(), package: m.package.clone() }),
    );
    crate::assess::assess(agent, inv, scan, &node, opts)
}

/// What the store says an earlier run of migration `ctid` copied, if it ran.
fn earlier_run(ctl: &Controller, ctid: u32) -> Option<crate::assess::ExistingPrivate> {
    ctl.store.migration(ctid).ok().flatten()?;
    let files = ctl.store.file_count(ctid).ok()?;
    let bytes = ctl.store.passes(ctid).ok()?.into_iter().map(|p| p.summary.data_bytes).max().unwrap_or(0);
    (files > 0).then(|| crate::assess::ExistingPrivate {
        path: ctl.settings.private_dir(ctid).display().to_string(),
        bytes,
        files,
    })
}

/// What the guest's files should say, from the container's config.
pub fn guest_options(conf: &CtConf) -> crate::guest::GuestOptions {
    crate::guest::GuestOptions {
        addresses: conf.addresses.iter().map(|a| a.address).collect(),
        hostname: if conf.hostname.is_empty() { None } else { Some(conf.hostname.clone()) },
        nameservers: conf.nameservers.iter().map(|n| n.to_string()).collect(),
        search: conf.search.clone(),
        target: conf.target,
    }
}

/// Rewrites the guest below `root` so it starts as a container.
pub fn containerise(root: &Path, inv: &Inventory, conf: &CtConf) -> Result<Vec<GuestChange>, String> {
    let tree = crate::tree::Tree::open(root).map_err(|e| e.to_string())?;
    crate::guest::containerise(&tree, inv, &guest_options(conf)).map_err(|e| e.to_string())
}
