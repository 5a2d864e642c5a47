//! Test doubles for the receive path's ports: an in-memory tree ([`MemFs`]), store
//! ([`MemStore`], [`MemRecords`]), base manifest and pass manifest, and entry builders.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use p2c_common::manifest::{ChunkRef, ContentHasher, Entry, EntryData, Hash32, Meta, Timestamp};
use p2c_common::paths::RelPath;
use rustix::fs::FileType;

use super::commit::Manifest;
use super::fs::{FileId, Found, Fs};
use super::manifest::ManifestError;
use super::merge::BaseEntries;
use super::store::{Records, Store};
use super::{PassJob, Progress, ReceiveError, protocol};
use crate::config::DedupScope;
use crate::state::StoreError;
use crate::state::index::{self, BatchCommit, ChunkLocation, FileRecord};

pub(crate) fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

pub(crate) fn job(ctid: u32) -> PassJob {
    PassJob {
        ctid,
        pass: 1,
        tree: "/nonexistent/tree".into(),
        private_root: "/nonexistent".into(),
        db: "/nonexistent/db".into(),
        manifest: "/nonexistent/manifest".into(),
        excludes: Vec::new(),
        keep_xattrs: false,
        dedup: DedupScope::Node,
        byte_limit: None,
        inode_limit: None,
        progress: Arc::new(Progress::default()),
        changes_offered: None,
        changes: None,
    }
}

fn entry(path: &str, mode: u32, data: EntryData) -> Entry {
    let meta = Meta { mode, mtime: Timestamp { sec: 1_700_000_000, nsec: 0 }, ..Meta::default() };
    Entry { path: rel(path), meta, data, segment: 0, more: false }
}

pub(crate) fn dir(path: &str) -> Entry {
    entry(path, 0o755, EntryData::Directory)
}

/// A regular file of exactly its chunks.
pub(crate) fn file(path: &str, chunks: &[ChunkRef]) -> Entry {
    let size = chunks.last().map_or(0, |c| c.end());
    let digest = ContentHasher::digest(size, chunks);
    entry(path, 0o644, EntryData::Regular { size, chunks: chunks.to_vec(), digest })
}

pub(crate) fn symlink(path: &str, target: &str) -> Entry {
    entry(path, 0o777, EntryData::Symlink { target: target.as_bytes().to_vec() })
}

pub(crate) fn hardlink(path: &str, target: &str) -> Entry {
    entry(path, 0o644, EntryData::HardLink { target: rel(target) })
}

/// What the store would record for `e`.
pub(crate) fn record(e: &Entry) -> FileRecord {
    FileRecord { key: e.path.walk_key(), digest: e.digest(), kind: super::merge::kind_code(&e.data) }
}

/// The chunks of `data`, cut every `size` bytes.
pub(crate) fn chunks_of(data: &[u8], size: usize) -> Vec<ChunkRef> {
    data.chunks(size)
        .enumerate()
        .map(|(i, c)| ChunkRef { hash: Hash32::of(c), offset: (i * size) as u64, len: c.len() as u32 })
        .collect()
}

// ---------------------------------------------------------------------------- store

#[derive(Clone, Debug, Default)]
pub(crate) struct MemStore {
    pub files: BTreeMap<Vec<u8>, FileRecord>,
    pub chunks: HashMap<Hash32, ChunkLocation>,
    /// Transactions committed.
    pub commits: usize,
    /// Index entries dropped as stale.
    pub forgotten: Vec<Hash32>,
}

impl MemStore {
    /// The records as a merge reads them at the start of a pass.
    pub fn records(&self) -> MemRecords {
        MemRecords { rows: self.files.values().cloned().collect(), asked: Vec::new() }
    }
}

impl Store for MemStore {
    fn chunk_lookup(&mut self, hash: &Hash32) -> Result<Option<ChunkLocation>, StoreError> {
        Ok(self.chunks.get(hash).cloned())
    }

    fn chunk_exists(&mut self, hash: &Hash32) -> Result<bool, StoreError> {
        Ok(self.chunks.contains_key(hash))
    }

    fn chunk_forget(&mut self, hash: &Hash32, loc: &ChunkLocation) -> Result<(), StoreError> {
        if self
            .chunks
            .get(hash)
            .is_some_and(|l| l.ctid == loc.ctid && l.key == loc.key && l.offset == loc.offset)
        {
            self.chunks.remove(hash);
            self.forgotten.push(*hash);
        }
        Ok(())
    }

