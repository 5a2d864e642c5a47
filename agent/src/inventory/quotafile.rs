//! Reader of Linux quota files (`aquota.user`, `aquota.group`) in the vfsv0 and vfsv1
//! formats, for sources whose quotas are not active in the kernel (offline trees, `--root`
//! directories, kernels without quota support).
//!
//! Layout, as in the kernel's `fs/quota/quotaio_v2.h`, `quota_tree.{c,h}` and quota-tools'
//! `quotaio_v2.c` (all little-endian):
//! - block 0: `v2_disk_dqheader` {magic u32, version u32} (magic 0xd9c01f11 for user,
//!   0xd9c01927 for group quotas; version 0 = vfsv0, 1 = vfsv1), then at offset 8
//!   `v2_disk_dqinfo` {bgrace, igrace, flags, blocks, free_blk, free_entry} (u32 each);
//! - from block 1 (`QT_TREEOFF`): a radix tree of 1 KiB blocks, 4 levels deep, each tree
//!   block holding 256 u32 block numbers indexed by one byte of the id (most significant
//!   first); the last level points to data blocks;
//! - a data block: a 16-byte `qt_disk_dqdbheader` then `(1024 - 16) / entry_size` slots of
//!   `v2r0_disk_dqblk` (48 bytes: u32 limits) or `v2r1_disk_dqblk` (72 bytes: u64 limits);
//!   an all-zero slot is free. Block limits are in 1 KiB units, used space in bytes.
//!
//! The file is untrusted: every block number is checked against the file, every block is
//! visited at most once (no loops, no blow-up through shared references), the file size and
//! the number of entries are capped, and blocks are read one at a time.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Size of a quota tree block.
pub const BLOCK: usize = 1024;
/// Largest quota file read (a million blocks: ~14 million vfsv1 entries would fit).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Most entries returned from one file; more set [`QuotaFile::truncated`].
pub const MAX_ENTRIES: usize = 200_000;

const TREE_OFF: u32 = 1;
const TREE_DEPTH: usize = 4;
const INFO_OFF: usize = 8;
const HEADER_LEN: usize = INFO_OFF + 24;
const DATA_HEADER_LEN: usize = 16;
const REFS_PER_BLOCK: usize = BLOCK / 4;

/// Which ids a quota file limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaType {
    User,
    Group,
}

impl QuotaType {
    /// The magic number of its quota files.
    pub fn magic(self) -> u32 {
        match self {
            QuotaType::User => 0xd9c0_1f11,
            QuotaType::Group => 0xd9c0_1927,
        }
    }

    /// The file names it is kept under at a file system's root, preferred first.
    pub fn file_names(self) -> [&'static str; 2] {
        match self {
            QuotaType::User => ["aquota.user", "quota.user"],
            QuotaType::Group => ["aquota.group", "quota.group"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuotaType::User => "user",
            QuotaType::Group => "group",
        }
    }
}

/// The two quota-tree formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaFormat {
    /// Version 0: 32-bit limits.
    VfsV0,
    /// Version 1: 64-bit limits.
    VfsV1,
}

impl QuotaFormat {
    /// The name quota-tools use (`-F vfsv0`).
    pub fn name(self) -> &'static str {
        match self {
            QuotaFormat::VfsV0 => "vfsv0",
            QuotaFormat::VfsV1 => "vfsv1",
        }
    }

    fn entry_size(self) -> usize {
        match self {
            QuotaFormat::VfsV0 => 48,
            QuotaFormat::VfsV1 => 72,
        }
    }
}

/// One id's limits and usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskQuota {
    pub id: u32,
    /// Block limits in 1 KiB units.
    pub block_hard: u64,
    pub block_soft: u64,
    pub inode_hard: u64,
    pub inode_soft: u64,
    pub cur_inodes: u64,
    /// Used space in bytes.
    pub cur_space: u64,
    /// When the soft limits turn hard (seconds since the epoch; 0 when not over them).
    pub btime: u64,
    pub itime: u64,
}

