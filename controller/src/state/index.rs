//! The per-container file records and the node-wide chunk index, used by the receive path
//! on its own connection.

use p2c_common::manifest::Hash32;
use p2c_common::paths::RelPath;
use rusqlite::{Connection, OptionalExtension, params};

use super::Result;

/// The key rows are sorted by: the path with `/` replaced by NUL (which no name contains),
/// so that byte order equals the walk order of [`RelPath::walk_cmp`].
pub fn walk_key(path: &RelPath) -> Vec<u8> {
    path.walk_key()
}

/// The path of a key. Keys are only written from valid paths.
pub fn key_path(key: &[u8]) -> Option<RelPath> {
    RelPath::new(key.iter().map(|b| if *b == 0 { b'/' } else { *b }).collect::<Vec<u8>>()).ok()
}

/// What the store remembers of an entry written into a container tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub key: Vec<u8>,
    pub digest: Hash32,
    pub kind: u8,
}

/// Up to `limit` records of `ctid` after `after` (exclusive), in walk order.
pub fn files_after(
    conn: &Connection,
    ctid: u32,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<FileRecord>> {
    let rows = match after {
        None => conn
            .prepare_cached("SELECT key, digest, kind FROM files WHERE ctid = ?1 ORDER BY key LIMIT ?2")?
            .query_map(params![ctid, limit as i64], row_to_record)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        Some(after) => conn
            .prepare_cached(
                "SELECT key, digest, kind FROM files WHERE ctid = ?1 AND key > ?2 ORDER BY key LIMIT ?3",
            )?
            .query_map(params![ctid, after, limit as i64], row_to_record)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(rows)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    let d: Vec<u8> = r.get(1)?;
    let mut digest = [0u8; 32];
    if d.len() == 32 {
        digest.copy_from_slice(&d);
    }
    Ok(FileRecord { key: r.get(0)?, digest: Hash32(digest), kind: r.get(2)? })
}

/// Where a chunk can be read on the node, and the identity the file had when indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub ctid: u32,
    pub key: Vec<u8>,
    pub offset: u64,
    pub len: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

pub fn chunk_lookup(conn: &Connection, hash: &Hash32) -> Result<Option<ChunkLocation>> {
    let mut st = conn.prepare_cached(
        "SELECT ctid, key, offset, len, ino, size, mtime_ns, ctime_ns FROM chunks WHERE hash = ?1",
    )?;
    Ok(st
        .query_row([&hash.0[..]], |r| {
            Ok(ChunkLocation {
                ctid: r.get(0)?,
                key: r.get(1)?,
                offset: r.get::<_, i64>(2)? as u64,
                len: r.get(3)?,
                ino: r.get::<_, i64>(4)? as u64,
                size: r.get::<_, i64>(5)? as u64,
                mtime_ns: r.get(6)?,
                ctime_ns: r.get(7)?,
            })
        })
        .optional()?)
}

pub fn chunk_exists(conn: &Connection, hash: &Hash32) -> Result<bool> {
    let mut st = conn.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?;
    Ok(st.exists([&hash.0[..]])?)
}

/// Removes an index entry found stale (only if it still points where it did).
pub fn chunk_forget(conn: &Connection, hash: &Hash32, loc: &ChunkLocation) -> Result<()> {
    conn.prepare_cached("DELETE FROM chunks WHERE hash = ?1 AND ctid = ?2 AND key = ?3 AND offset = ?4")?
        .execute(params![&hash.0[..], loc.ctid, loc.key, loc.offset as i64])?;
    Ok(())
}

/// Everything one batch changes in the store, applied in one transaction.
#[derive(Default, Debug)]
pub struct BatchCommit {
    pub upserts: Vec<FileRecord>,
    pub deletes: Vec<Vec<u8>>,
    pub chunks: Vec<(Hash32, ChunkLocation)>,
}

impl BatchCommit {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && self.chunks.is_empty()
    }
}

pub fn commit_batch(conn: &mut Connection, ctid: u32, b: &BatchCommit) -> Result<()> {
    let tx = conn.transaction()?;
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO files (ctid, key, digest, kind) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(ctid, key) DO UPDATE SET digest = excluded.digest, kind = excluded.kind",
        )?;
        for r in &b.upserts {
            up.execute(params![ctid, r.key, &r.digest.0[..], r.kind])?;
        }
        let mut del = tx.prepare_cached("DELETE FROM files WHERE ctid = ?1 AND key = ?2")?;
        for k in &b.deletes {
            del.execute(params![ctid, k])?;
        }
        let mut ch = tx.prepare_cached(
            "INSERT OR REPLACE INTO chunks (hash, ctid, key, offset, len, ino, size, mtime_ns, ctime_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for (h, l) in &b.chunks {
            ch.execute(params![
                &h.0[..],
                l.ctid,
                l.key,
                l.offset as i64,
                l.len,
                l.ino as i64,
                l.size as i64,
                l.mtime_ns,
                l.ctime_ns
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Removes the record of one entry and everything below it (a deleted directory).
pub fn delete_subtree(conn: &Connection, ctid: u32, key: &[u8]) -> Result<()> {
    let mut hi = key.to_vec();
    hi.push(1);
    let mut lo = key.to_vec();
    lo.push(0);
    conn.prepare_cached("DELETE FROM files WHERE ctid = ?1 AND (key = ?2 OR (key >= ?3 AND key < ?4))")?
        .execute(params![ctid, key, lo, hi])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_walk_order() {
        let mut paths: Vec<RelPath> = ["a-b", "a/b", "a", "a/b/c", "b", "a/a"]
            .iter()
            .map(|s| RelPath::new(s.as_bytes().to_vec()).unwrap())
            .collect();
        let mut by_key = paths.clone();
        by_key.sort_by_key(walk_key);
        paths.sort_by(|a, b| a.walk_cmp(b));
        assert_eq!(paths, by_key);
        for p in &paths {
            assert_eq!(&key_path(&walk_key(p)).unwrap(), p);
        }
    }

    #[test]
    fn records_page_in_walk_order() {
        let d = tempfile::tempdir().unwrap();
        let _s = crate::state::Store::open(&d.path().join("s.db")).unwrap();
        let mut c = crate::state::connect(&d.path().join("s.db")).unwrap();
        let mut b = BatchCommit::default();
        for p in ["", "a", "a/b", "a-b", "c"] {
            let key = walk_key(&RelPath::new(p.as_bytes().to_vec()).unwrap());
            b.upserts.push(FileRecord { key, digest: Hash32([1; 32]), kind: 2 });
        }
        commit_batch(&mut c, 7, &b).unwrap();
        let root = files_after(&c, 7, None, 1).unwrap();
        assert_eq!(root[0].key, b"");
        let first = files_after(&c, 7, Some(b""), 1).unwrap();
        assert_eq!(first[0].key, b"a");
        let first = files_after(&c, 7, None, 2).unwrap();
        assert_eq!(first.len(), 2);
        let rest = files_after(&c, 7, Some(&first[1].key), 10).unwrap();
        let got: Vec<_> = rest.iter().map(|r| key_path(&r.key).unwrap().display()).collect();
        assert_eq!(got, ["/a/b", "/a-b", "/c"]);
        delete_subtree(&c, 7, b"a").unwrap();
        let all: Vec<_> = files_after(&c, 7, None, 10)
            .unwrap()
            .iter()
            .map(|r| key_path(&r.key).unwrap().display())
            .collect();
        assert_eq!(all, ["/", "/a-b", "/c"]);
    }
}
