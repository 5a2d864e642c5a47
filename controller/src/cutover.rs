//! The cutover of a synced migration: the pre-cutover hook, stop the source's services, copy
//! the last changes, finalise the container, the post-cutover hook.
//!
//! The downtime is measured from the moment the services are stopped to the moment the
//! container is ready. A failure before the container is finalised starts the services that
//! were stopped again and leaves the migration synced with the error shown
//! ([`MigrateError::CutoverAborted`]): the source keeps serving and `p2c cutover N` can be run
//! again. A failure while finalising also starts them again, and fails the migration.

use std::time::Instant;

use p2c_common::inventory::Inventory;
use tokio::sync::OwnedSemaphorePermit;
use tracing::error;

use crate::context::Controller;
use crate::finalise;
use crate::migration::{MigrateError, MigrationHandle, Phase};
use crate::pass::{self, Walk};
use crate::port::Source;

/// Runs the cutover of `h`, whose live passes are done and which is already
/// [`Phase::CuttingOver`] (the caller made that move, so no second cutover runs).
pub async fn run<S: Source>(ctl: &Controller, h: &MigrationHandle, src: &S) -> Result<(), MigrateError> {
    let opts = h.options();
    src.reachable().await.map_err(MigrateError::CutoverAborted)?;
    if let Some(hook) = &opts.pre_cutover_hook {
        h.log(format!("running the pre-cutover hook on the source: {hook}"));
        src.run_hook(hook)
            .await
            .map_err(|e| MigrateError::CutoverAborted(format!("the pre-cutover hook failed: {e}")))?;
    }
    // Outside the downtime: prove what is already there, so the downtime only re-reads what
    // the final pass writes.
    finalise::verify_before_cutover(ctl, h).await?;
    let boot_check = crate::bootcheck::wanted(ctl, opts);
    if boot_check {
        let inv = src.inventory().await?;
        crate::bootcheck::before_cutover(ctl, h, &inv).await?;
    }
    // Taken before anything stops: the final pass must not queue behind other migrations'
    // live passes while the services are down.
    let slot = pass::copy_slot(ctl, h).await?;
    let services = &opts.stop_services;
    let stopped = if services.is_empty() {
        Vec::new()
    } else {
        h.log(format!("stopping services on the source: {}", services.join(", ")));
        if let Err(f) = src.stop_services(services).await {
            let note = start_again(h, src, &f.stopped).await;
            return Err(MigrateError::CutoverAborted(format!("{}{note}", f.reason)));
        }
        services.clone()
    };
    // The downtime starts now.
    let t0 = Instant::now();
    let inv = match final_pass(ctl, h, src, slot).await {
        Ok(inv) => inv,
        Err(e) => {
            let note = start_again(h, src, &stopped).await;
            return Err(MigrateError::CutoverAborted(format!("{e}{note}")));
        }
    };
    ctl.migrations.transition(&ctl.store, h, Phase::Finalising)?;
    if let Err(e) = finalise::finalise(ctl, h, &inv, opts).await {
        let note = start_again(h, src, &stopped).await;
        if !note.is_empty() {
            h.update_summary(|s| s.warnings.push(note.trim_start_matches("; ").into()));
        }
        return Err(e);
    }
    let downtime = t0.elapsed().as_secs_f64();
    h.update_summary(|s| s.downtime_seconds = Some(downtime));
    if let Some(hook) = &opts.post_cutover_hook {
        h.log(format!("running the post-cutover hook on the source: {hook}"));
        if let Err(e) = src.run_hook(hook).await {
            h.update_summary(|s| s.warnings.push(format!("post-cutover hook: {e}")));
        }
    }
    h.log(format!("container {} is ready; downtime {:.1}s", h.ctid(), downtime));
    if boot_check {
        crate::bootcheck::after_cutover(ctl, h, &inv).await;
    }
    ctl.migrations.transition(&ctl.store, h, Phase::Done)?;
    Ok(())
}

/// The last pass, with the source's fresh inventory for the finalisation.
async fn final_pass<S: Source>(
    ctl: &Controller,
    h: &MigrationHandle,
    src: &S,
    slot: OwnedSemaphorePermit,
) -> Result<Inventory, MigrateError> {
    let inv = src.inventory().await?;
    finalise::prepare_storage(ctl, h, &inv, None, h.options())?;
    let excludes = pass::excludes(h.options())?;
    let s = pass::run_pass(ctl, h, src, &excludes, Walk::Full, Some(slot)).await?;
    h.log(format!("final pass {} done: {} written, {} deleted", s.pass, s.written, s.deleted));
    Ok(inv)
}

/// Starts the services that were stopped again; returns a note for the error message.
async fn start_again<S: Source>(h: &MigrationHandle, src: &S, services: &[String]) -> String {
    if services.is_empty() {
        return String::new();
    }
    let list = services.join(", ");
    h.log(format!("starting the source's services again: {list}"));
    match src.start_services(services).await {
        Ok(()) => format!("; the services stopped on the source were started again ({list})"),
        Err(e) => {
            error!(ctid = h.ctid(), agent = %h.agent(), services = %list, "cannot start the source's services again: {e}");
            format!("; starting the source's services again failed ({e}): start {list} on the source by hand")
        }
    }
}
