//! A pass manifest on disk: every entry of the pass, in walk order, as length-delimited
//! `p2c.v1.Entry` messages in one zstd stream. Written while a pass is received, renamed
//! into place when the pass completes; read back by verification.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use p2c_common::manifest::{Entry, EntryData};

use super::wire::{decode_entry, encode_entry};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

type Result<T, E = ManifestError> = std::result::Result<T, E>;

pub struct ManifestWriter {
    tmp: PathBuf,
    dest: PathBuf,
    enc: zstd::Encoder<'static, BufWriter<File>>,
    buf: Vec<u8>,
}

impl ManifestWriter {
    pub fn create(dest: &Path) -> Result<Self> {
        let io = |e| ManifestError::Io { path: dest.to_path_buf(), source: e };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = dest.with_extension("partial");
        let f = File::create(&tmp).map_err(io)?;
        let enc = zstd::Encoder::new(BufWriter::new(f), 1).map_err(io)?;
        Ok(Self { tmp, dest: dest.to_path_buf(), enc, buf: Vec::new() })
    }

    pub fn push(&mut self, e: &Entry) -> Result<()> {
        self.buf.clear();
        encode_entry(e, &mut self.buf);
        self.enc.write_all(&self.buf).map_err(|e| ManifestError::Io { path: self.tmp.clone(), source: e })
    }

    /// Completes the manifest and moves it into place.
    pub fn finish(self) -> Result<PathBuf> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| ManifestError::Io { path: p, source: e }
        };
        let w = self.enc.finish().map_err(io(&self.tmp))?;
        let f = w
            .into_inner()
            .map_err(|e| ManifestError::Io { path: self.tmp.clone(), source: e.into_error() })?;
        f.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        Ok(self.dest)
    }
}

/// Reads a manifest back, joining the segments of large files into one entry.
pub struct ManifestReader {
    path: PathBuf,
    dec: zstd::Decoder<'static, BufReader<File>>,
    peeked: Option<Entry>,
}

/// Longest encoded entry accepted when reading back.
const MAX_ENTRY: usize = 16 * 1024 * 1024;

impl ManifestReader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| ManifestError::Io { path: path.to_path_buf(), source: e })?;
        let dec =
            zstd::Decoder::new(f).map_err(|e| ManifestError::Io { path: path.to_path_buf(), source: e })?;
        Ok(Self { path: path.to_path_buf(), dec, peeked: None })
    }

    fn damaged(&self, reason: impl Into<String>) -> ManifestError {
        ManifestError::Damaged { path: self.path.clone(), reason: reason.into() }
    }

    fn read_raw(&mut self) -> Result<Option<Entry>> {
        let mut len: u64 = 0;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            match self.dec.read(&mut b) {
                Ok(0) if shift == 0 => return Ok(None),
                Ok(0) => return Err(self.damaged("truncated length")),
                Ok(_) => {}
                Err(e) => return Err(ManifestError::Io { path: self.path.clone(), source: e }),
            }
            len |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(self.damaged("bad length"));
            }
        }
        if len as usize > MAX_ENTRY {
            return Err(self.damaged("entry too large"));
        }
        let mut buf = vec![0u8; len as usize];
        self.dec
            .read_exact(&mut buf)
            .map_err(|e| ManifestError::Io { path: self.path.clone(), source: e })?;
        decode_entry(&buf).map(Some).map_err(|e| self.damaged(e))
    }

    /// The next entry as stored: a segment of a large file is returned on its own.
    pub fn next_segment(&mut self) -> Result<Option<Entry>> {
        match self.peeked.take() {
            Some(e) => Ok(Some(e)),
            None => self.read_raw(),
        }
    }

    /// The next whole entry (segments joined).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        let mut e = match self.peeked.take() {
            Some(e) => e,
            None => match self.read_raw()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        while e.more {
            let next = self.read_raw()?.ok_or_else(|| self.damaged("file ends inside a segmented entry"))?;
            if next.path != e.path || next.segment != e.segment + 1 {
                return Err(self.damaged(format!("segment of {} missing", e.path)));
            }
            if let (EntryData::Regular { chunks, .. }, EntryData::Regular { chunks: more, .. }) =
                (&mut e.data, next.data)
            {
                chunks.extend(more);
            }
            e.segment = next.segment;
            e.more = next.more;
        }
        e.segment = 0;
        Ok(Some(e))
    }
}

/// The manifest file of a pass.
pub fn pass_path(dir: &Path, pass: u32) -> PathBuf {
    dir.join(format!("pass-{pass:04}.manifest"))
}

/// The newest complete manifest in `dir`, if any.
pub fn latest(dir: &Path) -> Option<(u32, PathBuf)> {
    let rd = std::fs::read_dir(dir).ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("pass-")?.strip_suffix(".manifest")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2c_common::manifest::{ChunkRef, ContentHasher, Hash32, Meta};
    use p2c_common::paths::RelPath;

    #[test]
    fn round_trip_with_segments() {
        let d = tempfile::tempdir().unwrap();
        let path = pass_path(d.path(), 3);
        let chunks: Vec<ChunkRef> =
            (0..5).map(|i| ChunkRef { hash: Hash32([i as u8; 32]), offset: i * 10, len: 10 }).collect();
        let digest = ContentHasher::digest(50, &chunks);
        let p = RelPath::new(b"big".to_vec()).unwrap();
        let seg = |s: u32, c: &[ChunkRef], more: bool| Entry {
            path: p.clone(),
            meta: Meta::default(),
            data: EntryData::Regular { size: 50, chunks: c.to_vec(), digest },
            segment: s,
            more,
        };
        let mut w = ManifestWriter::create(&path).unwrap();
        let dir = Entry {
            path: RelPath::ROOT,
            meta: Meta::default(),
            data: EntryData::Directory,
            segment: 0,
            more: false,
        };
        w.push(&dir).unwrap();
        w.push(&seg(0, &chunks[..2], true)).unwrap();
        w.push(&seg(1, &chunks[2..], false)).unwrap();
        w.finish().unwrap();
        assert_eq!(latest(d.path()).unwrap().0, 3);
        let mut r = ManifestReader::open(&path).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap(), dir);
        let big = r.next_entry().unwrap().unwrap();
        assert_eq!(big, seg(0, &chunks, false));
        assert!(r.next_entry().unwrap().is_none());
    }
}
