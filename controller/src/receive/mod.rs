//! The receive path: one copy pass from an agent into a container's private area.
//!
//! ```text
//!  gRPC inbound ──► reader (async) ──Batch──► planner thread ──PlannedBatch──► writer thread
//!                        │                        │ Need ──────────► agent        │
//!                        └──Chunk──► verifier thread ──VerifiedChunk──────────────┘
//!                                                     BatchWritten / late Need ◄──┘
//! ```
//! * The **planner** decides, per chunk, whether the node already has it (node-wide chunk
//!   index, or requested earlier in this pass) or the agent must send it, and tells the agent.
//! * The **verifier** decompresses each chunk into a buffer no larger than announced and
//!   checks its BLAKE3 hash; a chunk that does not match is a protocol error.
//! * The **writer** applies entries in walk order beneath the tree root through
//!   [`crate::tree`], merges them with the record of what the tree already holds (skipping
//!   unchanged entries, deleting what the source no longer has), copies known chunks locally
//!   after checking them, and commits each batch to the store in one transaction.
//!
//! Everything from the agent is treated as hostile: entries are validated on conversion,
//! walk order is enforced (so no path appears twice), chunk indexes and sizes are checked,
//! and nothing is written outside the tree.

pub mod manifest;
mod planner;
mod writer;

use p2c_common::sync::Locked;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use p2c_common::manifest::{Hash32, Problem, limits};
use p2c_common::migration::PassSummary;
use p2c_common::paths::RelPath;
use p2c_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use crate::config::DedupScope;

/// Everything a pass needs to know, fixed when it starts.
#[derive(Clone, Debug)]
pub struct PassJob {
    pub ctid: u32,
    pub pass: u32,
    /// Root of the container tree (the private area, or a mounted image).
    pub tree: PathBuf,
    /// `<vz_root>/private`, to read chunks held by other containers.
    pub private_root: PathBuf,
    pub db: PathBuf,
    pub manifest: PathBuf,
    pub excludes: Vec<RelPath>,
    pub keep_xattrs: bool,
    pub dedup: DedupScope,
    /// Largest total of file data the tree may hold (DISKSPACE hard), bytes.
    pub byte_limit: Option<u64>,
    /// Most entries the tree may hold (DISKINODES hard).
    pub inode_limit: Option<u64>,
    pub progress: Arc<Progress>,
    /// The base pass (and its manifest) the agent may list changes against instead of
    /// sending the whole tree.
    pub changes_offered: Option<(u32, PathBuf)>,
    /// What the agent said it lists, once the transfer opened.
    pub changes: Option<Arc<Changes>>,
}

/// The part of the tree a pass that lists changes speaks for: each changed directory and
/// its direct children, and each new subtree whole. Everything else stays as the base
/// pass left it.
#[derive(Debug)]
pub struct Changes {
    pub base: u32,
    pub base_manifest: PathBuf,
    /// Walk keys of the changed directories.
    dirs: std::collections::HashSet<Vec<u8>>,
    /// Walk keys of the new subtrees, sorted, none inside another.
    subtrees: Vec<Vec<u8>>,
}

/// True when `key` lies strictly beneath the directory `dir` (walk keys).
pub(crate) fn key_under(key: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return !key.is_empty();
    }
    key.len() > dir.len() && key.starts_with(dir) && key[dir.len()] == 0
}

/// The walk key of the parent of `key` (`None` for the root).
fn parent_key(key: &[u8]) -> Option<&[u8]> {
    if key.is_empty() {
        return None;
    }
    Some(match key.iter().rposition(|b| *b == 0) {
        Some(i) => &key[..i],
        None => &[],
    })
}

/// Sorted walk keys with nested ones dropped: what [`in_any`] searches.
fn outermost(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.sort();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
    for k in keys {
        if out.last().is_some_and(|l| *l == k || key_under(&k, l)) {
            continue;
        }
        out.push(k);
    }
    out
}

