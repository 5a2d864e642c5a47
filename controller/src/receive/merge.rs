//! The merge: what one pass's listing means for the tree, decided without touching it.
//!
//! Three streams in walk order meet here: the entries the peer lists (batch by batch), the
//! records of what the tree holds (the store's `files`), and, for a pass that lists only
//! changes, the base pass's manifest. [`Merge`] turns them into [`Op`]s, in walk order, each
//! handed to a sink as soon as it is decided (the writer applies it before the merge reads
//! on, so nothing is buffered and the first error stops both). It does no I/O of its own:
//! records and base entries come through [`Records`] and [`BaseEntries`], and whatever needs
//! the tree itself (is an unchanged entry still there? where does a chunk come from?) is the
//! writer's to find out.
//!
//! It also enforces the listing's structure: strict walk order (so no path twice), and the
//! segments of a large file one after another with nothing between them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use p2c_common::manifest::{Entry, EntryData, Hash32};
use p2c_common::paths::RelPath;

use super::manifest::ManifestReader;
use super::store::Records;
use super::{Changes, ReceiveError, in_any, key_under, protocol};
use crate::state::index::FileRecord;

/// The base pass's manifest, entry by entry (a large file's segments one by one).
pub(crate) trait BaseEntries {
    fn next_segment(&mut self) -> Result<Option<Entry>, ReceiveError>;
}

impl BaseEntries for ManifestReader {
    fn next_segment(&mut self) -> Result<Option<Entry>, ReceiveError> {
        Ok(ManifestReader::next_segment(self)?)
    }
}

/// The kind of an entry as the store records it.
pub(crate) fn kind_code(e: &EntryData) -> u8 {
    match e {
        EntryData::Regular { .. } => 1,
        EntryData::Directory => DIRECTORY,
        EntryData::Symlink { .. } => 3,
        EntryData::HardLink { .. } => 4,
        EntryData::Fifo => 5,
        EntryData::CharDevice { .. } => 6,
        EntryData::BlockDevice { .. } => 7,
    }
}

/// [`kind_code`] of a directory.
const DIRECTORY: u8 = 2;

/// Records read from the store at a time.
const RECORD_PAGE: usize = 1024;

/// How an entry the peer lists relates to what the store records at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing is recorded there: the entry is created.
    New,
    /// Recorded with the same digest and kind: kept, if the tree still holds it as recorded.
    Unchanged,
    /// Recorded as the same kind with another digest: replaced. Content and metadata are
    /// one digest in the record, so a change of metadata only is replaced too (its data is
    /// then copied from the old version on the node, not sent).
    Changed,
    /// Recorded as another kind: the old object goes and the new one takes its place (in a
    /// listing of changes, with what the base had beneath an old directory).
    Retyped,
}

impl Change {
    /// Whether the store records something at the entry's path.
    pub fn recorded(self) -> bool {
        self != Change::New
    }
}

