//! The receive path: one copy pass from an agent into a container's private area.
//!
//! ```text
//!  gRPC ─► wire ─Up─► reader (async) ─Batch─► planner thread ─PlannedBatch─► writer thread
//!                       │                       │ Need ─────► peer           │
//!                       └─Chunk─► verifier thread ─ChunkMsg──────────────────┘
//!                                              Written / late Need ◄─────────┘
//! ```
//! * [`wire`] is the gRPC adapter, and the only module here that knows `p2c_proto` or
//!   `tonic`: it turns `TransferUp` messages into domain [`Up`] messages and the pipeline's
//!   [`Down`] events into `TransferDown`. [`run_pass`] is its entry point; [`drive`] runs a
//!   pass with any peer (the port is in [`peer`]).
//! * The **reader** (`pipeline.rs`) routes what the peer sends and enforces the stream's
//!   rules (batches in sequence and within limits).
//! * The **planner** (`planner.rs`) decides, per chunk, whether the node already has it
//!   (node-wide chunk index, or requested earlier in this pass) or the peer must send it,
//!   and tells the peer.
//! * The **verifier** (`verifier.rs`) decompresses each chunk into a buffer no larger than
//!   announced and checks its BLAKE3 hash; a chunk that does not match is a protocol error.
//! * The **writer** (`writer.rs`) feeds each batch through the pure merge (`merge.rs`) of
//!   the listed entries with the record of what the tree holds (and, for a listing of
//!   changes, the base pass's manifest), and applies the operations it yields beneath the
//!   tree root through a small port (`fs.rs`, over [`crate::tree`] in `tree_fs.rs`):
//!   skipping unchanged entries, deleting what the source no longer has, reassembling files
//!   from received chunks (`inbox.rs`) and chunks already on the node, counting into the
//!   pass and its quota (`tally.rs`) and committing to the store (`commit.rs`, `store.rs`).
//!
//! Everything from the peer is treated as hostile: entries are validated on conversion,
//! walk order is enforced (so no path appears twice), chunk indexes and sizes are checked,
//! and nothing is written outside the tree.

mod commit;
mod fs;
mod inbox;
pub mod manifest;
mod merge;
pub mod peer;
mod pipeline;
mod planner;
mod store;
mod tally;
#[cfg(test)]
mod testing;
mod tree_fs;
mod verifier;
pub mod wire;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use p2c_common::manifest::{Entry, Hash32, Problem};
use p2c_common::migration::PassSummary;
use p2c_common::paths::RelPath;

use crate::config::DedupScope;

pub use peer::{Batch, Chunk, ChunkBody, Down, Downlink, Gone, Up};
pub use pipeline::{Finished, drive};
pub use wire::run_pass;

/// Everything a pass needs to know, fixed when it starts.
#[derive(Clone, Debug)]
pub struct PassJob {
    pub ctid: u32,
    pub pass: u32,
    /// Root of the container tree (the private area, or a mounted image).
    pub tree: PathBuf,
    /// `<vz_root>/private`, to read chunks held by other containers.
    pub private_root: PathBuf,
    pub db: PathBuf,
    pub manifest: PathBuf,
    pub excludes: Vec<RelPath>,
    pub keep_xattrs: bool,
    pub dedup: DedupScope,
    /// Largest total of file data the tree may hold (DISKSPACE hard), bytes.
    pub byte_limit: Option<u64>,
    /// Most entries the tree may hold (DISKINODES hard).
    pub inode_limit: Option<u64>,
    pub progress: Arc<Progress>,
    /// The base pass (and its manifest) the agent may list changes against instead of
    /// sending the whole tree.
    pub changes_offered: Option<(u32, PathBuf)>,
    /// What the agent said it lists, once the transfer opened.
    pub changes: Option<Arc<Changes>>,
}

/// The part of the tree a pass that lists changes speaks for: each changed directory and
/// its direct children, and each new subtree whole. Everything else stays as the base
/// pass left it.
#[derive(Debug)]
pub struct Changes {
    pub base: u32,
    pub base_manifest: PathBuf,
    /// Walk keys of the changed directories.
    dirs: std::collections::HashSet<Vec<u8>>,
    /// Walk keys of the new subtrees, sorted, none inside another.
    subtrees: Vec<Vec<u8>>,
}

/// What a peer's Open says a pass lists, as sent (paths are checked by
/// [`Changes::from_listing`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Listing<'a> {
    /// The base pass the listing is of changes since; `None`: the pass walks everything.
    pub since: Option<u32>,
    /// Directories whose direct children are all listed.
    pub changed_dirs: &'a [Vec<u8>],
    /// Directories listed whole, with everything beneath them.
    pub new_subtrees: &'a [Vec<u8>],
}

/// True when `key` lies strictly beneath the directory `dir` (walk keys).
pub(crate) fn key_under(key: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return !key.is_empty();
    }
    key.len() > dir.len() && key.starts_with(dir) && key[dir.len()] == 0
}

/// The walk key of the parent of `key` (`None` for the root).
fn parent_key(key: &[u8]) -> Option<&[u8]> {
    if key.is_empty() {
        return None;
    }
    Some(match key.iter().rposition(|b| *b == 0) {
        Some(i) => &key[..i],
        None => &[],
    })
}

/// Sorted walk keys with nested ones dropped: what [`in_any`] searches.
fn outermost(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.sort();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
    for k in keys {
        if out.last().is_some_and(|l| *l == k || key_under(&k, l)) {
            continue;
        }
        out.push(k);
    }
    out
}

