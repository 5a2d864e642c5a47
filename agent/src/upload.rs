//! One copy pass on the agent side: walk, chunk, batch, answer the controller's needs.
//!
//! ```text
//!  walker thread ─► hash workers (2) ─► batcher thread ──Batch──► controller
//!        │  (file cache lookups)              │ window of unconfirmed batches
//!  counter thread ──Estimate──────────────────┤
//!  controller ──Need──► chunk senders (2): pread, check hash, zstd ──Chunk──► controller
//!  controller ──BatchWritten──► release window, confirmed files go to the new cache
//! ```
//! Memory is bounded by the window, the channel capacities and one chunking buffer per
//! worker, not by the size of the tree.

use p2c_common::sync::Locked;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use p2c_common::chunking::{ChunkParams, Chunker};
use p2c_common::manifest::{
    ChunkRef, ContentHasher, Entry, EntryData, MAX_CHUNKS_PER_ENTRY, Meta, Problem, Timestamp,
};
use p2c_common::paths::RelPath;
use p2c_proto::v1;
use p2c_proto::v1::agent_session_client::AgentSessionClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::cache;
use crate::extents::{OffsetReader, chunk_regions, open_source};
use crate::track::Listed;
use crate::walk::{Found, Kind, WalkOptions, Walker};

/// What the controller asked for.
#[derive(Clone, Debug)]
pub struct PassParams {
    pub migration_id: String,
    pub pass: u32,
    pub root: PathBuf,
    pub excludes: Vec<RelPath>,
    pub no_descend: HashSet<RelPath>,
    pub bwlimit: u64,
    pub chunking: ChunkParams,
    pub cache_path: PathBuf,
    /// zstd level for chunk data; 0 sends it uncompressed.
    pub zstd_level: i32,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PassReport {
    pub files: u64,
    pub bytes: u64,
    pub hashed_bytes: u64,
    pub sent_bytes: u64,
    pub changed: Vec<Problem>,
    pub skipped: Vec<Problem>,
    pub controller_message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("transfer refused by the controller: {0}")]
    Refused(String),
    #[error("the transfer stream broke: {0}")]
    Stream(String),
    #[error("cannot read the source root {0}: {1}")]
    Root(String, std::io::Error),
    #[error("the pass was cancelled")]
    Cancelled,
}

/// Batches waiting for the controller's confirmation, at most this many.
const WINDOW: usize = 12;
const BATCH_ENTRIES: usize = 1024;
const BATCH_CHUNKS: usize = 32768;
const BATCH_DATA: u64 = 32 * 1024 * 1024;
/// Chunks one sender job reads; and what one chunk message carries at most.
const NEED_SLICE: usize = 128;
const MESSAGE_DATA: usize = 512 << 10;

/// Where each chunk of a batch can be read again.
struct ChunkSrc {
    file: usize,
    chunk: ChunkRef,
}

/// (inode, size, mtime ns, ctime ns) of a file when it was chunked.
type Ident = (u64, u64, i64, i64);

struct FileSrc {
    path: PathBuf,
    /// A chunk read again is sent only if the file still has this identity; the controller
    /// checks every chunk's hash anyway.
    ident: Ident,
    failed: bool,
    /// The cache record, for files whose last segment is in this batch.
    record: Option<cache::Record>,
}

#[derive(Default)]
struct BatchInfo {
    chunks: Vec<ChunkSrc>,
    files: Vec<FileSrc>,
}