/// True when `key` is one of `sorted` (outermost keys) or lies beneath one.
pub(crate) fn in_any(sorted: &[Vec<u8>], key: &[u8]) -> bool {
    // Keys beneath a directory sort right after it, before any key that is not: the only
    // candidate is the greatest one not after `key`.
    let i = sorted.partition_point(|k| k.as_slice() <= key);
    i > 0 && (sorted[i - 1] == key || key_under(key, &sorted[i - 1]))
}

impl Changes {
    /// Checks what an agent's Open says it lists against what the pass offered.
    pub fn accept(job: &PassJob, open: &v1::OpenTransfer) -> Result<Option<Changes>, String> {
        let Some(since) = open.changes_since else {
            if !open.changed_dirs.is_empty() || !open.new_subtrees.is_empty() {
                return Err("changed directories sent for a pass that walks everything".into());
            }
            return Ok(None);
        };
        let Some((base, manifest)) = &job.changes_offered else {
            return Err(format!("changes since pass {since} were not offered"));
        };
        if since != *base {
            return Err(format!("changes since pass {base} were offered, not {since}"));
        }
        if open.changed_dirs.len() + open.new_subtrees.len() > MAX_REGIONS {
            return Err("too many changed directories".into());
        }
        let key = |b: &Vec<u8>| RelPath::new(b.clone()).map(|p| p.walk_key()).map_err(|e| e.to_string());
        let dirs = open.changed_dirs.iter().map(key).collect::<Result<_, _>>()?;
        let subtrees = open.new_subtrees.iter().map(key).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Changes {
            base: *base,
            base_manifest: manifest.clone(),
            dirs,
            subtrees: outermost(subtrees),
        }))
    }

    /// Whether the pass speaks for `key`: what the base had there and is not sent again is
    /// gone from the source.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.dirs.contains(key)
            || parent_key(key).is_some_and(|p| self.dirs.contains(p))
            || in_any(&self.subtrees, key)
    }
}

/// Most changed directories and subtrees one pass may list.
const MAX_REGIONS: usize = 100_000;

/// Live counters of a pass, read by status and progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub local_bytes: AtomicU64,
}

impl Progress {
    pub fn reset(&self) {
        for a in [
            &self.files_total,
            &self.bytes_total,
            &self.files_done,
            &self.bytes_done,
            &self.wire_bytes,
            &self.local_bytes,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// How a pass ended.
#[derive(Debug)]
pub struct PassOutcome {
    pub summary: PassSummary,
    /// The regular files the pass wrote, even if it then failed (`None` when too many to
    /// list): what verification must re-read after this pass.
    pub written: Option<Vec<RelPath>>,
    pub error: Option<PassError>,
    /// The error was the connection, not the data: running the pass again will resume.
    pub retryable: bool,
}

/// Why a pass failed, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassError {
    /// What the peer (an agent, or a bundle playing one) sent is invalid.
    Invalid(String),
    /// Anything else (the tree, the store, the quota, the connection...).
    Other(String),
}

impl PassError {
    /// The message with the peer named: "{peer} sent an invalid stream: ..." for `Invalid`.
    pub fn describe(&self, peer: &str) -> String {
        match self {
            PassError::Invalid(m) => format!("{peer} sent an invalid stream: {m}"),
            PassError::Other(m) => m.clone(),
        }
    }
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("agent"))
    }
}

