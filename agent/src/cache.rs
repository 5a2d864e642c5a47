//! The agent's file cache: for every regular file the controller confirmed in the last
//! pass, its identity (device, inode, size, mtime, ctime) and chunk list. A file whose
//! identity is unchanged is not read again.
//!
//! The cache is a stream of records in walk order (zstd-compressed), read in lockstep with
//! the walk and written anew as batches are confirmed, so memory stays constant whatever
//! the number of files.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use p2c_common::manifest::{ChunkRef, Hash32, Xattr, limits};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Walk-order key: the path with `/` as NUL.
    pub key: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub digest: Hash32,
    pub chunks: Vec<ChunkRef>,
    pub xattrs: Vec<Xattr>,
    /// For big files: the BLAKE3 of each chunking region, so that a changed file's
    /// unchanged regions keep their chunks without being chunked again.
    pub regions: Vec<RegionSum>,
}

/// One chunking region of a big file (see `extents::chunk_regions`) and the BLAKE3 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSum {
    pub offset: u64,
    pub len: u64,
    pub hash: Hash32,
}

impl Record {
    /// Whether this record is of the file with this (device, inode, size, mtime ns,
    /// ctime ns).
    pub fn same_file(&self, (dev, ino, size, mtime_ns, ctime_ns): (u64, u64, u64, i64, i64)) -> bool {
        self.dev == dev
            && self.ino == ino
            && self.size == size
            && self.mtime_ns == mtime_ns
            && self.ctime_ns == ctime_ns
    }
}

const MAX_KEY: usize = 8192;
/// Starts every cache file; a file without it (an older format) is ignored.
const MAGIC: &[u8; 8] = b"p2cache3";
/// Most regions one record holds (a 32 TiB file).
const MAX_REGIONS: u32 = 1 << 20;
const MAX_CHUNKS: u32 = 1 << 24;

/// Reads the previous pass's cache in walk order.
pub struct Reader {
    dec: Option<zstd::Decoder<'static, BufReader<File>>>,
    peeked: Option<Record>,
}

impl Reader {
    /// An empty reader when there is no cache (or it is unreadable: it is only a cache).
    pub fn open(path: &Path) -> Reader {
        let dec = File::open(path).ok().and_then(|f| zstd::Decoder::new(f).ok()).and_then(|mut d| {
            let mut m = [0u8; 8];
            (d.read_exact(&mut m).is_ok() && &m == MAGIC).then_some(d)
        });
        Reader { dec, peeked: None }
    }

    fn read_record(&mut self) -> Option<Record> {
        let dec = self.dec.as_mut()?;
        let r = read_one(dec);
        if r.is_none() {
            self.dec = None;
        }
        r
    }

