//! Conversions between wire messages and `p2c_common` domain types.
//!
//! Wire → domain conversions validate: whatever a peer sends either becomes a domain value
//! that satisfies every documented invariant, or a [`ConvertError`] naming what was wrong.

use p2c_common::chunking::{ChunkParams, MAX_CHUNK};
use p2c_common::manifest::{ChunkRef, Entry, EntryData, Hash32, Meta, Problem, Timestamp, Xattr, limits};
use p2c_common::paths::{PathError, RelPath};

use crate::v1;

mod scan;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("entry {path}: {reason}")]
    Entry { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

fn bad(path: &RelPath, reason: impl Into<String>) -> ConvertError {
    ConvertError::Entry { path: path.display(), reason: reason.into() }
}

impl TryFrom<v1::Entry> for Entry {
    type Error = ConvertError;

    fn try_from(e: v1::Entry) -> Result<Self, Self::Error> {
        let path = RelPath::new(e.path)?;
        if e.mode & !0o7777 != 0 {
            return Err(bad(&path, format!("mode {:o} has bits outside 07777", e.mode)));
        }
        if e.mtime_nsec >= 1_000_000_000 {
            return Err(bad(&path, "mtime nanoseconds out of range"));
        }
        if e.xattrs.len() > limits::MAX_XATTRS {
            return Err(bad(&path, format!("more than {} extended attributes", limits::MAX_XATTRS)));
        }
        let mut total = 0usize;
        let mut xattrs = Vec::with_capacity(e.xattrs.len());
        for x in e.xattrs {
            if x.name.is_empty() || x.name.len() > limits::MAX_XATTR_NAME || x.name.contains(&0) {
                return Err(bad(&path, "invalid extended attribute name"));
            }
            if x.value.len() > limits::MAX_XATTR_VALUE {
                return Err(bad(&path, "extended attribute value too large"));
            }
            total += x.name.len() + x.value.len();
            xattrs.push(Xattr { name: x.name, value: x.value });
        }
        if total > limits::MAX_XATTR_TOTAL {
            return Err(bad(&path, "extended attributes too large in total"));
        }
        let kind = v1::EntryKind::try_from(e.kind).unwrap_or(v1::EntryKind::Unspecified);
        let has_chunks = !e.chunks.is_empty();
        let data = match kind {
            v1::EntryKind::Regular => {
                if e.size > limits::MAX_FILE_SIZE {
                    return Err(bad(&path, "file size out of range"));
                }
                let mut chunks = Vec::with_capacity(e.chunks.len());
                let mut end = 0u64;
                for c in e.chunks {
                    let hash: [u8; 32] =
                        c.hash.as_slice().try_into().map_err(|_| bad(&path, "chunk hash is not 32 bytes"))?;
                    if c.len == 0 || c.len > MAX_CHUNK {
                        return Err(bad(&path, "chunk length out of range"));
                    }
                    if c.offset < end {
                        return Err(bad(&path, "chunks overlap or are out of order"));
                    }
                    end =
                        c.offset.checked_add(u64::from(c.len)).ok_or_else(|| bad(&path, "chunk past end"))?;
                    if end > e.size {
                        return Err(bad(&path, "chunk extends past the file size"));
                    }
                    chunks.push(ChunkRef { hash: Hash32(hash), offset: c.offset, len: c.len });
                }
                let digest: [u8; 32] = e
                    .content_digest
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad(&path, "content digest is not 32 bytes"))?;
                if chunks.len() > p2c_common::manifest::MAX_CHUNKS_PER_ENTRY {
                    return Err(bad(&path, "too many chunks in one entry"));
                }
                if e.segment == 0
                    && !e.more
                    && p2c_common::manifest::ContentHasher::digest(e.size, &chunks).0 != digest
                {
                    return Err(bad(&path, "content digest does not match the chunk list"));
                }
                EntryData::Regular { size: e.size, chunks, digest: Hash32(digest) }
            }
            v1::EntryKind::Directory => EntryData::Directory,
            v1::EntryKind::Symlink => {
                if e.target.is_empty() || e.target.len() > limits::MAX_LINK_TARGET || e.target.contains(&0) {
                    return Err(bad(&path, "invalid symlink target"));
                }
                EntryData::Symlink { target: e.target }
            }
            v1::EntryKind::Hardlink => {
                let target = RelPath::new(e.target)?;
                if target.is_root() || target == path {
                    return Err(bad(&path, "invalid hard link target"));
                }
                EntryData::HardLink { target }
            }
            v1::EntryKind::Fifo => EntryData::Fifo,
            v1::EntryKind::CharDevice => EntryData::CharDevice { major: e.rdev_major, minor: e.rdev_minor },
            v1::EntryKind::BlockDevice => EntryData::BlockDevice { major: e.rdev_major, minor: e.rdev_minor },
            v1::EntryKind::Unspecified => return Err(bad(&path, "unknown entry kind")),
        };
        if has_chunks && !matches!(data, EntryData::Regular { .. }) {
            return Err(bad(&path, "only regular files carry chunks"));
        }
        if path.is_root() && data != EntryData::Directory {
            return Err(bad(&path, "the root must be a directory"));
        }
        if (e.segment > 0 || e.more) && !matches!(data, EntryData::Regular { .. }) {
            return Err(bad(&path, "only regular files are segmented"));
        }
        Ok(Entry {
            path,
            meta: Meta {
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: Timestamp { sec: e.mtime_sec, nsec: e.mtime_nsec },
                xattrs,
            },
            data,
            segment: e.segment,
            more: e.more,
        })
    }
}