    fn commit(&mut self, _ctid: u32, c: &BatchCommit) -> Result<(), StoreError> {
        for r in &c.upserts {
            self.files.insert(r.key.clone(), r.clone());
        }
        for k in &c.deletes {
            self.files.remove(k);
        }
        for (h, l) in &c.chunks {
            self.chunks.insert(*h, l.clone());
        }
        self.commits += 1;
        Ok(())
    }
}

/// Records in walk order; remembers where each page started.
#[derive(Default)]
pub(crate) struct MemRecords {
    pub rows: Vec<FileRecord>,
    pub asked: Vec<Option<Vec<u8>>>,
}

impl MemRecords {
    pub fn of(entries: &[&Entry]) -> Self {
        let mut rows: Vec<_> = entries.iter().map(|e| record(e)).collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        MemRecords { rows, asked: Vec::new() }
    }
}

impl Records for MemRecords {
    fn files_after(&mut self, after: Option<&[u8]>, limit: usize) -> Result<Vec<FileRecord>, StoreError> {
        self.asked.push(after.map(<[u8]>::to_vec));
        Ok(self
            .rows
            .iter()
            .filter(|r| after.is_none_or(|a| r.key.as_slice() > a))
            .take(limit)
            .cloned()
            .collect())
    }
}

// ---------------------------------------------------------------------------- manifests

/// A base pass's manifest.
pub(crate) struct MemBase(pub VecDeque<Entry>);

impl BaseEntries for MemBase {
    fn next_segment(&mut self) -> Result<Option<Entry>, ReceiveError> {
        Ok(self.0.pop_front())
    }
}

/// A pass's manifest, kept for the test to read.
#[derive(Clone, Default)]
pub(crate) struct MemManifest {
    pub entries: Rc<RefCell<Vec<Entry>>>,
    pub finished: Rc<RefCell<bool>>,
}

impl Manifest for MemManifest {
    fn push(&mut self, e: &Entry) -> Result<(), ManifestError> {
        self.entries.borrow_mut().push(e.clone());
        Ok(())
    }

    fn finish(self) -> Result<(), ManifestError> {
        *self.finished.borrow_mut() = true;
        Ok(())
    }
}

// ---------------------------------------------------------------------------- tree

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub ft: FileType,
    pub data: Vec<u8>,
    pub meta: Meta,
    pub ino: u64,
    pub ctime: i64,
}

/// A file being written: its bytes, and where they go.
pub(crate) struct MemHandle(u64);

struct Open {
    path: RelPath,
    data: Vec<u8>,
    ino: u64,
    meta: Meta,
    /// Written at its own name (in place, or nothing was there).
    direct: bool,
    committed: bool,
}

/// An in-memory tree. `log` lists what changed, one line per operation.
pub(crate) struct MemFs {
    pub nodes: HashMap<RelPath, Node>,
    open: HashMap<u64, Open>,
    clock: u64,
    pub log: Vec<String>,
}

impl MemFs {
    /// A tree with an empty root directory.
    pub fn new() -> Self {
        let mut fs = MemFs { nodes: HashMap::new(), open: HashMap::new(), clock: 0, log: Vec::new() };
        fs.put(RelPath::ROOT, FileType::Directory, Vec::new(), Meta::default());
        fs
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn put(&mut self, path: RelPath, ft: FileType, data: Vec<u8>, meta: Meta) -> u64 {
        let ino = self.tick();
        self.nodes.insert(path, Node { ft, data, meta, ino, ctime: ino as i64 });
        ino
    }

    /// The bytes of the regular file at `path`.
    pub fn data(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(&rel(path)).filter(|n| n.ft == FileType::RegularFile).map(|n| &n.data[..])
    }

    fn parent_ok(&self, path: &RelPath) -> Result<(), ReceiveError> {
        let parent = path.parent().ok_or_else(|| protocol("the root has no parent"))?;
        match self.nodes.get(&parent) {
            Some(n) if n.ft == FileType::Directory => Ok(()),
            Some(_) => Err(protocol(format!("{path}: its parent is not a directory"))),
            None => Err(protocol(format!("{path}: its parent directory was not sent first"))),
        }
    }

    fn remove_all(&mut self, path: &RelPath) {
        self.nodes.retain(|p, _| !(p == path || (p.starts_with(path) && !path.is_root())));
    }

    fn handle(&self, f: &MemHandle) -> &Open {
        &self.open[&f.0]
    }

    fn handle_mut(&mut self, f: &MemHandle) -> &mut Open {
        self.open.get_mut(&f.0).unwrap()
    }

    fn id_of(&self, ino: u64, size: u64, meta: &Meta, ctime: i64) -> FileId {
        let nlink = self.nodes.values().filter(|n| n.ino == ino).count().max(1) as u64;
        let mtime_ns = meta.mtime.sec * 1_000_000_000 + i64::from(meta.mtime.nsec);
        FileId { ino, size, mtime_ns, ctime_ns: ctime, nlink }
    }
}

impl Fs for MemFs {
    type File = MemHandle;

