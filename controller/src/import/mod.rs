//! `p2c import`: a container built from a bundle (see `p2c_common::bundle`), the export of a
//! source the node cannot reach, with the same assessment and the same result as an online
//! move of that source.
//!
//! It runs in the daemon, behind `Admin.Import`, not in the `p2c` process: the daemon is the
//! one writer of the store and of the node-wide chunk index, owns the copy slots, and an
//! import then shows in `p2c status`/`watch`, is verified by `p2c verify` and removed by
//! `p2c discard` like any migration. `p2c` only hands it the bundle's path.
//!
//! ```text
//!  1. verify the bundle: framing, every chunk against its hash, references, trailer
//!     (nothing on the node changes before it passes; a fresh import that fails here leaves
//!     no record either)
//!  2. the same driver as `p2c migrate` (migrate::drive) with the bundle as its Source:
//!     inventory and scan from the bundle ─► pre-flight report, blockers stop it unless
//!     --force ─► quota plan and storage
//!  3. one copy pass through receive::run_pass, the bundle playing the agent:
//!       feeder thread: batch records ──Batch──► run_pass ──Need──► chunk thread: pread the
//!       chunk records the batch points to ──Chunk──► run_pass ──BatchWritten──► window
//!  4. the finalisation: config, guest rewrite, verification against the manifest, quotas
//! ```
//! The bundle is as untrusted as an agent: its entries, problems and chunks go through the
//! same receive path (paths, walk order, hashes, quotas, the confined writer), so a hostile
//! bundle is refused like a hostile agent. Dedup against the node's chunk index applies: only
//! chunks the node does not hold are read from the bundle.

mod feed;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use p2c_common::bundle::{self, ImportRequest, Verified};
use p2c_common::inventory::Inventory;
use p2c_common::scan::{ScanOptions, ScanResult};

use crate::context::Controller;
use crate::migrate::{self, Started};
use crate::migration::{MigrateError, MigrationHandle};
use crate::port::{PassRequest, Source, StopFailure};
use crate::receive::{PassError, PassJob, PassOutcome};

/// Starts importing `req.bundle` into container `req.options.ctid` in the background.
pub fn start(ctl: &Controller, req: ImportRequest) -> Result<Started, MigrateError> {
    let path = PathBuf::from(&req.bundle);
    if !path.is_absolute() {
        return Err(MigrateError::Bundle(format!("the bundle path {} is not absolute", path.display())));
    }
    let header = bundle::read_header(&path).map_err(|e| MigrateError::Bundle(e.to_string()))?;
    let mut opts = req.options;
    opts.agent = header.name.clone();
    // What the export left out is what an online move would have been told to leave out.
    for x in &header.excludes {
        if !opts.assess.excludes.contains(x) {
            opts.assess.excludes.push(x.clone());
        }
    }
    opts.assess.ctid = Some(opts.ctid);
    opts.assess.quick = false;
    // An import is its own final pass: there is no source to stop or cut over.
    opts.cutover = true;
    opts.stop_services.clear();
    opts.pre_cutover_hook = None;
    opts.post_cutover_hook = None;
    let fresh = ctl.store.migration(opts.ctid)?.is_none();
    let h = migrate::begin(ctl, opts)?;
    let sub = h.subscribe();
    let (ctl2, h2) = (ctl.clone(), h.clone());
    ctl.spawn(async move {
        let src = match BundleSource::open(&ctl2, &h2, &path).await {
            Ok(src) => src,
            Err(e) => {
                migrate::stopped(&ctl2, &h2, e);
                if fresh && ctl2.migrations.forget(h2.ctid()).is_ok() {
                    // Nothing on the node was touched: leave no record either.
                    if let Err(e) = ctl2.store.delete_migration(h2.ctid()) {
                        tracing::warn!(ctid = h2.ctid(), "cannot forget the refused import: {e}");
                    }
                }
                return;
            }
        };
        if let Err(e) = migrate::drive(&ctl2, &h2, &src).await {
            h2.log(format!(
                "what was copied is kept in {}: import the bundle again to resume, or remove it with `p2c discard {}`",
                ctl2.settings.private_dir(h2.ctid()).display(),
                h2.ctid()
            ));
            migrate::stopped(&ctl2, &h2, e);
        }
    });
    Ok((h, sub))
}

