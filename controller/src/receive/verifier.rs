//! The verifier thread: each chunk the peer sends is checked against what was asked for,
//! decompressed into a buffer no larger than announced, and hashed.

use p2c_common::sync::Locked;
use std::sync::atomic::Ordering;

use p2c_common::manifest::Hash32;
use tokio::sync::mpsc;

use super::{Chunk, ChunkBody, ChunkMsg, Expected, Progress};

/// Longest reason an unavailable chunk may give.
const MAX_REASON: usize = 512;

/// Checks chunks until the reader stops sending them or the writer stops taking them.
pub(crate) fn run(
    mut rx: mpsc::Receiver<Vec<Chunk>>,
    tx: mpsc::Sender<Vec<ChunkMsg>>,
    expected: Expected,
    progress: std::sync::Arc<Progress>,
) {
    let mut dec = zstd::bulk::Decompressor::new().ok();
    while let Some(batch) = rx.blocking_recv() {
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            out.push(verify(c, &expected, &progress, &mut dec));
        }
        if tx.blocking_send(out).is_err() {
            return;
        }
    }
}

pub(crate) fn verify(
    c: Chunk,
    expected: &Expected,
    progress: &Progress,
    dec: &mut Option<zstd::bulk::Decompressor<'static>>,
) -> ChunkMsg {
    let Some((hash, len)) = expected.locked().remove(&(c.seq, c.index)) else {
        return ChunkMsg::Invalid(format!("chunk {}/{} was not requested", c.seq, c.index));
    };
    let (data, compressed) = match c.body {
        ChunkBody::Unavailable(mut reason) => {
            let mut end = reason.len().min(MAX_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            return ChunkMsg::Unavailable { seq: c.seq, index: c.index, reason };
        }
        ChunkBody::Plain(d) => (d, false),
        ChunkBody::Zstd(d) => (d, true),
    };
    progress.wire_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    // Decompression is bounded by the announced length: a frame that inflates past it fails
    // here instead of filling memory. Plain data is not copied.
    let data = if compressed {
        match dec.as_mut().map(|d| d.decompress(&data, len as usize)) {
            Some(Ok(d)) => Some(bytes::Bytes::from(d)),
            _ => None,
        }
    } else {
        Some(data)
    };
    match data {
        Some(data) if data.len() == len as usize && Hash32::of(&data) == hash => {
            ChunkMsg::Data { seq: c.seq, index: c.index, data }
        }
        Some(_) => ChunkMsg::Invalid(format!("chunk {}/{} does not match its hash", c.seq, c.index)),
        None => ChunkMsg::Invalid(format!(
            "chunk {}/{} does not decompress to its announced {len} bytes",
            c.seq, c.index
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn setup(data: &[u8]) -> (Expected, Progress, Option<zstd::bulk::Decompressor<'static>>) {
        let expected: Expected = Default::default();
        expected.locked().insert((0, 1), (Hash32::of(data), data.len() as u32));
        (expected, Progress::default(), zstd::bulk::Decompressor::new().ok())
    }

    fn chunk(body: ChunkBody) -> Chunk {
        Chunk { seq: 0, index: 1, body }
    }

    fn invalid(m: ChunkMsg) -> String {
        match m {
            ChunkMsg::Invalid(m) => m,
            _ => panic!("not refused"),
        }
    }

    #[test]
    fn plain_and_compressed_chunks_pass_once() {
        let data = b"some chunk data, some chunk data".to_vec();
        let (exp, progress, mut dec) = setup(&data);
        let got = verify(chunk(ChunkBody::Plain(Bytes::from(data.clone()))), &exp, &progress, &mut dec);
        assert!(matches!(got, ChunkMsg::Data { seq: 0, index: 1, data: d } if d == data));
        assert_eq!(progress.wire_bytes.load(Ordering::Relaxed), data.len() as u64);
        // Asked for once: the same chunk again was not requested.
        let again = verify(chunk(ChunkBody::Plain(Bytes::from(data.clone()))), &exp, &progress, &mut dec);
        assert_eq!(invalid(again), "chunk 0/1 was not requested");

        let (exp, progress, mut dec) = setup(&data);
        let frame = zstd::bulk::compress(&data, 1).unwrap();
        let wire = frame.len() as u64;
        let got = verify(chunk(ChunkBody::Zstd(Bytes::from(frame))), &exp, &progress, &mut dec);
        assert!(matches!(got, ChunkMsg::Data { data: d, .. } if d == data));
        assert_eq!(progress.wire_bytes.load(Ordering::Relaxed), wire, "wire bytes count the frame");
    }

    #[test]
    fn what_was_not_announced_is_refused() {
        let data = b"announced".to_vec();
        let (exp, p, mut dec) = setup(&data);
        let other =
            verify(chunk(ChunkBody::Plain(Bytes::from_static(b"something else"))), &exp, &p, &mut dec);
        assert_eq!(invalid(other), "chunk 0/1 does not match its hash");
        let (exp, p, mut dec) = setup(&data);
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
        let got = verify(chunk(ChunkBody::Zstd(Bytes::from(bomb))), &exp, &p, &mut dec);
        assert_eq!(invalid(got), "chunk 0/1 does not decompress to its announced 9 bytes");
        let (exp, p, mut dec) = setup(&data);
        let stray = Chunk { seq: 0, index: 7, body: ChunkBody::Plain(Bytes::from(data)) };
        assert_eq!(invalid(verify(stray, &exp, &p, &mut dec)), "chunk 0/7 was not requested");
    }

    #[test]
    fn unavailable_reasons_are_bounded() {
        let (exp, p, mut dec) = setup(b"x");
        // Multi-byte characters across the limit: cut before the character, not inside it.
        let reason = format!("a{}", "é".repeat(600));
        match verify(chunk(ChunkBody::Unavailable(reason)), &exp, &p, &mut dec) {
            ChunkMsg::Unavailable { seq: 0, index: 1, reason } => {
                assert_eq!(reason.len(), 511);
                assert!(reason.starts_with("aé"));
            }
            _ => panic!("not unavailable"),
        }
        assert_eq!(p.wire_bytes.load(Ordering::Relaxed), 0);
    }
}