    fn stat(&mut self, path: &RelPath) -> Result<Option<Found>, ReceiveError> {
        Ok(self.nodes.get(path).map(|n| Found {
            ft: n.ft,
            size: n.data.len() as u64,
            mtime_sec: n.meta.mtime.sec,
        }))
    }

    fn mtime(&mut self, path: &RelPath) -> Result<Option<Timestamp>, ReceiveError> {
        Ok(self.nodes.get(path).map(|n| n.meta.mtime))
    }

    fn make_dir(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        if !e.path.is_root() {
            self.parent_ok(&e.path)?;
        }
        self.log.push(format!("mkdir {}", e.path));
        match self.nodes.get_mut(&e.path) {
            Some(n) if n.ft == FileType::Directory => n.meta = e.meta.clone(),
            _ => {
                self.remove_all(&e.path);
                self.put(e.path.clone(), FileType::Directory, Vec::new(), e.meta.clone());
            }
        }
        Ok(())
    }

    fn make_special(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        self.parent_ok(&e.path)?;
        let (ft, data) = match &e.data {
            EntryData::Symlink { target } => (FileType::Symlink, target.clone()),
            EntryData::Fifo => (FileType::Fifo, Vec::new()),
            EntryData::CharDevice { .. } => (FileType::CharacterDevice, Vec::new()),
            EntryData::BlockDevice { .. } => (FileType::BlockDevice, Vec::new()),
            _ => return Err(ReceiveError::Internal("make_special on a file or directory".into())),
        };
        self.log.push(format!("make {}", e.path));
        self.remove_all(&e.path);
        self.put(e.path.clone(), ft, data, e.meta.clone());
        Ok(())
    }

    fn hard_link(&mut self, path: &RelPath, target: &RelPath) -> Result<bool, ReceiveError> {
        let Some(t) = self.nodes.get(target).cloned() else {
            return Err(protocol(format!("{path}: hard link to {target}, which was not sent")));
        };
        if t.ft == FileType::Directory {
            return Err(protocol(format!("{path}: hard link to a directory")));
        }
        if self.nodes.get(path).is_some_and(|n| n.ino == t.ino) {
            return Ok(false);
        }
        self.parent_ok(path)?;
        self.log.push(format!("link {path}"));
        self.remove_all(path);
        self.nodes.insert(path.clone(), t);
        Ok(true)
    }

    fn create(&mut self, path: &RelPath, recorded: bool) -> Result<MemHandle, ReceiveError> {
        self.parent_ok(path)?;
        let direct = !recorded && !self.nodes.contains_key(path);
        let ino = self.tick();
        if direct {
            self.nodes.insert(
                path.clone(),
                Node {
                    ft: FileType::RegularFile,
                    data: Vec::new(),
                    meta: Meta::default(),
                    ino,
                    ctime: ino as i64,
                },
            );
        }
        self.log.push(format!("create {path}{}", if direct { "" } else { " (temporary)" }));
        let open = Open {
            path: path.clone(),
            data: Vec::new(),
            ino,
            meta: Meta::default(),
            direct,
            committed: false,
        };
        self.open.insert(ino, open);
        Ok(MemHandle(ino))
    }