struct Shared {
    outstanding: Mutex<BTreeMap<u64, BatchInfo>>,
    window: Condvar,
    stop: AtomicBool,
    sent_bytes: AtomicU64,
    bucket: Mutex<(f64, Instant)>,
    bwlimit: u64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn throttle(&self, bytes: usize) {
        if self.bwlimit == 0 {
            return;
        }
        let rate = self.bwlimit as f64;
        let wait = {
            let mut b = self.bucket.locked();
            let now = Instant::now();
            let burst = rate / 4.0;
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(burst);
            b.1 = now;
            b.0 -= bytes as f64;
            if b.0 < 0.0 { Duration::from_secs_f64(-b.0 / rate) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

type Out = mpsc::Sender<v1::TransferUp>;

fn up(msg: v1::transfer_up::Msg) -> v1::TransferUp {
    v1::TransferUp { msg: Some(msg) }
}

fn abs(root: &Path, p: &RelPath) -> PathBuf {
    if p.is_root() { root.to_path_buf() } else { root.join(OsStr::from_bytes(p.as_bytes())) }
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Runs one pass against the controller.
///
/// With `listing` (the base pass and what changed since, see [`crate::track`]) only the
/// listed entries are sent; otherwise the whole tree is walked.
pub async fn run_pass(
    mut client: AgentSessionClient<Channel>,
    p: PassParams,
    listing: Option<(u32, Listed)>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<PassReport, UploadError> {
    std::fs::metadata(&p.root).map_err(|e| UploadError::Root(p.root.display().to_string(), e))?;
    // Small: what waits here is chunk data (up to MESSAGE_DATA a message) held in memory.
    let (out_tx, out_rx) = mpsc::channel::<v1::TransferUp>(8);
    let bytes_of = |v: &[RelPath]| v.iter().map(|p| p.as_bytes().to_vec()).collect::<Vec<_>>();
    let open = match &listing {
        Some((base, l)) => v1::OpenTransfer {
            migration_id: p.migration_id.clone(),
            pass: p.pass,
            changes_since: Some(*base),
            changed_dirs: bytes_of(&l.changes.dirs),
            new_subtrees: bytes_of(&l.changes.subtrees),
        },
        None => v1::OpenTransfer { migration_id: p.migration_id.clone(), pass: p.pass, ..Default::default() },
    };
    out_tx
        .send(up(v1::transfer_up::Msg::Open(open)))
        .await
        .map_err(|_| UploadError::Stream("closed".into()))?;
    let mut inbound = client
        .transfer(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|s| UploadError::Refused(s.message().to_string()))?
        .into_inner();

    let shared = Arc::new(Shared {
        outstanding: Mutex::new(BTreeMap::new()),
        window: Condvar::new(),
        stop: AtomicBool::new(false),
        sent_bytes: AtomicU64::new(0),
        bucket: Mutex::new((0.0, Instant::now())),
        bwlimit: p.bwlimit,
    });
    let report = Arc::new(Mutex::new(PassReport::default()));

    let changes_only = listing.is_some();
    let source = match listing {
        Some((_, l)) => {
            let files = l.found.iter().filter(|f| matches!(f.kind, Kind::File));
            let (n, bytes) = files.fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.st.st_size as u64));
            let est = v1::Estimate { files: n, bytes };
            let _ = out_tx.send(up(v1::transfer_up::Msg::Estimate(est))).await;
            Source::Listed(l.found.into_iter(), l.problems)
        }
        None => {
            // Counter: a quick stat-only walk for the progress estimate.
            let (pc, out) = (p.clone(), out_tx.clone());
            let shared = shared.clone();
            std::thread::spawn(move || count(&pc, &out, &shared));
            Source::Walk(Box::new(
                Walker::new(&p.root, walk_options(&p, true))
                    .map_err(|e| UploadError::Root(p.root.display().to_string(), e))?,
            ))
        }
    };
    // Producer: walk, hash, batch.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let producer = {
        let (p, out, shared, report) = (p.clone(), out_tx.clone(), shared.clone(), report.clone());
        std::thread::spawn(move || {
            let r = produce(&p, source, &out, &shared, &report);
            let _ = done_tx.blocking_send(());
            r
        })
    };
    // Chunk senders.
    // Needs go to the senders in slices, so a big file's chunks are read and sent by both.
    // Unbounded, but what it holds is bounded by the window of unconfirmed batches.
    let (need_tx, need_rx) = std::sync::mpsc::channel::<(u64, Vec<u32>)>();
    let need_rx = Arc::new(Mutex::new(need_rx));
    for _ in 0..2 {
        let (rx, out, shared) = (need_rx.clone(), out_tx.clone(), shared.clone());
        let level = p.zstd_level;
        std::thread::spawn(move || send_chunks(&rx, &out, &shared, level));
    }

    // A full walk writes the cache anew; a listing of changes updates the old one at the end.
    let mut cache_w = if changes_only { None } else { cache::Writer::create(&p.cache_path).ok() };
    let mut listed_records: Vec<cache::Record> = Vec::new();
    let mut listed_cost = 0usize;
    let mut producing = true;
    let mut done_sent = false;
    let result: Result<v1::PassResult, UploadError> = loop {
        if !producing && !done_sent && shared.outstanding.locked().is_empty() {
            let done = {
                let r = report.locked();
                v1::PassDone {
                    files: r.files,
                    bytes: r.bytes,
                    changed: r.changed.iter().map(v1::Problem::from).collect(),
                    skipped: r.skipped.iter().map(v1::Problem::from).collect(),
                }
            };
            if out_tx.send(up(v1::transfer_up::Msg::Done(done))).await.is_err() {
                break Err(UploadError::Stream("closed before Done".into()));
            }
            done_sent = true;
        }
        tokio::select! {
            _ = done_rx.recv(), if producing => { producing = false; }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() { break Err(UploadError::Cancelled); }
            }
            msg = inbound.next() => match msg {
                None => break Err(UploadError::Stream("the controller closed the transfer".into())),
                Some(Err(s)) => break Err(UploadError::Refused(s.message().to_string())),
                Some(Ok(m)) => match m.msg {
                    Some(v1::transfer_down::Msg::Need(n)) => {
                        for slice in n.indexes.chunks(NEED_SLICE) {
                            if need_tx.send((n.seq, slice.to_vec())).is_err() {
                                break;
                            }
                        }
                    }
                    Some(v1::transfer_down::Msg::Written(w)) => {
                        let info = shared.outstanding.locked().remove(&w.seq);
                        shared.window.notify_all();
                        if let Some(info) = info {
                            let records = info.files.into_iter().filter(|f| !f.failed).filter_map(|f| f.record);
                            match cache_w.as_mut() {
                                Some(cw) => records.for_each(|r| {
                                    let _ = cw.push(&r);
                                }),
                                // Held until the pass ends, so bounded: files past it are
                                // just chunked again next time.
                                None if changes_only => {
                                    for r in records {
                                        listed_cost += r.chunks.len() + r.regions.len() + 1;
                                        if listed_cost <= LISTED_RECORDS_MAX {
                                            listed_records.push(r);
                                        }
                                    }
                                }
                                None => {}
                            }
                        }
                    }
                    Some(v1::transfer_down::Msg::Result(r)) => break Ok(r),
                    None => {}
                },
            },
        }
    };
    shared.stop.store(true, Ordering::Relaxed);
    shared.window.notify_all();
    drop(need_tx);
    drop(out_tx);
    let _ = tokio::task::spawn_blocking(move || producer.join()).await;
    // Keep what the old cache knew about files this pass did not reach.
    if let Some(mut cw) = cache_w {
        let last = cw.last_key.clone();
        let ok = matches!(&result, Ok(r) if r.ok);
        if !ok {
            for r in cache::Reader::open(&p.cache_path).rest_after(last.as_deref()) {
                let _ = cw.push(&r);
            }
        }
        let _ = cw.finish();
    }
    if changes_only && !listed_records.is_empty() && matches!(&result, Ok(r) if r.ok) {
        let path = p.cache_path.clone();
        let _ = tokio::task::spawn_blocking(move || cache::update(&path, listed_records)).await;
    }
    let mut rep = std::mem::take(&mut *report.locked());
    rep.sent_bytes = shared.sent_bytes.load(Ordering::Relaxed);
    match result {
        Ok(r) if r.ok => {
            rep.controller_message = r.message;
            Ok(rep)
        }
        Ok(r) => Err(UploadError::Refused(r.message)),
        Err(e) => Err(e),
    }
}

pub fn walk_options(p: &PassParams, xattrs: bool) -> WalkOptions {
    // Regular files' attributes are read by the hash workers, and only for files the cache
    // does not vouch for.
    WalkOptions { excludes: p.excludes.clone(), no_descend: p.no_descend.clone(), xattrs, file_xattrs: false }
}

fn count(p: &PassParams, out: &Out, shared: &Shared) {
    let Ok(w) = Walker::new(&p.root, walk_options(p, false)) else { return };
    let (mut files, mut bytes) = (0u64, 0u64);
    for f in w {
        if shared.stopped() {
            return;
        }
        if matches!(f.kind, Kind::File) {
            files += 1;
            bytes += f.st.st_size as u64;
        }
    }
    let _ = out.blocking_send(up(v1::transfer_up::Msg::Estimate(v1::Estimate { files, bytes })));
}

/// A walk item on its way to the batcher.
struct Work {
    seq: u64,
    found: Found,
    cached: Option<cache::Record>,
    /// A changed big file's last chunking: regions whose bytes did not change keep their
    /// chunks.
    prior: Option<Prior>,
}

/// The chunks and region sums of a big file's last chunking, holding `cost` bytes of the
/// budget for them.
struct Prior {
    chunks: Vec<ChunkRef>,
    regions: Vec<cache::RegionSum>,
    cost: i64,
    budget: Arc<AtomicI64>,
}

impl Drop for Prior {
    fn drop(&mut self) {
        self.budget.fetch_add(self.cost, Ordering::Relaxed);
    }
}

impl Prior {
    /// Takes what `r` knows if the budget allows (the work queue must not hold a big
    /// file's chunk list per item).
    fn take(r: cache::Record, budget: &Arc<AtomicI64>) -> Option<Prior> {
        if r.regions.len() < 2 {
            return None;
        }
        let cost = (r.chunks.len() * std::mem::size_of::<ChunkRef>()
            + r.regions.len() * std::mem::size_of::<cache::RegionSum>()) as i64;
        if budget.fetch_sub(cost, Ordering::Relaxed) < cost {
            budget.fetch_add(cost, Ordering::Relaxed);
            return None;
        }
        Some(Prior { chunks: r.chunks, regions: r.regions, cost, budget: budget.clone() })
    }

    /// The sum the region at `start` had, and its chunks, if they tile it exactly.
    fn region(&self, start: u64, len: u64) -> Option<(p2c_common::manifest::Hash32, &[ChunkRef])> {
        let g = &self.regions[self.regions.binary_search_by_key(&start, |g| g.offset).ok()?];
        if g.len != len {
            return None;
        }
        let from = self.chunks.partition_point(|c| c.offset < start);
        let to = self.chunks.partition_point(|c| c.offset < start + len);
        let cs = &self.chunks[from..to];
        let mut at = start;
        for c in cs {
            if c.offset != at {
                return None;
            }
            at += u64::from(c.len);
        }
        (at == start + len).then_some((g.hash, cs))
    }
}

/// Chunk references (about 50 bytes each) of the cache records a listing pass holds.
const LISTED_RECORDS_MAX: usize = 200_000;

/// Bytes of prior chunk lists the work queue may hold.
const PRIOR_BUDGET: i64 = 8 << 20;

/// A finished item: its entry (segments) and how to re-read its chunks.
struct Ready {
    seq: u64,
    entries: Vec<Entry>,
    src: Option<(PathBuf, Ident)>,
    record: Option<cache::Record>,
    problem: Option<Problem>,
}

fn meta_of(f: &Found) -> Meta {
    Meta {
        mode: f.st.st_mode & 0o7777,
        uid: f.st.st_uid,
        gid: f.st.st_gid,
        mtime: Timestamp { sec: f.st.st_mtime, nsec: f.st.st_mtime_nsec as u32 },
        xattrs: f.xattrs.clone(),
    }
}

/// What a pass sends: the whole tree, or a listing of what changed.
enum Source {
    Walk(Box<Walker>),
    Listed(std::vec::IntoIter<Found>, Vec<Problem>),
}

impl Iterator for Source {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        match self {
            Source::Walk(w) => w.next(),
            Source::Listed(it, _) => it.next(),
        }
    }
}

impl Source {
    fn take_problems(&mut self) -> Vec<Problem> {
        match self {
            Source::Walk(w) => std::mem::take(&mut w.problems),
            Source::Listed(_, p) => std::mem::take(p),
        }
    }
}

fn produce(
    p: &PassParams,
    walker: Source,
    out: &Out,
    shared: &Shared,
    report: &Mutex<PassReport>,
) -> Result<(), UploadError> {
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<Work>(256);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Ready>(256);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (rx, tx) = (work_rx.clone(), ready_tx.clone());
        let (root, params) = (p.root.clone(), p.chunking);
        workers.push(std::thread::spawn(move || hash_worker(&root, params, &rx, &tx)));
    }
    drop(ready_tx);
    let walker_problems = Arc::new(Mutex::new(Vec::new()));
    let walk_thread = {
        let cache_path = p.cache_path.clone();
        let wp = walker_problems.clone();
        let budget = Arc::new(AtomicI64::new(PRIOR_BUDGET));
        std::thread::spawn(move || {
            let mut cache = cache::Reader::open(&cache_path);
            let mut w = walker;
            for (seq, found) in (0u64..).zip(w.by_ref()) {
                let (cached, prior) = match matches!(found.kind, Kind::File) {
                    true => match cache.lookup(&found.path.walk_key()) {
                        Some(r) if r.same_file(ident_of(&found.st)) => (Some(r), None),
                        Some(r) => (None, Prior::take(r, &budget)),
                        None => (None, None),
                    },
                    false => (None, None),
                };
                if work_tx.send(Work { seq, found, cached, prior }).is_err() {
                    break;
                }
            }
            *wp.locked() = w.take_problems();
        })
    };

