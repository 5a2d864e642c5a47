//! Content-defined chunking (FastCDC 2020) and BLAKE3 chunk hashes.
//!
//! Both ends must cut the same way for the node-wide chunk index to find shared data, so the
//! controller tells agents the parameters with every pass.

use std::io::{self, Read};

use crate::manifest::{ChunkRef, Hash32};

/// FastCDC size bounds in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 }
    }
}

/// The largest chunk any peer may use, whatever it is told.
pub const MAX_CHUNK: u32 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChunkParamsError {
    #[error("chunk sizes must satisfy 64<=min<=avg<=max<={MAX_CHUNK}, got {0:?}")]
    OutOfRange(ChunkParams),
}

impl ChunkParams {
    pub fn validate(self) -> Result<Self, ChunkParamsError> {
        let ok = self.min_size >= fastcdc::v2020::MINIMUM_MIN
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.max_size <= MAX_CHUNK
            && self.avg_size >= fastcdc::v2020::AVERAGE_MIN
            && self.avg_size <= fastcdc::v2020::AVERAGE_MAX
            && self.max_size >= fastcdc::v2020::MAXIMUM_MIN;
        if ok { Ok(self) } else { Err(ChunkParamsError::OutOfRange(self)) }
    }
}

/// Cuts a stream into chunks. Reuses one buffer; memory is bounded by `buffer` bytes.
pub struct Chunker {
    params: ChunkParams,
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new(params: ChunkParams) -> Self {
        // Eight of the largest chunks: reads stay large, and the agent holds four of these
        // (two hash workers, each with a second thread for big files). The size does not
        // change where chunks are cut: a chunk is cut only once its whole window is read.
        let size = (params.max_size as usize * 8).max(1024 * 1024);
        Self { params, buf: vec![0; size] }
    }

    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Reads `reader` to its end (or `limit` bytes) and calls `on_chunk(offset, data)` for
    /// each chunk, offsets counted from `base`. Returns the bytes read.
    pub fn chunk_stream<R: Read>(
        &mut self,
        reader: &mut R,
        base: u64,
        limit: u64,
        on_chunk: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        self.chunk_stream_summed(reader, base, limit, None, on_chunk)
    }

    /// [`Chunker::chunk_stream`], also feeding every byte read to `sum`.
    fn chunk_stream_summed<R: Read>(
        &mut self,
        reader: &mut R,
        base: u64,
        limit: u64,
        mut sum: Option<&mut blake3::Hasher>,
        mut on_chunk: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        let p = self.params;
        let mut filled = 0usize;
        let mut offset = base;
        let mut remaining = limit;
        let mut eof = false;
        loop {
            while !eof && filled < self.buf.len() {
                let want = (self.buf.len() - filled).min(remaining.min(usize::MAX as u64) as usize);
                if want == 0 {
                    eof = true;
                    break;
                }
                let n = match reader.read(&mut self.buf[filled..filled + want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    eof = true;
                } else {
                    if let Some(h) = sum.as_deref_mut() {
                        h.update(&self.buf[filled..filled + n]);
                    }
                    filled += n;
                    remaining -= n as u64;
                }
            }
            if filled == 0 {
                return Ok(offset - base);
            }
            let cdc = fastcdc::v2020::FastCDC::new(&self.buf[..filled], p.min_size, p.avg_size, p.max_size);
            let mut consumed = 0usize;
            for c in cdc {
                let end = c.offset + c.length;
                if end == filled && !eof {
                    break;
                }
                on_chunk(offset, &self.buf[c.offset..end])?;
                offset += c.length as u64;
                consumed = end;
            }
            if consumed == 0 && !eof {
                // A full buffer always holds at least one complete chunk (buffer > max_size).
                return Err(io::Error::other("chunker made no progress"));
            }
            self.buf.copy_within(consumed..filled, 0);
            filled -= consumed;
            if eof && filled == 0 {
                return Ok(offset - base);
            }
        }
    }

    /// [`Chunker::refs`], and the BLAKE3 of all the bytes read (to recognise the same bytes
    /// later without chunking them).
    pub fn refs_summed<R: Read>(
        &mut self,
        reader: &mut R,
        base: u64,
        limit: u64,
    ) -> io::Result<(Vec<ChunkRef>, Hash32)> {
        let mut out = Vec::new();
        let mut h = blake3::Hasher::new();
        self.chunk_stream_summed(reader, base, limit, Some(&mut h), |offset, data| {
            out.push(ChunkRef { hash: Hash32::of(data), offset, len: data.len() as u32 });
            Ok(())
        })?;
        Ok((out, Hash32(*h.finalize().as_bytes())))
    }

    /// The BLAKE3 of the next `limit` bytes of `reader` (fewer at its end), read through this
    /// chunker's buffer: a third of the cost of chunking them.
    pub fn sum<R: Read>(&mut self, reader: &mut R, limit: u64) -> io::Result<Hash32> {
        let mut h = blake3::Hasher::new();
        let mut left = limit;
        while left > 0 {
            let want = (self.buf.len() as u64).min(left) as usize;
            let n = match reader.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&self.buf[..n]);
            left -= n as u64;
        }
        Ok(Hash32(*h.finalize().as_bytes()))
    }

