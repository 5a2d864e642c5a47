//! The controller's crash-safe store: one SQLite database (WAL mode) under the state dir.
//!
//! It holds enrolment tokens, issued certificates, agents, migrations and their passes, the
//! record of what each container tree holds (`files`), and the node-wide chunk index
//! (`chunks`). Every multi-row change is one transaction, so a controller killed at any
//! moment leaves a consistent store behind.

use p2c_common::sync::Locked;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use p2c_common::migration::{MigrateOptions, MigrationState, MigrationSummary, PassSummary};
use rusqlite::{Connection, OptionalExtension, params};

pub mod index;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database holds schema version {found}, this controller knows {known}; upgrade p2c")]
    Schema { found: i64, known: i64 },
    #[error("state database: stored JSON is damaged: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "state database: the {what} of CT {ctid} is damaged ({detail}); `p2c discard {ctid}` forgets the migration"
    )]
    Damaged { ctid: u32, what: &'static str, detail: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    used INTEGER
);
CREATE TABLE IF NOT EXISTS certs (
    fingerprint TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    issued INTEGER NOT NULL,
    revoked INTEGER
);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    enrolled INTEGER NOT NULL,
    revoked INTEGER,
    last_seen INTEGER,
    hostname TEXT,
    os TEXT,
    inventory TEXT
);
CREATE TABLE IF NOT EXISTS migrations (
    ctid INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    options TEXT NOT NULL,
    summary TEXT,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS passes (
    ctid INTEGER NOT NULL,
    pass INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (ctid, pass)
);
-- What each container tree holds: one row per entry written and confirmed, keyed by the
-- walk-order key (path with '/' as NUL, see index::walk_key).
CREATE TABLE IF NOT EXISTS files (
    ctid INTEGER NOT NULL,
    key BLOB NOT NULL,
    digest BLOB NOT NULL,
    kind INTEGER NOT NULL,
    PRIMARY KEY (ctid, key)
) WITHOUT ROWID;
-- Node-wide chunk index: where a chunk's bytes can be read locally, and the identity of
-- that file when it was recorded (a changed file makes the entry stale).
CREATE TABLE IF NOT EXISTS chunks (
    hash BLOB PRIMARY KEY,
    ctid INTEGER NOT NULL,
    key BLOB NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_ctid ON chunks(ctid);
";

/// Opens a connection with the pragmas every user of the store needs.
pub fn connect(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)
        .map_err(|e| StoreError::Open { path: path.display().to_string(), source: e })?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why a token was refused. The variants say what the operator should do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefusal {
    #[error("unknown enrolment token; create one with `p2c token create NAME`")]
    Unknown,
    #[error("the enrolment token expired; create a new one with `p2c token create NAME`")]
    Expired,
    #[error("the enrolment token was already used; tokens work once, create a new one")]
    Used,
}

/// An agent as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRow {
    pub name: String,
    pub enrolled: u64,
    pub revoked: Option<u64>,
    pub last_seen: Option<u64>,
    pub hostname: Option<String>,
    pub os: Option<String>,
}

/// A migration as the store keeps it.
#[derive(Clone, Debug)]
pub struct MigrationRow {
    pub ctid: u32,
    pub agent: String,
    pub state: MigrationState,
    pub options: MigrateOptions,
    /// The summary as of the last change of state (none before the first).
    pub summary: Option<MigrationSummary>,
    pub created: u64,
    pub updated: u64,
}

/// One copy pass as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRecord {
    pub pass: u32,
    /// The pass ran to its end (its manifest is complete).
    pub complete: bool,
    pub summary: PassSummary,
}