    // Batcher: reorder by seq, group into batches, respect the window.
    let mut pending: BTreeMap<u64, Ready> = BTreeMap::new();
    let mut next = 0u64;
    let mut batch_seq = 0u64;
    let mut cur = Vec::<v1::Entry>::new();
    let mut info = BatchInfo::default();
    let mut cur_chunks = 0usize;
    let mut cur_data = 0u64;
    let flush =
        |cur: &mut Vec<v1::Entry>, info: &mut BatchInfo, batch_seq: &mut u64| -> Result<(), UploadError> {
            if cur.is_empty() {
                return Ok(());
            }
            {
                let mut o = shared.outstanding.locked();
                while o.len() >= WINDOW && !shared.stopped() {
                    o = shared
                        .window
                        .wait_timeout(o, Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if shared.stopped() {
                    return Err(UploadError::Cancelled);
                }
                o.insert(*batch_seq, std::mem::take(info));
            }
            let b = v1::EntryBatch { seq: *batch_seq, entries: std::mem::take(cur) };
            out.blocking_send(up(v1::transfer_up::Msg::Batch(b)))
                .map_err(|_| UploadError::Stream("closed".into()))?;
            *batch_seq += 1;
            Ok(())
        };
    let mut result = Ok(());
    'outer: for r in ready_rx.iter() {
        pending.insert(r.seq, r);
        while let Some(r) = pending.remove(&next) {
            next += 1;
            if let Some(pr) = r.problem {
                report.locked().changed.push(pr);
                continue;
            }
            let nseg = r.entries.len();
            let mut file_idx = match &r.src {
                Some((path, ident)) => {
                    info.files.push(FileSrc {
                        path: path.clone(),
                        ident: *ident,
                        failed: false,
                        record: None,
                    });
                    Some(info.files.len() - 1)
                }
                None => None,
            };
            for (i, e) in r.entries.into_iter().enumerate() {
                let n = match &e.data {
                    EntryData::Regular { chunks, .. } => chunks.len(),
                    _ => 0,
                };
                let data = e.data_bytes();
                if !cur.is_empty()
                    && (cur.len() >= BATCH_ENTRIES
                        || cur_chunks + n > BATCH_CHUNKS
                        || cur_data + data > BATCH_DATA)
                {
                    if let Err(err) = flush(&mut cur, &mut info, &mut batch_seq) {
                        result = Err(err);
                        break 'outer;
                    }
                    cur_chunks = 0;
                    cur_data = 0;
                    if let Some((path, ident)) = &r.src {
                        info.files.push(FileSrc {
                            path: path.clone(),
                            ident: *ident,
                            failed: false,
                            record: None,
                        });
                        file_idx = Some(info.files.len() - 1);
                    }
                }
                if let (EntryData::Regular { chunks, .. }, Some(fi)) = (&e.data, file_idx) {
                    for c in chunks {
                        info.chunks.push(ChunkSrc { file: fi, chunk: *c });
                    }
                }
                if i + 1 == nseg {
                    if let Some(fi) = file_idx {
                        info.files[fi].record = r.record.clone();
                    }
                    let mut rep = report.locked();
                    rep.files += 1;
                    if let EntryData::Regular { size, .. } = &e.data {
                        rep.bytes += size;
                    }
                }
                cur_chunks += n;
                cur_data += data;
                cur.push(v1::Entry::from(&e));
            }
        }
    }
    if result.is_ok() {
        result = flush(&mut cur, &mut info, &mut batch_seq);
    }
    if result.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    drop(ready_rx);
    let _ = walk_thread.join();
    for w in workers {
        let _ = w.join();
    }
    let mut probs = std::mem::take(&mut *walker_problems.locked());
    let mut rep = report.locked();
    for pr in probs.drain(..) {
        if pr.reason.starts_with("vanished") {
            rep.changed.push(pr);
        } else {
            rep.skipped.push(pr);
        }
    }
    result
}

fn hash_worker(
    root: &Path,
    params: ChunkParams,
    rx: &Mutex<std::sync::mpsc::Receiver<Work>>,
    tx: &std::sync::mpsc::SyncSender<Ready>,
) {
    let mut chunkers = Chunkers { main: Chunker::new(params), spare: None };
    loop {
        let w = {
            let guard = rx.locked();
            guard.recv()
        };
        let Ok(w) = w else { return };
        let ready = prepare(root, &mut chunkers, w);
        if tx.send(ready).is_err() {
            return;
        }
    }
}

/// A hash worker's chunkers: its own, and one for the second thread that chunks a big file's
/// regions, made once (a buffer per file would grow the agent's memory).
struct Chunkers {
    main: Chunker,
    spare: Option<Chunker>,
}

fn prepare(root: &Path, chunker: &mut Chunkers, w: Work) -> Ready {
    let f = w.found;
    let mut meta = meta_of(&f);
    let single = |data: EntryData| Ready {
        seq: w.seq,
        entries: vec![Entry { path: f.path.clone(), meta: meta.clone(), data, segment: 0, more: false }],
        src: None,
        record: None,
        problem: None,
    };
    match &f.kind {
        Kind::Dir => single(EntryData::Directory),
        Kind::Symlink(t) => single(EntryData::Symlink { target: t.clone() }),
        Kind::Fifo => single(EntryData::Fifo),
        Kind::Char(a, b) => single(EntryData::CharDevice { major: *a, minor: *b }),
        Kind::Block(a, b) => single(EntryData::BlockDevice { major: *a, minor: *b }),
        Kind::HardLink(t) => single(EntryData::HardLink { target: t.clone() }),
        Kind::File => {
            let src = abs(root, &f.path);
            let ident = ident_of(&f.st);
            meta.xattrs = match &w.cached {
                Some(r) => r.xattrs.clone(),
                None => crate::walk::read_xattrs(src.as_os_str().as_encoded_bytes()),
            };
            let (chunks, digest, regions) = match w.cached {
                Some(r) => (r.chunks, r.digest, r.regions),
                None => match chunk_file(&src, chunker, ident, w.prior.as_ref()) {
                    Ok((c, regions)) => {
                        let d = ContentHasher::digest(ident.2, &c);
                        (c, d, regions)
                    }
                    Err(reason) => {
                        return Ready {
                            seq: w.seq,
                            entries: Vec::new(),
                            src: None,
                            record: None,
                            problem: Some(Problem { path: f.path, reason }),
                        };
                    }
                },
            };
            let key = f.path.walk_key();
            let record = cache::Record {
                key,
                dev: ident.0,
                ino: ident.1,
                size: ident.2,
                mtime_ns: ident.3,
                ctime_ns: ident.4,
                digest,
                chunks: chunks.clone(),
                xattrs: meta.xattrs.clone(),
                regions,
            };
            let mut entries = Vec::new();
            let segs: Vec<&[ChunkRef]> =
                if chunks.is_empty() { vec![&[][..]] } else { chunks.chunks(MAX_CHUNKS_PER_ENTRY).collect() };
            let nseg = segs.len();
            for (i, seg) in segs.into_iter().enumerate() {
                entries.push(Entry {
                    path: f.path.clone(),
                    meta: meta.clone(),
                    data: EntryData::Regular { size: ident.2, chunks: seg.to_vec(), digest },
                    segment: i as u32,
                    more: i + 1 < nseg,
                });
            }
            Ready {
                seq: w.seq,
                entries,
                src: Some((src, (ident.1, ident.2, ident.3, ident.4))),
                record: Some(record),
                problem: None,
            }
        }
    }
}

/// Chunks the data extents of a file, checking it did not change while being read. A big
/// file (several regions) is chunked by two threads, and the BLAKE3 of each region is
/// returned; a region whose sum matches `prior`'s keeps its chunks without being chunked.
fn chunk_file(
    path: &Path,
    chunkers: &mut Chunkers,
    ident: (u64, u64, u64, i64, i64),
    prior: Option<&Prior>,
) -> Result<(Vec<ChunkRef>, Vec<cache::RegionSum>), String> {
    let file = open_source(path).map_err(|e| format!("vanished or unreadable: {e}"))?;
    let st = rustix::fs::fstat(&file).map_err(|e| format!("cannot stat: {e}"))?;
    if st.st_ino != ident.1 || st.st_size as u64 != ident.2 {
        return Err("changed while being read".into());
    }
    let size = ident.2;
    let mut chunks = Vec::new();
    let mut sums = Vec::new();
    let regions = chunk_regions(&file, &st, size).map_err(|e| format!("cannot map holes: {e}"))?;
    if regions.len() < 2 {
        for &(start, len) in &regions {
            let mut rd = OffsetReader { file: &file, pos: start };
            chunks.extend(chunkers.main.refs(&mut rd, start, len).map_err(|e| format!("read error: {e}"))?);
        }
    } else {
        type RegionResult = std::io::Result<(Vec<ChunkRef>, cache::RegionSum)>;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<Option<RegionResult>>> =
            Mutex::new((0..regions.len()).map(|_| None).collect());
        let one = |chunker: &mut Chunker, start: u64, len: u64| -> RegionResult {
            let rd = || OffsetReader { file: &file, pos: start };
            let sum = |hash| cache::RegionSum { offset: start, len, hash };
            if let Some((had, cs)) = prior.and_then(|p| p.region(start, len)) {
                let hash = chunker.sum(&mut rd(), len)?;
                if hash == had {
                    return Ok((cs.to_vec(), sum(hash)));
                }
            }
            let (cs, hash) = chunker.refs_summed(&mut rd(), start, len)?;
            Ok((cs, sum(hash)))
        };
        let work = |chunker: &mut Chunker| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(start, len)) = regions.get(i) else { return };
            let r = one(chunker, start, len);
            results.locked()[i] = Some(r);
        };
        let params = chunkers.main.params();
        let spare = chunkers.spare.get_or_insert_with(|| Chunker::new(params));
        let main = &mut chunkers.main;
        std::thread::scope(|sc| {
            sc.spawn(|| work(spare));
            work(main);
        });
        for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            match r {
                Some(Ok((refs, s))) => {
                    chunks.extend(refs);
                    sums.push(s);
                }
                Some(Err(e)) => return Err(format!("read error: {e}")),
                None => return Err("a region was not chunked".into()),
            }
        }
    }
    let after = rustix::fs::fstat(&file).map_err(|e| format!("cannot stat: {e}"))?;
    let changed = after.st_size as u64 != size
        || ns(after.st_mtime, after.st_mtime_nsec as i64) != ident.3
        || ns(after.st_ctime, after.st_ctime_nsec as i64) != ident.4;
    if changed {
        return Err("changed while being read".into());
    }
    Ok((chunks, sums))
}

