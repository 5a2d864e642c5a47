//! `p2c-agent export`: a source the node cannot reach, written to a bundle on removable media
//! (the format is `p2c_common::bundle`), for `p2c import` on the node.
//!
//! ```text
//!  walker thread ──Work──► readers (2): read once, FastCDC, BLAKE3, zstd ──Chunk, Ready──►
//!  writer (the caller's thread): chunk records (each distinct chunk once, found through the
//!  chunk index), entries back in walk order, batch records
//! ```
//! What goes in is what a copy pass carries: the same inventory and scan the controller would
//! ask for, the same walk ([`Walker`]: walk order, no symlink followed, pseudo and network
//! mounts not entered, sockets reported), the same entries, chunks cut with the parameters
//! recorded in the header. Memory is bounded by the channels and one chunking buffer per
//! reader: the chunks already stored are looked up in a SQLite file next to the bundle
//! ([`index`]), rebuilt from the bundle when an export resumes and removed when it completes.
//!
//! An interrupted export (killed, cancelled, the media full) leaves a valid prefix; run again
//! with the same `--out` and options, it keeps every complete batch ([`resume`]) and walks
//! on from the last entry kept, reading again only what comes after it.

mod index;
mod read;
mod resume;
#[cfg(test)]
mod tests;

use p2c_common::sync::Locked;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2c_common::bundle::{
    BundleError, BundleHeader, ChunkRecord, Codec, FORMAT, Kind, Trailer, Verified, Writer,
};
use p2c_common::chunking::{ChunkParams, Chunker};
use p2c_common::inventory::Inventory;
use p2c_common::manifest::{
    ChunkRef, ContentHasher, Entry, EntryData, Hash32, MAX_CHUNKS_PER_ENTRY, Meta, Problem, Timestamp,
};
use p2c_common::paths::{RelPath, unescape_bytes};
use p2c_common::scan::ScanOptions;
use p2c_proto::v1;
use prost::Message;
use rustix::fs::{FileType, Stat};
use tracing::{info, warn};

pub use index::path_for as index_path;

use crate::inventory::{self, CollectOptions, FactsFrom};
use crate::walk::{Found, Kind as Walked, WalkOptions, Walker};
use index::{ChunkIndex, IndexError};
use read::{Ident, Pace, ReadError};

/// Threads reading and chunking files.
const READERS: usize = 2;
/// Batch bounds, as a copy pass batches (so the receive path sees the same shapes).
const BATCH_ENTRIES: usize = 1024;
const BATCH_CHUNKS: usize = 32768;
const BATCH_DATA: u64 = 32 * 1024 * 1024;
/// Reads of a file that keeps changing before it is reported as changed.
const READ_ATTEMPTS: usize = 3;
/// Bytes written between syncs of the bundle.
const SYNC_EVERY: u64 = 64 << 20;
/// Problems listed in the report (all of them are in the bundle).
const MAX_LISTED: usize = 1000;
/// Walk items between the walker and the writer at most: a reader busy with a large file
/// holds up the order, and the items read meanwhile wait in memory.
const IN_FLIGHT: usize = 4096;

/// What to export and where.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The bundle file (on removable media).
    pub out: PathBuf,
    /// The directory to treat as the server's root.
    pub root: PathBuf,
    pub facts: FactsFrom,
    /// Source paths not to export, as the operator gave them (`--exclude`).
    pub excludes: Vec<String>,
    /// The name the node will know the source by (default: its host name).
    pub name: Option<String>,
    pub chunking: ChunkParams,
    /// Bytes per second read from the source, 0 for no limit.
    pub bwlimit: u64,
    /// Mount points listed but not entered; `None`: the pseudo and network mounts below the
    /// root, from the kernel's mount table.
    pub no_descend: Option<HashSet<RelPath>>,
}

impl ExportOptions {
    pub fn new(out: &Path, root: &Path) -> Self {
        let facts = if root == Path::new("/") { FactsFrom::Live } else { FactsFrom::Tree };
        ExportOptions {
            out: out.to_path_buf(),
            root: root.to_path_buf(),
            facts,
            excludes: Vec::new(),
            name: None,
            chunking: ChunkParams::default(),
            bwlimit: 0,
            no_descend: None,
        }
    }
}

