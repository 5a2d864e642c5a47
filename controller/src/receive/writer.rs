//! Applies planned batches to the container tree (see the module docs of `receive`).

use p2c_common::sync::Locked;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use p2c_common::manifest::{ChunkRef, ContentHasher, Entry, EntryData, Hash32, Meta, Problem, Timestamp};
use p2c_common::migration::PassSummary;
use p2c_common::paths::RelPath;
use p2c_proto::v1;
use rusqlite::Connection;
use rustix::fs::{FileType, Mode};
use tokio::sync::mpsc;

use super::manifest::{ManifestReader, ManifestWriter};
use super::{ChunkMsg, Expected, Outbound, PassJob, PlannedBatch, ReceiveError, WriterMsg, protocol};
use crate::config::DedupScope;
use crate::state::index::{self, BatchCommit, ChunkLocation, FileRecord};
use crate::state::{self};
use crate::tree::{Dir, Tree, TreeError};

/// Files at least this large are updated in place (changed chunks written over the old
/// version) when most of their chunks are already there, instead of copied afresh.
const IN_PLACE_MIN: u64 = 64 << 20;

/// Files written by a pass listed for verification; past this, verification checks all.
const MAX_WRITTEN_LIST: usize = 100_000;

/// Most chunk bytes held for out-of-order arrival before the agent is deemed misbehaving.
const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

pub(crate) fn run(
    job: &PassJob,
    mut rx: mpsc::Receiver<WriterMsg>,
    chunks: mpsc::Receiver<Vec<ChunkMsg>>,
    out: Outbound,
    expected: Expected,
    in_flight: Arc<Mutex<HashSet<Hash32>>>,
) -> (PassSummary, Option<Vec<RelPath>>, Option<ReceiveError>) {
    let mut w = match Writer::new(job, chunks, out, expected, in_flight) {
        Ok(w) => w,
        Err(e) => return (PassSummary::default(), None, Some(e)),
    };
    let res = (|| {
        loop {
            match rx.blocking_recv() {
                Some(WriterMsg::Batch(b)) => w.batch(b)?,
                Some(WriterMsg::Done { changed, skipped }) => return w.finish(changed, skipped),
                None => {
                    return Err(ReceiveError::Stream("the transfer ended before the pass was done".into()));
                }
            }
        }
    })();
    w.abort_open();
    (std::mem::take(&mut w.summary), w.written.take(), res.err())
}

fn kind_code(e: &EntryData) -> u8 {
    match e {
        EntryData::Regular { .. } => 1,
        EntryData::Directory => 2,
        EntryData::Symlink { .. } => 3,
        EntryData::HardLink { .. } => 4,
        EntryData::Fifo => 5,
        EntryData::CharDevice { .. } => 6,
        EntryData::BlockDevice { .. } => 7,
    }
}

fn ft_matches(e: &EntryData, ft: FileType) -> bool {
    matches!(
        (e, ft),
        (EntryData::Regular { .. }, FileType::RegularFile)
            | (EntryData::Directory, FileType::Directory)
            | (EntryData::Symlink { .. }, FileType::Symlink)
            | (EntryData::Fifo, FileType::Fifo)
            | (EntryData::CharDevice { .. }, FileType::CharacterDevice)
            | (EntryData::BlockDevice { .. }, FileType::BlockDevice)
    )
}

fn ns(ts_sec: i64, ts_nsec: i64) -> i64 {
    ts_sec.saturating_mul(1_000_000_000).saturating_add(ts_nsec)
}

/// A regular file being written (possibly across several segments and batches).
struct OpenFile {
    path: RelPath,
    key: Vec<u8>,
    meta: Meta,
    digest: Hash32,
    entry_digest: Hash32,
    size: u64,
    content: ContentHasher,
    last_end: u64,
    dir: Arc<Dir>,
    file: Option<File>,
    /// The temporary name the file is written under; `None` when it is written in place
    /// (nothing was at its name: its record, written last, is what marks it complete).
    tmp: Option<Vec<u8>>,
    /// Chunks written so far: hash → offset in this file (for repeats inside the file).
    written: HashMap<Hash32, u64>,
    chunks: Vec<ChunkRef>,
    /// Unchanged: segments are checked and consumed, nothing is written.
    skip: bool,
    failed: Option<String>,
    /// An update in place of the existing file: the offsets whose chunk is already there.
    in_place: Option<HashSet<u64>>,
}

impl OpenFile {
    /// Removes the unfinished file: its temporary name, or its own name when it was being
    /// written in place (nothing was there before).
    fn discard(&self) {
        let name = self.tmp.as_deref().unwrap_or(self.path.file_name());
        let _ = rustix::fs::unlinkat(self.dir.fd(), name, rustix::fs::AtFlags::empty());
    }
}

/// The file local chunks were last copied from, kept open.
struct SrcFile {
    ctid: u32,
    key: Vec<u8>,
    file: File,
    st: rustix::fs::Stat,
}

/// The merge of the pass's entries with the store's record of the tree.
struct Cursor {
    page: VecDeque<FileRecord>,
    fetched: Option<Vec<u8>>,
    started: bool,
    exhausted: bool,
}