/// Answers the controller's needs: reads each chunk again, checks it, compresses it.
fn send_chunks(
    rx: &Mutex<std::sync::mpsc::Receiver<(u64, Vec<u32>)>>,
    out: &Out,
    shared: &Shared,
    zstd_level: i32,
) {
    let mut comp = if zstd_level == 0 { None } else { zstd::bulk::Compressor::new(zstd_level).ok() };
    let mut open: Option<(PathBuf, File)> = None;
    loop {
        let job = {
            let g = rx.locked();
            g.recv()
        };
        let Ok((seq, indexes)) = job else { return };
        let mut batch = Vec::with_capacity(indexes.len());
        let mut size = 0usize;
        for index in indexes {
            if shared.stopped() {
                return;
            }
            let msg = read_chunk(shared, &mut open, &mut comp, seq, index);
            size += msg.data.len();
            batch.push(msg);
            if size >= MESSAGE_DATA {
                if !send_batch(out, shared, std::mem::take(&mut batch)) {
                    return;
                }
                size = 0;
            }
        }
        if !batch.is_empty() && !send_batch(out, shared, batch) {
            return;
        }
    }
}

fn send_batch(out: &Out, shared: &Shared, chunks: Vec<v1::ChunkData>) -> bool {
    let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
    shared.throttle(bytes);
    shared.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    out.blocking_send(up(v1::transfer_up::Msg::Chunks(v1::ChunkBatch { chunks }))).is_ok()
}

