//! The bundle's side of a transfer, as an agent's would be on the wire: its batch records
//! fed to the receive path in order, within a window, and the chunks the receive path asks
//! for read from where the batches say they are. The bundle's records are the wire's
//! messages, so this is the one part of `import` that speaks them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use p2c_common::bundle::{self, ChunkRecord, Codec, Kind, Reader, Trailer, Verified};
use p2c_common::manifest::Hash32;
use p2c_common::sync::Locked;
use p2c_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use crate::receive::{PassError, PassJob, PassOutcome};

/// Batches sent and not yet written, at most (as an agent's window).
const WINDOW: usize = 8;
/// Problems passed on from the bundle, at most (the receive path keeps as many).
const MAX_PROBLEMS: usize = 100_000;

/// Checks a whole bundle (framing, every chunk against its hash, references, trailer),
/// reporting the bytes read so far.
pub(super) fn verify(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Verified, String> {
    p2c_proto::bundle::verify(path, false, progress).map_err(|e| e.to_string())
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
pub(super) async fn transfer(job: PassJob, path: &Path, trailer: &Trailer) -> (PassOutcome, Option<String>) {
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