struct Writer<'a> {
    job: &'a PassJob,
    tree: Tree,
    conn: Connection,
    out: Outbound,
    expected: Expected,
    in_flight: Arc<Mutex<HashSet<Hash32>>>,
    chunks: mpsc::Receiver<Vec<ChunkMsg>>,
    pending: HashMap<(u64, u32), bytes::Bytes>,
    pending_bytes: usize,
    unavailable: HashMap<(u64, u32), String>,
    cursor: Cursor,
    manifest: Option<ManifestWriter>,
    last_key: Option<Vec<u8>>,
    dirs: Vec<(RelPath, Timestamp)>,
    open: Option<OpenFile>,
    recent: HashMap<Hash32, ChunkLocation>,
    commit: BatchCommit,
    batch_remote: Vec<Hash32>,
    parent: Option<Arc<Dir>>,
    other_trees: HashMap<u32, Option<Tree>>,
    summary: PassSummary,
    total_bytes: u64,
    total_inodes: u64,
    problems: Vec<Problem>,
    copy_buf: Vec<u8>,
    /// Keys of recorded entries the source no longer has, removed when the pass ends.
    deleted: Vec<Vec<u8>>,
    /// Regular files this pass wrote (`None` when too many to list).
    pub(crate) written: Option<Vec<RelPath>>,
    src_file: Option<SrcFile>,
    /// When the store last got this pass's progress (commits also happen inside batches so
    /// that a crash loses little).
    last_commit: std::time::Instant,
    uncommitted_bytes: u64,
    /// A pass that lists changes: the base pass's manifest, carried into this pass's where
    /// the listing does not speak.
    base: Option<BaseCursor>,
    /// Directories this pass found gone (or no longer directories): what was beneath them
    /// is gone too. Sorted walk keys, none inside another.
    dead: Vec<Vec<u8>>,
    /// Base entries outside the listing that cannot stay: hard links whose first name the
    /// listing removed or replaced (the next full walk brings them back as they are).
    dropped: HashSet<Vec<u8>>,
}

struct BaseCursor {
    reader: ManifestReader,
    peeked: Option<Entry>,
}

impl<'a> Writer<'a> {
    fn new(
        job: &'a PassJob,
        chunks: mpsc::Receiver<Vec<ChunkMsg>>,
        out: Outbound,
        expected: Expected,
        in_flight: Arc<Mutex<HashSet<Hash32>>>,
    ) -> Result<Self, ReceiveError> {
        let tree = Tree::create(&job.tree)?;
        let conn = state::connect(&job.db)?;
        let manifest = Some(ManifestWriter::create(&job.manifest)?);
        let base = match &job.changes {
            Some(c) => Some(BaseCursor { reader: ManifestReader::open(&c.base_manifest)?, peeked: None }),
            None => None,
        };
        Ok(Writer {
            job,
            tree,
            conn,
            out,
            expected,
            in_flight,
            chunks,
            pending: HashMap::new(),
            pending_bytes: 0,
            unavailable: HashMap::new(),
            cursor: Cursor { page: VecDeque::new(), fetched: None, started: false, exhausted: false },
            manifest,
            last_key: None,
            dirs: Vec::new(),
            open: None,
            recent: HashMap::new(),
            commit: BatchCommit::default(),
            batch_remote: Vec::new(),
            parent: None,
            other_trees: HashMap::new(),
            summary: PassSummary::default(),
            total_bytes: 0,
            total_inodes: 0,
            problems: Vec::new(),
            copy_buf: Vec::new(),
            deleted: Vec::new(),
            written: Some(Vec::new()),
            src_file: None,
            last_commit: std::time::Instant::now(),
            uncommitted_bytes: 0,
            base,
            dead: Vec::new(),
            dropped: HashSet::new(),
        })
    }

    // ------------------------------------------------------------------ merge with the record

    fn refill(&mut self) -> Result<(), ReceiveError> {
        if self.cursor.exhausted {
            return Ok(());
        }
        // Never re-read what this pass already processed (its rows may be new).
        let after = match (&self.cursor.fetched, &self.last_key) {
            (Some(f), Some(l)) => Some(std::cmp::max(f, l).clone()),
            (Some(f), None) => Some(f.clone()),
            (None, Some(l)) => Some(l.clone()),
            (None, None) => None,
        };
        let after = if self.cursor.started { after } else { None };
        let page = index::files_after(&self.conn, self.job.ctid, after.as_deref(), 1024)?;
        self.cursor.started = true;
        if page.is_empty() {
            self.cursor.exhausted = true;
        }
        if let Some(last) = page.last() {
            self.cursor.fetched = Some(last.key.clone());
        }
        self.cursor.page.extend(page);
        Ok(())
    }

    /// Deletes recorded entries before `key` (the source no longer has them) and returns
    /// the record for `key` itself. `None` as key: to the end.
    fn advance_to(&mut self, key: Option<&[u8]>) -> Result<Option<FileRecord>, ReceiveError> {
        loop {
            if self.cursor.page.is_empty() {
                self.refill()?;
                if self.cursor.page.is_empty() {
                    return Ok(None);
                }
            }
            let Some(front) = self.cursor.page.front() else { return Ok(None) };
            match key {
                Some(k) if front.key.as_slice() == k => return Ok(self.cursor.page.pop_front()),
                Some(k) if front.key.as_slice() > k => return Ok(None),
                _ => {}
            }
            let Some(rec) = self.cursor.page.pop_front() else { return Ok(None) };
            if self.job.changes.is_some() {
                if !self.gone(&rec.key) {
                    continue; // outside the listing: stays as it is
                }
                if rec.kind == 2 {
                    self.mark_dead(&rec.key);
                }
            }
            // Removed at the end of the pass: until then a renamed file's old name can still
            // give its data to the new one.
            self.deleted.push(rec.key);
        }
    }

    // ------------------------------------------------------------------ listings of changes

    /// In a pass that lists changes: whether what the base had at `key` is gone unless this
    /// pass sends it again.
    fn gone(&self, key: &[u8]) -> bool {
        match &self.job.changes {
            None => true,
            Some(c) => c.covers(key) || super::in_any(&self.dead, key) || self.dropped.contains(key),
        }
    }