/// The shared handle used by the daemon's control paths (small, quick statements).
/// Heavy users (the receive path) open their own connection with [`connect`].
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: std::path::PathBuf,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut c = connect(path)?;
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if v > SCHEMA_VERSION {
            return Err(StoreError::Schema { found: v, known: SCHEMA_VERSION });
        }
        let tx = c.transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(Store { conn: Arc::new(Mutex::new(c)), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back), so a poisoned lock is safe to keep using.
        self.conn.locked()
    }

    // ------------------------------------------------------------------ tokens

    pub fn insert_token(&self, id: &str, agent: &str, secret_hash: &str, expires: u64) -> Result<()> {
        self.lock().execute(
            "INSERT INTO tokens (id, agent, secret_hash, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, agent, secret_hash, now() as i64, expires as i64],
        )?;
        Ok(())
    }

    /// Uses a token once: checks it and marks it used, atomically, then runs `issue` (which
    /// signs the certificate) and records the certificate in the same transaction. A failure
    /// anywhere leaves the token unused.
    pub fn enroll_with_token<T>(
        &self,
        id: &str,
        secret_hash: &str,
        issue: impl FnOnce(&str) -> std::result::Result<(T, String), String>,
    ) -> Result<std::result::Result<(String, T), EnrollRefusal>> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let row: Option<(String, String, i64, Option<i64>)> = tx
            .query_row("SELECT agent, secret_hash, expires, used FROM tokens WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((agent, stored_hash, expires, used)) = row else {
            return Ok(Err(EnrollRefusal::Token(TokenRefusal::Unknown)));
        };
        if !constant_time_eq(stored_hash.as_bytes(), secret_hash.as_bytes()) {
            return Ok(Err(EnrollRefusal::Token(TokenRefusal::Unknown)));
        }
        if used.is_some() {
            return Ok(Err(EnrollRefusal::Token(TokenRefusal::Used)));
        }
        if now() as i64 >= expires {
            return Ok(Err(EnrollRefusal::Token(TokenRefusal::Expired)));
        }
        let (value, fingerprint) = match issue(&agent) {
            Ok(v) => v,
            Err(e) => return Ok(Err(EnrollRefusal::Issue(e))),
        };
        let t = now() as i64;
        tx.execute("UPDATE tokens SET used = ?2 WHERE id = ?1 AND used IS NULL", params![id, t])?;
        tx.execute(
            "INSERT INTO certs (fingerprint, agent, issued) VALUES (?1, ?2, ?3)",
            params![fingerprint, agent, t],
        )?;
        tx.execute(
            "INSERT INTO agents (name, enrolled) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET enrolled = excluded.enrolled, revoked = NULL",
            params![agent, t],
        )?;
        tx.commit()?;
        Ok(Ok((agent, value)))
    }

    // ------------------------------------------------------------------ agents

    /// The agent a certificate was issued to, if it is known and not revoked.
    pub fn agent_for_cert(&self, fingerprint: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT c.agent FROM certs c JOIN agents a ON a.name = c.agent
                 WHERE c.fingerprint = ?1 AND c.revoked IS NULL AND a.revoked IS NULL",
                [fingerprint],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Fingerprints of every revoked certificate.
    pub fn revoked_fingerprints(&self) -> Result<Vec<String>> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT c.fingerprint FROM certs c JOIN agents a ON a.name = c.agent
             WHERE c.revoked IS NOT NULL OR a.revoked IS NOT NULL",
        )?;
        let rows = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
    }

    /// Revokes an agent and all its certificates. Returns false if the agent is unknown.
    pub fn revoke_agent(&self, name: &str) -> Result<bool> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let t = now() as i64;
        let n = tx.execute("UPDATE agents SET revoked = ?2 WHERE name = ?1", params![name, t])?;
        tx.execute("UPDATE certs SET revoked = ?2 WHERE agent = ?1 AND revoked IS NULL", params![name, t])?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn touch_agent(&self, name: &str, hostname: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE agents SET last_seen = ?2, hostname = COALESCE(?3, hostname) WHERE name = ?1",
            params![name, now() as i64, hostname],
        )?;
        Ok(())
    }

    pub fn set_inventory(&self, name: &str, json: &str, hostname: &str, os: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE agents SET inventory = ?2, hostname = ?3, os = ?4, last_seen = ?5 WHERE name = ?1",
            params![name, json, hostname, os, now() as i64],
        )?;
        Ok(())
    }

    pub fn inventory(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .query_row("SELECT inventory FROM agents WHERE name = ?1", [name], |r| r.get(0))
            .optional()?
            .flatten())
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        let c = self.lock();
        let mut st =
            c.prepare("SELECT name, enrolled, revoked, last_seen, hostname, os FROM agents ORDER BY name")?;
        let rows = st
            .query_map([], |r| {
                Ok(AgentRow {
                    name: r.get(0)?,
                    enrolled: r.get::<_, i64>(1)? as u64,
                    revoked: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    last_seen: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    hostname: r.get(4)?,
                    os: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn agent(&self, name: &str) -> Result<Option<AgentRow>> {
        Ok(self.agents()?.into_iter().find(|a| a.name == name))
    }

    // ------------------------------------------------------------------ migrations

    pub fn migration(&self, ctid: u32) -> Result<Option<MigrationRow>> {
        let raw = self
            .lock()
            .query_row(
                "SELECT ctid, agent, state, options, summary, created, updated FROM migrations WHERE ctid = ?1",
                [ctid],
                RawMigration::read,
            )
            .optional()?;
        raw.map(RawMigration::parse).transpose()
    }

    pub fn migrations(&self) -> Result<Vec<MigrationRow>> {
        let raw = {
            let c = self.lock();
            let mut st = c.prepare(
                "SELECT ctid, agent, state, options, summary, created, updated FROM migrations ORDER BY ctid",
            )?;
            st.query_map([], RawMigration::read)?.collect::<rusqlite::Result<Vec<_>>>()?
        };
        raw.into_iter().map(RawMigration::parse).collect()
    }

    /// Creates the migration row, or updates agent/options of an existing one.
    pub fn upsert_migration(
        &self,
        ctid: u32,
        agent: &str,
        state: MigrationState,
        options: &MigrateOptions,
    ) -> Result<()> {
        let t = now() as i64;
        let options = serde_json::to_string(options)?;
        self.lock().execute(
            "INSERT INTO migrations (ctid, agent, state, options, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT(ctid) DO UPDATE SET agent = excluded.agent, state = excluded.state,
                 options = excluded.options, updated = excluded.updated",
            params![ctid, agent, state.as_str(), options, t],
        )?;
        Ok(())
    }

    /// Records a migration's state, and its summary when one is given.
    pub fn set_migration_state(
        &self,
        ctid: u32,
        state: MigrationState,
        summary: Option<&MigrationSummary>,
    ) -> Result<()> {
        let summary = summary.map(serde_json::to_string).transpose()?;
        let n = self.lock().execute(
            "UPDATE migrations SET state = ?2, summary = COALESCE(?3, summary), updated = ?4 WHERE ctid = ?1",
            params![ctid, state.as_str(), summary, now() as i64],
        )?;
        if n == 0 {
            return Err(StoreError::Damaged { ctid, what: "record", detail: "it is missing".into() });
        }
        Ok(())
    }

    /// Forgets a migration: its row, passes, file records and chunk-index entries.
    pub fn delete_migration(&self, ctid: u32) -> Result<()> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM migrations WHERE ctid = ?1", [ctid])?;
        tx.execute("DELETE FROM passes WHERE ctid = ?1", [ctid])?;
        tx.execute("DELETE FROM files WHERE ctid = ?1", [ctid])?;
        tx.execute("DELETE FROM chunks WHERE ctid = ?1", [ctid])?;
        tx.commit()?;
        Ok(())
    }

    pub fn record_pass(&self, ctid: u32, summary: &PassSummary, complete: bool) -> Result<()> {
        let json = serde_json::to_string(summary)?;
        self.lock().execute(
            "INSERT INTO passes (ctid, pass, complete, summary) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(ctid, pass) DO UPDATE SET complete = excluded.complete, summary = excluded.summary",
            params![ctid, summary.pass, complete, json],
        )?;
        Ok(())
    }

    /// The passes of a migration, in order.
    pub fn passes(&self, ctid: u32) -> Result<Vec<PassRecord>> {
        let rows = {
            let c = self.lock();
            let mut st =
                c.prepare("SELECT pass, complete, summary FROM passes WHERE ctid = ?1 ORDER BY pass")?;
            st.query_map([ctid], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        rows.into_iter()
            .map(|(pass, complete, json)| {
                let summary = serde_json::from_str(&json).map_err(|e| StoreError::Damaged {
                    ctid,
                    what: "pass record",
                    detail: format!("pass {pass}: {e}"),
                })?;
                Ok(PassRecord { pass, complete, summary })
            })
            .collect()
    }

    /// Forgets the records of these paths, so that the next pass writes them again.
    pub fn forget_files(&self, ctid: u32, paths: &[p2c_common::paths::RelPath]) -> Result<()> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM files WHERE ctid = ?1 AND key = ?2")?;
            for p in paths {
                del.execute(params![ctid, index::walk_key(p)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn file_count(&self, ctid: u32) -> Result<u64> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM files WHERE ctid = ?1", [ctid], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

/// A migration row as SQLite holds it, before its text columns are parsed.
struct RawMigration {
    ctid: u32,
    agent: String,
    state: String,
    options: String,
    summary: Option<String>,
    created: u64,
    updated: u64,
}

impl RawMigration {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawMigration> {
        Ok(RawMigration {
            ctid: r.get(0)?,
            agent: r.get(1)?,
            state: r.get(2)?,
            options: r.get(3)?,
            summary: r.get(4)?,
            created: r.get::<_, i64>(5)? as u64,
            updated: r.get::<_, i64>(6)? as u64,
        })
    }

    fn parse(self) -> Result<MigrationRow> {
        let ctid = self.ctid;
        let damaged = |what, detail: String| StoreError::Damaged { ctid, what, detail };
        let state = MigrationState::parse(&self.state)
            .ok_or_else(|| damaged("state", format!("unknown state {:?}", self.state)))?;
        let options = serde_json::from_str(&self.options).map_err(|e| damaged("options", e.to_string()))?;
        let summary = self
            .summary
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| damaged("summary", e.to_string()))?;
        Ok(MigrationRow {
            ctid,
            agent: self.agent,
            state,
            options,
            summary,
            created: self.created,
            updated: self.updated,
        })
    }
}

/// Why enrolment was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollRefusal {
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("{0}")]
    Issue(String),
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        (d, s)
    }

    #[test]
    fn a_token_works_once() {
        let (_d, s) = store();
        s.insert_token("id1", "web01", "hash", now() + 60).unwrap();
        let issue = |_: &str| Ok(((), "fp1".to_string()));
        assert_eq!(s.enroll_with_token("id1", "hash", issue).unwrap().unwrap().0, "web01");
        let again = s.enroll_with_token("id1", "hash", |_: &str| Ok(((), "fp2".to_string()))).unwrap();
        assert_eq!(again.unwrap_err(), EnrollRefusal::Token(TokenRefusal::Used));
        assert_eq!(s.agent_for_cert("fp1").unwrap().as_deref(), Some("web01"));
        assert_eq!(s.agent_for_cert("fp2").unwrap(), None);
    }

    #[test]
    fn wrong_expired_and_failed_tokens_change_nothing() {
        let (_d, s) = store();
        s.insert_token("id1", "web01", "hash", now() + 60).unwrap();
        s.insert_token("id2", "web02", "hash", now() - 1).unwrap();
        let ok = |_: &str| Ok(((), "fp".to_string()));
        assert_eq!(
            s.enroll_with_token("id1", "nope", ok).unwrap().unwrap_err(),
            TokenRefusal::Unknown.into()
        );
        assert_eq!(
            s.enroll_with_token("idX", "hash", ok).unwrap().unwrap_err(),
            TokenRefusal::Unknown.into()
        );
        assert_eq!(
            s.enroll_with_token("id2", "hash", ok).unwrap().unwrap_err(),
            TokenRefusal::Expired.into()
        );
        let failing = |_: &str| Err::<((), String), _>("bad csr".to_string());
        assert!(s.enroll_with_token("id1", "hash", failing).unwrap().is_err());
        // The token survived the failed issue and still works.
        assert!(s.enroll_with_token("id1", "hash", ok).unwrap().is_ok());
        assert!(s.agents().unwrap().iter().all(|a| a.name == "web01"));
    }

    #[test]
    fn revocation() {
        let (_d, s) = store();
        s.insert_token("id1", "web01", "h", now() + 60).unwrap();
        s.enroll_with_token("id1", "h", |_: &str| Ok(((), "fp1".to_string()))).unwrap().unwrap();
        assert!(s.revoke_agent("web01").unwrap());
        assert!(!s.revoke_agent("nobody").unwrap());
        assert_eq!(s.agent_for_cert("fp1").unwrap(), None);
        assert_eq!(s.revoked_fingerprints().unwrap(), vec!["fp1".to_string()]);
    }

    #[test]
    fn migrations_and_passes_round_trip_typed() {
        let (_d, s) = store();
        let opts = MigrateOptions { agent: "web01".into(), ctid: 101, ..Default::default() };
        s.upsert_migration(101, "web01", MigrationState::Pending, &opts).unwrap();
        let summary =
            MigrationSummary::new(101, "web01", MigrationState::Synced, String::new(), String::new(), 0);
        s.set_migration_state(101, MigrationState::Synced, Some(&summary)).unwrap();
        let row = s.migration(101).unwrap().unwrap();
        assert_eq!((row.state, row.options.ctid, row.agent.as_str()), (MigrationState::Synced, 101, "web01"));
        assert_eq!(row.summary.unwrap().state, MigrationState::Synced);
        let pass = PassSummary { pass: 0, entries: 7, ..Default::default() };
        s.record_pass(101, &pass, true).unwrap();
        assert_eq!(s.passes(101).unwrap(), vec![PassRecord { pass: 0, complete: true, summary: pass }]);
        // No row to update is an error, not a silent no-op.
        assert!(s.set_migration_state(999, MigrationState::Failed, None).is_err());
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_the_migration() {
        let (_d, s) = store();
        let opts = MigrateOptions { agent: "web01".into(), ctid: 7, ..Default::default() };
        s.upsert_migration(7, "web01", MigrationState::Pending, &opts).unwrap();
        s.lock().execute("UPDATE migrations SET state = 'exploded' WHERE ctid = 7", []).unwrap();
        let e = s.migration(7).unwrap_err().to_string();
        assert!(e.contains("state of CT 7 is damaged") && e.contains("p2c discard 7"), "{e}");
        s.lock().execute("INSERT INTO passes VALUES (8, 0, 1, '{not json')", []).unwrap();
        let e = s.passes(8).unwrap_err().to_string();
        assert!(e.contains("pass record of CT 8 is damaged"), "{e}");
    }
}