    /// The record for `key`, skipping records before it (files that no longer exist).
    pub fn lookup(&mut self, key: &[u8]) -> Option<Record> {
        loop {
            if self.peeked.is_none() {
                self.peeked = Some(self.read_record()?);
            }
            let k = self.peeked.as_ref()?.key.as_slice();
            match k.cmp(key) {
                std::cmp::Ordering::Less => self.peeked = None,
                std::cmp::Ordering::Equal => return self.peeked.take(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// Every record after `key`, for keeping the rest of an old cache when a pass stops early.
    pub fn rest_after(mut self, key: Option<&[u8]>) -> impl Iterator<Item = Record> {
        std::iter::from_fn(move || {
            loop {
                let r = match self.peeked.take() {
                    Some(r) => r,
                    None => self.read_record()?,
                };
                if key.is_none_or(|k| r.key.as_slice() > k) {
                    return Some(r);
                }
            }
        })
    }
}

fn read_one<R: Read>(r: &mut R) -> Option<Record> {
    let mut u32b = [0u8; 4];
    let mut u64b = [0u8; 8];
    r.read_exact(&mut u32b).ok()?;
    let klen = u32::from_le_bytes(u32b) as usize;
    if klen > MAX_KEY {
        return None;
    }
    let mut key = vec![0u8; klen];
    r.read_exact(&mut key).ok()?;
    let mut n = [0u64; 3];
    for v in &mut n {
        r.read_exact(&mut u64b).ok()?;
        *v = u64::from_le_bytes(u64b);
    }
    r.read_exact(&mut u64b).ok()?;
    let mtime_ns = i64::from_le_bytes(u64b);
    r.read_exact(&mut u64b).ok()?;
    let ctime_ns = i64::from_le_bytes(u64b);
    let mut digest = [0u8; 32];
    r.read_exact(&mut digest).ok()?;
    r.read_exact(&mut u32b).ok()?;
    let count = u32::from_le_bytes(u32b);
    if count > MAX_CHUNKS {
        return None;
    }
    let mut chunks = Vec::with_capacity(count.min(65536) as usize);
    for _ in 0..count {
        let mut h = [0u8; 32];
        r.read_exact(&mut h).ok()?;
        r.read_exact(&mut u64b).ok()?;
        let offset = u64::from_le_bytes(u64b);
        r.read_exact(&mut u32b).ok()?;
        chunks.push(ChunkRef { hash: Hash32(h), offset, len: u32::from_le_bytes(u32b) });
    }
    r.read_exact(&mut u32b).ok()?;
    let nx = u32::from_le_bytes(u32b) as usize;
    if nx > limits::MAX_XATTRS {
        return None;
    }
    let mut xattrs = Vec::with_capacity(nx);
    for _ in 0..nx {
        let mut field = |max: usize| -> Option<Vec<u8>> {
            r.read_exact(&mut u32b).ok()?;
            let len = u32::from_le_bytes(u32b) as usize;
            if len > max {
                return None;
            }
            let mut v = vec![0u8; len];
            r.read_exact(&mut v).ok()?;
            Some(v)
        };
        let name = field(limits::MAX_XATTR_NAME)?;
        let value = field(limits::MAX_XATTR_VALUE)?;
        xattrs.push(Xattr { name, value });
    }
    r.read_exact(&mut u32b).ok()?;
    let nr = u32::from_le_bytes(u32b);
    if nr > MAX_REGIONS {
        return None;
    }
    let mut regions = Vec::with_capacity(nr.min(4096) as usize);
    for _ in 0..nr {
        r.read_exact(&mut u64b).ok()?;
        let offset = u64::from_le_bytes(u64b);
        r.read_exact(&mut u64b).ok()?;
        let len = u64::from_le_bytes(u64b);
        let mut h = [0u8; 32];
        r.read_exact(&mut h).ok()?;
        regions.push(RegionSum { offset, len, hash: Hash32(h) });
    }
    Some(Record {
        key,
        dev: n[0],
        ino: n[1],
        size: n[2],
        mtime_ns,
        ctime_ns,
        digest: Hash32(digest),
        chunks,
        xattrs,
        regions,
    })
}

/// Writes the new cache; it replaces the old one only when finished.
pub struct Writer {
    tmp: PathBuf,
    dest: PathBuf,
    enc: zstd::Encoder<'static, BufWriter<File>>,
    pub last_key: Option<Vec<u8>>,
}

impl Writer {
    pub fn create(dest: &Path) -> std::io::Result<Writer> {
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = dest.with_extension("new");
        let mut enc = zstd::Encoder::new(BufWriter::new(File::create(&tmp)?), 1)?;
        enc.write_all(MAGIC)?;
        Ok(Writer { tmp, dest: dest.to_path_buf(), enc, last_key: None })
    }

    /// Appends a record; records must come in walk order (others are dropped).
    pub fn push(&mut self, r: &Record) -> std::io::Result<()> {
        if self.last_key.as_deref().is_some_and(|k| r.key.as_slice() <= k) {
            return Ok(());
        }
        let w = &mut self.enc;
        w.write_all(&(r.key.len() as u32).to_le_bytes())?;
        w.write_all(&r.key)?;
        for v in [r.dev, r.ino, r.size] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&r.mtime_ns.to_le_bytes())?;
        w.write_all(&r.ctime_ns.to_le_bytes())?;
        w.write_all(&r.digest.0)?;
        w.write_all(&(r.chunks.len() as u32).to_le_bytes())?;
        for c in &r.chunks {
            w.write_all(&c.hash.0)?;
            w.write_all(&c.offset.to_le_bytes())?;
            w.write_all(&c.len.to_le_bytes())?;
        }
        w.write_all(&(r.xattrs.len() as u32).to_le_bytes())?;
        for x in &r.xattrs {
            for f in [&x.name, &x.value] {
                w.write_all(&(f.len() as u32).to_le_bytes())?;
                w.write_all(f)?;
            }
        }
        w.write_all(&(r.regions.len() as u32).to_le_bytes())?;
        for g in &r.regions {
            w.write_all(&g.offset.to_le_bytes())?;
            w.write_all(&g.len.to_le_bytes())?;
            w.write_all(&g.hash.0)?;
        }
        self.last_key = Some(r.key.clone());
        Ok(())
    }

    pub fn finish(self) -> std::io::Result<()> {
        let w = self.enc.finish()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)
    }
}

/// Replaces the records of `fresh` (in walk order) in the cache at `path`, keeping the
/// others: after a pass that listed only what changed.
pub fn update(path: &Path, fresh: Vec<Record>) -> std::io::Result<()> {
    let mut w = Writer::create(path)?;
    let mut old = Reader::open(path).rest_after(None).peekable();
    let mut fresh = fresh.into_iter().peekable();
    loop {
        let take_old = match (old.peek(), fresh.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(o), Some(f)) => o.key < f.key,
        };
        let r = if take_old { old.next() } else { fresh.next() };
        if let Some(r) = r {
            if !take_old && old.peek().is_some_and(|o| o.key == r.key) {
                old.next();
            }
            w.push(&r)?;
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &[u8], n: u64) -> Record {
        Record {
            key: key.to_vec(),
            dev: 1,
            ino: n,
            size: 10,
            mtime_ns: 5,
            ctime_ns: 6,
            digest: Hash32([n as u8; 32]),
            chunks: vec![ChunkRef { hash: Hash32([7; 32]), offset: 0, len: 10 }],
            xattrs: vec![Xattr { name: b"user.k".to_vec(), value: vec![n as u8; 3] }],
            regions: vec![RegionSum { offset: 0, len: 10, hash: Hash32([n as u8 + 1; 32]) }],
        }
    }

    #[test]
    fn update_replaces_fresh_records_and_keeps_the_others() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.cache");
        let mut w = Writer::create(&p).unwrap();
        for (i, k) in [&b"a"[..], b"b", b"c"].iter().enumerate() {
            w.push(&rec(k, i as u64)).unwrap();
        }
        w.finish().unwrap();
        update(&p, vec![rec(b"b", 7), rec(b"bb", 8)]).unwrap();
        let all: Vec<(Vec<u8>, u64)> = Reader::open(&p).rest_after(None).map(|r| (r.key, r.ino)).collect();
        let want: Vec<(Vec<u8>, u64)> =
            vec![(b"a".to_vec(), 0), (b"b".to_vec(), 7), (b"bb".to_vec(), 8), (b"c".to_vec(), 2)];
        assert_eq!(all, want);
    }

    #[test]
    fn lockstep_lookup_and_rest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.cache");
        let mut w = Writer::create(&p).unwrap();
        for (i, k) in [&b"a"[..], b"a\0b", b"c", b"d"].iter().enumerate() {
            w.push(&rec(k, i as u64)).unwrap();
        }
        w.push(&rec(b"b", 9)).unwrap(); // out of order: dropped
        w.finish().unwrap();
        let mut r = Reader::open(&p);
        let a = r.lookup(b"a").unwrap();
        assert_eq!(a, rec(b"a", 0), "a record comes back as written");
        assert!(r.lookup(b"b").is_none());
        assert_eq!(r.lookup(b"c").unwrap().ino, 2);
        let rest: Vec<u64> = Reader::open(&p).rest_after(Some(b"a\0b")).map(|r| r.ino).collect();
        assert_eq!(rest, [2, 3]);
        assert!(Reader::open(&d.path().join("missing")).lookup(b"a").is_none());
    }
}