/// A parsed quota file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaFile {
    pub format: QuotaFormat,
    /// Grace periods in seconds.
    pub block_grace: u64,
    pub inode_grace: u64,
    /// Sorted by id, one per id.
    pub entries: Vec<DiskQuota>,
    /// Set when the file held more than [`MAX_ENTRIES`] entries and the rest were left out.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaFileError {
    #[error("cannot read quota file {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("quota file {path} is too short ({len} bytes) to hold a quota header")]
    TooShort { path: String, len: u64 },
    #[error("quota file {path} is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error(
        "quota file {path} has magic {found:#010x}, not the {kind} quota magic {expected:#010x} of the vfsv0/vfsv1 formats"
    )]
    BadMagic { path: String, kind: &'static str, found: u32, expected: u32 },
    #[error("quota file {path} has version {version}; only 0 (vfsv0) and 1 (vfsv1) are known")]
    BadVersion { path: String, version: u32 },
    #[error("quota file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Reads the quota file at `path`, holding `kind` quotas.
pub fn read_quota_file(path: &Path, kind: QuotaType) -> Result<QuotaFile, QuotaFileError> {
    let shown = path.display().to_string();
    let io_err = |source| QuotaFileError::Io { path: shown.clone(), source };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    parse_quota_file(&file, len, kind, &shown)
}

/// Parses a quota file of `len` bytes read through `file`; `path` names it in errors.
pub fn parse_quota_file(
    file: &impl FileExt,
    len: u64,
    kind: QuotaType,
    path: &str,
) -> Result<QuotaFile, QuotaFileError> {
    if len > MAX_FILE_BYTES {
        return Err(QuotaFileError::TooLarge { path: path.to_string(), max: MAX_FILE_BYTES });
    }
    if len < HEADER_LEN as u64 {
        return Err(QuotaFileError::TooShort { path: path.to_string(), len });
    }
    let mut r = Reader {
        file,
        path,
        len,
        limit: 0,
        visited: Vec::new(),
        format: QuotaFormat::VfsV1,
        entries: Vec::new(),
        truncated: false,
    };
    let head = r.block(0)?;
    let magic = le32(&head, 0);
    if magic != kind.magic() {
        return Err(QuotaFileError::BadMagic {
            path: path.to_string(),
            kind: kind.name(),
            found: magic,
            expected: kind.magic(),
        });
    }
    r.format = match le32(&head, 4) {
        0 => QuotaFormat::VfsV0,
        1 => QuotaFormat::VfsV1,
        version => {
            return Err(QuotaFileError::BadVersion { path: path.to_string(), version });
        }
    };
    let block_grace = u64::from(le32(&head, INFO_OFF));
    let inode_grace = u64::from(le32(&head, INFO_OFF + 4));
    let dqi_blocks = le32(&head, INFO_OFF + 12);
    let file_blocks = u32::try_from(len.div_ceil(BLOCK as u64)).unwrap_or(u32::MAX);
    // Valid block numbers are below both what the header claims and what the file holds.
    r.limit = dqi_blocks.min(file_blocks);
    if r.limit > TREE_OFF {
        r.visited = vec![0u64; (r.limit as usize).div_ceil(64)];
        r.tree(TREE_OFF, 0)?;
    }
    let mut entries = r.entries;
    entries.sort_by_key(|e| e.id);
    entries.dedup_by_key(|e| e.id);
    Ok(QuotaFile { format: r.format, block_grace, inode_grace, entries, truncated: r.truncated })
}

struct Reader<'a, F: FileExt> {
    file: &'a F,
    path: &'a str,
    len: u64,
    /// Block numbers must be below this.
    limit: u32,
    /// One bit per block already read.
    visited: Vec<u64>,
    format: QuotaFormat,
    entries: Vec<DiskQuota>,
    truncated: bool,
}