/// What an export did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportReport {
    pub bundle: String,
    pub name: String,
    pub size: u64,
    /// The bundle was complete already; nothing was done.
    pub already_complete: bool,
    /// An interrupted export was continued: bytes kept from it, and the last entry kept.
    pub resumed_at: Option<u64>,
    pub resumed_after: Option<String>,
    /// What was cut from the end of the interrupted bundle (a torn record), if anything.
    pub cut: Option<String>,
    pub trailer: Trailer,
    pub seconds: f64,
    /// Files that changed while being read (not carried), from this run.
    pub changed: Vec<Problem>,
    /// Entries not carried (sockets, unreadable files), from this run.
    pub skipped: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot read the source root {0}: {1}")]
    Root(String, std::io::Error),
    #[error("{0}")]
    Options(String),
    #[error(
        "{out} holds an export of {what}; run the same export command to continue it, or remove the file (or choose another --out) to start again"
    )]
    Mismatch { out: String, what: String },
    #[error("the export of {0} was interrupted; run the same command again to continue it")]
    Cancelled(String),
    #[error("export failed: {0}")]
    Internal(String),
}

fn facts_name(f: FactsFrom) -> &'static str {
    match f {
        FactsFrom::Live => "live",
        FactsFrom::Tree => "tree",
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `out` as an absolute path whose directory exists.
fn absolute(out: &Path) -> Result<PathBuf, ExportError> {
    let name = out
        .file_name()
        .ok_or_else(|| ExportError::Options(format!("--out {}: not a file name", out.display())))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = dir.canonicalize().map_err(|e| {
        ExportError::Options(format!("--out {}: directory {}: {e}", out.display(), dir.display()))
    })?;
    Ok(dir.join(name))
}

/// `path` relative to `root`, when it is below it.
fn below(root: &Path, path: &Path) -> Option<RelPath> {
    let rel = path.strip_prefix(root).ok()?;
    RelPath::new(rel.as_os_str().as_bytes().to_vec()).ok().filter(|p| !p.is_root())
}

/// Opens (creating it empty if need be) and locks the bundle at `out` for this process; the
/// lock goes with the returned file.
fn lock(out: &Path) -> Result<std::fs::File, ExportError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(out)
        .map_err(|e| ExportError::Options(format!("--out {}: {e}", out.display())))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ExportError::Options(format!(
            "another export is writing {} now; wait for it to end (or stop it) and run this again",
            out.display()
        ))),
        Err(e) => Err(ExportError::Options(format!("--out {}: cannot lock it: {e}", out.display()))),
    }
}

/// The name the node knows the source by, when the operator gave none: its host name's
/// first label.
fn default_name(inv: &Inventory) -> Result<String, ExportError> {
    let first = inv.hostname.split('.').next().unwrap_or_default().to_string();
    p2c_common::pki::validate_agent_name(&first).map_err(|_| {
        ExportError::Options(format!(
            "the host name {:?} cannot name the source on the node; give one with --name",
            inv.hostname
        ))
    })?;
    Ok(first)
}

