//! Reading what an earlier run of an export left at `--out`, to go on from there.
//!
//! Every record is read and checked. What is kept is every record up to the first torn or
//! corrupted one, except a batch that ends inside a large file (its last entry has more
//! segments to come) and what follows it, unless a later batch completes that file. Chunk
//! records are kept even past the last batch: they are content, found again through the chunk
//! index (rebuilt from the records kept) when the walk reaches their files again.

use p2c_common::bundle;
use p2c_common::bundle::{BundleError, BundleHeader, Kind, Reader, Trailer};
use p2c_common::paths::RelPath;

use super::ExportError;
use super::index::ChunkIndex;

/// What an earlier run left.
pub(super) struct Prefix {
    pub header: BundleHeader,
    pub inventory: Option<Vec<u8>>,
    pub scan: Option<Vec<u8>>,
    /// The trailer, if the bundle is complete.
    pub complete: Option<Trailer>,
    /// Bytes and records kept, and the digest of those bytes.
    pub keep: u64,
    pub records: u64,
    pub digest: blake3::Hasher,
    /// Counts of what is kept (batches, entries, chunks...).
    pub counts: Trailer,
    /// The last entry kept: the walk goes on after it.
    pub last: Option<RelPath>,
    /// Why reading stopped before the end of the file, if it did.
    pub cut: Option<String>,
}

/// Reads the bundle at `path`, filling `index` with the chunks kept. `Ok(None)` when the
/// file holds nothing worth keeping (not even a header).
pub(super) fn read(path: &std::path::Path, index: &mut ChunkIndex) -> Result<Option<Prefix>, ExportError> {
    let mut r = match Reader::open(path) {
        Ok(r) => r,
        // Only ever overwrite a bundle: anything else at --out is the operator's.
        Err(BundleError::NotABundle { path }) => {
            return Err(ExportError::Options(format!(
                "{path} exists and is not a p2c bundle; choose another --out or remove it"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let header = match r.next_record() {
        Ok(Some(rec)) if rec.kind == Kind::Header => {
            match serde_json::from_slice::<BundleHeader>(&rec.payload) {
                Ok(h) => h,
                Err(e) => return Err(r.corrupt(rec.offset, format!("unreadable header: {e}")).into()),
            }
        }
        // Stopped before its header was complete: nothing to keep.
        Ok(None) | Err(BundleError::Truncated { .. }) => return Ok(None),
        Ok(Some(rec)) => return Err(r.corrupt(rec.offset, "the first record is not the header").into()),
        Err(e) => return Err(e.into()),
    };
    let mut p = Prefix {
        header,
        inventory: None,
        scan: None,
        complete: None,
        keep: r.offset(),
        records: r.records(),
        digest: r.digest(),
        counts: Trailer::default(),
        last: None,
        cut: None,
    };
    // Counts since a batch that ended inside a file, kept only when a batch completes it.
    let mut pending = Trailer::default();
    let mut last_seen: Option<RelPath> = None;
    let mut inside_file = false;
    loop {
        let rec = match r.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            Err(e @ (BundleError::Truncated { .. } | BundleError::Corrupt { .. })) => {
                p.cut = Some(e.to_string());
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let checkpoint = match rec.kind {
            Kind::Inventory if p.inventory.is_none() && p.counts.batches == 0 => {
                p.inventory = Some(rec.payload);
                true
            }
            Kind::Scan if p.inventory.is_some() && p.scan.is_none() => {
                p.scan = Some(rec.payload);
                true
            }
            Kind::Chunk if p.scan.is_some() => {
                let c = bundle::ChunkRecord::decode(&rec.payload).map_err(|w| r.corrupt(rec.offset, w))?;
                index.insert(&c.hash, rec.offset)?;
                pending.chunks += 1;
                pending.chunk_bytes += u64::from(c.len);
                pending.stored_bytes += c.data.len() as u64;
                !inside_file
            }
            Kind::Batch if p.scan.is_some() => {
                let bad = |e: p2c_proto::ConvertError| r.corrupt(rec.offset, e.to_string());
                let b = p2c_proto::bundle::decode(&rec.payload).map_err(bad)?;
                let info = p2c_proto::bundle::info(&b).map_err(bad)?;
                pending.batches += 1;
                pending.entries += info.entries;
                pending.objects += info.objects;
                pending.file_bytes += info.file_bytes;
                pending.changed += info.changed;
                pending.skipped += info.skipped;
                // How far the walk got: entries and problems are each in walk order, and the
                // batch's last item is the last of one of the three lists.
                let entries = b.batch.map(|b| b.entries).unwrap_or_default();
                let lasts = [
                    entries.last().map(|e| &e.path),
                    b.changed.last().map(|p| &p.path),
                    b.skipped.last().map(|p| &p.path),
                ];
                for path in lasts.into_iter().flatten() {
                    let path =
                        RelPath::new(path.clone()).map_err(|e| r.corrupt(rec.offset, e.to_string()))?;
                    if last_seen.as_ref().is_none_or(|l| path.walk_cmp(l) == std::cmp::Ordering::Greater) {
                        last_seen = Some(path);
                    }
                }
                if let Some(e) = entries.last() {
                    inside_file = e.more;
                }
                !inside_file
            }
            Kind::Trailer if p.scan.is_some() => {
                let t: Trailer = serde_json::from_slice(&rec.payload)
                    .map_err(|e| r.corrupt(rec.offset, format!("unreadable trailer: {e}")))?;
                p.complete = Some(t);
                return Ok(Some(p));
            }
            other => {
                p.cut =
                    Some(r.corrupt(rec.offset, format!("unexpected {} record", other.name())).to_string());
                break;
            }
        };
        if checkpoint {
            p.keep = r.offset();
            p.records = r.records();
            p.digest = r.digest();
            add(&mut p.counts, &std::mem::take(&mut pending));
            if last_seen.is_some() {
                p.last = last_seen.clone();
            }
        }
    }
    index.forget_from(p.keep)?;
    Ok(Some(p))
}

fn add(to: &mut Trailer, t: &Trailer) {
    to.batches += t.batches;
    to.entries += t.entries;
    to.objects += t.objects;
    to.file_bytes += t.file_bytes;
    to.chunks += t.chunks;
    to.chunk_bytes += t.chunk_bytes;
    to.stored_bytes += t.stored_bytes;
    to.changed += t.changed;
    to.skipped += t.skipped;
}