impl<F: FileExt> Reader<'_, F> {
    fn corrupt(&self, reason: String) -> QuotaFileError {
        QuotaFileError::Corrupt { path: self.path.to_string(), reason }
    }

    /// Reads block `n`; a short last block is padded with zeros, as the kernel does.
    fn block(&self, n: u32) -> Result<[u8; BLOCK], QuotaFileError> {
        let off = u64::from(n) * BLOCK as u64;
        if off >= self.len {
            return Err(self.corrupt(format!("block {n} lies beyond the end of the file")));
        }
        let mut buf = [0u8; BLOCK];
        let want = usize::try_from((self.len - off).min(BLOCK as u64)).unwrap_or(BLOCK);
        self.file
            .read_exact_at(&mut buf[..want], off)
            .map_err(|source| QuotaFileError::Io { path: self.path.to_string(), source })?;
        Ok(buf)
    }

    /// Marks `blk` visited; false if it already was.
    fn visit(&mut self, blk: u32) -> bool {
        let (w, b) = (blk as usize / 64, blk % 64);
        match self.visited.get_mut(w) {
            Some(word) if *word & (1 << b) == 0 => {
                *word |= 1 << b;
                true
            }
            _ => false,
        }
    }

    fn tree(&mut self, blk: u32, depth: usize) -> Result<(), QuotaFileError> {
        if !self.visit(blk) {
            return Err(self.corrupt(format!("tree block {blk} is referenced twice")));
        }
        let buf = self.block(blk)?;
        for i in 0..REFS_PER_BLOCK {
            if self.truncated {
                return Ok(());
            }
            let r = le32(&buf, i * 4);
            if r == 0 {
                continue;
            }
            if r < TREE_OFF || r >= self.limit {
                return Err(
                    self.corrupt(format!("block {blk} refers to block {r}, outside 1..{}", self.limit))
                );
            }
            if depth + 1 < TREE_DEPTH {
                self.tree(r, depth + 1)?;
            } else if self.visit(r) {
                // Data blocks are shared by up to one leaf reference per entry they hold.
                self.data(r)?;
            }
        }
        Ok(())
    }

    fn data(&mut self, blk: u32) -> Result<(), QuotaFileError> {
        let buf = self.block(blk)?;
        let size = self.format.entry_size();
        let slots = (BLOCK - DATA_HEADER_LEN) / size;
        for s in 0..slots {
            let e = &buf[DATA_HEADER_LEN + s * size..DATA_HEADER_LEN + (s + 1) * size];
            if e.iter().all(|b| *b == 0) {
                continue;
            }
            if self.entries.len() >= MAX_ENTRIES {
                self.truncated = true;
                return Ok(());
            }
            self.entries.push(decode(self.format, e));
        }
        Ok(())
    }
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Decodes one slot of `format`'s entry size.
fn decode(format: QuotaFormat, e: &[u8]) -> DiskQuota {
    let mut q = match format {
        QuotaFormat::VfsV0 => DiskQuota {
            id: le32(e, 0),
            inode_hard: u64::from(le32(e, 4)),
            inode_soft: u64::from(le32(e, 8)),
            cur_inodes: u64::from(le32(e, 12)),
            block_hard: u64::from(le32(e, 16)),
            block_soft: u64::from(le32(e, 20)),
            cur_space: le64(e, 24),
            btime: le64(e, 32),
            itime: le64(e, 40),
        },
        QuotaFormat::VfsV1 => DiskQuota {
            id: le32(e, 0),
            inode_hard: le64(e, 8),
            inode_soft: le64(e, 16),
            cur_inodes: le64(e, 24),
            block_hard: le64(e, 32),
            block_soft: le64(e, 40),
            cur_space: le64(e, 48),
            btime: le64(e, 56),
            itime: le64(e, 64),
        },
    };
    // An entry that would be all zeros is written with itime = 1 to tell it from a free
    // slot; undo that as the kernel does.
    if q == (DiskQuota { itime: 1, ..Default::default() }) {
        q.itime = 0;
    }
    q
}

#[cfg(test)]
pub(crate) mod tests;