/// Writes (or completes) the bundle of the source at `opts.root`. `cancel` stops it between
/// two records, leaving a bundle the same command continues.
pub fn export(opts: &ExportOptions, cancel: &AtomicBool) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let root = opts.root.canonicalize().map_err(|e| ExportError::Root(opts.root.display().to_string(), e))?;
    let out = absolute(&opts.out)?;
    let shown = out.display().to_string();
    let chunking = opts.chunking.validate().map_err(|e| ExportError::Options(e.to_string()))?;
    let mut excludes = opts
        .excludes
        .iter()
        .map(|x| {
            RelPath::from_user(&unescape_bytes(x))
                .map_err(|e| ExportError::Options(format!("--exclude {x}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = &opts.name {
        p2c_common::pki::validate_agent_name(n).map_err(|e| ExportError::Options(format!("--name: {e}")))?;
    }
    // One export at a time writes a bundle: two would interleave their records.
    let _lock = lock(&out)?;
    let index_file = index::path_for(&out);
    let mut index = ChunkIndex::create(&index_file)?;
    let started_before = std::fs::metadata(&out).is_ok_and(|m| m.len() > 0);
    let prefix = if started_before { resume::read(&out, &mut index)? } else { None };
    let facts = facts_name(opts.facts);
    let root_shown = root.display().to_string();
    if let Some(p) = &prefix {
        let h = &p.header;
        let same = h.format == FORMAT
            && opts.name.as_ref().is_none_or(|n| *n == h.name)
            && h.root == root_shown
            && h.facts == facts
            && h.chunking == chunking
            && h.excludes == opts.excludes;
        if !same {
            return Err(ExportError::Mismatch {
                out: shown,
                what: format!(
                    "{} from {} (facts {}, excludes {:?}, chunking {}/{}/{})",
                    h.name,
                    h.root,
                    h.facts,
                    h.excludes,
                    h.chunking.min_size,
                    h.chunking.avg_size,
                    h.chunking.max_size
                ),
            });
        }
    }
    let mut report = ExportReport { bundle: shown.clone(), ..Default::default() };
    if let Some(p) = &prefix
        && let Some(t) = &p.complete
    {
        info!(bundle = %shown, "the bundle is complete already; nothing to do");
        report.name = p.header.name.clone();
        report.already_complete = true;
        report.trailer = t.clone();
        report.size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        return Ok(report);
    }

    // The inventory and the scan, unless an earlier run stored them.
    let stored_inv = prefix.as_ref().and_then(|p| p.inventory.as_deref());
    let (inv, new_inv): (Inventory, bool) = match stored_inv {
        Some(j) => (
            serde_json::from_slice(j).map_err(|e| {
                ExportError::Internal(format!("{shown}: the stored inventory is unreadable: {e}"))
            })?,
            false,
        ),
        None => {
            info!(root = %root_shown, "collecting the inventory");
            (inventory::collect(&CollectOptions { root: root.clone(), facts: opts.facts }), true)
        }
    };
    let name = match (&opts.name, &prefix) {
        (Some(n), _) => n.clone(),
        (None, Some(p)) => p.header.name.clone(),
        (None, None) => default_name(&inv)?,
    };
    report.name = name.clone();
    let mut w = match &prefix {
        Some(p) => {
            info!(bundle = %shown, kept = p.keep, after = ?p.last.as_ref().map(RelPath::display), "continuing an interrupted export");
            if let Some(cut) = &p.cut {
                warn!(bundle = %shown, "cutting a damaged end: {cut}");
            }
            report.resumed_at = Some(p.keep);
            report.resumed_after = p.last.as_ref().map(RelPath::display);
            report.cut = p.cut.clone();
            Writer::resume(&out, p.keep, p.records, p.digest.clone())?
        }
        None => {
            let header = BundleHeader {
                format: FORMAT,
                name: name.clone(),
                root: root_shown.clone(),
                facts: facts.to_string(),
                chunking,
                excludes: opts.excludes.clone(),
                agent_version: p2c_common::VERSION.to_string(),
                created_unix: now_unix(),
            };
            let mut w = Writer::create(&out)?;
            w.append(
                Kind::Header,
                &serde_json::to_vec(&header).map_err(|e| ExportError::Internal(e.to_string()))?,
            )?;
            w
        }
    };
    if new_inv {
        w.append(
            Kind::Inventory,
            &serde_json::to_vec(&inv).map_err(|e| ExportError::Internal(e.to_string()))?,
        )?;
    }
    // The bundle and its index are never exported into themselves.
    let own: Vec<RelPath> = [&out, &index_file].iter().filter_map(|p| below(&root, p)).collect();
    if prefix.as_ref().is_none_or(|p| p.scan.is_none()) {
        let mut scan_excludes = opts.excludes.clone();
        scan_excludes
            .extend(own.iter().map(|p| format!("/{}", p2c_common::paths::escape_bytes(p.as_bytes()))));
        let so = ScanOptions::for_inventory(&inv, &scan_excludes);
        info!(root = %root_shown, "scanning the source for the pre-flight report");
        let scan = crate::scan::scan(&root, &so);
        w.append(Kind::Scan, &scan.to_json().map_err(|e| ExportError::Internal(e.to_string()))?)?;
    }
    w.sync()?;

    excludes.extend(own);
    let walk_opts = WalkOptions {
        excludes,
        no_descend: opts.no_descend.clone().unwrap_or_else(|| crate::session::skipped_mounts(&root)),
        xattrs: true,
        // No cache vouches for any file here: every file's attributes are read.
        file_xattrs: true,
    };
    let walker = Walker::new(&root, walk_opts).map_err(|e| ExportError::Root(root_shown.clone(), e))?;
    let mut counts = prefix.as_ref().map(|p| p.counts.clone()).unwrap_or_default();
    let last = prefix.and_then(|p| p.last);
    let pipeline = Pipeline { root: &root, chunking, bwlimit: opts.bwlimit, last };
    let outcome = pipeline.run(walker, &mut w, &mut index, &mut counts, cancel);
    match outcome {
        Ok((changed, skipped)) => {
            report.changed = changed;
            report.skipped = skipped;
        }
        Err(e) => {
            // Whatever was written is a valid prefix the next run continues.
            let _ = w.sync();
            return Err(match e {
                ExportError::Cancelled(_) => ExportError::Cancelled(shown),
                e => e,
            });
        }
    }
    counts.finished_unix = now_unix();
    let trailer = w.finish(counts)?;
    report.size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    report.trailer = trailer;
    report.seconds = started.elapsed().as_secs_f64();
    info!(bundle = %shown, objects = report.trailer.objects, bytes = report.trailer.file_bytes, size = report.size, "export complete");
    Ok(report)
}

/// Checks the bundle at `path` as `p2c bundle verify` does: framing, chunks, references,
/// trailer, and every entry as the receive path would judge it.
pub fn verify(path: &Path) -> Result<Verified, BundleError> {
    p2c_proto::bundle::verify(path, true, &mut |_| {})
}

/// A walk item on its way to a reader.
enum Work {
    Item { seq: u64, found: Found },
    Problem { seq: u64, problem: Problem },
}

/// What a walk item became.
enum Item {
    /// The entries of one object (several segments for a large file).
    Entries(Vec<Entry>),
    Changed(Problem),
    Skipped(Problem),
}

/// From the readers to the writer. A reader sends a file's chunks, then its `Ready`; a
/// `Discard` drops the chunks sent for a file being read again.
enum Msg {
    Chunk { reader: usize, hash: Hash32, len: u32, codec: Codec, data: Vec<u8> },
    Discard { reader: usize },
    Ready { seq: u64, reader: usize, item: Item },
}

struct Shared {
    stop: AtomicBool,
    pace: Pace,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

struct Pipeline<'a> {
    root: &'a Path,
    chunking: ChunkParams,
    bwlimit: u64,
    /// The last entry an earlier run stored: the walk goes on after it.
    last: Option<RelPath>,
}

impl Pipeline<'_> {
    /// Walks, reads and writes until the walk ends (the problems seen, for the report),
    /// `cancel` is set, or writing fails.
    fn run(
        self,
        walker: Walker,
        w: &mut Writer,
        index: &mut ChunkIndex,
        counts: &mut Trailer,
        cancel: &AtomicBool,
    ) -> Result<(Vec<Problem>, Vec<Problem>), ExportError> {
        let shared = Arc::new(Shared { stop: AtomicBool::new(false), pace: Pace::new(self.bwlimit) });
        let (work_tx, work_rx) = sync_channel::<Work>(256);
        let (msg_tx, msg_rx) = sync_channel::<Msg>(16);
        // One token per walk item until the writer has taken it in order.
        let (slot_tx, slot_rx) = sync_channel::<()>(IN_FLIGHT);
        let walk_thread = {
            let (shared, last) = (shared.clone(), self.last.clone());
            std::thread::spawn(move || walk(walker, last, &work_tx, &slot_tx, &shared))
        };
        let work_rx = Arc::new(Mutex::new(work_rx));
        let mut readers = Vec::new();
        for id in 0..READERS {
            let (rx, tx, shared) = (work_rx.clone(), msg_tx.clone(), shared.clone());
            let (root, params) = (self.root.to_path_buf(), self.chunking);
            readers.push(std::thread::spawn(move || reader(id, &root, params, &rx, &tx, &shared)));
        }
        drop(msg_tx);
        drop(work_rx);
        let mut b = Batcher::new(w, index, counts);
        let result = b.consume(&msg_rx, &slot_rx, cancel);
        shared.stop.store(true, Ordering::Relaxed);
        drop(msg_rx);
        drop(slot_rx);
        for r in readers {
            let _ = r.join();
        }
        let _ = walk_thread.join();
        match result {
            Ok(()) => {
                b.flush()?;
                Ok((b.changed_list, b.skipped_list))
            }
            Err(ExportError::Cancelled(s)) => {
                // Every item taken so far is complete: keep it.
                b.flush()?;
                b.index.commit()?;
                Err(ExportError::Cancelled(s))
            }
            Err(e) => Err(e),
        }
    }
}

/// The walk, in walk order, after `last`, with the walker's problems in their place.
fn walk(
    mut walker: Walker,
    last: Option<RelPath>,
    tx: &SyncSender<Work>,
    slots: &SyncSender<()>,
    shared: &Shared,
) {
    let send = |w: Work| slots.send(()).is_ok() && tx.send(w).is_ok();
    let after = |p: &RelPath| last.as_ref().is_none_or(|l| p.walk_cmp(l) == std::cmp::Ordering::Greater);
    let mut seq = 0u64;
    loop {
        let found = walker.next();
        for problem in std::mem::take(&mut walker.problems) {
            if after(&problem.path) {
                if !send(Work::Problem { seq, problem }) {
                    return;
                }
                seq += 1;
            }
        }
        let Some(found) = found else { return };
        if shared.stopped() {
            return;
        }
        if !after(&found.path) {
            continue; // in the bundle already
        }
        if !send(Work::Item { seq, found }) {
            return;
        }
        seq += 1;
    }
}

fn reader(
    id: usize,
    root: &Path,
    params: ChunkParams,
    rx: &Mutex<Receiver<Work>>,
    tx: &SyncSender<Msg>,
    shared: &Shared,
) {
    let mut chunker = Chunker::new(params);
    let mut comp = zstd::bulk::Compressor::new(1).ok();
    loop {
        let work = {
            let guard = rx.locked();
            guard.recv()
        };
        let Ok(work) = work else { return };
        let (seq, item) = match work {
            Work::Problem { seq, problem } if problem.reason.starts_with("vanished") => {
                (seq, Item::Changed(problem))
            }
            Work::Problem { seq, problem } => (seq, Item::Skipped(problem)),
            Work::Item { seq, found } => {
                let mut send = |c: &ChunkRef, data: &[u8]| -> bool {
                    shared.pace.take(data.len());
                    let packed =
                        comp.as_mut().and_then(|z| z.compress(data).ok()).filter(|z| z.len() < data.len());
                    let (codec, data) = match packed {
                        Some(z) => (Codec::Zstd, z),
                        None => (Codec::Plain, data.to_vec()),
                    };
                    !shared.stopped()
                        && tx.send(Msg::Chunk { reader: id, hash: c.hash, len: c.len, codec, data }).is_ok()
                };
                match prepare(root, found, &mut chunker, &mut send, &mut || {
                    tx.send(Msg::Discard { reader: id }).is_ok()
                }) {
                    Some(item) => (seq, item),
                    None => return,
                }
            }
        };
        if tx.send(Msg::Ready { seq, reader: id, item }).is_err() {
            return;
        }
    }
}

fn meta_of(st: &Stat, xattrs: Vec<p2c_common::manifest::Xattr>) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 },
        xattrs,
    }
}

