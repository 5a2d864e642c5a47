//! A migration, start to finish, written once for every kind of [`Source`]: inventory and
//! pre-flight report (the one blocker check), storage, then for a live source copy passes
//! until the changes converge and (now or on `p2c cutover`) the cutover; for a snapshot (a
//! bundle) its one pass and the finalisation.

use std::sync::Arc;

use p2c_common::inventory::Inventory;
use p2c_common::migration::{MigrateOptions, MigrationState};
use p2c_common::paths::RelPath;
use p2c_common::scan::ScanResult;
use tokio::sync::broadcast;
use tracing::{error, warn};

use crate::context::Controller;
use crate::finalise;
use crate::migration::{Event, MigrateError, MigrationHandle, Phase};
use crate::online::OnlineAgent;
use crate::pass::{self, Walk};
use crate::port::Source;

/// A running migration and a subscription to its events from before it started.
pub type Started = (Arc<MigrationHandle>, broadcast::Receiver<Event>);

/// Starts (or resumes) the migration of a connected agent in the background.
pub fn start(ctl: &Controller, opts: MigrateOptions) -> Result<Started, MigrateError> {
    let h = begin(ctl, opts)?;
    let sub = h.subscribe();
    let (ctl2, h2) = (ctl.clone(), h.clone());
    ctl.spawn(async move {
        let src = OnlineAgent::new(&ctl2, h2.agent());
        if let Err(e) = drive(&ctl2, &h2, &src).await {
            stopped(&ctl2, &h2, e);
        }
    });
    Ok((h, sub))
}

/// Checks that container `opts.ctid` can be (re)built for `opts.agent` and begins its
/// migration (recorded, in [`Phase::Copying`]), not started: shared by `p2c migrate` and
/// `p2c import`.
///
/// A request that names no target continues an earlier run's, or takes the node's.
pub fn begin(ctl: &Controller, mut opts: MigrateOptions) -> Result<Arc<MigrationHandle>, MigrateError> {
    if opts.ctid == 0 {
        return Err(MigrateError::BadCtid);
    }
    if opts.target.is_none() {
        let earlier = ctl.store.migration(opts.ctid)?.map(|r| r.options.made_for());
        opts.target = Some(earlier.unwrap_or(ctl.node_target.target));
    }
    opts.assess.target = opts.target;
    p2c_common::pki::validate_agent_name(&opts.agent)
        .map_err(|source| MigrateError::BadName { name: opts.agent.clone(), source })?;
    Ok(ctl.migrations.begin(ctl.claim(opts.ctid), opts)?)
}

/// Runs the cutover of a synced migration in the background. Of two callers, one moves it
/// to [`Phase::CuttingOver`] and starts it; the other is refused.
pub fn cutover(ctl: &Controller, ctid: u32) -> Result<Started, MigrateError> {
    let h = ctl.migrations.get(ctid).ok_or(MigrateError::Unknown(ctid))?;
    let sub = h.subscribe();
    ctl.migrations.transition(&ctl.store, &h, Phase::CuttingOver)?;
    let (ctl2, h2) = (ctl.clone(), h.clone());
    ctl.spawn(async move {
        let src = OnlineAgent::new(&ctl2, h2.agent());
        if let Err(e) = crate::cutover::run(&ctl2, &h2, &src).await {
            stopped(&ctl2, &h2, e);
        }
    });
    Ok((h, sub))
}

/// Records why a migration stopped: an aborted cutover leaves it synced (the source runs on
/// and the cutover can be tried again), anything else failed.
pub fn stopped(ctl: &Controller, h: &MigrationHandle, e: MigrateError) {
    let to = if let MigrateError::CutoverAborted(_) = e {
        h.log(format!("{e}; run `p2c cutover {}` to try again", h.ctid()));
        Phase::Synced { aborted: Some(e.to_string()) }
    } else {
        h.log(format!("migration stopped: {e}"));
        Phase::Failed { error: e.to_string() }
    };
    if let Err(t) = ctl.migrations.transition(&ctl.store, h, to) {
        error!(ctid = h.ctid(), agent = %h.agent(), "the migration stopped ({e}) but {t}");
    }
}

/// At start: migrations that were running when the controller stopped are marked failed, so
/// that `p2c migrate` resumes them; synced ones are loaded, so that `p2c cutover` finds them.
pub fn recover(ctl: &Controller) -> Result<(), crate::state::StoreError> {
    for r in ctl.store.migrations()? {
        if r.state == MigrationState::Synced {
            ctl.migrations.restore(r);
        } else if !r.state.is_idle() {
            let mut s = r.summary;
            if let Some(s) = s.as_mut() {
                s.state = MigrationState::Failed;
                s.error = Some(
                    "the controller stopped during the migration; run the same `p2c migrate` (or `p2c import`) again to resume"
                        .into(),
                );
            }
            ctl.store.set_migration_state(r.ctid, MigrationState::Failed, s.as_ref())?;
        }
    }
    Ok(())
}