impl From<ReceiveError> for PassError {
    fn from(e: ReceiveError) -> PassError {
        match e {
            ReceiveError::Protocol(m) => PassError::Invalid(m),
            other => PassError::Other(other.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("agent sent an invalid stream: {0}")]
    Protocol(String),
    #[error("the connection to the agent was lost: {0}")]
    Stream(String),
    #[error("{0}")]
    Tree(#[from] crate::tree::TreeError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(
        "the container would exceed its disk quota: {what}; raise --diskspace/--diskinodes or exclude data (what was copied is kept)"
    )]
    Quota { what: String },
    #[error("receive pipeline stopped: {0}")]
    Internal(String),
}

impl ReceiveError {
    fn status(&self) -> Status {
        match self {
            ReceiveError::Protocol(m) => Status::invalid_argument(m.clone()),
            ReceiveError::Quota { .. } => Status::resource_exhausted(self.to_string()),
            _ => Status::internal(self.to_string()),
        }
    }
}

pub(crate) fn protocol(msg: impl Into<String>) -> ReceiveError {
    ReceiveError::Protocol(msg.into())
}

/// A batch after planning: which of its chunks the agent will send.
pub(crate) struct PlannedBatch {
    pub seq: u64,
    pub entries: Vec<p2c_common::manifest::Entry>,
    /// Per entry: dropped because an operator exclude covers it.
    pub excluded: Vec<bool>,
    /// Per chunk of the batch, in order: true when the agent sends it.
    pub remote: Vec<bool>,
}

/// Most chunks one message may carry.
const MAX_CHUNKS_PER_MESSAGE: usize = 4096;

/// A chunk from the agent, checked.
pub(crate) enum ChunkMsg {
    Data {
        seq: u64,
        index: u32,
        data: bytes::Bytes,
    },
    /// The agent could not read it (the file changed): the file is retried next pass.
    Unavailable {
        seq: u64,
        index: u32,
        reason: String,
    },
    /// Not requested, or not what was announced: a protocol violation.
    Invalid(String),
}

/// Chunks the agent was asked for and has not sent yet: (seq, index) → (hash, len).
pub(crate) type Expected = Arc<Mutex<HashMap<(u64, u32), (Hash32, u32)>>>;

/// What flows to the writer, in arrival order.
pub(crate) enum WriterMsg {
    Batch(PlannedBatch),
    Done { changed: Vec<Problem>, skipped: Vec<Problem> },
}

pub(crate) type Outbound = mpsc::Sender<Result<v1::TransferDown, Status>>;

/// Runs one pass to its end. The caller has already read the `Open` message.
pub async fn run_pass<S>(job: PassJob, mut inbound: S, outbound: Outbound) -> PassOutcome
where
    S: futures::Stream<Item = Result<v1::TransferUp, Status>> + Unpin + Send,
{
    let started = std::time::Instant::now();
    let expected: Expected = Arc::default();
    let in_flight: Arc<Mutex<std::collections::HashSet<Hash32>>> = Arc::default();
    let (plan_tx, plan_rx) = mpsc::channel::<v1::EntryBatch>(4);
    let (write_tx, write_rx) = mpsc::channel::<WriterMsg>(8);
    let (chunk_in_tx, chunk_in_rx) = mpsc::channel::<Vec<v1::ChunkData>>(16);
    let (chunk_tx, chunk_rx) = mpsc::channel::<Vec<ChunkMsg>>(16);

    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<WriterMsg>();
    let planner = {
        let job = job.clone();
        let out = outbound.clone();
        let expected = expected.clone();
        let in_flight = in_flight.clone();
        std::thread::Builder::new()
            .name(format!("plan-{}", job.ctid))
            .spawn(move || planner::run(&job, plan_rx, done_rx, write_tx, out, expected, in_flight))
    };
    let verifier = {
        let expected = expected.clone();
        let progress = job.progress.clone();
        std::thread::Builder::new()
            .name(format!("verify-{}", job.ctid))
            .spawn(move || verify_chunks(chunk_in_rx, chunk_tx, expected, progress))
    };
    // Fires when the writer stops. Before `Done` that means the pass failed (the writer's
    // error, or the planner's, which ends the writer's input), and the reader must stop too:
    // a hostile or stuck agent that just keeps the stream open must not hold the pass.
    let (writer_end_tx, mut writer_end) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let job = job.clone();
        let out = outbound.clone();
        let expected = expected.clone();
        std::thread::Builder::new().name(format!("write-{}", job.ctid)).spawn(move || {
            let r = writer::run(&job, write_rx, chunk_rx, out, expected, in_flight);
            let _ = writer_end_tx.send(());
            r
        })
    };
    let (planner, verifier, writer) = match (planner, verifier, writer) {
        (Ok(p), Ok(v), Ok(w)) => (p, v, w),
        _ => {
            return PassOutcome {
                summary: PassSummary { pass: job.pass, ..Default::default() },
                written: None,
                error: Some(PassError::Other("cannot start receive threads".into())),
                retryable: false,
            };
        }
    };