fn abs(root: &Path, p: &RelPath) -> PathBuf {
    if p.is_root() { root.to_path_buf() } else { root.join(OsStr::from_bytes(p.as_bytes())) }
}

/// Turns a walk item into its entries, reading a regular file's data (its chunks go to
/// `send` as they are cut). `None` when the writer stopped.
fn prepare(
    root: &Path,
    f: Found,
    chunker: &mut Chunker,
    send: &mut dyn FnMut(&ChunkRef, &[u8]) -> bool,
    discard: &mut dyn FnMut() -> bool,
) -> Option<Item> {
    let single = |f: Found, data: EntryData| {
        let meta = meta_of(&f.st, f.xattrs);
        Item::Entries(vec![Entry { path: f.path, meta, data, segment: 0, more: false }])
    };
    let data = match &f.kind {
        Walked::Dir => EntryData::Directory,
        Walked::Symlink(t) => EntryData::Symlink { target: t.clone() },
        Walked::Fifo => EntryData::Fifo,
        Walked::Char(a, b) => EntryData::CharDevice { major: *a, minor: *b },
        Walked::Block(a, b) => EntryData::BlockDevice { major: *a, minor: *b },
        Walked::HardLink(t) => EntryData::HardLink { target: t.clone() },
        Walked::File => return read_file(root, f, chunker, send, discard),
    };
    Some(single(f, data))
}

