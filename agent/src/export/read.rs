//! Reading one regular file for a bundle: its data extents once (holes stay holes), cut
//! into chunks whose data goes straight to the bundle, the file checked not to have changed
//! while it was read.

use crate::extents::{OffsetReader, chunk_regions, open_source};
use p2c_common::sync::Locked;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2c_common::chunking::Chunker;
use p2c_common::manifest::{ChunkRef, Hash32};
use rustix::fs::Stat;

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ident {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

impl Ident {
    pub fn of(st: &Stat) -> Ident {
        Ident {
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// Why a file was not carried.
#[derive(Debug)]
pub(super) enum ReadError {
    /// It changed or vanished while being read: worth another try.
    Changed(String),
    /// The bundle side stopped taking chunks.
    Stopped,
}

/// A shared token bucket pacing the reads (`--bwlimit`).
pub(super) struct Pace {
    rate: u64,
    bucket: Mutex<(f64, Instant)>,
}

impl Pace {
    pub fn new(rate: u64) -> Pace {
        Pace { rate, bucket: Mutex::new((0.0, Instant::now())) }
    }

    pub fn take(&self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let rate = self.rate as f64;
        let wait = {
            let mut b = self.bucket.locked();
            let now = Instant::now();
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate / 4.0);
            b.1 = now;
            b.0 -= bytes as f64;
            if b.0 < 0.0 { Duration::from_secs_f64(-b.0 / rate) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Reads the data extents of the regular file at `path`, which the walk found as `ident`,
/// handing each chunk's reference and data to `on_chunk` in order. Returns the chunk list.
pub(super) fn chunk_file(
    path: &Path,
    ident: Ident,
    chunker: &mut Chunker,
    on_chunk: &mut dyn FnMut(&ChunkRef, &[u8]) -> bool,
) -> Result<Vec<ChunkRef>, ReadError> {
    let file = open_source(path).map_err(|e| ReadError::Changed(format!("vanished or unreadable: {e}")))?;
    let st = rustix::fs::fstat(&file).map_err(|e| ReadError::Changed(format!("cannot stat: {e}")))?;
    if st.st_ino != ident.ino || st.st_size as u64 != ident.size {
        return Err(ReadError::Changed("changed while being read".into()));
    }
    let extents = chunk_regions(&file, &st, ident.size)
        .map_err(|e| ReadError::Changed(format!("cannot map holes: {e}")))?;
    let mut chunks = Vec::new();
    let mut stopped = false;
    for (start, len) in extents {
        let mut rd = OffsetReader { file: &file, pos: start };
        chunker
            .chunk_stream(&mut rd, start, len, |offset, data| {
                let c = ChunkRef { hash: Hash32::of(data), offset, len: data.len() as u32 };
                if !on_chunk(&c, data) {
                    stopped = true;
                    return Err(std::io::Error::other("stopped"));
                }
                chunks.push(c);
                Ok(())
            })
            .map_err(|e| {
                if stopped { ReadError::Stopped } else { ReadError::Changed(format!("read error: {e}")) }
            })?;
    }
    let after = rustix::fs::fstat(&file).map_err(|e| ReadError::Changed(format!("cannot stat: {e}")))?;
    if Ident::of(&after) != ident {
        return Err(ReadError::Changed("changed while being read".into()));
    }
    Ok(chunks)
}