    // The reader: route inbound messages until Done, an error or the end of the stream.
    let read_result: Result<(), ReceiveError> = async {
        let mut next_seq = 0u64;
        loop {
            let msg = tokio::select! {
                m = inbound.next() => m,
                _ = &mut writer_end => return Err(stopped()),
            };
            let Some(msg) = msg else { break };
            let msg = msg.map_err(|s| match s.code() {
                // gRPC refused a message over the size limit: a protocol violation the
                // agent would repeat, not a lost link to resume after.
                tonic::Code::OutOfRange => protocol(s.message()),
                _ => ReceiveError::Stream(s.message().to_string()),
            })?;
            match msg.msg {
                Some(v1::transfer_up::Msg::Batch(b)) => {
                    if b.seq != next_seq {
                        return Err(protocol(format!(
                            "batch {} out of sequence (expected {next_seq})",
                            b.seq
                        )));
                    }
                    if b.entries.len() > limits::MAX_BATCH_ENTRIES {
                        return Err(protocol("batch has too many entries"));
                    }
                    next_seq += 1;
                    plan_tx.send(b).await.map_err(|_| stopped())?;
                }
                Some(v1::transfer_up::Msg::Chunk(c)) => {
                    chunk_in_tx.send(vec![c]).await.map_err(|_| stopped())?;
                }
                Some(v1::transfer_up::Msg::Chunks(b)) => {
                    if b.chunks.len() > MAX_CHUNKS_PER_MESSAGE {
                        return Err(protocol("too many chunks in one message"));
                    }
                    chunk_in_tx.send(b.chunks).await.map_err(|_| stopped())?;
                }
                Some(v1::transfer_up::Msg::Estimate(e)) => {
                    job.progress.files_total.store(e.files, Ordering::Relaxed);
                    job.progress.bytes_total.store(e.bytes, Ordering::Relaxed);
                }
                Some(v1::transfer_up::Msg::Done(d)) => {
                    let conv = |v: Vec<v1::Problem>| -> Result<Vec<Problem>, ReceiveError> {
                        v.into_iter()
                            .take(100_000)
                            .map(|p| Problem::try_from(p).map_err(|e| protocol(e.to_string())))
                            .collect()
                    };
                    let changed = conv(d.changed)?;
                    let skipped = conv(d.skipped)?;
                    // Done goes through the planner so that it follows every planned batch.
                    let _ = done_tx.send(WriterMsg::Done { changed, skipped });
                    return Ok(());
                }
                Some(v1::transfer_up::Msg::Open(_)) => return Err(protocol("second Open on one transfer")),
                None => return Err(protocol("empty message")),
            }
        }
        Err(ReceiveError::Stream(
            "the transfer ended before the pass was done (the agent closed it, or its session ended)".into(),
        ))
    }
    .await;