fn read_file(
    root: &Path,
    f: Found,
    chunker: &mut Chunker,
    send: &mut dyn FnMut(&ChunkRef, &[u8]) -> bool,
    discard: &mut dyn FnMut() -> bool,
) -> Option<Item> {
    let path = abs(root, &f.path);
    let mut st = f.st;
    let mut attempt = 1;
    loop {
        let ident = Ident::of(&st);
        match read::chunk_file(&path, ident, chunker, send) {
            Ok(chunks) => return Some(file_entries(f.path, meta_of(&st, f.xattrs), ident.size, chunks)),
            Err(ReadError::Stopped) => return None,
            Err(ReadError::Changed(reason)) => {
                if !discard() {
                    return None;
                }
                // Another read of what the file is now, while it is still a regular file.
                match rustix::fs::lstat(&path) {
                    Ok(now)
                        if attempt < READ_ATTEMPTS
                            && FileType::from_raw_mode(now.st_mode) == FileType::RegularFile =>
                    {
                        st = now;
                        attempt += 1;
                    }
                    _ => return Some(Item::Changed(Problem { path: f.path, reason })),
                }
            }
        }
    }
}

/// A regular file's entries: one, or one per [`MAX_CHUNKS_PER_ENTRY`] chunks.
fn file_entries(path: RelPath, meta: Meta, size: u64, chunks: Vec<ChunkRef>) -> Item {
    let digest = ContentHasher::digest(size, &chunks);
    let segs: Vec<&[ChunkRef]> =
        if chunks.is_empty() { vec![&[][..]] } else { chunks.chunks(MAX_CHUNKS_PER_ENTRY).collect() };
    let n = segs.len();
    Item::Entries(
        segs.into_iter()
            .enumerate()
            .map(|(i, seg)| Entry {
                path: path.clone(),
                meta: meta.clone(),
                data: EntryData::Regular { size, chunks: seg.to_vec(), digest },
                segment: i as u32,
                more: i + 1 < n,
            })
            .collect(),
    )
}