/// What to do, in walk order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// A base entry (or one segment of a large file) kept where the listing does not speak:
    /// counted into the pass and its manifest; the tree keeps it as it is.
    Carry(Entry),
    /// What the store records at `key` and the source no longer has (or is excluded now):
    /// removed when the pass ends, so that until then a renamed file's old name can still
    /// give its data to the new one. `dropped_link`: a hard link the base had outside the
    /// listing, whose first name the listing removed or replaced (the next full walk brings
    /// it back as it is).
    Delete { key: Vec<u8>, dropped_link: bool },
    /// An entry to apply (a large file's first segment). `first_chunk`: the index of its
    /// first chunk in the batch's chunk list.
    Apply { entry: &'a Entry, key: Vec<u8>, digest: Hash32, change: Change, first_chunk: usize },
    /// A later segment of the file being received: more of its chunks.
    Segment { entry: &'a Entry, first_chunk: usize },
}

/// The merge's state between batches.
pub(crate) struct Merge<R, B> {
    /// What a listing of changes speaks for; `None`: the pass walks everything.
    changes: Option<Arc<Changes>>,
    records: RecordCursor<R>,
    base: Option<BaseCursor<B>>,
    /// The walk key of the last entry listed.
    last_key: Option<Vec<u8>>,
    /// Directories this pass found gone (or no longer directories): what was beneath them
    /// is gone too. Sorted walk keys, none inside another.
    dead: Vec<Vec<u8>>,
    /// Base entries outside the listing that cannot stay: hard links whose first name the
    /// listing removed or replaced.
    dropped: HashSet<Vec<u8>>,
    /// The large file whose segments are coming, from its first segment to its last.
    open: Option<RelPath>,
}

struct RecordCursor<R> {
    src: R,
    page: VecDeque<FileRecord>,
    /// The last key read from the store.
    fetched: Option<Vec<u8>>,
    started: bool,
    exhausted: bool,
}

struct BaseCursor<B> {
    src: B,
    /// The next base entry, with its walk key.
    peeked: Option<(Entry, Vec<u8>)>,
}

impl<R: Records, B: BaseEntries> Merge<R, B> {
    /// `base`: the base pass's manifest, for a listing of changes (`changes` set).
    pub fn new(changes: Option<Arc<Changes>>, records: R, base: Option<B>) -> Self {
        Merge {
            changes,
            records: RecordCursor {
                src: records,
                page: VecDeque::new(),
                fetched: None,
                started: false,
                exhausted: false,
            },
            base: base.map(|src| BaseCursor { src, peeked: None }),
            last_key: None,
            dead: Vec::new(),
            dropped: HashSet::new(),
            open: None,
        }
    }

    /// Whether the last entry listed is a large file with segments still to come.
    pub fn in_file(&self) -> bool {
        self.open.is_some()
    }

    /// Merges one batch: `excluded` says, per entry, that an operator exclude covers it.
    /// Every operation goes to `sink` as soon as it is decided; the first error (the sink's
    /// or a listing out of order) ends the batch.
    pub fn batch<'a, F>(
        &mut self,
        entries: &'a [Entry],
        excluded: &[bool],
        sink: &mut F,
    ) -> Result<(), ReceiveError>
    where
        F: FnMut(Op<'a>) -> Result<(), ReceiveError>,
    {
        let mut first_chunk = 0usize;
        for (e, &excluded) in entries.iter().zip(excluded) {
            self.entry(e, excluded, first_chunk, sink)?;
            if let EntryData::Regular { chunks, .. } = &e.data {
                first_chunk += chunks.len();
            }
        }
        Ok(())
    }

    /// The end of the listing: what the base had after the last entry is carried where the
    /// listing does not speak, and what the store records after it is deleted.
    pub fn finish<'a, F>(&mut self, sink: &mut F) -> Result<(), ReceiveError>
    where
        F: FnMut(Op<'a>) -> Result<(), ReceiveError>,
    {
        if self.open.is_some() {
            return Err(protocol("the pass ended inside a segmented file"));
        }
        self.carry_base(None, false, sink)?;
        self.advance_to(None, sink)?;
        Ok(())
    }

    fn entry<'a, F>(
        &mut self,
        e: &'a Entry,
        excluded: bool,
        first_chunk: usize,
        sink: &mut F,
    ) -> Result<(), ReceiveError>
    where
        F: FnMut(Op<'a>) -> Result<(), ReceiveError>,
    {
        if e.segment > 0 {
            let Some(open) = &self.open else {
                return Err(protocol(format!("{}: segment without a file", e.path)));
            };
            if *open != e.path {
                return Err(protocol(format!("{}: segment of another file", e.path)));
            }
            if !matches!(e.data, EntryData::Regular { .. }) {
                return Err(protocol("segment is not a file"));
            }
            if !e.more {
                self.open = None;
            }
            return sink(Op::Segment { entry: e, first_chunk });
        }
        if self.open.is_some() {
            return Err(protocol(format!("{}: a new entry started inside a segmented file", e.path)));
        }
        let key = e.path.walk_key();
        if let Some(last) = &self.last_key
            && key <= *last
        {
            return Err(protocol(format!("{} is out of walk order or repeated", e.path)));
        }
        let is_dir = matches!(e.data, EntryData::Directory);
        self.carry_base(Some(&key), is_dir, sink)?;
        // The record cursor reads on from the last key listed: `last_key` moves only after.
        let old = self.advance_to(Some(&key), sink)?;
        self.last_key = Some(key.clone());
        if self.changes.is_some() && old.as_ref().is_some_and(|r| r.kind == DIRECTORY) && !is_dir {
            self.mark_dead(&key);
        }
        if excluded {
            // Copied before, excluded now: it leaves the container.
            if let Some(rec) = old {
                self.delete(rec.key, sink)?;
            }
            return Ok(());
        }
        let digest = e.digest();
        let change = match &old {
            None => Change::New,
            Some(r) if r.kind != kind_code(&e.data) => Change::Retyped,
            Some(r) if r.digest == digest => Change::Unchanged,
            Some(_) => Change::Changed,
        };
        if e.more && matches!(e.data, EntryData::Regular { .. }) {
            self.open = Some(e.path.clone());
        }
        sink(Op::Apply { entry: e, key, digest, change, first_chunk })
    }

    fn delete<'a, F>(&mut self, key: Vec<u8>, sink: &mut F) -> Result<(), ReceiveError>
    where
        F: FnMut(Op<'a>) -> Result<(), ReceiveError>,
    {
        let dropped_link = self.dropped.contains(&key);
        sink(Op::Delete { key, dropped_link })
    }

    // ------------------------------------------------------------------ the tree's records

    fn refill(&mut self) -> Result<(), ReceiveError> {
        let c = &mut self.records;
        if c.exhausted {
            return Ok(());
        }
        // Never re-read what this pass already listed (its rows may be new).
        let after = match (c.fetched.as_deref(), self.last_key.as_deref()) {
            _ if !c.started => None,
            (Some(f), Some(l)) => Some(f.max(l)),
            (f, l) => f.or(l),
        };
        let page = c.src.files_after(after, RECORD_PAGE)?;
        c.started = true;
        if page.is_empty() {
            c.exhausted = true;
        }
        if let Some(last) = page.last() {
            c.fetched = Some(last.key.clone());
        }
        c.page.extend(page);
        Ok(())
    }

    /// Deletes the records before `key` that the source no longer has, and returns the
    /// record of `key` itself. `None` as key: to the end.
    fn advance_to<'a, F>(
        &mut self,
        key: Option<&[u8]>,
        sink: &mut F,
    ) -> Result<Option<FileRecord>, ReceiveError>
    where
        F: FnMut(Op<'a>) -> Result<(), ReceiveError>,
    {
        loop {
            if self.records.page.is_empty() {
                self.refill()?;
            }
            let Some(front) = self.records.page.front() else { return Ok(None) };
            match key {
                Some(k) if front.key.as_slice() == k => return Ok(self.records.page.pop_front()),
                Some(k) if front.key.as_slice() > k => return Ok(None),
                _ => {}
            }
            let Some(rec) = self.records.page.pop_front() else { return Ok(None) };
            if self.changes.is_some() {
                if !self.gone(&rec.key) {
                    continue; // outside the listing: stays as it is
                }
                if rec.kind == DIRECTORY {
                    self.mark_dead(&rec.key);
                }
            }
            self.delete(rec.key, sink)?;
        }
    }

    // ------------------------------------------------------------------ listings of changes

    /// In a pass that lists changes: whether what the base had at `key` is gone unless this
    /// pass sends it again. In a pass that walks everything, all is.
    fn gone(&self, key: &[u8]) -> bool {
        match &self.changes {
            None => true,
            Some(c) => c.covers(key) || in_any(&self.dead, key) || self.dropped.contains(key),
        }
    }

    fn mark_dead(&mut self, key: &[u8]) {
        if in_any(&self.dead, key) {
            return;
        }
        let i = self.dead.partition_point(|k| k.as_slice() < key);
        let end = i + self.dead[i..].iter().take_while(|k| key_under(k, key)).count();
        self.dead.splice(i..end, [key.to_vec()]);
    }

    /// Carries the base pass's entries before `upto` (`None`: all that are left) into this
    /// pass where the listing does not speak; drops the one at `upto` (the pass sends it
    /// again, as a directory when `new_is_dir`).
    fn carry_base<'a, F>(
        &mut self,
        upto: Option<&[u8]>,
        new_is_dir: bool,
        sink: &mut F,
    ) -> Result<(), ReceiveError>
    where
        F: FnMut(Op<'a>) -> Result<(), ReceiveError>,
    {
        loop {
            let Some(base) = self.base.as_mut() else { return Ok(()) };
            if base.peeked.is_none() {
                base.peeked = base.src.next_segment()?.map(|e| {
                    let key = e.path.walk_key();
                    (e, key)
                });
            }
            let Some((_, key)) = base.peeked.as_ref() else { return Ok(()) };
            if upto.is_some_and(|u| key.as_slice() > u) {
                return Ok(());
            }
            let Some((e, key)) = base.peeked.take() else { return Ok(()) };
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
            sink(Op::Carry(e))?;
        }
    }
}

#[cfg(test)]
mod tests;