    fn mark_dead(&mut self, key: &[u8]) {
        if super::in_any(&self.dead, key) {
            return;
        }
        let i = self.dead.partition_point(|k| k.as_slice() < key);
        let end = i + self.dead[i..].iter().take_while(|k| super::key_under(k, key)).count();
        self.dead.splice(i..end, [key.to_vec()]);
    }

    /// Carries the base pass's entries before `upto` (`None`: all that are left) into this
    /// pass's manifest where the listing does not speak; drops the one at `upto` (the pass
    /// sends it again, as a directory when `new_is_dir`).
    fn carry_base(&mut self, upto: Option<&[u8]>, new_is_dir: bool) -> Result<(), ReceiveError> {
        loop {
            let Some(base) = self.base.as_mut() else { return Ok(()) };
            if base.peeked.is_none() {
                base.peeked = base.reader.next_segment()?;
            }
            let Some(e) = base.peeked.as_ref() else { return Ok(()) };
            let key = e.path.walk_key();
            if upto.is_some_and(|u| key.as_slice() > u) {
                return Ok(());
            }
            let Some(e) = base.peeked.take() else { return Ok(()) };
            let is_dir = matches!(e.data, EntryData::Directory);
            if upto == Some(key.as_slice()) {
                if is_dir && !new_is_dir {
                    self.mark_dead(&key);
                }
                continue;
            }
            if self.gone(&key) {
                if is_dir {
                    self.mark_dead(&key);
                }
                continue;
            }
            if let EntryData::HardLink { target } = &e.data
                && self.gone(&target.walk_key())
            {
                self.dropped.insert(key);
                continue;
            }
            self.account(&e)?;
        }
    }

