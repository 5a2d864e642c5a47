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
//!  2. inventory and scan from the bundle ─► pre-flight report (preflight::assess_with),
//!     blockers stop it unless --force ─► quota plan and storage (migrate::prepare_storage)
//!  3. one copy pass through receive::run_pass, the bundle playing the agent:
//!       feeder thread: batch records ──Batch──► run_pass ──Need──► chunk thread: pread the
//!       chunk records the batch points to ──Chunk──► run_pass ──BatchWritten──► window
//!  4. migrate::finalise: config, guest rewrite, verification against the manifest, quotas
//! ```
//! The bundle is as untrusted as an agent: its entries, problems and chunks go through the
//! same receive path (paths, walk order, hashes, quotas, the confined writer), so a hostile
//! bundle is refused like a hostile agent. Dedup against the node's chunk index applies: only
//! chunks the node does not hold are read from the bundle.

use p2c_common::sync::Locked;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use p2c_common::bundle::{self, ChunkRecord, Codec, ImportRequest, Kind, Reader, Trailer, Verified};
use p2c_common::inventory::Inventory;
use p2c_common::manifest::Hash32;
use p2c_common::migration::MigrationState;
use p2c_common::scan::ScanResult;
use p2c_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use crate::migrate::{self, Event, MigrateError, MigrationHandle, Started};
use crate::receive::{PassError, PassJob, PassOutcome};
use crate::server::Controller;

/// Batches sent and not yet written, at most (as an agent's window).
const WINDOW: usize = 8;
/// Problems passed on from the bundle, at most (the receive path keeps as many).
const MAX_PROBLEMS: usize = 100_000;

/// Starts importing `req.bundle` into container `req.options.ctid` in the background.
pub fn start(ctl: &Controller, req: ImportRequest) -> Result<Started, MigrateError> {
    let path = PathBuf::from(&req.bundle);
    if !path.is_absolute() {
        return Err(MigrateError::Other(format!("the bundle path {} is not absolute", path.display())));
    }
    let header = bundle::read_header(&path).map_err(|e| MigrateError::Other(e.to_string()))?;
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
    let h = migrate::register(ctl, opts)?;
    let sub = h.events.subscribe();
    let (ctl2, h2) = (ctl.clone(), h.clone());
    let task = tokio::spawn(async move {
        let r = match check(&ctl2, &h2, &path).await {
            Ok(checked) => build(&ctl2, &h2, &path, checked).await,
            Err(e) => {
                migrate::stopped(&ctl2, &h2, e);
                if fresh {
                    // Nothing on the node was touched: leave no record either.
                    let _ = ctl2.store.delete_migration(h2.ctid);
                    ctl2.migrations.locked().remove(&h2.ctid);
                }
                return;
            }
        };
        if let Err(e) = r {
            h2.log(format!(
                "what was copied is kept in {}: import the bundle again to resume, or remove it with `p2c discard {}`",
                ctl2.settings.private_dir(h2.ctid).display(),
                h2.ctid
            ));
            migrate::stopped(&ctl2, &h2, e);
        }
    });
    ctl.background.locked().push(task.abort_handle());
    Ok((h, sub))
}

/// A bundle that passed the checks, with what the report was made from.
struct Checked {
    verified: Verified,
    inv: Inventory,
    scan: ScanResult,
}

/// Steps 1 and 2 up to the report: nothing on the node changes.
async fn check(ctl: &Controller, h: &Arc<MigrationHandle>, path: &Path) -> Result<Checked, MigrateError> {
    migrate::set_state(ctl, h, MigrationState::Copying, None);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    h.log(format!("verifying the bundle {} ({})", path.display(), p2c_common::units::human_bytes(size)));
    h.progress.reset();
    h.progress.bytes_total.store(size, Ordering::Relaxed);
    let (p, progress) = (path.to_path_buf(), h.progress.clone());
    // Entries are left to the receive path, which judges them as it judges an agent's.
    let verified = tokio::task::spawn_blocking(move || {
        p2c_proto::bundle::verify(&p, false, &mut |done| progress.bytes_done.store(done, Ordering::Relaxed))
    })
    .await
    .map_err(|e| MigrateError::Other(e.to_string()))?
    .map_err(|e| MigrateError::Other(e.to_string()))?;
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
    let inv = migrate::parse_inventory(&verified.inventory)?;
    let scan = ScanResult::from_json(&verified.scan)
        .map_err(|e| MigrateError::Other(format!("the bundle's scan: {e}")))?;
    let opts = h.options.locked().clone();
    let report = crate::preflight::assess_with(ctl, &h.agent, &inv, Some(&scan), &opts.assess).await;
    let _ = h.events.send(Event::Report(Box::new(report.clone())));
    h.summary.locked().report = Some(report.clone());
    if report.has_blockers() && !opts.force {
        let list: Vec<String> = report.blockers().map(|f| format!("{} ({})", f.code, f.title)).collect();
        return Err(MigrateError::Blocked(list.len(), list.join("; ")));
    }
    Ok(Checked { verified, inv, scan })
}

