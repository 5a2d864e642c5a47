//! The store as the receive path sees it: the tree's records and the node-wide chunk index
//! ([`crate::state::index`]), behind two small traits so that the planner, the merge and the
//! writer can be tested with an in-memory double.

use p2c_common::manifest::Hash32;
use rusqlite::Connection;

use crate::state::StoreError;
use crate::state::index::{self, BatchCommit, ChunkLocation, FileRecord};

/// The chunk index and the commits of one container's records.
pub(crate) trait Store {
    /// Where the node holds a chunk, if anywhere.
    fn chunk_lookup(&mut self, hash: &Hash32) -> Result<Option<ChunkLocation>, StoreError>;
    /// Whether the node holds a chunk anywhere.
    fn chunk_exists(&mut self, hash: &Hash32) -> Result<bool, StoreError>;
    /// Drops an index entry found stale (only if it still points at `loc`).
    fn chunk_forget(&mut self, hash: &Hash32, loc: &ChunkLocation) -> Result<(), StoreError>;
    /// Applies one batch of record and index changes for `ctid` in one transaction.
    fn commit(&mut self, ctid: u32, c: &BatchCommit) -> Result<(), StoreError>;
}

impl Store for Connection {
    fn chunk_lookup(&mut self, hash: &Hash32) -> Result<Option<ChunkLocation>, StoreError> {
        index::chunk_lookup(self, hash)
    }

    fn chunk_exists(&mut self, hash: &Hash32) -> Result<bool, StoreError> {
        index::chunk_exists(self, hash)
    }

    fn chunk_forget(&mut self, hash: &Hash32, loc: &ChunkLocation) -> Result<(), StoreError> {
        index::chunk_forget(self, hash, loc)
    }

    fn commit(&mut self, ctid: u32, c: &BatchCommit) -> Result<(), StoreError> {
        index::commit_batch(self, ctid, c)
    }
}

/// What the store says one tree holds, read in walk order.
pub(crate) trait Records {
    /// Up to `limit` records after `after` (exclusive; `None`: from the first), in walk order.
    fn files_after(&mut self, after: Option<&[u8]>, limit: usize) -> Result<Vec<FileRecord>, StoreError>;
}

/// The records of container `ctid`, on a connection of their own: the merge owns what it
/// reads, the writer commits on its own connection.
pub(crate) struct TreeRecords {
    pub conn: Connection,
    pub ctid: u32,
}

impl Records for TreeRecords {
    fn files_after(&mut self, after: Option<&[u8]>, limit: usize) -> Result<Vec<FileRecord>, StoreError> {
        index::files_after(&self.conn, self.ctid, after, limit)
    }
}