impl From<&Entry> for v1::Entry {
    fn from(e: &Entry) -> Self {
        let mut out = v1::Entry {
            path: e.path.as_bytes().to_vec(),
            mode: e.meta.mode,
            uid: e.meta.uid,
            gid: e.meta.gid,
            mtime_sec: e.meta.mtime.sec,
            mtime_nsec: e.meta.mtime.nsec,
            xattrs: e
                .meta
                .xattrs
                .iter()
                .map(|x| v1::Xattr { name: x.name.clone(), value: x.value.clone() })
                .collect(),
            segment: e.segment,
            more: e.more,
            ..Default::default()
        };
        let kind = match &e.data {
            EntryData::Regular { size, chunks, digest } => {
                out.size = *size;
                out.content_digest = digest.0.to_vec();
                out.chunks = chunks
                    .iter()
                    .map(|c| v1::ChunkRef { hash: c.hash.0.to_vec(), offset: c.offset, len: c.len })
                    .collect();
                v1::EntryKind::Regular
            }
            EntryData::Directory => v1::EntryKind::Directory,
            EntryData::Symlink { target } => {
                out.target = target.clone();
                v1::EntryKind::Symlink
            }
            EntryData::HardLink { target } => {
                out.target = target.as_bytes().to_vec();
                v1::EntryKind::Hardlink
            }
            EntryData::Fifo => v1::EntryKind::Fifo,
            EntryData::CharDevice { major, minor } => {
                out.rdev_major = *major;
                out.rdev_minor = *minor;
                v1::EntryKind::CharDevice
            }
            EntryData::BlockDevice { major, minor } => {
                out.rdev_major = *major;
                out.rdev_minor = *minor;
                v1::EntryKind::BlockDevice
            }
        };
        out.kind = kind as i32;
        out
    }
}

impl From<ChunkParams> for v1::ChunkParams {
    fn from(p: ChunkParams) -> Self {
        v1::ChunkParams { min_size: p.min_size, avg_size: p.avg_size, max_size: p.max_size }
    }
}

impl TryFrom<v1::ChunkParams> for ChunkParams {
    type Error = ConvertError;
    fn try_from(p: v1::ChunkParams) -> Result<Self, Self::Error> {
        ChunkParams { min_size: p.min_size, avg_size: p.avg_size, max_size: p.max_size }
            .validate()
            .map_err(|e| ConvertError::Other(e.to_string()))
    }
}

impl From<&Problem> for v1::Problem {
    fn from(p: &Problem) -> Self {
        v1::Problem { path: p.path.as_bytes().to_vec(), reason: p.reason.clone() }
    }
}

impl TryFrom<v1::Problem> for Problem {
    type Error = ConvertError;
    fn try_from(p: v1::Problem) -> Result<Self, Self::Error> {
        let mut reason = p.reason;
        reason.truncate(1024);
        Ok(Problem { path: RelPath::new(p.path)?, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &[u8]) -> v1::Entry {
        let c = ChunkRef { hash: Hash32([1; 32]), offset: 0, len: 10 };
        v1::Entry {
            path: path.to_vec(),
            kind: v1::EntryKind::Regular as i32,
            mode: 0o4755,
            size: 10,
            chunks: vec![v1::ChunkRef { hash: vec![1; 32], offset: 0, len: 10 }],
            content_digest: p2c_common::manifest::ContentHasher::digest(10, &[c]).0.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let e = Entry::try_from(file(b"usr/bin/\xffx")).unwrap();
        let back = Entry::try_from(v1::Entry::from(&e)).unwrap();
        assert_eq!(e, back);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let mut cases = vec![];
        cases.push(file(b"../etc/passwd"));
        cases.push(file(b"/etc/passwd"));
        cases.push(file(b"a\0b"));
        let mut e = file(b"x");
        e.mode = 0o170755;
        cases.push(e);
        let mut e = file(b"x");
        e.chunks[0].len = 11;
        cases.push(e);
        let mut e = file(b"x");
        e.chunks[0].hash = vec![1; 31];
        cases.push(e);
        let mut e = file(b"x");
        e.kind = v1::EntryKind::Symlink as i32;
        e.target = b"/etc".to_vec();
        cases.push(e); // symlink with chunks
        let mut e = file(b"x");
        e.kind = v1::EntryKind::Hardlink as i32;
        e.chunks.clear();
        e.target = b"../../etc/shadow".to_vec();
        cases.push(e);
        let mut e = file(b"x");
        e.kind = 99;
        cases.push(e);
        let mut e = file(b"x");
        e.mtime_nsec = 1_000_000_000;
        cases.push(e);
        let mut e = file(b"");
        e.chunks.clear();
        cases.push(e); // root as a file
        let mut e = file(b"x");
        e.content_digest = vec![0; 32];
        cases.push(e); // digest that does not match
        let mut e = file(b"x");
        e.kind = v1::EntryKind::Directory as i32;
        e.chunks.clear();
        e.segment = 1;
        cases.push(e); // segmented directory
        for c in cases {
            let shown = format!("{c:?}");
            assert!(Entry::try_from(c).is_err(), "accepted {shown}");
        }
    }
}
