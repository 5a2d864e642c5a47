//! The writer thread: applies what the [`Merge`] decides to the tree, batch by batch.
//!
//! Per operation: a carried base entry is counted and listed; a deletion waits for the end
//! of the pass; an entry is made in the tree through the [`Fs`] port unless it is unchanged
//! and still there; a regular file is reassembled from the chunks the peer sends
//! ([`Inbox`]) and those the node already holds (earlier in the same file, files of this
//! batch, the node-wide index), and recorded where its chunks now live. Each batch ends with
//! one store transaction ([`Pending`]) and a [`Down::Written`] to the peer.

use p2c_common::sync::Locked;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use p2c_common::manifest::{ChunkRef, ContentHasher, Entry, EntryData, Hash32, Meta, Problem, Timestamp};
use p2c_common::migration::PassSummary;
use p2c_common::paths::RelPath;
use rustix::fs::FileType;
use tokio::sync::mpsc;

use super::commit::{Manifest, Pending};
use super::fs::Fs;
use super::inbox::Inbox;
use super::manifest::{ManifestReader, ManifestWriter};
use super::merge::{BaseEntries, Change, Merge, Op, kind_code};
use super::store::{Records, Store, TreeRecords};
use super::tally::Tally;
use super::tree_fs::TreeFs;
use super::{
    ChunkMsg, Down, Downlink, Expected, InFlight, PassJob, PlannedBatch, ReceiveError, WriterMsg, protocol,
};
use crate::config::DedupScope;
use crate::state::index::{self, ChunkLocation, FileRecord};
use crate::state::{self};

/// Files at least this large are updated in place (changed chunks written over the old
/// version) when most of their chunks are already there, instead of copied afresh.
const IN_PLACE_MIN: u64 = 64 << 20;

/// What the writer thread returns: what the pass counted and wrote, even if it failed.
pub(crate) type WriterEnd = (PassSummary, Option<Vec<RelPath>>, Option<ReceiveError>);

/// Runs the writer over the pass's tree, store and manifests until `Done` or an error.
pub(crate) fn run<D: Downlink>(
    job: &PassJob,
    rx: mpsc::Receiver<WriterMsg>,
    chunks: mpsc::Receiver<Vec<ChunkMsg>>,
    down: D,
    expected: Expected,
    in_flight: InFlight,
) -> WriterEnd {
    let parts = (|| {
        let fs = TreeFs::open(job)?;
        let store = state::connect(&job.db)?;
        let records = TreeRecords { conn: state::connect(&job.db)?, ctid: job.ctid };
        let manifest = ManifestWriter::create(&job.manifest)?;
        let base = match &job.changes {
            Some(c) => Some(ManifestReader::open(&c.base_manifest)?),
            None => None,
        };
        let merge = Merge::new(job.changes.clone(), records, base);
        let writer = Writer::new(job, fs, store, manifest, Inbox::new(chunks), down, expected, in_flight);
        Ok::<_, ReceiveError>((merge, writer))
    })();
    match parts {
        Ok((mut merge, mut writer)) => drive(&mut merge, &mut writer, rx),
        Err(e) => (PassSummary::default(), None, Some(e)),
    }
}

