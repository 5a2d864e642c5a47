//! One copy pass, driven through the [`Source`] port: a copy slot, the job for the receive
//! path, the transfer, its record in the store, and resumption when the link breaks.

use std::path::PathBuf;
use std::time::Duration;

use p2c_common::migration::{MigrateOptions, PassSummary};
use p2c_common::paths::RelPath;
use tokio::sync::OwnedSemaphorePermit;

use crate::context::Controller;
use crate::finalise::ct_root;
use crate::migration::{MigrateError, MigrationHandle};
use crate::port::{PassRequest, Source};
use crate::receive::{PassError, PassJob};

/// Attempts of one pass before the migration fails.
const PASS_ATTEMPTS: u32 = 20;

/// How a pass reads the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Only what changed since the last pass, when the agent's change tracking covers it
    /// (live passes).
    ChangesIfTracked,
    /// The whole tree: the final pass of a cutover (writes through a shared memory mapping
    /// raise no change event, and this pass must miss nothing).
    Full,
}

/// Runs one copy pass, resuming on a new connection if the link breaks.
///
/// The migration holds a copy slot only while its source is connected and a transfer runs:
/// it waits for an absent agent, and between attempts, without one, so that the others copy
/// meanwhile. A `slot` handed in (the cutover's, taken before the services stopped) is kept
/// through every attempt.
pub async fn run_pass<S: Source>(
    ctl: &Controller,
    h: &MigrationHandle,
    src: &S,
    excludes: &[RelPath],
    walk: Walk,
    mut slot: Option<OwnedSemaphorePermit>,
) -> Result<PassSummary, MigrateError> {
    let opts = h.options();
    let keep_slot = slot.is_some();
    let mut attempts = 0;
    loop {
        let link = src.connect(h).await?;
        if slot.is_none() {
            let permit = copy_slot(ctl, h).await?;
            if src.is_gone(&link) {
                continue; // the agent left while the migration queued
            }
            slot = Some(permit);
        }
        let mut job = next_pass_job(ctl, h, excludes);
        if walk == Walk::ChangesIfTracked {
            job.changes_offered = changes_base(ctl, h, job.pass, excludes, opts)?;
        }
        let pass = job.pass;
        let req = PassRequest {
            excludes: excludes.to_vec(),
            bwlimit: bandwidth(ctl, opts),
            changes_since: job.changes_offered.as_ref().map(|(b, _)| *b),
            // After the final pass of a cutover nothing more is copied: no watch.
            track_changes: ctl.settings.change_tracking && walk != Walk::Full,
        };
        h.log(format!("copy pass {pass} started"));
        let (mut summary, err, retry) = match src.transfer(&link, h, job, req).await {
            Ok(o) => {
                h.note_written(o.written);
                let err = o.error.map(|e| match e {
                    PassError::Invalid(m) => format!("{}: {m}", src.invalid_data()),
                    PassError::Other(m) => m,
                });
                (o.summary, err, o.retryable)
            }
            Err(e) => {
                // Nothing says what the lost transfer wrote: verify everything.
                h.note_written(None);
                (PassSummary { pass, ..Default::default() }, Some(e), true)
            }
        };
        summary.scope = pass_scope(excludes, opts);
        record_pass(ctl, h, &summary, err.is_none())?;
        match err {
            None => return Ok(summary),
            Some(reason) if retry && attempts < PASS_ATTEMPTS => {
                attempts += 1;
                if !keep_slot {
                    slot = None;
                }
                h.log(format!("pass {pass} interrupted ({reason}); resuming when the agent is back"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(reason) => return Err(MigrateError::Pass { pass, reason }),
        }
    }
}

/// What decides which entries a pass copies; a listing of changes needs the same as its base.
fn pass_scope(excludes: &[RelPath], opts: &MigrateOptions) -> String {
    let mut b = Vec::new();
    for x in excludes {
        b.extend_from_slice(x.as_bytes());
        b.push(0);
    }
    b.push(u8::from(opts.assess.keep_xattrs));
    p2c_common::manifest::Hash32::of(&b).to_hex()
}

/// The pass a new pass may list changes against: the one just before it, if it completed
/// with the same scope and its manifest is there.
fn changes_base(
    ctl: &Controller,
    h: &MigrationHandle,
    pass: u32,
    excludes: &[RelPath],
    opts: &MigrateOptions,
) -> Result<Option<(u32, PathBuf)>, MigrateError> {
    let Some(prev) = pass.checked_sub(1).filter(|_| ctl.settings.change_tracking) else {
        return Ok(None);
    };
    let passes = ctl.store.passes(h.ctid())?;
    let Some(base) = passes.iter().find(|p| p.pass == prev) else { return Ok(None) };
    let manifest = crate::receive::manifest::pass_path(&ctl.settings.manifest_dir(h.ctid()), prev);
    Ok((base.complete && base.summary.scope == pass_scope(excludes, opts) && manifest.is_file())
        .then_some((prev, manifest)))
}

/// The job of the migration's next copy pass (its number taken, its progress reset).
pub fn next_pass_job(ctl: &Controller, h: &MigrationHandle, excludes: &[RelPath]) -> PassJob {
    let pass = h.begin_pass();
    let limits =
        h.with_quota(|q| q.as_ref().map(|q| (q.plan.diskspace.1.saturating_mul(1024), q.plan.diskinodes.1)));
    PassJob {
        ctid: h.ctid(),
        pass,
        tree: ct_root(ctl, h),
        private_root: ctl.settings.vz_root.join("private"),
        db: ctl.settings.db_path(),
        manifest: crate::receive::manifest::pass_path(&ctl.settings.manifest_dir(h.ctid()), pass),
        excludes: excludes.to_vec(),
        keep_xattrs: h.options().assess.keep_xattrs,
        dedup: ctl.settings.dedup_scope,
        byte_limit: limits.map(|(b, _)| b),
        inode_limit: limits.map(|(_, i)| i),
        progress: h.progress().clone(),
        changes_offered: None,
        changes: None,
    }
}

/// Records a pass in the store, and in the migration's summary if it completed. A pass that
/// cannot be recorded fails: a resume would not know what it did.
fn record_pass(
    ctl: &Controller,
    h: &MigrationHandle,
    summary: &PassSummary,
    complete: bool,
) -> Result<(), MigrateError> {
    ctl.store
        .record_pass(h.ctid(), summary, complete)
        .map_err(|source| MigrateError::RecordPass { pass: summary.pass, source })?;
    if complete {
        h.update_summary(|s| s.passes.push(summary.clone()));
    }
    Ok(())
}

/// One of the node's copy slots, queueing (first come, first served) when all are taken.
pub async fn copy_slot(ctl: &Controller, h: &MigrationHandle) -> Result<OwnedSemaphorePermit, MigrateError> {
    if let Ok(p) = ctl.copy_slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    h.log(format!("waiting for a copy slot (this node runs {} copies at once)", ctl.settings.max_concurrent));
    h.set_waiting(Some("a copy slot".into()));
    let permit = ctl.copy_slots.clone().acquire_owned().await;
    h.set_waiting(None);
    permit.map_err(|_| MigrateError::ShuttingDown)
}

/// The rate the agent paces itself to: this migration's own limit, capped by the node's
/// (which the controller also enforces across all transfers together, see `throttle`).
fn bandwidth(ctl: &Controller, opts: &MigrateOptions) -> u64 {
    match (ctl.settings.node_bwlimit, opts.bwlimit) {
        (0, b) => b,
        (n, 0) => n,
        (n, b) => n.min(b),
    }
}

/// The operator's `--exclude` paths, checked.
pub fn excludes(opts: &MigrateOptions) -> Result<Vec<RelPath>, MigrateError> {
    opts.assess
        .excludes
        .iter()
        .map(|x| {
            RelPath::from_user(&p2c_common::paths::unescape_bytes(x))
                .map_err(|source| MigrateError::Exclude { given: x.clone(), source })
        })
        .collect()
}
