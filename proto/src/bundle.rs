//! Bundle batch records (`p2c.v1.BundleBatch`, see `p2c_common::bundle`): decoding, what the
//! framing checks of them, and the checks the receive path would make of their entries.

use p2c_common::bundle::BatchInfo;
use p2c_common::manifest::{Entry, Hash32};
use p2c_common::paths::RelPath;
use prost::Message;

use crate::ConvertError;
use crate::v1;

/// Decodes a batch record's payload.
pub fn decode(payload: &[u8]) -> Result<v1::BundleBatch, ConvertError> {
    v1::BundleBatch::decode(payload).map_err(|e| ConvertError::Other(format!("undecodable batch: {e}")))
}

/// The structure of a batch, for the framing: its sequence number, counts, and each chunk
/// reference's hash with the offset of its record. The entries are not judged here.
pub fn info(b: &v1::BundleBatch) -> Result<BatchInfo, ConvertError> {
    let batch = b.batch.as_ref().ok_or_else(|| ConvertError::Other("batch record without a batch".into()))?;
    let total: usize = batch.entries.iter().map(|e| e.chunks.len()).sum();
    if total != b.chunk_offsets.len() {
        return Err(ConvertError::Other(format!(
            "{} chunk references but {} chunk offsets",
            total,
            b.chunk_offsets.len()
        )));
    }
    let mut refs = Vec::with_capacity(total);
    let mut offsets = b.chunk_offsets.iter();
    let (mut objects, mut file_bytes) = (0u64, 0u64);
    for e in &batch.entries {
        if e.segment == 0 {
            objects += 1;
            if e.kind == v1::EntryKind::Regular as i32 {
                file_bytes = file_bytes.saturating_add(e.size);
            }
        }
        for c in &e.chunks {
            let hash: [u8; 32] = c.hash.as_slice().try_into().map_err(|_| {
                ConvertError::Other(format!(
                    "entry {}: chunk hash is not 32 bytes",
                    p2c_common::paths::escape_bytes(&e.path)
                ))
            })?;
            let at = offsets.next().copied().unwrap_or_default();
            refs.push((Hash32(hash), at));
        }
    }
    Ok(BatchInfo {
        seq: batch.seq,
        entries: batch.entries.len() as u64,
        objects,
        file_bytes,
        changed: b.changed.len() as u64,
        skipped: b.skipped.len() as u64,
        refs,
    })
}

/// Judges a bundle's entries as the receive path judges an agent's: each one must convert to
/// a domain [`Entry`] (paths, modes, chunk lists, digests), and they must come in walk order,
/// a large file's segments one after the other.
#[derive(Debug, Default)]
pub struct EntryCheck {
    /// The last entry's path and segment, and whether more segments of it follow.
    last: Option<(RelPath, u32, bool)>,
}

impl EntryCheck {
    pub fn check(&mut self, b: &v1::BundleBatch) -> Result<(), ConvertError> {
        let batch =
            b.batch.as_ref().ok_or_else(|| ConvertError::Other("batch record without a batch".into()))?;
        for e in &batch.entries {
            let e = Entry::try_from(e.clone())?;
            let in_order = match &self.last {
                None => e.segment == 0,
                Some((p, seg, true)) => e.path == *p && e.segment == seg + 1,
                Some((p, _, false)) => e.segment == 0 && e.path.walk_cmp(p) == std::cmp::Ordering::Greater,
            };
            if !in_order {
                return Err(ConvertError::Other(format!(
                    "entry {} (segment {}) is out of walk order",
                    e.path.display(),
                    e.segment
                )));
            }
            self.last = Some((e.path, e.segment, e.more));
        }
        for p in b.changed.iter().chain(&b.skipped) {
            p2c_common::manifest::Problem::try_from(p.clone())?;
        }
        Ok(())
    }

    /// True when the last entry seen is a file whose next segments never came.
    pub fn open_file(&self) -> Option<String> {
        match &self.last {
            Some((p, _, true)) => Some(p.display()),
            _ => None,
        }
    }
}

/// Verifies the bundle at `path` (see `p2c_common::bundle::verify`). With `entries`, every
/// entry is also judged as the receive path would judge it (the operator's `verify`);
/// without, only the framing, the chunks and the references are (an import, whose entries
/// then go through the receive path itself).
pub fn verify(
    path: &std::path::Path,
    entries: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<p2c_common::bundle::Verified, p2c_common::bundle::BundleError> {
    let mut check = EntryCheck::default();
    let mut on_batch = |payload: &[u8]| -> Result<BatchInfo, String> {
        let b = decode(payload).map_err(|e| e.to_string())?;
        if entries {
            check.check(&b).map_err(|e| e.to_string())?;
        }
        info(&b).map_err(|e| e.to_string())
    };
    let v = p2c_common::bundle::verify(path, &mut on_batch, progress)?;
    if let Some(p) = check.open_file() {
        return Err(p2c_common::bundle::BundleError::Invalid {
            path: path.display().to_string(),
            what: format!("the last segments of {p} are missing"),
        });
    }
    Ok(v)
}