/// The writer: stores chunks once, puts items back in walk order and writes batches.
struct Batcher<'a> {
    w: &'a mut Writer,
    index: &'a mut ChunkIndex,
    counts: &'a mut Trailer,
    entries: Vec<v1::Entry>,
    offsets: Vec<u64>,
    changed: Vec<v1::Problem>,
    skipped: Vec<v1::Problem>,
    chunks: usize,
    data: u64,
    synced_at: u64,
    changed_list: Vec<Problem>,
    skipped_list: Vec<Problem>,
}

impl<'a> Batcher<'a> {
    fn new(w: &'a mut Writer, index: &'a mut ChunkIndex, counts: &'a mut Trailer) -> Self {
        let synced_at = w.offset();
        Batcher {
            w,
            index,
            counts,
            entries: Vec::new(),
            offsets: Vec::new(),
            changed: Vec::new(),
            skipped: Vec::new(),
            chunks: 0,
            data: 0,
            synced_at,
            changed_list: Vec::new(),
            skipped_list: Vec::new(),
        }
    }

    /// Takes the readers' messages until they are done or `cancel` is set.
    fn consume(
        &mut self,
        rx: &Receiver<Msg>,
        slots: &Receiver<()>,
        cancel: &AtomicBool,
    ) -> Result<(), ExportError> {
        let mut pending: Vec<Vec<u64>> = vec![Vec::new(); READERS];
        let mut reorder: BTreeMap<u64, (Item, Vec<u64>)> = BTreeMap::new();
        let mut next = 0u64;
        let mut last_log = Instant::now();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(ExportError::Cancelled(String::new()));
            }
            let msg = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match msg {
                Msg::Chunk { reader, hash, len, codec, data } => {
                    let at = self.chunk(&hash, len, codec, &data)?;
                    pending[reader].push(at);
                }
                Msg::Discard { reader } => pending[reader].clear(),
                Msg::Ready { seq, reader, item } => {
                    reorder.insert(seq, (item, std::mem::take(&mut pending[reader])));
                    while let Some((item, offsets)) = reorder.remove(&next) {
                        next += 1;
                        let _ = slots.try_recv();
                        self.add(item, offsets)?;
                    }
                }
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                last_log = Instant::now();
                info!(
                    objects = self.counts.objects,
                    file_bytes = self.counts.file_bytes,
                    stored = self.w.offset(),
                    "exporting"
                );
            }
        }
        if !reorder.is_empty() {
            return Err(ExportError::Internal(format!("walk item {next} never came back from the readers")));
        }
        Ok(())
    }

    /// Stores a chunk unless the bundle has it; returns its record's offset.
    fn chunk(&mut self, hash: &Hash32, len: u32, codec: Codec, data: &[u8]) -> Result<u64, ExportError> {
        if let Some(at) = self.index.get(hash)? {
            return Ok(at);
        }
        let at = self.w.append(Kind::Chunk, &ChunkRecord::encode(hash, len, codec, data))?;
        self.index.insert(hash, at)?;
        self.counts.chunks += 1;
        self.counts.chunk_bytes += u64::from(len);
        self.counts.stored_bytes += data.len() as u64;
        Ok(at)
    }

    fn add(&mut self, item: Item, offsets: Vec<u64>) -> Result<(), ExportError> {
        let entries = match item {
            Item::Entries(e) => e,
            Item::Changed(p) => {
                if self.changed_list.len() < MAX_LISTED {
                    self.changed_list.push(p.clone());
                }
                self.changed.push(v1::Problem::from(&p));
                return Ok(());
            }
            Item::Skipped(p) => {
                if self.skipped_list.len() < MAX_LISTED {
                    self.skipped_list.push(p.clone());
                }
                self.skipped.push(v1::Problem::from(&p));
                return Ok(());
            }
        };
        let n_of = |e: &Entry| match &e.data {
            EntryData::Regular { chunks, .. } => chunks.len(),
            _ => 0,
        };
        let total: usize = entries.iter().map(n_of).sum();
        if total != offsets.len() {
            return Err(ExportError::Internal(format!(
                "{}: {total} chunks listed, {} stored",
                entries.first().map(|e| e.path.display()).unwrap_or_default(),
                offsets.len()
            )));
        }
        let mut at = 0;
        for e in entries {
            let (n, d) = (n_of(&e), e.data_bytes());
            if !self.entries.is_empty()
                && (self.entries.len() >= BATCH_ENTRIES
                    || self.chunks + n > BATCH_CHUNKS
                    || self.data + d > BATCH_DATA)
            {
                self.flush()?;
            }
            self.offsets.extend_from_slice(&offsets[at..at + n]);
            at += n;
            self.entries.push(v1::Entry::from(&e));
            self.chunks += n;
            self.data += d;
        }
        Ok(())
    }

    /// Writes the batch taken so far.
    fn flush(&mut self) -> Result<(), ExportError> {
        if self.entries.is_empty() && self.changed.is_empty() && self.skipped.is_empty() {
            return Ok(());
        }
        let bb = v1::BundleBatch {
            batch: Some(v1::EntryBatch {
                seq: self.counts.batches,
                entries: std::mem::take(&mut self.entries),
            }),
            chunk_offsets: std::mem::take(&mut self.offsets),
            changed: std::mem::take(&mut self.changed),
            skipped: std::mem::take(&mut self.skipped),
        };
        let info = p2c_proto::bundle::info(&bb).map_err(|e| ExportError::Internal(e.to_string()))?;
        self.w.append(Kind::Batch, &bb.encode_to_vec())?;
        let c = &mut *self.counts;
        c.batches += 1;
        c.entries += info.entries;
        c.objects += info.objects;
        c.file_bytes += info.file_bytes;
        c.changed += info.changed;
        c.skipped += info.skipped;
        self.chunks = 0;
        self.data = 0;
        self.index.commit()?;
        if self.w.offset() - self.synced_at >= SYNC_EVERY {
            self.w.sync()?;
            self.synced_at = self.w.offset();
        }
        Ok(())
    }
}