/// Steps 2 to 4: storage, the pass, the finalisation.
async fn build(
    ctl: &Controller,
    h: &Arc<MigrationHandle>,
    path: &Path,
    c: Checked,
) -> Result<(), MigrateError> {
    let opts = h.options.locked().clone();
    migrate::prepare_storage(ctl, h, &c.inv, Some(&c.scan), &opts)?;
    let excludes = migrate::excludes(&opts)?;
    let slot = migrate::copy_slot(ctl, h).await?;
    let job = migrate::next_pass_job(ctl, h, &excludes, &opts);
    let pass = job.pass;
    h.log(format!("copy pass {pass} from the bundle started"));
    let (outcome, bundle_error) = transfer(job, path, &c.verified.trailer).await;
    drop(slot);
    // A bundle that fails to read ends the transfer; that is the cause, not the lost stream.
    let error = bundle_error.or(outcome.error.map(|e| e.to_string()));
    migrate::record_pass(ctl, h, &outcome.summary, error.is_none());
    if let Some(reason) = error {
        // The receive path speaks of its usual peer; here the peer is the bundle.
        let reason = reason.replacen("agent sent an invalid stream", "the bundle is invalid", 1);
        return Err(MigrateError::Pass { pass, reason });
    }
    let s = &outcome.summary;
    h.log(format!(
        "pass {} done: {} entries, {} written, {} read from the bundle, {} copied on the node",
        s.pass,
        s.entries,
        s.written,
        p2c_common::units::human_bytes(s.wire_bytes),
        p2c_common::units::human_bytes(s.local_bytes)
    ));
    if !s.changed_during_read.is_empty() {
        // An online move would copy them in its next pass; a bundle has no next pass.
        let first = s.changed_during_read.iter().take(3).map(|p| p.path.display()).collect::<Vec<_>>();
        let w = format!(
            "{} file(s) changed while the export read them and are not in the container (first: {}); export again from a quiet source, or copy them by hand",
            s.changed_during_read.len(),
            first.join(", ")
        );
        h.log(w.clone());
        h.summary.locked().warnings.push(w);
    }
    migrate::set_state(ctl, h, MigrationState::Finalising, None);
    migrate::finalise(ctl, h, &c.inv, &opts).await?;
    h.log(format!("container {} is ready", h.ctid));
    migrate::set_state(ctl, h, MigrationState::Done, None);
    Ok(())
}

/// What the bundle side of a transfer shares between its threads.
struct Feed {
    path: PathBuf,
    shown: String,
    file: File,
    /// Batches sent and not written yet: each chunk reference's hash and record offset.
    open: Mutex<HashMap<u64, Vec<(Hash32, u64)>>>,
    window: Condvar,
    stop: AtomicBool,
    /// Why the bundle side gave up.
    error: Mutex<Option<String>>,
    inbound: mpsc::Sender<Result<v1::TransferUp, Status>>,
}

/// What the receive path says, for the chunk thread.
enum Down {
    Need(v1::NeedChunks),
    Written(u64),
}

fn up(msg: v1::transfer_up::Msg) -> Result<v1::TransferUp, Status> {
    Ok(v1::TransferUp { msg: Some(msg) })
}

