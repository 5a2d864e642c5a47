//! The chunks a bundle already holds, and where: a SQLite file next to the bundle, so that the
//! agent's memory does not grow with the amount of data. It is only an index of the bundle:
//! rebuilt from the bundle whenever an export starts or resumes, and removed when the export
//! ends, however it ends (a killed export leaves it for the next run to replace).

use std::path::{Path, PathBuf};

use p2c_common::manifest::Hash32;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("chunk index {path}: {source}")]
pub struct IndexError {
    path: String,
    source: rusqlite::Error,
}

pub struct ChunkIndex {
    conn: Connection,
    path: PathBuf,
    /// Inserts since the last commit.
    pending: usize,
}

/// Where the index of the bundle at `out` lives.
pub fn path_for(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".index");
    out.with_file_name(name)
}

impl ChunkIndex {
    /// A new, empty index (whatever was at `path` is replaced).
    pub fn create(path: &Path) -> Result<ChunkIndex, IndexError> {
        let err = |source| IndexError { path: path.display().to_string(), source };
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let conn = Connection::open(path).map_err(err)?;
        // Nothing here needs to survive a crash: the bundle is the truth.
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA cache_size = -8192;
             CREATE TABLE chunks (hash BLOB PRIMARY KEY, offset INTEGER NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )
        .map_err(err)?;
        Ok(ChunkIndex { conn, path: path.to_path_buf(), pending: 0 })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
        move |source| IndexError { path: self.path.display().to_string(), source }
    }

    /// The offset of the record holding `hash`, if the bundle has it.
    pub fn get(&self, hash: &Hash32) -> Result<Option<u64>, IndexError> {
        let mut st =
            self.conn.prepare_cached("SELECT offset FROM chunks WHERE hash = ?1").map_err(self.err())?;
        st.query_row(params![&hash.0[..]], |r| r.get::<_, i64>(0))
            .optional()
            .map(|o| o.map(|o| o as u64))
            .map_err(self.err())
    }

    pub fn insert(&mut self, hash: &Hash32, offset: u64) -> Result<(), IndexError> {
        {
            let mut st = self
                .conn
                .prepare_cached("INSERT OR REPLACE INTO chunks (hash, offset) VALUES (?1, ?2)")
                .map_err(self.err())?;
            st.execute(params![&hash.0[..], offset as i64]).map_err(self.err())?;
        }
        self.pending += 1;
        if self.pending >= 10_000 {
            self.commit()?;
        }
        Ok(())
    }

    /// Forgets chunks at or after `offset` (cut from the bundle).
    pub fn forget_from(&mut self, offset: u64) -> Result<(), IndexError> {
        self.conn
            .execute("DELETE FROM chunks WHERE offset >= ?1", params![offset as i64])
            .map_err(self.err())?;
        Ok(())
    }

    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.conn.execute_batch("COMMIT; BEGIN;").map_err(self.err())?;
        self.pending = 0;
        Ok(())
    }
}

impl Drop for ChunkIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_forgets_and_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = path_for(&d.path().join("web01.p2cb"));
        assert!(p.ends_with("web01.p2cb.index"));
        let mut ix = ChunkIndex::create(&p).unwrap();
        let (a, b) = (Hash32::of(b"a"), Hash32::of(b"b"));
        ix.insert(&a, 10).unwrap();
        ix.insert(&b, 100).unwrap();
        assert_eq!(ix.get(&a).unwrap(), Some(10));
        ix.forget_from(50).unwrap();
        assert_eq!(ix.get(&b).unwrap(), None);
        ix.commit().unwrap();
        let ix = ChunkIndex::create(&p).unwrap();
        assert_eq!(ix.get(&a).unwrap(), None);
        drop(ix);
        assert!(!p.exists());
    }
}