/// A bundle that passed the checks, playing the agent of a migration: a snapshot source
/// whose one pass is the last, with nothing to stop or start.
pub struct BundleSource {
    path: PathBuf,
    name: String,
    verified: Verified,
    inv: Inventory,
    scan: ScanResult,
}

impl BundleSource {
    /// Step 1: verifies the bundle; nothing on the node changes.
    async fn open(ctl: &Controller, h: &MigrationHandle, path: &Path) -> Result<BundleSource, MigrateError> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        h.log(format!("verifying the bundle {} ({})", path.display(), p2c_common::units::human_bytes(size)));
        let progress = h.progress().clone();
        progress.reset();
        progress.bytes_total.store(size, Ordering::Relaxed);
        let p = path.to_path_buf();
        // Entries are left to the receive path, which judges them as it judges an agent's.
        let verified = tokio::task::spawn_blocking(move || {
            feed::verify(&p, &mut |done| progress.bytes_done.store(done, Ordering::Relaxed))
        })
        .await
        .map_err(|e| MigrateError::Other(e.to_string()))?
        .map_err(MigrateError::Bundle)?;
        let (hd, t) = (&verified.header, &verified.trailer);
        h.log(format!(
            "bundle of {} (root {}, facts {}): {} objects, {} of files, {} distinct chunks",
            hd.name,
            hd.root,
            hd.facts,
            t.objects,
            p2c_common::units::human_bytes(t.file_bytes),
            t.chunks
        ));
        if hd.chunking != ctl.settings.chunking {
            h.log("the bundle was cut with other chunking parameters than this node's: fewer chunks will be found on the node");
        }
        let inv = crate::preflight::parse_inventory(&verified.inventory)?;
        let scan = ScanResult::from_json(&verified.scan)
            .map_err(|e| MigrateError::Bundle(format!("the bundle's scan: {e}")))?;
        Ok(BundleSource { path: path.to_path_buf(), name: hd.name.clone(), verified, inv, scan })
    }
}

impl Source for BundleSource {
    type Link = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn is_live(&self) -> bool {
        false
    }

    fn invalid_data(&self) -> &'static str {
        "the bundle is invalid"
    }

    async fn inventory(&self) -> Result<Inventory, MigrateError> {
        Ok(self.inv.clone())
    }

    async fn scan(&self, _: &ScanOptions) -> Option<ScanResult> {
        Some(self.scan.clone())
    }

    async fn reachable(&self) -> Result<(), String> {
        Ok(())
    }

    async fn connect(&self, _: &MigrationHandle) -> Result<(), MigrateError> {
        Ok(())
    }

    fn is_gone(&self, _: &()) -> bool {
        false
    }

    async fn transfer(
        &self,
        _: &(),
        _: &MigrationHandle,
        job: PassJob,
        _: PassRequest,
    ) -> Result<PassOutcome, String> {
        let (mut outcome, bundle_error) = feed::transfer(job, &self.path, &self.verified.trailer).await;
        // A bundle that fails to read ends the transfer; that is the cause, not the lost
        // stream. Nothing resumes a bundle's pass but importing it again.
        if let Some(e) = bundle_error {
            outcome.error = Some(PassError::Other(e));
        }
        outcome.retryable = false;
        Ok(outcome)
    }

    async fn stop_services(&self, _: &[String]) -> Result<(), StopFailure> {
        Ok(())
    }

    async fn start_services(&self, _: &[String]) -> Result<(), String> {
        Ok(())
    }

    async fn run_hook(&self, command: &str) -> Result<(), String> {
        Err(format!("a bundle cannot run hooks ({command})"))
    }
}