/// Feeds what the planner sends through the merge into the writer.
pub(crate) fn drive<R, B, F, S, M, D>(
    merge: &mut Merge<R, B>,
    w: &mut Writer<'_, F, S, M, D>,
    mut rx: mpsc::Receiver<WriterMsg>,
) -> WriterEnd
where
    R: Records,
    B: BaseEntries,
    F: Fs,
    S: Store,
    M: Manifest,
    D: Downlink,
{
    let res = (|| {
        loop {
            match rx.blocking_recv() {
                Some(WriterMsg::Batch(b)) => w.batch(merge, &b)?,
                Some(WriterMsg::Done { changed, skipped }) => return w.finish(merge, changed, skipped),
                None => {
                    return Err(ReceiveError::Stream("the transfer ended before the pass was done".into()));
                }
            }
        }
    })();
    w.abort_open();
    let (mut summary, written) = w.tally.take();
    summary.xattr_errors = w.fs.xattr_errors();
    (summary, written, res.err())
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

/// The holes of a file of `size` bytes whose data is `chunks` (sorted, not overlapping):
/// `(offset, length)` of each gap, the one at the end included.
fn holes(chunks: &[ChunkRef], size: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let spans = chunks.iter().map(|c| (c.offset, c.end())).chain(std::iter::once((size, size)));
    spans
        .scan(0u64, move |at, (start, end)| {
            let hole = (start > *at && *at < size).then(|| (*at, start.min(size) - *at));
            *at = (*at).max(end);
            Some(hole)
        })
        .flatten()
}

/// An existing file to update in place, with the offsets whose chunk is already there.
type InPlace<H> = (H, HashSet<u64>);

/// A regular file being written (possibly across several segments and batches).
struct OpenFile<H> {
    path: RelPath,
    key: Vec<u8>,
    meta: Meta,
    /// The content digest the entry announced, checked once all chunks are in.
    digest: Hash32,
    entry_digest: Hash32,
    size: u64,
    content: ContentHasher,
    last_end: u64,
    /// `None` when the file is unchanged (`skip`).
    file: Option<H>,
    /// Chunks written so far: hash → offset in this file (for repeats inside the file).
    written: HashMap<Hash32, u64>,
    chunks: Vec<ChunkRef>,
    /// Unchanged: segments are checked and consumed, nothing is written.
    skip: bool,
    failed: Option<String>,
    /// An update in place of the existing file: the offsets whose chunk is already there.
    in_place: Option<HashSet<u64>>,
}

pub(crate) struct Writer<'j, F: Fs, S, M, D> {
    job: &'j PassJob,
    fs: F,
    store: S,
    manifest: Option<M>,
    inbox: Inbox,
    down: D,
    expected: Expected,
    in_flight: InFlight,
    tally: Tally,
    pending: Pending,
    /// Where the chunks of files completed in this batch live (the index has them once the
    /// batch is committed).
    recent: HashMap<Hash32, ChunkLocation>,
    /// Chunks of this batch the peer sends: no longer in flight once it is written.
    batch_remote: Vec<Hash32>,
    /// Directories listed, with their times, set last (their contents change until then).
    dirs: Vec<(RelPath, Timestamp)>,
    /// Keys of recorded entries the source no longer has, removed when the pass ends; with
    /// whether each is a dropped hard link.
    deleted: Vec<(Vec<u8>, bool)>,
    open: Option<OpenFile<F::File>>,
}

