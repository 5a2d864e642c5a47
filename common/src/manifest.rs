//! What a copy pass carries: one [`Entry`] per file-system object of the source.
//!
//! Entries are validated when they come off the wire (see `p2c-proto`), so code that holds
//! an `Entry` may rely on every invariant documented here.

use crate::paths::RelPath;

/// Limits on what one entry may carry; a peer that exceeds them is refused.
pub mod limits {
    /// Symlink targets, as PATH_MAX.
    pub const MAX_LINK_TARGET: usize = 4096;
    /// Extended attributes on one entry.
    pub const MAX_XATTRS: usize = 128;
    /// Bytes of one xattr name (XATTR_NAME_MAX).
    pub const MAX_XATTR_NAME: usize = 255;
    /// Bytes of one xattr value (XATTR_SIZE_MAX).
    pub const MAX_XATTR_VALUE: usize = 65536;
    /// Bytes of all xattr names and values of one entry.
    pub const MAX_XATTR_TOTAL: usize = 256 * 1024;
    /// Entries in one batch.
    pub const MAX_BATCH_ENTRIES: usize = 4096;
    /// Chunk references in one batch.
    pub const MAX_BATCH_CHUNKS: usize = 65536;
    /// Largest file accepted (16 EiB is not a real file; 2^62 keeps arithmetic safe).
    pub const MAX_FILE_SIZE: u64 = 1 << 62;
    /// Largest gRPC message either side accepts.
    pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
}

/// A BLAKE3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    pub fn of(data: &[u8]) -> Self {
        Hash32(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// One chunk of a regular file's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: Hash32,
    pub offset: u64,
    pub len: u32,
}

impl ChunkRef {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl Xattr {
    /// The namespace (`user`, `trusted`, `security`, `system`) of the attribute.
    pub fn namespace(&self) -> &[u8] {
        self.name.split(|b| *b == b'.').next().unwrap_or_default()
    }

    /// POSIX ACLs travel as the `system.posix_acl_*` attributes.
    pub fn is_acl(&self) -> bool {
        self.name == b"system.posix_acl_access" || self.name == b"system.posix_acl_default"
    }
}

/// Metadata common to every entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (mask 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub xattrs: Vec<Xattr>,
}

/// What kind of object an entry is, with the data each kind carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryData {
    /// `chunks` are sorted, non-overlapping and end at or before `size`; gaps are holes.
    /// `digest` is the [`ContentHasher`] digest of the whole file (all segments).
    Regular {
        size: u64,
        chunks: Vec<ChunkRef>,
        digest: Hash32,
    },
    Directory,
    Symlink {
        target: Vec<u8>,
    },
    /// Another name for an earlier regular file of the same pass.
    HardLink {
        target: RelPath,
    },
    Fifo,
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub meta: Meta,
    pub data: EntryData,
    /// A regular file with more chunks than fit one message is sent as several entries of
    /// the same path: segment 0 carries the metadata, later segments only chunks. `more` is
    /// set on every segment but the last.
    pub segment: u32,
    pub more: bool,
}

/// Chunk references of one file in one entry at most; larger files are segmented.
pub const MAX_CHUNKS_PER_ENTRY: usize = 65536;

/// The digest of a regular file's content description: its size and every chunk
/// reference, in order. Equal digests mean equal content.
#[derive(Clone)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    pub fn new(size: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"p2c-content-v1");
        h.update(&size.to_le_bytes());
        Self(h)
    }

    pub fn update(&mut self, c: &ChunkRef) {
        self.0.update(&c.hash.0);
        self.0.update(&c.offset.to_le_bytes());
        self.0.update(&c.len.to_le_bytes());
    }

    pub fn finish(&self) -> Hash32 {
        Hash32(*self.0.finalize().as_bytes())
    }

    /// The digest of a complete chunk list.
    pub fn digest(size: u64, chunks: &[ChunkRef]) -> Hash32 {
        let mut h = Self::new(size);
        for c in chunks {
            h.update(c);
        }
        h.finish()
    }
}

impl Entry {
    pub fn kind_name(&self) -> &'static str {
        match self.data {
            EntryData::Regular { .. } => "file",
            EntryData::Directory => "directory",
            EntryData::Symlink { .. } => "symlink",
            EntryData::HardLink { .. } => "hardlink",
            EntryData::Fifo => "fifo",
            EntryData::CharDevice { .. } => "char-device",
            EntryData::BlockDevice { .. } => "block-device",
        }
    }

    /// Bytes of file data the entry stands for (0 for everything but regular files).
    pub fn data_bytes(&self) -> u64 {
        match &self.data {
            EntryData::Regular { chunks, .. } => chunks.iter().map(|c| u64::from(c.len)).sum(),
            _ => 0,
        }
    }

    /// A digest of everything the entry says about content and metadata. Two entries with
    /// the same digest describe the same object; the controller uses it to skip work.
    /// For a segmented file, call it on segment 0 (the content digest covers all segments).
    pub fn digest(&self) -> Hash32 {
        let mut h = blake3::Hasher::new();
        h.update(self.path.as_bytes());
        h.update(&[0]);
        let m = &self.meta;
        h.update(&m.mode.to_le_bytes());
        h.update(&m.uid.to_le_bytes());
        h.update(&m.gid.to_le_bytes());
        h.update(&m.mtime.sec.to_le_bytes());
        h.update(&m.mtime.nsec.to_le_bytes());
        for x in &m.xattrs {
            h.update(&(x.name.len() as u64).to_le_bytes());
            h.update(&x.name);
            h.update(&(x.value.len() as u64).to_le_bytes());
            h.update(&x.value);
        }
        h.update(self.kind_name().as_bytes());
        match &self.data {
            EntryData::Regular { digest, .. } => {
                h.update(&digest.0);
            }
            EntryData::Symlink { target } => {
                h.update(target);
            }
            EntryData::HardLink { target } => {
                h.update(target.as_bytes());
            }
            EntryData::CharDevice { major, minor } | EntryData::BlockDevice { major, minor } => {
                h.update(&major.to_le_bytes());
                h.update(&minor.to_le_bytes());
            }
            EntryData::Directory | EntryData::Fifo => {}
        }
        Hash32(*h.finalize().as_bytes())
    }
}

/// What a pass reports about objects it could not carry as they were.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub path: RelPath,
    pub reason: String,
}
