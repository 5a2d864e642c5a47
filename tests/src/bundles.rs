//! Bundles (`p2c-agent export`) for tests: what one holds whatever the order its chunks were
//! stored in, damaged copies, and hand-made (hostile) ones.

use std::collections::BTreeMap;
use std::path::Path;

use p2c_common::bundle::{BundleHeader, ChunkRecord, Codec, FORMAT, Kind, Reader, Trailer, Writer};
use p2c_common::chunking::ChunkParams;
use p2c_common::inventory::Inventory;
use p2c_common::manifest::Hash32;
use p2c_common::scan::ScanResult;
use p2c_proto::v1;
use prost::Message;

/// What a bundle holds: its header (creation time zeroed), inventory (collection time
/// zeroed), scan, every entry in walk order, every stored chunk's plain data, the problems.
#[derive(Debug, PartialEq)]
pub struct Contents {
    pub header: BundleHeader,
    pub inventory: serde_json::Value,
    pub scan: serde_json::Value,
    pub entries: Vec<v1::Entry>,
    pub chunks: BTreeMap<Hash32, Vec<u8>>,
    pub problems: Vec<v1::Problem>,
}

/// Reads the whole bundle at `path` (which must be readable record by record).
pub fn contents(path: &Path) -> anyhow::Result<Contents> {
    let mut r = Reader::open(path)?;
    let mut header = None;
    let (mut inventory, mut scan) = (serde_json::Value::Null, serde_json::Value::Null);
    let (mut entries, mut chunks, mut problems) = (Vec::new(), BTreeMap::new(), Vec::new());
    let mut dec = zstd::bulk::Decompressor::new()?;
    while let Some(rec) = r.next_record()? {
        match rec.kind {
            Kind::Header => {
                let mut h: BundleHeader = serde_json::from_slice(&rec.payload)?;
                h.created_unix = 0;
                header = Some(h);
            }
            Kind::Inventory => {
                inventory = serde_json::from_slice(&rec.payload)?;
                inventory["collected_unix"] = 0.into();
            }
            Kind::Scan => scan = serde_json::from_slice(&rec.payload)?,
            Kind::Chunk => {
                let c = ChunkRecord::decode(&rec.payload).map_err(anyhow::Error::msg)?;
                let plain = c.plain(&mut dec).map_err(anyhow::Error::msg)?;
                anyhow::ensure!(chunks.insert(c.hash, plain).is_none(), "chunk {:?} stored twice", c.hash);
            }
            Kind::Batch => {
                let b = p2c_proto::bundle::decode(&rec.payload)?;
                entries.extend(b.batch.map(|b| b.entries).unwrap_or_default());
                problems.extend(b.changed);
                problems.extend(b.skipped);
            }
            Kind::Trailer => {}
        }
    }
    let header = header.ok_or_else(|| anyhow::anyhow!("{} has no header", path.display()))?;
    Ok(Contents { header, inventory, scan, entries, chunks, problems })
}

/// Copies `src` to `dst` with the byte at `at` flipped.
pub fn flipped_copy(src: &Path, dst: &Path, at: usize) -> anyhow::Result<()> {
    let mut b = std::fs::read(src)?;
    anyhow::ensure!(at < b.len(), "{} has only {} bytes", src.display(), b.len());
    b[at] ^= 0x5a;
    std::fs::write(dst, b)?;
    Ok(())
}

/// Copies the first `len` bytes of `src` to `dst`.
pub fn truncated_copy(src: &Path, dst: &Path, len: usize) -> anyhow::Result<()> {
    let b = std::fs::read(src)?;
    std::fs::write(dst, &b[..len.min(b.len())])?;
    Ok(())
}

/// Writes a well-framed bundle of `name` holding `entries` in one batch and the chunks of
/// `datas` (each one chunk), whatever the entries say: a hostile source's bundle.
pub fn handmade(
    path: &Path,
    name: &str,
    inv: &Inventory,
    entries: Vec<v1::Entry>,
    datas: &[&[u8]],
) -> anyhow::Result<()> {
    let mut w = Writer::create(path)?;
    let header = BundleHeader {
        format: FORMAT,
        name: name.into(),
        root: "/".into(),
        facts: "tree".into(),
        chunking: ChunkParams::default(),
        excludes: Vec::new(),
        agent_version: "test".into(),
        created_unix: 0,
    };
    w.append(Kind::Header, &serde_json::to_vec(&header)?)?;
    w.append(Kind::Inventory, &serde_json::to_vec(inv)?)?;
    w.append(Kind::Scan, &ScanResult::new().to_json()?)?;
    let mut t = Trailer::default();
    let mut at = BTreeMap::new();
    for d in datas {
        let hash = Hash32::of(d);
        let o = w.append(Kind::Chunk, &ChunkRecord::encode(&hash, d.len() as u32, Codec::Plain, d))?;
        at.insert(hash, o);
        t.chunks += 1;
        t.chunk_bytes += d.len() as u64;
        t.stored_bytes += d.len() as u64;
    }
    let offsets = entries
        .iter()
        .flat_map(|e| e.chunks.iter())
        .map(|c| Hash32(c.hash.as_slice().try_into().unwrap_or([0; 32])))
        .map(|h| at.get(&h).copied().unwrap_or(0))
        .collect();
    let bb = v1::BundleBatch {
        batch: Some(v1::EntryBatch { seq: 0, entries }),
        chunk_offsets: offsets,
        ..Default::default()
    };
    let info = p2c_proto::bundle::info(&bb)?;
    w.append(Kind::Batch, &bb.encode_to_vec())?;
    t.batches = 1;
    t.entries = info.entries;
    t.objects = info.objects;
    t.file_bytes = info.file_bytes;
    w.finish(t)?;
    Ok(())
}