impl<'j, F: Fs, S: Store, M: Manifest, D: Downlink> Writer<'j, F, S, M, D> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: &'j PassJob,
        fs: F,
        store: S,
        manifest: M,
        inbox: Inbox,
        down: D,
        expected: Expected,
        in_flight: InFlight,
    ) -> Self {
        Writer {
            job,
            fs,
            store,
            manifest: Some(manifest),
            inbox,
            down,
            expected,
            in_flight,
            tally: Tally::new(job),
            pending: Pending::new(),
            recent: HashMap::new(),
            batch_remote: Vec::new(),
            dirs: Vec::new(),
            deleted: Vec::new(),
            open: None,
        }
    }

    fn batch<R: Records, B: BaseEntries>(
        &mut self,
        merge: &mut Merge<R, B>,
        b: &PlannedBatch,
    ) -> Result<(), ReceiveError> {
        merge.batch(&b.entries, &b.excluded, &mut |op| self.apply(op, b.seq, &b.remote))?;
        self.end_batch(b.seq)
    }

    fn end_batch(&mut self, seq: u64) -> Result<(), ReceiveError> {
        self.pending.flush(&mut self.store, self.job.ctid)?;
        self.recent.clear();
        {
            let mut f = self.in_flight.locked();
            for h in self.batch_remote.drain(..) {
                f.remove(&h);
            }
        }
        self.down.send(Down::Written { seq }).map_err(|_| ReceiveError::Stream("agent went away".into()))
    }

    /// Applies one operation of the merge; `remote`: per chunk of batch `seq`, whether the
    /// peer sends it.
    fn apply(&mut self, op: Op<'_>, seq: u64, remote: &[bool]) -> Result<(), ReceiveError> {
        match op {
            Op::Carry(e) => self.account(&e),
            Op::Delete { key, dropped_link } => {
                self.deleted.push((key, dropped_link));
                Ok(())
            }
            Op::Apply { entry, key, digest, change, first_chunk } => {
                self.entry(seq, entry, key, digest, change, first_chunk, remote)
            }
            Op::Segment { entry, first_chunk } => self.segment(seq, entry, first_chunk, remote),
        }
    }

    /// Counts an entry (or one segment of a large file) into the pass, against the quota
    /// limits, and adds it to the pass's manifest.
    fn account(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        self.tally.count(e)?;
        if let Some(m) = self.manifest.as_mut() {
            m.push(e)?;
        }
        Ok(())
    }

    /// The part of `remote` that is about the `n` chunks of an entry from `first` on.
    fn chunks_of(remote: &[bool], first: usize, n: usize) -> Result<&[bool], ReceiveError> {
        remote
            .get(first..first + n)
            .ok_or_else(|| ReceiveError::Internal("the plan does not match its batch".into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        seq: u64,
        e: &Entry,
        key: Vec<u8>,
        digest: Hash32,
        change: Change,
        first_chunk: usize,
        remote: &[bool],
    ) -> Result<(), ReceiveError> {
        self.tally.summary.listed += 1;
        self.account(e)?;
        if matches!(change, Change::Changed | Change::Retyped) {
            tracing::debug!(path = %e.path, "changed since the last pass");
        }
        self.job.progress.files_done.fetch_add(1, Ordering::Relaxed);
        let unchanged = change == Change::Unchanged;
        match &e.data {
            EntryData::Regular { size, digest: content, chunks } => {
                let remote = Self::chunks_of(remote, first_chunk, chunks.len())?;
                let skip = unchanged && self.still_there(e)?;
                let in_place = if !skip && change.recorded() && !e.more && *size >= IN_PLACE_MIN {
                    self.plan_in_place(&e.path, &key, chunks, remote)?
                } else {
                    None
                };
                let (file, in_place) = match in_place {
                    _ if skip => (None, None),
                    Some((f, present)) => (Some(f), Some(present)),
                    None => (Some(self.fs.create(&e.path, change.recorded())?), None),
                };
                self.open = Some(OpenFile {
                    path: e.path.clone(),
                    key,
                    meta: e.meta.clone(),
                    digest: *content,
                    entry_digest: digest,
                    size: *size,
                    content: ContentHasher::new(*size),
                    last_end: 0,
                    file,
                    written: HashMap::new(),
                    chunks: Vec::new(),
                    skip,
                    failed: None,
                    in_place,
                });
                self.write_chunks(seq, first_chunk as u32, chunks, remote)?;
                if !e.more {
                    self.close_file()?;
                }
            }
            EntryData::Directory => {
                self.dirs.push((e.path.clone(), e.meta.mtime));
                if !(unchanged && self.still_there(e)?) {
                    self.fs.make_dir(e)?;
                    self.tally.summary.written += 1;
                    self.pending.changes.upserts.push(FileRecord { key, digest, kind: kind_code(&e.data) });
                }
            }
            EntryData::HardLink { target } => {
                if self.fs.hard_link(&e.path, target)? {
                    self.tally.summary.written += 1;
                }
                if !unchanged {
                    self.pending.changes.upserts.push(FileRecord { key, digest, kind: kind_code(&e.data) });
                }
            }
            _ => {
                if !(unchanged && self.still_there(e)?) {
                    self.fs.make_special(e)?;
                    self.tally.summary.written += 1;
                    self.pending.changes.upserts.push(FileRecord { key, digest, kind: kind_code(&e.data) });
                }
            }
        }
        Ok(())
    }

    fn segment(
        &mut self,
        seq: u64,
        e: &Entry,
        first_chunk: usize,
        remote: &[bool],
    ) -> Result<(), ReceiveError> {
        let EntryData::Regular { chunks, .. } = &e.data else {
            return Err(protocol("segment is not a file"));
        };
        self.account(e)?;
        let remote = Self::chunks_of(remote, first_chunk, chunks.len())?;
        self.write_chunks(seq, first_chunk as u32, chunks, remote)?;
        if !e.more {
            self.close_file()?;
        }
        Ok(())
    }

    /// Whether the object recorded for an unchanged entry is still in the tree as recorded.
    fn still_there(&mut self, e: &Entry) -> Result<bool, ReceiveError> {
        let Some(found) = self.fs.stat(&e.path)? else { return Ok(false) };
        if !ft_matches(&e.data, found.ft) {
            return Ok(false);
        }
        Ok(match &e.data {
            EntryData::Regular { size, .. } => found.size == *size,
            EntryData::Directory => true,
            _ => found.mtime_sec == e.meta.mtime.sec,
        })
    }

    // ------------------------------------------------------------------ regular files

    /// Whether the recorded file at `path` can be updated in place: a regular file with one
    /// name, most of whose new chunks are already at their offsets, and no chunk whose only
    /// copy on the node is elsewhere in this same file (writing could overwrite it first).
    /// If so its record is dropped now (a crash in the middle then leaves no record, and
    /// the next pass copies the file afresh) and the open file is returned.
    fn plan_in_place(
        &mut self,
        path: &RelPath,
        key: &[u8],
        chunks: &[ChunkRef],
        remote: &[bool],
    ) -> Result<Option<InPlace<F::File>>, ReceiveError> {
        let Some((file, id)) = self.fs.open_existing(path)? else { return Ok(None) };
        if id.nlink != 1 {
            return Ok(None);
        }
        let mut present = HashSet::new();
        for (c, _) in chunks.iter().zip(remote).filter(|(_, r)| !**r) {
            let loc = match self.recent.get(&c.hash) {
                Some(l) => Some(l.clone()),
                None => self.store.chunk_lookup(&c.hash)?,
            };
            let Some(l) = loc else { continue };
            if l.ctid != self.job.ctid || l.key != key {
                continue;
            }
            if !(id.is(&l) && l.offset == c.offset && l.len == c.len) {
                return Ok(None);
            }
            present.insert(c.offset);
        }
        if present.len() * 2 < chunks.len() {
            return Ok(None);
        }
        self.pending.changes.deletes.push(key.to_vec());
        self.pending.flush(&mut self.store, self.job.ctid)?;
        Ok(Some((file, present)))
    }

    fn write_chunks(
        &mut self,
        seq: u64,
        base: u32,
        chunks: &[ChunkRef],
        remote: &[bool],
    ) -> Result<(), ReceiveError> {
        for (k, (c, &sent)) in chunks.iter().zip(remote).enumerate() {
            let idx = base + k as u32;
            let Some(open) = self.open.as_mut() else { return Err(protocol("chunk outside a file")) };
            if c.offset < open.last_end || c.end() > open.size {
                return Err(protocol(format!("{}: chunks out of order", open.path)));
            }
            open.last_end = c.end();
            open.content.update(c);
            if sent {
                self.batch_remote.push(c.hash);
                let data = self.inbox.take(seq, idx)?;
                self.put_remote(c, data)?;
            } else if open.skip || open.failed.is_some() {
                // Unchanged or already failed: nothing to write.
            } else if open.in_place.as_ref().is_some_and(|p| p.contains(&c.offset)) {
                // Already there in the file being updated.
                open.written.insert(c.hash, c.offset);
            } else if !self.put_local(c)? {
                // The node's copy is gone or stale: ask the peer for it now.
                self.expected.locked().insert((seq, idx), (c.hash, c.len));
                self.down
                    .send(Down::Need { seq, indexes: vec![idx] })
                    .map_err(|_| ReceiveError::Stream("agent went away".into()))?;
                let data = self.inbox.take(seq, idx)?;
                self.put_remote(c, data)?;
            }
            if let Some(open) = self.open.as_mut() {
                open.chunks.push(*c);
            }
            self.job.progress.bytes_done.fetch_add(u64::from(c.len), Ordering::Relaxed);
        }
        Ok(())
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
                    self.fs.write_at(f, &open.path, &data, c.offset)?;
                }
                open.written.insert(c.hash, c.offset);
            }
        }
        Ok(())
    }

    /// Fills a chunk from data already on the node. False when no good copy was found.
    fn put_local(&mut self, c: &ChunkRef) -> Result<bool, ReceiveError> {
        let Some(open) = self.open.as_ref() else { return Ok(false) };
        let Some(f) = open.file.as_ref() else { return Ok(false) };
        // 1. Earlier in this very file.
        if let Some(&off) = open.written.get(&c.hash)
            && self.fs.copy_within(f, off, c)
        {
            self.job.progress.local_bytes.fetch_add(u64::from(c.len), Ordering::Relaxed);
            return Ok(true);
        }
        // 2. Files completed in this batch, then 3. the node-wide index.
        let loc = match self.recent.get(&c.hash) {
            Some(l) => Some(l.clone()),
            None => self
                .store
                .chunk_lookup(&c.hash)?
                .filter(|l| self.job.dedup == DedupScope::Node || l.ctid == self.job.ctid),
        };
        let Some(loc) = loc else { return Ok(false) };
        if loc.len != c.len {
            return Ok(false);
        }
        let ok = self.fs.copy_from(&loc, f, &open.path, c)?;
        if ok {
            self.job.progress.local_bytes.fetch_add(u64::from(c.len), Ordering::Relaxed);
        } else {
            self.recent.remove(&c.hash);
            self.store.chunk_forget(&c.hash, &loc)?;
        }
        Ok(ok)
    }

    fn close_file(&mut self) -> Result<(), ReceiveError> {
        let Some(open) = self.open.take() else { return Ok(()) };
        if open.content.finish() != open.digest {
            if let Some(f) = open.file {
                self.fs.discard(f, &open.path);
            }
            return Err(protocol(format!("{}: content digest does not match its chunks", open.path)));
        }
        if open.skip {
            // Unchanged: its record already says so.
            return Ok(());
        }
        let Some(file) = open.file else { return Ok(()) };
        if let Some(reason) = open.failed {
            self.fs.discard(file, &open.path);
            self.tally.problems.push(Problem { path: open.path, reason });
            return Ok(());
        }
        let p = &open.path;
        if open.in_place.is_some() {
            // The old version's data where the new one has holes reads as zeros no more.
            for (at, len) in holes(&open.chunks, open.size) {
                self.fs.punch_hole(&file, p, at, len)?;
            }
            self.fs.set_len(&file, p, open.size)?;
        } else if open.last_end < open.size {
            self.fs.set_len(&file, p, open.size)?;
        }
        self.fs.set_meta(&file, p, &open.meta)?;
        self.fs.commit(&file, p)?;
        self.tally.summary.written += 1;
        self.tally.summary.changed_bytes += open.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>();
        self.tally.wrote_file(p);
        // Record where each chunk now lives, with the file's identity after the rename.
        if let Some(id) = self.fs.identity(&file) {
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
                    ino: id.ino,
                    size: id.size,
                    mtime_ns: id.mtime_ns,
                    ctime_ns: id.ctime_ns,
                };
                self.recent.insert(c.hash, loc.clone());
                self.pending.changes.chunks.push((c.hash, loc));
            }
        }
        self.pending.changes.upserts.push(FileRecord { key: open.key, digest: open.entry_digest, kind: 1 });
        if self.pending.file_written(open.size) {
            self.pending.flush(&mut self.store, self.job.ctid)?;
        }
        Ok(())
    }

    fn abort_open(&mut self) {
        if let Some(open) = self.open.take()
            && let Some(f) = open.file
        {
            self.fs.discard(f, &open.path);
        }
    }

    // ------------------------------------------------------------------ end of pass

    fn finish<R: Records, B: BaseEntries>(
        &mut self,
        merge: &mut Merge<R, B>,
        changed: Vec<Problem>,
        skipped: Vec<Problem>,
    ) -> Result<(), ReceiveError> {
        if merge.in_file() {
            return Err(protocol("the pass ended inside a segmented file"));
        }
        self.inbox.drain()?;
        merge.finish(&mut |op| self.apply(op, 0, &[]))?;
        self.tally.summary.changes_since = self.job.changes.as_ref().map(|c| c.base);
        // Deepest first, so a deleted directory's records go with it.
        let mut deleted = std::mem::take(&mut self.deleted);
        deleted.sort_by(|a, b| b.0.cmp(&a.0));
        // A dropped hard link's directory is not in this pass: it keeps the time it had
        // before the first removal in it.
        let mut kept_times: HashMap<RelPath, Timestamp> = HashMap::new();
        for (key, dropped_link) in deleted {
            if let Some(path) = index::key_path(&key)
                && !path.is_root()
            {
                if dropped_link
                    && let Some(parent) = path.parent()
                    && !kept_times.contains_key(&parent)
                    && let Some(t) = self.fs.mtime(&parent)?
                {
                    kept_times.insert(parent, t);
                }
                self.fs.remove(&path)?;
                self.tally.summary.deleted += 1;
            }
            self.pending.changes.deletes.push(key);
        }
        self.dirs.extend(kept_times);
        // Directory times last, deepest first, once their contents are final.
        self.dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        for (p, t) in std::mem::take(&mut self.dirs) {
            self.fs.set_dir_time(&p, t)?;
        }
        self.pending.flush(&mut self.store, self.job.ctid)?;
        if let Some(m) = self.manifest.take() {
            m.finish()?;
        }
        let mut changed = changed;
        changed.append(&mut self.tally.problems);
        self.tally.summary.changed_during_read = changed;
        self.tally.summary.skipped = skipped;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