/// Reads one needed chunk again and packs it (or says why it cannot be sent).
fn read_chunk(
    shared: &Shared,
    open: &mut Option<(PathBuf, File)>,
    comp: &mut Option<zstd::bulk::Compressor<'static>>,
    seq: u64,
    index: u32,
) -> v1::ChunkData {
    let src = {
        let o = shared.outstanding.locked();
        o.get(&seq).and_then(|b| {
            let c = b.chunks.get(index as usize)?;
            let f = b.files.get(c.file)?;
            Some((c.file, c.chunk, f.path.clone(), f.ident))
        })
    };
    let mut msg = v1::ChunkData { seq, index, ..Default::default() };
    let Some((fi, c, path, ident)) = src else {
        msg.unavailable = true;
        msg.reason = "no such chunk in an unconfirmed batch".into();
        return msg;
    };
    if open.as_ref().is_none_or(|(p, _)| *p != path) {
        *open = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .ok()
            .map(|f| (path.clone(), f));
    }
    let mut buf = vec![0u8; c.len as usize];
    // The bytes read are the bytes hashed if the file kept its identity (any write changes
    // its ctime); the controller checks the hash of every chunk anyway.
    let ok = open.as_ref().is_some_and(|(_, f)| {
        f.read_exact_at(&mut buf, c.offset).is_ok() && rustix::fs::fstat(f).is_ok_and(|st| same(&st, ident))
    });
    if !ok {
        msg.unavailable = true;
        msg.reason = "changed while being read".into();
        if let Some(b) = shared.outstanding.locked().get_mut(&seq)
            && let Some(f) = b.files.get_mut(fi)
        {
            f.failed = true;
        }
        return msg;
    }
    match comp.as_mut().and_then(|z| z.compress(&buf).ok()).filter(|z| z.len() < buf.len()) {
        Some(z) => {
            msg.data = z.into();
            msg.compressed = true;
        }
        None => msg.data = buf.into(),
    }
    msg
}

