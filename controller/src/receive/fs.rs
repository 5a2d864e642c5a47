//! The container tree as the writer sees it: a small port over [`crate::tree`], at the
//! level of the writer's operations (make this entry, fill this file, remove that path),
//! with one implementation over the real tree ([`super::tree_fs::TreeFs`]) and an in-memory
//! double for unit tests. Everything here stays beneath the tree root: paths come from the
//! peer and are only ever resolved by `crate::tree`.

use p2c_common::manifest::{ChunkRef, Entry, Meta, Timestamp};
use p2c_common::paths::RelPath;
use rustix::fs::FileType;

use super::ReceiveError;
use crate::state::index::ChunkLocation;

/// What is at a path of the tree, as far as the writer compares it with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub ft: FileType,
    pub size: u64,
    pub mtime_sec: i64,
}

/// The identity of an open file: what a chunk location records, to trust it later without
/// reading the data again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub nlink: u64,
}

impl FileId {
    /// Whether `loc` was recorded from this very file as it is now.
    pub fn is(&self, loc: &ChunkLocation) -> bool {
        loc.ino == self.ino
            && loc.size == self.size
            && loc.mtime_ns == self.mtime_ns
            && loc.ctime_ns == self.ctime_ns
    }
}

/// Operations on the tree. Errors that the peer caused (a parent that was not sent, a
/// symlink in the way, a hard link to nothing) are [`ReceiveError::Protocol`].
pub(crate) trait Fs {
    /// A regular file being written.
    type File;

    /// What is at `path`, not following symlinks; `None` when nothing is, or its parent is
    /// not a directory of the tree.
    fn stat(&mut self, path: &RelPath) -> Result<Option<Found>, ReceiveError>;
    /// The modification time of the directory (or whatever is) at `path`, if anything is.
    fn mtime(&mut self, path: &RelPath) -> Result<Option<Timestamp>, ReceiveError>;

    /// Makes `e` (a directory, the root included) exist with its metadata, replacing
    /// anything else at its name; what a directory there holds stays.
    fn make_dir(&mut self, e: &Entry) -> Result<(), ReceiveError>;
    /// Makes `e` (a symlink, fifo or device node) exist with its metadata, replacing
    /// whatever is at its name.
    fn make_special(&mut self, e: &Entry) -> Result<(), ReceiveError>;
    /// Makes `path` another name of `target` (a file of this tree). False when it already
    /// is.
    fn hard_link(&mut self, path: &RelPath, target: &RelPath) -> Result<bool, ReceiveError>;

    /// A new file to write the entry at `path` into. `recorded`: the store knows something
    /// at `path`, so it is written under a temporary name and renamed over it at the end;
    /// otherwise it may be written in place if nothing is there.
    fn create(&mut self, path: &RelPath, recorded: bool) -> Result<Self::File, ReceiveError>;
    /// The regular file at `path`, opened to be updated in place; `None` if there is none.
    fn open_existing(&mut self, path: &RelPath) -> Result<Option<(Self::File, FileId)>, ReceiveError>;
    fn write_at(
        &mut self,
        f: &Self::File,
        path: &RelPath,
        data: &[u8],
        offset: u64,
    ) -> Result<(), ReceiveError>;
    /// Copies chunk `c` to its offset from `from`, earlier in the same file, if the bytes
    /// there still hash to it.
    fn copy_within(&mut self, f: &Self::File, from: u64, c: &ChunkRef) -> bool;
    /// Copies chunk `c` to its offset from where the node holds it, if that still holds it
    /// (a file whose identity is as recorded is trusted; otherwise its bytes are hashed).
    /// False when no good copy is there.
    fn copy_from(
        &mut self,
        loc: &ChunkLocation,
        f: &Self::File,
        path: &RelPath,
        c: &ChunkRef,
    ) -> Result<bool, ReceiveError>;
    /// Makes `len` bytes at `at` a hole (in a file updated in place).
    fn punch_hole(&mut self, f: &Self::File, path: &RelPath, at: u64, len: u64) -> Result<(), ReceiveError>;
    fn set_len(&mut self, f: &Self::File, path: &RelPath, len: u64) -> Result<(), ReceiveError>;
    /// Owner, mode, extended attributes (if the pass keeps them) and times.
    fn set_meta(&mut self, f: &Self::File, path: &RelPath, meta: &Meta) -> Result<(), ReceiveError>;
    /// Puts the completed file at its name (renamed over whatever is there, if it was
    /// written under a temporary name).
    fn commit(&mut self, f: &Self::File, path: &RelPath) -> Result<(), ReceiveError>;
    /// The file's identity now; `None` if it cannot be read.
    fn identity(&mut self, f: &Self::File) -> Option<FileId>;
    /// Removes an unfinished file: its temporary name, or its own name when it was written
    /// in place.
    fn discard(&mut self, f: Self::File, path: &RelPath);

    /// Removes `path`, recursively for a directory; missing is fine.
    fn remove(&mut self, path: &RelPath) -> Result<(), ReceiveError>;
    /// Sets the modification time of the directory at `path` (nothing if its parent is
    /// gone).
    fn set_dir_time(&mut self, path: &RelPath, t: Timestamp) -> Result<(), ReceiveError>;

    /// Extended attributes the tree's file system refused so far.
    fn xattr_errors(&self) -> u64;
}
