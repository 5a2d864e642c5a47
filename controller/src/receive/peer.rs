//! What the receive pipeline exchanges with its peer (an agent over gRPC, or a bundle playing
//! one), in domain terms: [`Up`] messages in, [`Down`] events out through a [`Downlink`].
//! The gRPC adapter ([`super::wire`]) converts both ways; the pipeline knows only these.

use p2c_common::manifest::{Entry, Problem};

/// One batch of entries, in walk order, as the peer listed them. Checked by the pipeline:
/// batches come in sequence from 0, and hold at most `limits::MAX_BATCH_ENTRIES` entries
/// and `limits::MAX_BATCH_CHUNKS` chunk references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub seq: u64,
    pub entries: Vec<Entry>,
}

/// One chunk of a batch (by its index into the batch's chunk list), as the peer sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    pub index: u32,
    pub body: ChunkBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkBody {
    /// The chunk's bytes.
    Plain(bytes::Bytes),
    /// A zstd frame of the chunk's bytes.
    Zstd(bytes::Bytes),
    /// The peer could not read it (the file changed or vanished since it was chunked).
    Unavailable(String),
}

/// What the peer sends, after the transfer opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Up {
    Batch(Batch),
    /// Chunks that were asked for, in any order.
    Chunks(Vec<Chunk>),
    /// How much the pass will list, for progress displays.
    Estimate {
        files: u64,
        bytes: u64,
    },
    /// Everything is listed and sent.
    Done {
        changed: Vec<Problem>,
        skipped: Vec<Problem>,
    },
}

/// What the pipeline tells the peer while a pass runs (the result at the end is the
/// adapter's to report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    /// The chunks of batch `seq` to send, by index into its chunk list. Sent once per
    /// batch when it is planned (possibly empty), and again for a single chunk whose copy on
    /// the node turned out gone or stale.
    Need { seq: u64, indexes: Vec<u32> },
    /// Batch `seq` is written and recorded: the peer may forget it.
    Written { seq: u64 },
}

/// The peer went away: nothing more can be sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// Where [`Down`] events go. Called from the planner and writer threads, so `send` blocks
/// (it may wait for room on the way to the peer) and never needs an async runtime.
pub trait Downlink: Clone + Send + 'static {
    fn send(&self, d: Down) -> Result<(), Gone>;
}

/// A channel to a test double or to another adapter's task.
impl Downlink for tokio::sync::mpsc::Sender<Down> {
    fn send(&self, d: Down) -> Result<(), Gone> {
        self.blocking_send(d).map_err(|_| Gone)
    }
}

/// An unbounded channel: never waits.
impl Downlink for tokio::sync::mpsc::UnboundedSender<Down> {
    fn send(&self, d: Down) -> Result<(), Gone> {
        tokio::sync::mpsc::UnboundedSender::send(self, d).map_err(|_| Gone)
    }
}