    /// Counts an entry (or one segment of a large file) into the pass, against the quota
    /// limits, and adds it to the pass's manifest.
    fn account(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        if e.segment == 0 {
            self.summary.entries += 1;
            if !matches!(e.data, EntryData::HardLink { .. }) {
                self.total_inodes += 1;
            }
        }
        let bytes = e.data_bytes();
        self.total_bytes += bytes;
        self.summary.data_bytes += bytes;
        self.check_limits()?;
        if let Some(m) = self.manifest.as_mut() {
            m.push(e)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ batches

    fn batch(&mut self, b: PlannedBatch) -> Result<(), ReceiveError> {
        let mut idx = 0usize;
        for (i, e) in b.entries.iter().enumerate() {
            let n = match &e.data {
                EntryData::Regular { chunks, .. } => chunks.len(),
                _ => 0,
            };
            let remote = &b.remote[idx..idx + n];
            let base = idx as u32;
            idx += n;
            self.entry(b.seq, base, e, remote, b.excluded[i])?;
        }
        self.end_batch(b.seq)
    }

    fn end_batch(&mut self, seq: u64) -> Result<(), ReceiveError> {
        self.flush()?;
        self.recent.clear();
        {
            let mut f = self.in_flight.locked();
            for h in self.batch_remote.drain(..) {
                f.remove(&h);
            }
        }
        let msg = v1::TransferDown { msg: Some(v1::transfer_down::Msg::Written(v1::BatchWritten { seq })) };
        self.out.blocking_send(Ok(msg)).map_err(|_| ReceiveError::Stream("agent went away".into()))
    }

    fn entry(
        &mut self,
        seq: u64,
        base: u32,
        e: &Entry,
        remote: &[bool],
        excluded: bool,
    ) -> Result<(), ReceiveError> {
        if e.segment > 0 {
            return self.continue_file(seq, base, e, remote);
        }
        if self.open.is_some() {
            return Err(protocol(format!("{}: a new entry started inside a segmented file", e.path)));
        }
        let key = index::walk_key(&e.path);
        if let Some(last) = &self.last_key
            && key <= *last
        {
            return Err(protocol(format!("{} is out of walk order or repeated", e.path)));
        }
        self.carry_base(Some(&key), matches!(e.data, EntryData::Directory))?;
        // The cursor reads on from the last key processed: `last_key` moves only after it.
        let old = self.advance_to(Some(&key))?;
        self.last_key = Some(key.clone());
        if self.job.changes.is_some()
            && old.as_ref().is_some_and(|r| r.kind == 2)
            && !matches!(e.data, EntryData::Directory)
        {
            self.mark_dead(&key);
        }
        if excluded {
            // Copied before, excluded now: it leaves the container.
            if let Some(rec) = old {
                self.deleted.push(rec.key);
            }
            return Ok(());
        }
        self.summary.listed += 1;
        self.account(e)?;
        let digest = e.digest();
        let unchanged = old.as_ref().is_some_and(|r| r.digest == digest && r.kind == kind_code(&e.data));
        if old.is_some() && !unchanged {
            tracing::debug!(path = %e.path, "changed since the last pass");
        }
        self.job.progress.files_done.fetch_add(1, Ordering::Relaxed);
        match &e.data {
            EntryData::Regular { size, digest: content, chunks } => {
                let skip = unchanged && self.still_there(e)?;
                let in_place = if !skip && old.is_some() && !e.more && *size >= IN_PLACE_MIN {
                    self.plan_in_place(&e.path, &key, chunks, remote)?
                } else {
                    None
                };
                self.open_file(e, key, digest, *size, *content, skip, old.is_some(), in_place)?;
                self.write_chunks(seq, base, chunks, remote)?;
                if !e.more {
                    self.close_file()?;
                }
                Ok(())
            }
            EntryData::Directory => {
                self.dirs.push((e.path.clone(), e.meta.mtime));
                if !(unchanged && self.still_there(e)?) {
                    self.apply_dir(e)?;
                    self.summary.written += 1;
                    self.commit.upserts.push(FileRecord { key, digest, kind: 2 });
                }
                Ok(())
            }
            EntryData::HardLink { target } => {
                self.apply_hardlink(e, target)?;
                if !unchanged {
                    self.commit.upserts.push(FileRecord { key, digest, kind: 4 });
                }
                Ok(())
            }
            _ => {
                if !(unchanged && self.still_there(e)?) {
                    self.apply_special(e)?;
                    self.summary.written += 1;
                    self.commit.upserts.push(FileRecord { key, digest, kind: kind_code(&e.data) });
                }
                Ok(())
            }
        }
    }

    fn check_limits(&self) -> Result<(), ReceiveError> {
        if let Some(l) = self.job.byte_limit
            && self.total_bytes > l
        {
            return Err(ReceiveError::Quota {
                what: format!("{} of file data > DISKSPACE hard limit {}", self.total_bytes, l),
            });
        }
        if let Some(l) = self.job.inode_limit
            && self.total_inodes > l
        {
            return Err(ReceiveError::Quota {
                what: format!("{} entries > DISKINODES hard limit {}", self.total_inodes, l),
            });
        }
        Ok(())
    }

    /// Whether the object recorded for an unchanged entry is still in the tree as recorded.
    fn still_there(&mut self, e: &Entry) -> Result<bool, ReceiveError> {
        let st = if e.path.is_root() {
            self.tree.lstat(&e.path)?
        } else {
            match self.parent_dir(&e.path) {
                Ok(d) => d.lstat(e.path.file_name())?,
                Err(ReceiveError::Protocol(_)) => None,
                Err(err) => return Err(err),
            }
        };
        let Some(st) = st else { return Ok(false) };
        let ft = FileType::from_raw_mode(st.st_mode);
        if !ft_matches(&e.data, ft) {
            return Ok(false);
        }
        Ok(match &e.data {
            EntryData::Regular { size, .. } => st.st_size as u64 == *size,
            EntryData::Directory => true,
            _ => st.st_mtime == e.meta.mtime.sec,
        })
    }

    fn parent_dir(&mut self, path: &RelPath) -> Result<Arc<Dir>, ReceiveError> {
        let parent = path.parent().ok_or_else(|| protocol("the root has no parent"))?;
        if let Some(d) = &self.parent
            && *d.rel() == parent
        {
            return Ok(d.clone());
        }
        let d = self.tree.dir(&parent).map_err(|e| match e {
            TreeError::Io { source, .. } if source.raw_os_error() == Some(libc_enoent()) => {
                protocol(format!("{path}: its parent directory was not sent first"))
            }
            // The tree refuses to resolve through anything but real directories (a planted
            // symlink gives ENOTDIR or ELOOP): name what is in the way.
            TreeError::Io { source, .. }
                if source.raw_os_error() == Some(libc_enotdir())
                    || source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
            {
                match self.blocked_by(&parent) {
                    Some((p, kind)) => {
                        protocol(format!("{path}: its parent {p} is a {kind}, not a directory"))
                    }
                    None => protocol(format!("{path}: its parent is not a directory")),
                }
            }
            other => other.into(),
        })?;
        let d = Arc::new(d);
        self.parent = Some(d.clone());
        Ok(d)
    }

    /// The first component of `dir` (a path the tree could not open as a directory) that is
    /// not a directory, with its type.
    fn blocked_by(&self, dir: &RelPath) -> Option<(RelPath, &'static str)> {
        let mut cur = RelPath::ROOT;
        for c in dir.components() {
            cur = cur.join(c).ok()?;
            let st = self.tree.lstat(&cur).ok()??;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft != FileType::Directory {
                return Some((cur, crate::tree::type_name(ft)));
            }
        }
        None
    }

    // ------------------------------------------------------------------ regular files

    #[allow(clippy::too_many_arguments)]
    fn open_file(
        &mut self,
        e: &Entry,
        key: Vec<u8>,
        entry_digest: Hash32,
        size: u64,
        digest: Hash32,
        skip: bool,
        recorded: bool,
        in_place: Option<(File, HashSet<u64>)>,
    ) -> Result<(), ReceiveError> {
        let dir = self.parent_dir(&e.path)?;
        let (in_place_file, in_place) = match in_place {
            Some((f, present)) => (Some(f), Some(present)),
            None => (None, None),
        };
        // Writes at chunk offsets leave holes between extents; a hole at the end is made when
        // the file is closed. A file the store does not know, with nothing at its name, is
        // written in place; anything else under a temporary name renamed over it at the end.
        let (file, tmp) = if skip {
            (None, None)
        } else if let Some(f) = in_place_file {
            (Some(f), None)
        } else {
            let direct = if recorded { None } else { dir.create_new(e.path.file_name())? };
            match direct {
                Some(f) => (Some(f), None),
                None => {
                    let (f, tmp) = dir.create_temp(e.path.file_name())?;
                    (Some(f), Some(tmp))
                }
            }
        };
        self.open = Some(OpenFile {
            path: e.path.clone(),
            key,
            meta: e.meta.clone(),
            digest,
            entry_digest,
            size,
            content: ContentHasher::new(size),
            last_end: 0,
            dir,
            file,
            tmp,
            written: HashMap::new(),
            chunks: Vec::new(),
            skip,
            failed: None,
            in_place,
        });
        Ok(())
    }

    /// Whether the recorded file at `path` can be updated in place: a regular file with one
    /// name, most of whose new chunks are already at their offsets, and no chunk whose only
    /// copy on the node is elsewhere in this same file (writing could overwrite it first).
    /// If so its record is dropped now — a crash in the middle then leaves no record, and
    /// the next pass copies the file afresh — and the open file is returned.
    fn plan_in_place(
        &mut self,
        path: &RelPath,
        key: &[u8],
        chunks: &[ChunkRef],
        remote: &[bool],
    ) -> Result<Option<(File, HashSet<u64>)>, ReceiveError> {
        let dir = self.parent_dir(path)?;
        let Some(file) = dir.open_rw(path.file_name())? else { return Ok(None) };
        let Ok(st) = rustix::fs::fstat(&file) else { return Ok(None) };
        if st.st_nlink != 1 {
            return Ok(None);
        }
        let mut present = HashSet::new();
        for (k, c) in chunks.iter().enumerate() {
            if remote[k] {
                continue;
            }
            let loc = match self.recent.get(&c.hash) {
                Some(l) => Some(l.clone()),
                None => index::chunk_lookup(&self.conn, &c.hash)?,
            };
            let Some(l) = loc else { continue };
            if l.ctid != self.job.ctid || l.key != key {
                continue;
            }
            let trusted = l.ino == st.st_ino
                && l.size == st.st_size as u64
                && l.mtime_ns == ns(st.st_mtime, st.st_mtime_nsec as i64)
                && l.ctime_ns == ns(st.st_ctime, st.st_ctime_nsec as i64);
            if !(trusted && l.offset == c.offset && l.len == c.len) {
                return Ok(None);
            }
            present.insert(c.offset);
        }
        if present.len() * 2 < chunks.len() {
            return Ok(None);
        }
        self.commit.deletes.push(key.to_vec());
        self.flush()?;
        Ok(Some((file, present)))
    }

    fn continue_file(&mut self, seq: u64, base: u32, e: &Entry, remote: &[bool]) -> Result<(), ReceiveError> {
        let Some(open) = &self.open else {
            return Err(protocol(format!("{}: segment without a file", e.path)));
        };
        if open.path != e.path {
            return Err(protocol(format!("{}: segment of another file", e.path)));
        }
        let EntryData::Regular { chunks, .. } = &e.data else {
            return Err(protocol("segment is not a file"));
        };
        self.account(e)?;
        self.write_chunks(seq, base, chunks, remote)?;
        if !e.more {
            self.close_file()?;
        }
        Ok(())
    }

    fn write_chunks(
        &mut self,
        seq: u64,
        base: u32,
        chunks: &[ChunkRef],
        remote: &[bool],
    ) -> Result<(), ReceiveError> {
        for (k, c) in chunks.iter().enumerate() {
            let idx = base + k as u32;
            {
                let Some(open) = self.open.as_mut() else { return Err(protocol("chunk outside a file")) };
                if c.offset < open.last_end || c.end() > open.size {
                    return Err(protocol(format!("{}: chunks out of order", open.path)));
                }
                open.last_end = c.end();
                open.content.update(c);
            }
            if remote[k] {
                self.batch_remote.push(c.hash);
                let data = self.take_chunk(seq, idx)?;
                self.put_remote(c, data)?;
            } else if self.open.as_ref().is_some_and(|o| o.skip || o.failed.is_some()) {
                // Unchanged or already failed: nothing to write.
            } else if let Some(open) = self.open.as_mut()
                && open.in_place.as_ref().is_some_and(|p| p.contains(&c.offset))
            {
                // Already there in the file being updated.
                open.written.insert(c.hash, c.offset);
            } else if !self.put_local(c)? {
                // The node's copy is gone or stale: ask the agent for it now.
                self.expected.locked().insert((seq, idx), (c.hash, c.len));
                let need = v1::TransferDown {
                    msg: Some(v1::transfer_down::Msg::Need(v1::NeedChunks { seq, indexes: vec![idx] })),
                };
                self.out
                    .blocking_send(Ok(need))
                    .map_err(|_| ReceiveError::Stream("agent went away".into()))?;
                let data = self.take_chunk(seq, idx)?;
                self.put_remote(c, data)?;
            }
            if let Some(open) = self.open.as_mut() {
                open.chunks.push(*c);
            }
            self.job.progress.bytes_done.fetch_add(u64::from(c.len), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits for chunk (seq, idx); `Err(reason)` inside `Ok` when the agent could not read it.
    fn take_chunk(&mut self, seq: u64, idx: u32) -> Result<Result<bytes::Bytes, String>, ReceiveError> {
        loop {
            if let Some(d) = self.pending.remove(&(seq, idx)) {
                self.pending_bytes -= d.len();
                return Ok(Ok(d));
            }
            if let Some(r) = self.unavailable.remove(&(seq, idx)) {
                return Ok(Err(r));
            }
            let Some(batch) = self.chunks.blocking_recv() else {
                return Err(ReceiveError::Stream("the transfer ended while chunks were due".into()));
            };
            for m in batch {
                match m {
                    ChunkMsg::Data { seq: s, index, data } => {
                        self.pending_bytes += data.len();
                        if self.pending_bytes > MAX_PENDING_BYTES {
                            return Err(protocol("too many chunks sent out of order"));
                        }
                        self.pending.insert((s, index), data);
                    }
                    ChunkMsg::Unavailable { seq: s, index, reason } => {
                        self.unavailable.insert((s, index), reason);
                    }
                    ChunkMsg::Invalid(m) => return Err(protocol(m)),
                }
            }
        }
    }

    fn put_remote(&mut self, c: &ChunkRef, data: Result<bytes::Bytes, String>) -> Result<(), ReceiveError> {
        let Some(open) = self.open.as_mut() else { return Err(protocol("chunk outside a file")) };
        match data {
            Err(reason) => {
                if open.failed.is_none() {
                    open.failed = Some(reason);
                }
            }
            Ok(data) => {
                if open.skip || open.failed.is_some() {
                    return Ok(());
                }
                if let Some(f) = &open.file {
                    f.write_all_at(&data, c.offset).map_err(|e| tree_io(&open.path, "write", e))?;
                }
                open.written.insert(c.hash, c.offset);
            }
        }
        Ok(())
    }

    /// Fills a chunk from data already on the node. False when no good copy was found.
    fn put_local(&mut self, c: &ChunkRef) -> Result<bool, ReceiveError> {
        // 1. Earlier in this very file.
        if let Some(open) = self.open.as_mut()
            && let (Some(&off), Some(f)) = (open.written.get(&c.hash), open.file.as_ref())
        {
            let mut buf = std::mem::take(&mut self.copy_buf);
            buf.resize(c.len as usize, 0);
            let ok = f.read_exact_at(&mut buf, off).is_ok()
                && Hash32::of(&buf) == c.hash
                && f.write_all_at(&buf, c.offset).is_ok();
            self.copy_buf = buf;
            if ok {
                self.job.progress.local_bytes.fetch_add(u64::from(c.len), Ordering::Relaxed);
                return Ok(true);
            }
        }
        // 2. Files completed in this batch, then 3. the node-wide index.
        let loc = match self.recent.get(&c.hash) {
            Some(l) => Some(l.clone()),
            None => index::chunk_lookup(&self.conn, &c.hash)?
                .filter(|l| self.job.dedup == DedupScope::Node || l.ctid == self.job.ctid),
        };
        let Some(loc) = loc else { return Ok(false) };
        if loc.len != c.len {
            return Ok(false);
        }
        let ok = self.copy_from(&loc, c)?;
        if ok {
            self.job.progress.local_bytes.fetch_add(u64::from(c.len), Ordering::Relaxed);
        } else {
            self.recent.remove(&c.hash);
            index::chunk_forget(&self.conn, &c.hash, &loc)?;
        }
        Ok(ok)
    }

    fn tree_of(&mut self, ctid: u32) -> Option<&Tree> {
        if ctid == self.job.ctid {
            return Some(&self.tree);
        }
        let root = self.job.private_root.join(ctid.to_string());
        self.other_trees.entry(ctid).or_insert_with(|| Tree::open(&root).ok()).as_ref()
    }

    /// Copies a chunk from a recorded location after making sure it still holds it: a file
    /// whose identity (inode, size, mtime, ctime) is as recorded is trusted; otherwise the
    /// bytes are read and hashed.
    fn copy_from(&mut self, loc: &ChunkLocation, c: &ChunkRef) -> Result<bool, ReceiveError> {
        let Some(path) = index::key_path(&loc.key) else { return Ok(false) };
        if path.is_root() {
            return Ok(false);
        }
        // Consecutive chunks mostly come from one file (an earlier version, or the same file
        // in another container): keep it open.
        let same = |s: &SrcFile| {
            s.ctid == loc.ctid
                && s.key == loc.key
                && s.st.st_ino == loc.ino
                && ns(s.st.st_ctime, s.st.st_ctime_nsec as i64) == loc.ctime_ns
        };
        // Reopened when the path now holds another file than the one kept open.
        if !self.src_file.as_ref().is_some_and(same) {
            self.src_file = None;
            let Some(tree) = self.tree_of(loc.ctid) else { return Ok(false) };
            let Ok((dir, name)) = tree.parent(&path) else { return Ok(false) };
            let Ok(Some(file)) = dir.open_read(name) else { return Ok(false) };
            let Ok(st) = rustix::fs::fstat(&file) else { return Ok(false) };
            self.src_file = Some(SrcFile { ctid: loc.ctid, key: loc.key.clone(), file, st });
        }
        let Some(SrcFile { file: src, st, .. }) = self.src_file.as_ref() else { return Ok(false) };
        let trusted = st.st_ino == loc.ino
            && st.st_size as u64 == loc.size
            && ns(st.st_mtime, st.st_mtime_nsec as i64) == loc.mtime_ns
            && ns(st.st_ctime, st.st_ctime_nsec as i64) == loc.ctime_ns;
        let Some(open) = self.open.as_ref() else { return Ok(false) };
        let Some(dst) = open.file.as_ref() else { return Ok(false) };
        if trusted {
            let mut off_in = loc.offset;
            let mut off_out = c.offset;
            let mut left = c.len as usize;
            while left > 0 {
                match rustix::fs::copy_file_range(
                    src.as_fd(),
                    Some(&mut off_in),
                    dst.as_fd(),
                    Some(&mut off_out),
                    left,
                ) {
                    Ok(0) => return Ok(false),
                    Ok(n) => left -= n,
                    Err(_) => break,
                }
            }
            if left == 0 {
                return Ok(true);
            }
        }
        let mut buf = std::mem::take(&mut self.copy_buf);
        buf.resize(c.len as usize, 0);
        let ok = src.read_exact_at(&mut buf, loc.offset).is_ok() && Hash32::of(&buf) == c.hash;
        let res = if ok {
            dst.write_all_at(&buf, c.offset).map_err(|e| tree_io(&open.path, "write", e)).map(|_| true)
        } else {
            Ok(false)
        };
        self.copy_buf = buf;
        res
    }

    fn close_file(&mut self) -> Result<(), ReceiveError> {
        let Some(open) = self.open.take() else { return Ok(()) };
        if open.content.finish() != open.digest {
            if open.file.is_some() {
                open.discard();
            }
            return Err(protocol(format!("{}: content digest does not match its chunks", open.path)));
        }
        if open.skip {
            // Unchanged: its record already says so.
            return Ok(());
        }
        let Some(file) = open.file.as_ref() else { return Ok(()) };
        if let Some(reason) = open.failed.clone() {
            open.discard();
            self.problems.push(Problem { path: open.path, reason });
            return Ok(());
        }
        let m = &open.meta;
        let p = &open.path;
        if open.in_place.is_some() {
            // The old version's data where the new one has holes reads as zeros no more.
            let mut at = 0u64;
            for c in open.chunks.iter().chain(std::iter::once(&ChunkRef {
                hash: Hash32([0; 32]),
                offset: open.size,
                len: 0,
            })) {
                if c.offset > at && at < open.size {
                    let len = c.offset.min(open.size) - at;
                    rustix::fs::fallocate(
                        file,
                        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                        at,
                        len,
                    )
                    .map_err(|e| tree_io(p, "punch hole", e.into()))?;
                }
                at = at.max(c.end());
            }
            file.set_len(open.size).map_err(|err| tree_io(p, "truncate", err))?;
        } else if open.last_end < open.size {
            file.set_len(open.size).map_err(|err| tree_io(p, "truncate", err))?;
        }
        rustix::fs::fchown(file, Some(crate::tree::uid_of(m.uid)), Some(crate::tree::gid_of(m.gid)))
            .map_err(|e| tree_io(p, "chown", e.into()))?;
        rustix::fs::fchmod(file, Mode::from_raw_mode(m.mode)).map_err(|e| tree_io(p, "chmod", e.into()))?;
        self.set_xattrs_fd(file, p, &m.xattrs);
        let ts = rustix::fs::Timespec { tv_sec: m.mtime.sec, tv_nsec: m.mtime.nsec.into() };
        rustix::fs::futimens(file, &rustix::fs::Timestamps { last_access: ts, last_modification: ts })
            .map_err(|e| tree_io(p, "set times", e.into()))?;
        if let Some(tmp) = &open.tmp {
            open.dir.commit(tmp, p.file_name())?;
        }
        self.summary.written += 1;
        self.summary.changed_bytes += open.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>();
        if let Some(w) = self.written.as_mut() {
            if w.len() < MAX_WRITTEN_LIST {
                w.push(p.clone());
            } else {
                self.written = None;
            }
        }
        // Record where each chunk now lives, with the file's identity after the rename.
        if let Ok(st) = rustix::fs::fstat(file) {
            let mut seen = HashSet::new();
            for c in &open.chunks {
                if !seen.insert(c.hash) {
                    continue;
                }
                let loc = ChunkLocation {
                    ctid: self.job.ctid,
                    key: open.key.clone(),
                    offset: c.offset,
                    len: c.len,
                    ino: st.st_ino,
                    size: st.st_size as u64,
                    mtime_ns: ns(st.st_mtime, st.st_mtime_nsec as i64),
                    ctime_ns: ns(st.st_ctime, st.st_ctime_nsec as i64),
                };
                self.recent.insert(c.hash, loc.clone());
                self.commit.chunks.push((c.hash, loc));
            }
        }
        self.commit.upserts.push(FileRecord { key: open.key, digest: open.entry_digest, kind: 1 });
        self.uncommitted_bytes += open.size;
        if self.uncommitted_bytes >= 8 << 20
            || self.last_commit.elapsed() >= std::time::Duration::from_secs(1)
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Records what is written so far (without acknowledging the batch).
    fn flush(&mut self) -> Result<(), ReceiveError> {
        let commit = std::mem::take(&mut self.commit);
        if !commit.is_empty() {
            index::commit_batch(&mut self.conn, self.job.ctid, &commit)?;
        }
        self.last_commit = std::time::Instant::now();
        self.uncommitted_bytes = 0;
        Ok(())
    }

    fn abort_open(&mut self) {
        if let Some(open) = self.open.take()
            && open.file.is_some()
        {
            open.discard();
        }
    }

    // ------------------------------------------------------------------ other kinds

    fn set_xattrs_fd(&mut self, f: &File, path: &RelPath, xattrs: &[p2c_common::manifest::Xattr]) {
        if !self.job.keep_xattrs {
            return;
        }
        for x in xattrs.iter().filter(|x| x.name != b"security.selinux") {
            if rustix::fs::fsetxattr(f, &x.name[..], &x.value[..], rustix::fs::XattrFlags::empty()).is_err() {
                self.summary.xattr_errors += 1;
                tracing::debug!(path = %path, "cannot set extended attribute");
            }
        }
    }

    fn set_xattrs_name(&mut self, dir: &Dir, name: &[u8], xattrs: &[p2c_common::manifest::Xattr]) {
        if !self.job.keep_xattrs {
            return;
        }
        for x in xattrs.iter().filter(|x| x.name != b"security.selinux") {
            if dir.set_xattr(name, &x.name, &x.value).is_err() {
                self.summary.xattr_errors += 1;
            }
        }
    }

    fn apply_dir(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        let m = &e.meta;
        if e.path.is_root() {
            let root = self.tree.root_fd();
            rustix::fs::fchown(root, Some(crate::tree::uid_of(m.uid)), Some(crate::tree::gid_of(m.gid)))
                .map_err(|err| tree_io(&e.path, "chown", err.into()))?;
            rustix::fs::fchmod(root, Mode::from_raw_mode(m.mode))
                .map_err(|err| tree_io(&e.path, "chmod", err.into()))?;
            let f = File::from(rustix::io::dup(root).map_err(|err| tree_io(&e.path, "dup", err.into()))?);
            self.set_xattrs_fd(&f, &e.path, &m.xattrs);
            return Ok(());
        }
        let parent = self.parent_dir(&e.path)?;
        let name = e.path.file_name();
        let d = parent.ensure_dir(name, 0o700)?;
        parent.chown(name, m.uid, m.gid)?;
        parent.chmod(name, m.mode)?;
        let f = File::from(rustix::io::dup(d.fd()).map_err(|err| tree_io(&e.path, "dup", err.into()))?);
        self.set_xattrs_fd(&f, &e.path, &m.xattrs);
        Ok(())
    }

    fn apply_special(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        let parent = self.parent_dir(&e.path)?;
        let tmp = crate::tree::temp_name();
        let m = &e.meta;
        match &e.data {
            EntryData::Symlink { target } => parent.symlink(target, &tmp)?,
            EntryData::Fifo => parent.mknod(&tmp, FileType::Fifo, m.mode, 0, 0)?,
            EntryData::CharDevice { major, minor } => {
                parent.mknod(&tmp, FileType::CharacterDevice, m.mode, *major, *minor)?
            }
            EntryData::BlockDevice { major, minor } => {
                parent.mknod(&tmp, FileType::BlockDevice, m.mode, *major, *minor)?
            }
            _ => return Err(ReceiveError::Internal("apply_special on a file or directory".into())),
        }
        let res = (|| {
            parent.chown(&tmp, m.uid, m.gid)?;
            if !matches!(e.data, EntryData::Symlink { .. }) {
                parent.chmod(&tmp, m.mode)?;
            }
            Ok::<(), ReceiveError>(())
        })();
        if let Err(err) = res {
            let _ = parent.remove_all(&tmp);
            return Err(err);
        }
        self.set_xattrs_name(&parent, &tmp, &m.xattrs);
        parent.set_mtime(&tmp, m.mtime.sec, m.mtime.nsec)?;
        parent.commit(&tmp, e.path.file_name())?;
        Ok(())
    }

    fn apply_hardlink(&mut self, e: &Entry, target: &RelPath) -> Result<(), ReceiveError> {
        let tst = match self.tree.lstat(target) {
            Ok(Some(st)) => st,
            missing => {
                // Never resolved through a planted symlink: say so rather than "not sent".
                if let Some((p, kind)) = target.parent().and_then(|t| self.blocked_by(&t)) {
                    return Err(protocol(format!(
                        "{}: hard link to {target}, beneath {p}, which is a {kind}",
                        e.path
                    )));
                }
                missing?.ok_or_else(|| {
                    protocol(format!("{}: hard link to {target}, which was not sent", e.path))
                })?
            }
        };
        if FileType::from_raw_mode(tst.st_mode) == FileType::Directory {
            return Err(protocol(format!("{}: hard link to a directory", e.path)));
        }
        if let Some(st) = self.tree.lstat(&e.path)?
            && st.st_ino == tst.st_ino
            && st.st_dev == tst.st_dev
        {
            return Ok(());
        }
        let parent = self.parent_dir(&e.path)?;
        let (tdir, tname) = self.tree.parent(target)?;
        let tmp = crate::tree::temp_name();
        parent.link_from(&tdir, tname, &tmp)?;
        parent.commit(&tmp, e.path.file_name())?;
        self.summary.written += 1;
        Ok(())
    }

    // ------------------------------------------------------------------ end of pass

    fn finish(&mut self, changed: Vec<Problem>, skipped: Vec<Problem>) -> Result<(), ReceiveError> {
        if self.open.is_some() {
            return Err(protocol("the pass ended inside a segmented file"));
        }
        // Every chunk sent must have been asked for, even where no file waited for it (the
        // verifier flags the others). The reader stopped at Done, so this ends promptly.
        while let Some(batch) = self.chunks.blocking_recv() {
            for m in batch {
                if let ChunkMsg::Invalid(m) = m {
                    return Err(protocol(m));
                }
            }
        }
        self.carry_base(None, false)?;
        self.advance_to(None)?;
        self.summary.changes_since = self.job.changes.as_ref().map(|c| c.base);
        // Deepest first, so a deleted directory's records go with it.
        let mut deleted = std::mem::take(&mut self.deleted);
        deleted.sort_by(|a, b| b.cmp(a));
        // A dropped hard link's directory is not in this pass: it keeps the time it had
        // before the first removal in it.
        let mut kept_times: HashMap<RelPath, Timestamp> = HashMap::new();
        for key in deleted {
            if let Some(path) = index::key_path(&key)
                && !path.is_root()
            {
                self.parent = None;
                if self.dropped.contains(&key)
                    && let Some(parent) = path.parent()
                    && !kept_times.contains_key(&parent)
                    && let Some(st) = self.tree.lstat(&parent)?
                {
                    kept_times.insert(parent, Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 });
                }
                self.tree.remove(&path)?;
                self.summary.deleted += 1;
            }
            self.commit.deletes.push(key);
        }
        self.dirs.extend(kept_times);
        // Directory times last, deepest first, once their contents are final.
        self.dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        for (p, t) in std::mem::take(&mut self.dirs) {
            if p.is_root() {
                let ts = rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec.into() };
                rustix::fs::futimens(
                    self.tree.root_fd(),
                    &rustix::fs::Timestamps { last_access: ts, last_modification: ts },
                )
                .map_err(|e| tree_io(&p, "set times", e.into()))?;
            } else if let Ok((d, name)) = self.tree.parent(&p) {
                d.set_mtime(name, t.sec, t.nsec)?;
            }
        }
        let commit = std::mem::take(&mut self.commit);
        if !commit.is_empty() {
            index::commit_batch(&mut self.conn, self.job.ctid, &commit)?;
        }
        if let Some(m) = self.manifest.take() {
            m.finish()?;
        }
        let mut changed = changed;
        changed.append(&mut self.problems);
        self.summary.changed_during_read = changed;
        self.summary.skipped = skipped;
        Ok(())
    }
}

fn tree_io(p: &RelPath, op: &'static str, e: std::io::Error) -> ReceiveError {
    ReceiveError::Tree(TreeError::Io { path: p.display(), op, source: e })
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}