    /// Chunks and hashes a whole stream into chunk references.
    pub fn refs<R: Read>(&mut self, reader: &mut R, base: u64, limit: u64) -> io::Result<Vec<ChunkRef>> {
        let mut out = Vec::new();
        self.chunk_stream(reader, base, limit, |offset, data| {
            out.push(ChunkRef { hash: Hash32::of(data), offset, len: data.len() as u32 });
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_does_not_move_chunk_boundaries() {
        // Chunk indexes on nodes hold chunks cut with older buffer sizes: they must agree.
        let data = pseudo_random(9 << 20, 7);
        let p = ChunkParams::default();
        let cut = |buf: usize| {
            let mut c = Chunker { params: p, buf: vec![0; buf] };
            c.refs(&mut &data[..], 0, data.len() as u64).unwrap()
        };
        let small = cut(p.max_size as usize + 1);
        assert_eq!(small, cut(1 << 20));
        assert_eq!(small, cut(4 << 20));
        assert_eq!(small, Chunker::new(p).refs(&mut &data[..], 0, data.len() as u64).unwrap());
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_stream_and_respect_bounds() {
        let data = pseudo_random(5 * 1024 * 1024 + 123, 7);
        let p = ChunkParams::default();
        let refs = Chunker::new(p).refs(&mut &data[..], 0, u64::MAX).unwrap();
        let mut at = 0u64;
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(r.offset, at);
            assert!(r.len <= p.max_size);
            if i + 1 < refs.len() {
                assert!(r.len >= p.min_size);
            }
            let s = r.offset as usize;
            assert_eq!(r.hash, Hash32::of(&data[s..s + r.len as usize]));
            at += u64::from(r.len);
        }
        assert_eq!(at, data.len() as u64);
    }

    #[test]
    fn an_edit_changes_only_nearby_chunks() {
        let data = pseudo_random(4 * 1024 * 1024, 9);
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_010, b"inserted bytes here".iter().copied());
        let p = ChunkParams::default();
        let a = Chunker::new(p).refs(&mut &data[..], 0, u64::MAX).unwrap();
        let b = Chunker::new(p).refs(&mut &edited[..], 0, u64::MAX).unwrap();
        let old: std::collections::HashSet<_> = a.iter().map(|c| c.hash).collect();
        let new_chunks = b.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!(new_chunks <= 3, "{new_chunks} chunks changed");
    }

    #[test]
    fn limit_and_base_are_honoured() {
        let data = pseudo_random(300_000, 3);
        let refs = Chunker::new(ChunkParams::default()).refs(&mut &data[..], 4096, 100_000).unwrap();
        assert_eq!(refs.first().unwrap().offset, 4096);
        let total: u64 = refs.iter().map(|r| u64::from(r.len)).sum();
        assert_eq!(total, 100_000);
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(ChunkParams { min_size: 1, avg_size: 2, max_size: 3 }.validate().is_err());
        assert!(ChunkParams::default().validate().is_ok());
    }
}