    // Close the pipes so the threads end; the writer reports the real outcome.
    drop(plan_tx);
    drop(chunk_in_tx);
    let joined = tokio::task::spawn_blocking(move || {
        let w = writer.join();
        let p = planner.join();
        let _ = verifier.join();
        (w, p)
    })
    .await;
    let (writer_result, plan_err) = match joined {
        Ok((w, Ok(p))) => (Ok(w), p),
        Ok((w, Err(_))) => (Ok(w), Some(ReceiveError::Internal("planner thread panicked".into()))),
        Err(e) => (Err(e), None),
    };
    let (mut summary, written, write_err) = match writer_result {
        Ok(Ok((summary, written, err))) => (summary, written, err),
        _ => (PassSummary::default(), None, Some(ReceiveError::Internal("writer thread panicked".into()))),
    };
    summary.pass = job.pass;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.wire_bytes = job.progress.wire_bytes.load(Ordering::Relaxed);
    summary.local_bytes = job.progress.local_bytes.load(Ordering::Relaxed);
    // The first error in the pipeline is the cause; later ones are consequences: a stage
    // whose input or output ended reports `Stream` or `Internal`. A planner error (a hostile
    // entry) ends the writer's input, so it must win over the writer's "transfer ended",
    // which would otherwise read as a lost link and make the pass retry forever.
    let consequence = |e: &ReceiveError| matches!(e, ReceiveError::Stream(_) | ReceiveError::Internal(_));
    let err = match (read_result, plan_err, write_err) {
        (Err(r @ ReceiveError::Protocol(_)), _, _) => Some(r),
        (_, Some(p), _) => Some(p),
        (_, None, Some(w)) if !consequence(&w) => Some(w),
        // Only consequences left: a lost link (retryable) explains the others.
        (Err(r @ ReceiveError::Stream(_)), None, _) => Some(r),
        (_, None, Some(w @ ReceiveError::Stream(_))) => Some(w),
        (Err(r), None, _) => Some(r),
        (Ok(()), None, w) => w,
    };
    let result = v1::PassResult {
        ok: err.is_none(),
        message: err.as_ref().map(|e| e.to_string()).unwrap_or_default(),
        files_written: summary.written,
        bytes_received: summary.wire_bytes,
        bytes_local: summary.local_bytes,
    };
    match &err {
        None | Some(ReceiveError::Quota { .. }) => {
            let _ = outbound
                .send(Ok(v1::TransferDown { msg: Some(v1::transfer_down::Msg::Result(result)) }))
                .await;
        }
        Some(e) => {
            let _ = outbound.send(Err(e.status())).await;
        }
    }
    let retryable = matches!(err, Some(ReceiveError::Stream(_)));
    PassOutcome { summary, written, error: err.map(PassError::from), retryable }
}

fn stopped() -> ReceiveError {
    ReceiveError::Internal("the writer stopped".into())
}

/// Decompresses and checks chunks against what was requested.
fn verify_chunks(
    mut rx: mpsc::Receiver<Vec<v1::ChunkData>>,
    tx: mpsc::Sender<Vec<ChunkMsg>>,
    expected: Expected,
    progress: Arc<Progress>,
) {
    let mut dec = zstd::bulk::Decompressor::new().ok();
    while let Some(batch) = rx.blocking_recv() {
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            out.push(verify_one(c, &expected, &progress, &mut dec));
        }
        if tx.blocking_send(out).is_err() {
            return;
        }
    }
}

fn verify_one(
    c: v1::ChunkData,
    expected: &Expected,
    progress: &Progress,
    dec: &mut Option<zstd::bulk::Decompressor<'static>>,
) -> ChunkMsg {
    let want = expected.locked().remove(&(c.seq, c.index));
    match want {
        None => ChunkMsg::Invalid(format!("chunk {}/{} was not requested", c.seq, c.index)),
        Some(_) if c.unavailable => {
            let mut reason = c.reason;
            reason.truncate(512);
            ChunkMsg::Unavailable { seq: c.seq, index: c.index, reason }
        }
        Some((hash, len)) => {
            progress.wire_bytes.fetch_add(c.data.len() as u64, Ordering::Relaxed);
            // Decompression is bounded by the announced length: a frame that inflates
            // past it fails here instead of filling memory. Plain data is not copied.
            let data = if c.compressed {
                match dec.as_mut().map(|d| d.decompress(&c.data, len as usize)) {
                    Some(Ok(d)) => Some(bytes::Bytes::from(d)),
                    _ => None,
                }
            } else {
                Some(c.data)
            };
            match data {
                Some(data) if data.len() == len as usize && Hash32::of(&data) == hash => {
                    ChunkMsg::Data { seq: c.seq, index: c.index, data }
                }
                Some(_) => ChunkMsg::Invalid(format!("chunk {}/{} does not match its hash", c.seq, c.index)),
                None => ChunkMsg::Invalid(format!(
                    "chunk {}/{} does not decompress to its announced {len} bytes",
                    c.seq, c.index
                )),
            }
        }
    }
}