/// The whole migration of `h` from `src`, up to synced (a live source without `--cutover`)
/// or done.
pub async fn drive<S: Source>(ctl: &Controller, h: &MigrationHandle, src: &S) -> Result<(), MigrateError> {
    let opts = h.options();
    h.log(format!("collecting the inventory of {}", h.agent()));
    let inv = src.inventory().await?;
    let scan = scan(ctl, h, src, &inv).await;
    let report = crate::preflight::assess_with(ctl, h.agent(), &inv, scan.as_ref(), &opts.assess).await;
    h.send(Event::Report(Box::new(report.clone())));
    h.update_summary(|s| s.report = Some(report.clone()));
    if report.has_blockers() && !opts.force {
        let list: Vec<String> = report.blockers().map(|f| format!("{} ({})", f.code, f.title)).collect();
        return Err(MigrateError::Blocked(list.len(), list.join("; ")));
    }
    finalise::prepare_storage(ctl, h, &inv, scan.as_ref(), opts)?;
    let excludes = pass::excludes(opts)?;
    if !src.is_live() {
        return snapshot(ctl, h, src, &inv, &excludes).await;
    }
    live_passes(ctl, h, src, &inv, &excludes).await?;
    if opts.cutover {
        ctl.migrations.transition(&ctl.store, h, Phase::CuttingOver)?;
        return crate::cutover::run(ctl, h, src).await;
    }
    h.log(format!(
        "synced; the source keeps running. Run `p2c cutover {}` to stop its services, copy the last changes and finalise",
        h.ctid()
    ));
    ctl.migrations.transition(&ctl.store, h, Phase::Synced { aborted: None })?;
    Ok(())
}

/// The scan for the report. A live migration that already copied re-uses the scan of its
/// first run (a full walk of the source); the inventory, and so the report, is fresh.
async fn scan<S: Source>(
    ctl: &Controller,
    h: &MigrationHandle,
    src: &S,
    inv: &Inventory,
) -> Option<ScanResult> {
    let opts = &h.options().assess;
    let scan_file = ctl.settings.manifest_dir(h.ctid()).join("scan.json");
    if src.is_live() && !h.summary().passes.is_empty() {
        match std::fs::read(&scan_file).map(|j| ScanResult::from_json(&j)) {
            Ok(Ok(scan)) => return Some(scan),
            Ok(Err(e)) => warn!(
                ctid = h.ctid(),
                "the earlier scan {} is unreadable ({e}); scanning again",
                scan_file.display()
            ),
            Err(e) => warn!(ctid = h.ctid(), "no earlier scan {} ({e}); scanning again", scan_file.display()),
        }
    }
    if opts.quick {
        return None;
    }
    let scan = src.scan(&crate::assess::scan_options(inv, opts)).await?;
    if let Ok(json) = scan.to_json() {
        let saved = std::fs::create_dir_all(ctl.settings.manifest_dir(h.ctid()))
            .and_then(|()| std::fs::write(&scan_file, json));
        if let Err(e) = saved {
            warn!(
                ctid = h.ctid(),
                "cannot keep the scan in {}: {e}; a resumed run scans again",
                scan_file.display()
            );
        }
    }
    Some(scan)
}

/// Copy passes while the source runs, until a pass changes little enough.
async fn live_passes<S: Source>(
    ctl: &Controller,
    h: &MigrationHandle,
    src: &S,
    inv: &Inventory,
    excludes: &[RelPath],
) -> Result<(), MigrateError> {
    let opts = h.options();
    let conv = ctl.settings.converge_bytes.max(opts.converge_bytes.unwrap_or(0));
    let max_passes = if opts.max_passes > 0 { opts.max_passes } else { ctl.settings.max_passes };
    for i in 0..max_passes {
        let s = pass::run_pass(ctl, h, src, excludes, Walk::ChangesIfTracked, None).await?;
        if i == 0 || !ctl.settings.conf_path(h.ctid()).exists() {
            finalise::write_conf(ctl, h, inv, opts)?;
        }
        let converged = s.changed_bytes <= conv && s.changed_during_read.is_empty();
        let listed = match s.changes_since {
            Some(b) => format!(" ({} changed since pass {b} listed)", s.listed),
            None => String::new(),
        };
        h.log(format!(
            "pass {} done: {} entries{listed}, {} written, {} deleted, {} on the wire, {} copied on the node{}",
            s.pass,
            s.entries,
            s.written,
            s.deleted,
            p2c_common::units::human_bytes(s.wire_bytes),
            p2c_common::units::human_bytes(s.local_bytes),
            if converged { "; converged" } else { "" }
        ));
        if converged {
            break;
        }
    }
    Ok(())
}

/// A snapshot's one pass, which is also its last, then the finalisation.
async fn snapshot<S: Source>(
    ctl: &Controller,
    h: &MigrationHandle,
    src: &S,
    inv: &Inventory,
    excludes: &[RelPath],
) -> Result<(), MigrateError> {
    let s = pass::run_pass(ctl, h, src, excludes, Walk::Full, None).await?;
    h.log(format!(
        "pass {} done: {} entries, {} written, {} read from the bundle, {} copied on the node",
        s.pass,
        s.entries,
        s.written,
        p2c_common::units::human_bytes(s.wire_bytes),
        p2c_common::units::human_bytes(s.local_bytes)
    ));
    if !s.changed_during_read.is_empty() {
        // A live source would copy them in its next pass; a snapshot has no next pass.
        let first = s.changed_during_read.iter().take(3).map(|p| p.path.display()).collect::<Vec<_>>();
        let w = format!(
            "{} file(s) changed while the export read them and are not in the container (first: {}); export again from a quiet source, or copy them by hand",
            s.changed_during_read.len(),
            first.join(", ")
        );
        h.log(w.clone());
        h.update_summary(|sum| sum.warnings.push(w));
    }
    ctl.migrations.transition(&ctl.store, h, Phase::Finalising)?;
    finalise::finalise(ctl, h, inv, h.options()).await?;
    h.log(format!("container {} is ready", h.ctid()));
    ctl.migrations.transition(&ctl.store, h, Phase::Done)?;
    Ok(())
}