/// (device, inode, size, mtime ns, ctime ns) of a file: what its cache record and its
/// chunking are checked against.
fn ident_of(st: &rustix::fs::Stat) -> (u64, u64, u64, i64, i64) {
    (
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        ns(st.st_mtime, st.st_mtime_nsec as i64),
        ns(st.st_ctime, st.st_ctime_nsec as i64),
    )
}

fn same(st: &rustix::fs::Stat, ident: Ident) -> bool {
    (
        st.st_ino,
        st.st_size as u64,
        ns(st.st_mtime, st.st_mtime_nsec as i64),
        ns(st.st_ctime, st.st_ctime_nsec as i64),
    ) == ident
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_files_are_chunked_by_region_with_the_result_of_one_thread() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("big");
        use crate::extents::REGION;
        let mut data = vec![0u8; (REGION * 2 + REGION / 2) as usize];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&path, &data).unwrap();
        let st = rustix::fs::stat(&path).unwrap();
        let ident = ident_of(&st);
        let params = ChunkParams::default();
        let mut chunkers = Chunkers { main: Chunker::new(params), spare: None };
        let (got, sums) = chunk_file(&path, &mut chunkers, ident, None).unwrap();
        // The same regions chunked one after the other.
        let mut want = Vec::new();
        for r in 0..3u64 {
            let start = r * REGION;
            let len = (data.len() as u64 - start).min(REGION);
            let slice = &data[start as usize..(start + len) as usize];
            want.extend(Chunker::new(params).refs(&mut &slice[..], start, len).unwrap());
        }
        assert_eq!(got, want);
        assert!(got.iter().any(|c| c.offset == REGION), "a chunk starts at the region boundary");
        let total: u64 = got.iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(total, data.len() as u64);
        assert_eq!(sums.len(), 3);
        assert_eq!(sums[1].hash.0, *blake3::hash(&data[REGION as usize..2 * REGION as usize]).as_bytes());

        // One byte changes in the middle region. The prior chunk lists of the first two
        // regions are marked: a region taken from the prior keeps the mark, one chunked
        // again does not.
        let mut marked = got.clone();
        for c in marked.iter_mut().filter(|c| c.offset < 2 * REGION) {
            c.hash.0[0] ^= 0xff;
        }
        let budget = Arc::new(AtomicI64::new(0));
        let prior = Prior { chunks: marked.clone(), regions: sums.clone(), cost: 0, budget };
        data[(REGION + 1000) as usize] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let st = rustix::fs::stat(&path).unwrap();
        let ident = ident_of(&st);
        let (again, sums2) = chunk_file(&path, &mut chunkers, ident, Some(&prior)).unwrap();
        let (fresh, _) =
            chunk_file(&path, &mut Chunkers { main: Chunker::new(params), spare: None }, ident, None)
                .unwrap();
        let in_region = |v: &[ChunkRef], r: u64| -> Vec<ChunkRef> {
            v.iter().filter(|c| c.offset / REGION == r).copied().collect()
        };
        assert_eq!(in_region(&again, 0), in_region(&marked, 0), "the unchanged region was chunked again");
        assert_eq!(in_region(&again, 1), in_region(&fresh, 1), "the changed region kept its old chunks");
        assert_eq!(in_region(&again, 2), in_region(&fresh, 2));
        assert_eq!((sums2[0], sums2[2]), (sums[0], sums[2]));
        assert_ne!(sums2[1], sums[1]);
    }
}