/// True when `key` is one of `sorted` (outermost keys) or lies beneath one.
pub(crate) fn in_any(sorted: &[Vec<u8>], key: &[u8]) -> bool {
    // Keys beneath a directory sort right after it, before any key that is not: the only
    // candidate is the greatest one not after `key`.
    let i = sorted.partition_point(|k| k.as_slice() <= key);
    i > 0 && (sorted[i - 1] == key || key_under(key, &sorted[i - 1]))
}

impl Changes {
    /// Checks what a peer says a pass lists against what the pass offered.
    pub fn from_listing(job: &PassJob, listing: &Listing<'_>) -> Result<Option<Changes>, String> {
        let Some(since) = listing.since else {
            if !listing.changed_dirs.is_empty() || !listing.new_subtrees.is_empty() {
                return Err("changed directories sent for a pass that walks everything".into());
            }
            return Ok(None);
        };
        let Some((base, manifest)) = &job.changes_offered else {
            return Err(format!("changes since pass {since} were not offered"));
        };
        if since != *base {
            return Err(format!("changes since pass {base} were offered, not {since}"));
        }
        if listing.changed_dirs.len() + listing.new_subtrees.len() > MAX_REGIONS {
            return Err("too many changed directories".into());
        }
        let key = |b: &Vec<u8>| RelPath::new(b.clone()).map(|p| p.walk_key()).map_err(|e| e.to_string());
        let dirs = listing.changed_dirs.iter().map(key).collect::<Result<_, _>>()?;
        let subtrees = listing.new_subtrees.iter().map(key).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Changes {
            base: *base,
            base_manifest: manifest.clone(),
            dirs,
            subtrees: outermost(subtrees),
        }))
    }

    /// Whether the pass speaks for `key`: what the base had there and is not sent again is
    /// gone from the source.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.dirs.contains(key)
            || parent_key(key).is_some_and(|p| self.dirs.contains(p))
            || in_any(&self.subtrees, key)
    }
}

/// Most changed directories and subtrees one pass may list.
const MAX_REGIONS: usize = 100_000;

/// Live counters of a pass, read by status and progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub local_bytes: AtomicU64,
}

impl Progress {
    pub fn reset(&self) {
        for a in [
            &self.files_total,
            &self.bytes_total,
            &self.files_done,
            &self.bytes_done,
            &self.wire_bytes,
            &self.local_bytes,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// How a pass ended.
#[derive(Debug)]
pub struct PassOutcome {
    pub summary: PassSummary,
    /// The regular files the pass wrote, even if it then failed (`None` when too many to
    /// list): what verification must re-read after this pass.
    pub written: Option<Vec<RelPath>>,
    pub error: Option<PassError>,
    /// The error was the connection, not the data: running the pass again will resume.
    pub retryable: bool,
}

/// Why a pass failed, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassError {
    /// What the peer (an agent, or a bundle playing one) sent is invalid.
    Invalid(String),
    /// Anything else (the tree, the store, the quota, the connection...): the message as today.
    Other(String),
}

impl PassError {
    /// The message with the peer named: `Invalid` reads "{peer} sent an invalid stream: {m}"
    /// (so "agent sent an invalid stream: ..." for peer "agent"), `Other` its text.
    pub fn describe(&self, peer: &str) -> String {
        match self {
            PassError::Invalid(m) => format!("{peer} sent an invalid stream: {m}"),
            PassError::Other(m) => m.clone(),
        }
    }
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("agent"))
    }
}

impl From<&ReceiveError> for PassError {
    fn from(e: &ReceiveError) -> Self {
        match e {
            ReceiveError::Protocol(m) => PassError::Invalid(m.clone()),
            other => PassError::Other(other.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("agent sent an invalid stream: {0}")]
    Protocol(String),
    #[error("the connection to the agent was lost: {0}")]
    Stream(String),
    #[error("{0}")]
    Tree(#[from] crate::tree::TreeError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(
        "the container would exceed its disk quota: {what}; raise --diskspace/--diskinodes or exclude data (what was copied is kept)"
    )]
    Quota { what: String },
    #[error("receive pipeline stopped: {0}")]
    Internal(String),
}

pub(crate) fn protocol(msg: impl Into<String>) -> ReceiveError {
    ReceiveError::Protocol(msg.into())
}

/// A batch after planning: which of its chunks the peer will send.
pub(crate) struct PlannedBatch {
    pub seq: u64,
    pub entries: Vec<Entry>,
    /// Per entry: dropped because an operator exclude covers it.
    pub excluded: Vec<bool>,
    /// Per chunk of the batch, in order: true when the peer sends it.
    pub remote: Vec<bool>,
}

/// A chunk from the peer, checked.
pub(crate) enum ChunkMsg {
    Data {
        seq: u64,
        index: u32,
        data: bytes::Bytes,
    },
    /// The peer could not read it (the file changed): the file is retried next pass.
    Unavailable {
        seq: u64,
        index: u32,
        reason: String,
    },
    /// Not requested, or not what was announced: a protocol violation.
    Invalid(String),
}

/// Chunks the peer was asked for and has not sent yet: (seq, index) → (hash, len).
pub(crate) type Expected = Arc<Mutex<HashMap<(u64, u32), (Hash32, u32)>>>;

/// Chunks some file of this pass is waiting for from the peer: asked once per pass.
pub(crate) type InFlight = Arc<Mutex<std::collections::HashSet<Hash32>>>;

/// What flows to the writer, in arrival order.
pub(crate) enum WriterMsg {
    Batch(PlannedBatch),
    Done { changed: Vec<Problem>, skipped: Vec<Problem> },
}

#[cfg(test)]
mod tests;