impl Feed {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Gives up: the reason is kept, and the transfer is ended.
    fn fail(&self, why: String) {
        let mut e = self.error.locked();
        if e.is_none() {
            *e = Some(why.clone());
            let _ = self.inbound.blocking_send(Err(Status::data_loss(why)));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.window.notify_all();
    }

    /// Sends the batches in order, no more than [`WINDOW`] unwritten, then `Done` once every
    /// batch is written (the receive path reads no chunk after it).
    fn batches(&self, trailer: &Trailer) -> Result<(), String> {
        let mut r = Reader::open(&self.path).map_err(|e| e.to_string())?;
        r.skip_chunks();
        // A send fails when the pass has ended; its outcome says why.
        let send = |m| self.inbound.blocking_send(up(m)).is_ok();
        if !send(v1::transfer_up::Msg::Estimate(v1::Estimate {
            files: trailer.objects,
            bytes: trailer.file_bytes,
        })) {
            return Ok(());
        }
        let (mut changed, mut skipped) = (Vec::new(), Vec::new());
        let mut seq = 0u64;
        while let Some(rec) = r.next_record().map_err(|e| e.to_string())? {
            if self.stopped() {
                return Ok(());
            }
            match rec.kind {
                Kind::Batch => {}
                Kind::Trailer => break,
                _ => continue,
            }
            let bad =
                |e: p2c_proto::ConvertError| format!("{}: the batch at byte {}: {e}", self.shown, rec.offset);
            let b = p2c_proto::bundle::decode(&rec.payload).map_err(bad)?;
            let refs = p2c_proto::bundle::info(&b).map_err(bad)?.refs;
            for (to, from) in [(&mut changed, b.changed), (&mut skipped, b.skipped)] {
                to.extend(from.into_iter().take(MAX_PROBLEMS.saturating_sub(to.len())));
            }
            let entries = b.batch.map(|b| b.entries).unwrap_or_default();
            if entries.is_empty() {
                continue;
            }
            {
                let mut open = self.open.locked();
                while open.len() >= WINDOW && !self.stopped() {
                    open = p2c_common::sync::wait(&self.window, open);
                }
                if self.stopped() {
                    return Ok(());
                }
                open.insert(seq, refs);
            }
            if !send(v1::transfer_up::Msg::Batch(v1::EntryBatch { seq, entries })) {
                return Ok(());
            }
            seq += 1;
        }
        {
            let mut open = self.open.locked();
            while !open.is_empty() && !self.stopped() {
                open = p2c_common::sync::wait(&self.window, open);
            }
        }
        if self.stopped() {
            return Ok(());
        }
        send(v1::transfer_up::Msg::Done(v1::PassDone {
            files: trailer.objects,
            bytes: trailer.file_bytes,
            changed,
            skipped,
        }));
        Ok(())
    }

    /// Answers the receive path: the chunks it needs, read where the batch says they are and
    /// checked to be the chunk asked for; a written batch leaves the window.
    fn chunks(&self, rx: &mut mpsc::UnboundedReceiver<Down>) -> Result<(), String> {
        while let Some(d) = rx.blocking_recv() {
            if self.stopped() {
                return Ok(());
            }
            let need = match d {
                Down::Written(seq) => {
                    self.open.locked().remove(&seq);
                    self.window.notify_all();
                    continue;
                }
                Down::Need(n) => n,
            };
            for index in need.indexes {
                let at = self.open.locked().get(&need.seq).and_then(|refs| refs.get(index as usize).copied());
                let Some((hash, offset)) = at else {
                    return Err(format!(
                        "the receive path asked for chunk {}/{index}, which no open batch has",
                        need.seq
                    ));
                };
                let rec =
                    bundle::read_record_at(&self.file, &self.shown, offset).map_err(|e| e.to_string())?;
                let (skip, compressed) = {
                    let c = (rec.kind == Kind::Chunk)
                        .then(|| ChunkRecord::decode(&rec.payload))
                        .transpose()
                        .map_err(|e| format!("{}: the chunk record at byte {offset}: {e}", self.shown))?
                        .filter(|c| c.hash == hash)
                        .ok_or_else(|| {
                            format!("{}: byte {offset} does not hold chunk {hash:?}", self.shown)
                        })?;
                    (rec.payload.len() - c.data.len(), c.codec == Codec::Zstd)
                };
                let data = bytes::Bytes::from(rec.payload).slice(skip..);
                let msg = v1::ChunkData { seq: need.seq, index, data, compressed, ..Default::default() };
                if self.inbound.blocking_send(up(v1::transfer_up::Msg::Chunk(msg))).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Runs one pass of the receive path with the bundle at `path` as the agent. Returns the
/// pass's outcome and, if the bundle side failed, why.
async fn transfer(job: PassJob, path: &Path, trailer: &Trailer) -> (PassOutcome, Option<String>) {
    let pass_no = job.pass;
    let failed = |e: String| {
        let summary = p2c_common::migration::PassSummary { pass: pass_no, ..Default::default() };
        (
            PassOutcome {
                summary,
                written: None,
                error: Some(PassError::Other(e.clone())),
                retryable: false,
            },
            Some(e),
        )
    };
    let shown = path.display().to_string();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return failed(format!("{shown}: {e}")),
    };
    let (in_tx, in_rx) = mpsc::channel::<Result<v1::TransferUp, Status>>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Result<v1::TransferDown, Status>>(64);
    let feed = Arc::new(Feed {
        path: path.to_path_buf(),
        shown,
        file,
        open: Mutex::new(HashMap::new()),
        window: Condvar::new(),
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
        inbound: in_tx,
    });
    let pass = tokio::spawn(crate::receive::run_pass(
        job,
        tokio_stream::wrappers::ReceiverStream::new(in_rx),
        out_tx,
    ));
    let feeder = {
        let (feed, trailer) = (feed.clone(), trailer.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = feed.batches(&trailer) {
                feed.fail(e);
            }
        })
    };
    let (down_tx, mut down_rx) = mpsc::unbounded_channel::<Down>();
    let chunker = {
        let feed = feed.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = feed.chunks(&mut down_rx) {
                feed.fail(e);
            }
        })
    };
    while let Some(m) = out_rx.recv().await {
        let down = match m {
            Ok(v1::TransferDown { msg: Some(v1::transfer_down::Msg::Need(n)) }) => Down::Need(n),
            Ok(v1::TransferDown { msg: Some(v1::transfer_down::Msg::Written(w)) }) => Down::Written(w.seq),
            Ok(v1::TransferDown { msg: Some(v1::transfer_down::Msg::Result(_)) }) | Err(_) => break,
            Ok(v1::TransferDown { msg: None }) => continue,
        };
        if down_tx.send(down).is_err() {
            break;
        }
    }
    drop(out_rx);
    drop(down_tx);
    feed.stop.store(true, Ordering::Relaxed);
    feed.window.notify_all();
    let outcome = match pass.await {
        Ok(o) => o,
        Err(e) => return failed(format!("the receive pass stopped: {e}")),
    };
    let _ = feeder.await;
    let _ = chunker.await;
    let error = feed.error.locked().take();
    (outcome, error)
}