    fn open_existing(&mut self, path: &RelPath) -> Result<Option<(MemHandle, FileId)>, ReceiveError> {
        self.parent_ok(path)?;
        let Some(n) = self.nodes.get(path).filter(|n| n.ft == FileType::RegularFile).cloned() else {
            return Ok(None);
        };
        let id = self.id_of(n.ino, n.data.len() as u64, &n.meta, n.ctime);
        let open = Open {
            path: path.clone(),
            data: n.data,
            ino: n.ino,
            meta: n.meta,
            direct: true,
            committed: false,
        };
        let h = self.tick();
        self.open.insert(h, open);
        Ok(Some((MemHandle(h), id)))
    }

    fn write_at(
        &mut self,
        f: &MemHandle,
        _path: &RelPath,
        data: &[u8],
        offset: u64,
    ) -> Result<(), ReceiveError> {
        let buf = &mut self.handle_mut(f).data;
        let end = offset as usize + data.len();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn copy_within(&mut self, f: &MemHandle, from: u64, c: &ChunkRef) -> bool {
        let src = self.handle(f).data.get(from as usize..from as usize + c.len as usize).map(<[u8]>::to_vec);
        match src {
            Some(d) if Hash32::of(&d) == c.hash => self.write_at(f, &RelPath::ROOT, &d, c.offset).is_ok(),
            _ => false,
        }
    }

    fn copy_from(
        &mut self,
        loc: &ChunkLocation,
        f: &MemHandle,
        path: &RelPath,
        c: &ChunkRef,
    ) -> Result<bool, ReceiveError> {
        let Some(src) = index::key_path(&loc.key).and_then(|p| self.nodes.get(&p)) else { return Ok(false) };
        let start = loc.offset as usize;
        let Some(d) = src.data.get(start..start + c.len as usize).map(<[u8]>::to_vec) else {
            return Ok(false);
        };
        if Hash32::of(&d) != c.hash {
            return Ok(false);
        }
        self.write_at(f, path, &d, c.offset)?;
        Ok(true)
    }

    fn punch_hole(&mut self, f: &MemHandle, path: &RelPath, at: u64, len: u64) -> Result<(), ReceiveError> {
        self.log.push(format!("punch {path} {at}+{len}"));
        let buf = &mut self.handle_mut(f).data;
        let end = ((at + len) as usize).min(buf.len());
        buf[(at as usize).min(end)..end].fill(0);
        Ok(())
    }

    fn set_len(&mut self, f: &MemHandle, _path: &RelPath, len: u64) -> Result<(), ReceiveError> {
        self.handle_mut(f).data.resize(len as usize, 0);
        Ok(())
    }

    fn set_meta(&mut self, f: &MemHandle, _path: &RelPath, meta: &Meta) -> Result<(), ReceiveError> {
        self.handle_mut(f).meta = meta.clone();
        Ok(())
    }

    fn commit(&mut self, f: &MemHandle, path: &RelPath) -> Result<(), ReceiveError> {
        let ctime = self.tick() as i64;
        let open = self.handle_mut(f);
        open.committed = true;
        let data = std::mem::take(&mut open.data);
        let node = Node { ft: FileType::RegularFile, data, meta: open.meta.clone(), ino: open.ino, ctime };
        self.log.push(format!("commit {path}"));
        self.remove_all(path);
        self.nodes.insert(path.clone(), node);
        Ok(())
    }

    fn identity(&mut self, f: &MemHandle) -> Option<FileId> {
        let open = self.handle(f);
        match self.nodes.get(&open.path).filter(|n| open.committed && n.ino == open.ino) {
            Some(n) => Some(self.id_of(n.ino, n.data.len() as u64, &n.meta, n.ctime)),
            None => Some(self.id_of(open.ino, open.data.len() as u64, &open.meta, 0)),
        }
    }

    fn discard(&mut self, f: MemHandle, path: &RelPath) {
        if let Some(open) = self.open.remove(&f.0)
            && open.direct
            && !open.committed
        {
            self.nodes.remove(path);
        }
        self.log.push(format!("discard {path}"));
    }

    fn remove(&mut self, path: &RelPath) -> Result<(), ReceiveError> {
        self.log.push(format!("remove {path}"));
        self.remove_all(path);
        Ok(())
    }

    fn set_dir_time(&mut self, path: &RelPath, t: Timestamp) -> Result<(), ReceiveError> {
        if let Some(n) = self.nodes.get_mut(path) {
            n.meta.mtime = t;
        }
        Ok(())
    }

    fn xattr_errors(&self) -> u64 {
        0
    }
}
