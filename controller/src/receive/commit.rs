//! What the writer hands the store and the pass's manifest: each batch's records in one
//! transaction, also inside long batches so that a crash loses little.

use std::time::{Duration, Instant};

use p2c_common::manifest::Entry;

use super::ReceiveError;
use super::manifest::{ManifestError, ManifestWriter};
use super::store::Store;
use crate::state::index::BatchCommit;

/// Written file data after which the store is told what is written, even inside a batch.
const COMMIT_BYTES: u64 = 8 << 20;
/// Time after which it is told, likewise.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Where the entries of a pass are listed as it runs.
pub(crate) trait Manifest {
    fn push(&mut self, e: &Entry) -> Result<(), ManifestError>;
    /// Completes the manifest and puts it in place.
    fn finish(self) -> Result<(), ManifestError>;
}

impl Manifest for ManifestWriter {
    fn push(&mut self, e: &Entry) -> Result<(), ManifestError> {
        ManifestWriter::push(self, e)
    }

    fn finish(self) -> Result<(), ManifestError> {
        ManifestWriter::finish(self).map(drop)
    }
}

/// What the writer applied and the store does not know yet.
pub(crate) struct Pending {
    pub changes: BatchCommit,
    last: Instant,
    bytes: u64,
}

impl Pending {
    pub fn new() -> Self {
        Pending { changes: BatchCommit::default(), last: Instant::now(), bytes: 0 }
    }

    /// A file of `size` bytes was written: whether the store is due to hear of it now.
    pub fn file_written(&mut self, size: u64) -> bool {
        self.bytes += size;
        self.bytes >= COMMIT_BYTES || self.last.elapsed() >= COMMIT_EVERY
    }

    /// Records what is written so far, in one transaction (without acknowledging a batch).
    pub fn flush<S: Store>(&mut self, store: &mut S, ctid: u32) -> Result<(), ReceiveError> {
        let changes = std::mem::take(&mut self.changes);
        if !changes.is_empty() {
            store.commit(ctid, &changes)?;
        }
        self.last = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::testing::MemStore;
    use crate::state::index::FileRecord;
    use p2c_common::manifest::Hash32;

    #[test]
    fn flushes_in_one_commit_and_only_when_there_is_something() {
        let mut store = MemStore::default();
        let mut p = Pending::new();
        p.flush(&mut store, 5).unwrap();
        assert_eq!(store.commits, 0);
        p.changes.upserts.push(FileRecord { key: b"a".to_vec(), digest: Hash32([1; 32]), kind: 1 });
        p.changes.upserts.push(FileRecord { key: b"b".to_vec(), digest: Hash32([1; 32]), kind: 1 });
        assert!(!p.file_written(1 << 20));
        assert!(p.file_written(7 << 20), "8 MiB written is due");
        p.flush(&mut store, 5).unwrap();
        assert_eq!(store.commits, 1);
        assert_eq!(store.files.len(), 2);
        assert!(p.changes.is_empty());
        assert!(!p.file_written(1));
    }
}
