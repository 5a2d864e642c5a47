//! Decides, per chunk of each batch, whether the agent must send it.

use p2c_common::sync::Locked;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use p2c_common::manifest::{Entry, EntryData, Hash32};
use p2c_proto::v1;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{Expected, Outbound, PassJob, PlannedBatch, ReceiveError, WriterMsg, protocol};
use crate::config::DedupScope;
use crate::state;

/// Plans batches until the reader stops sending them. Returns the error that stopped
/// planning, if any: it is the cause of the pass's failure (the writer then only sees its
/// input end), so the caller reports it rather than a lost connection.
pub(crate) fn run(
    job: &PassJob,
    mut batches: mpsc::Receiver<v1::EntryBatch>,
    done: oneshot::Receiver<WriterMsg>,
    writer: mpsc::Sender<WriterMsg>,
    out: Outbound,
    expected: Expected,
    in_flight: Arc<Mutex<HashSet<Hash32>>>,
) -> Option<ReceiveError> {
    let conn = match state::connect(&job.db) {
        Ok(c) => c,
        Err(e) => return Some(e.into()),
    };
    while let Some(batch) = batches.blocking_recv() {
        match plan(job, &conn, batch, &expected, &in_flight) {
            Ok((planned, need)) => {
                if out.blocking_send(Ok(need)).is_err()
                    || writer.blocking_send(WriterMsg::Batch(planned)).is_err()
                {
                    return None;
                }
            }
            Err(e) => return Some(e),
        }
    }
    if let Ok(d) = done.blocking_recv() {
        let _ = writer.blocking_send(d);
    }
    None
}

fn have_chunk(job: &PassJob, conn: &Connection, hash: &Hash32) -> Result<bool, ReceiveError> {
    Ok(match job.dedup {
        DedupScope::Node => state::index::chunk_exists(conn, hash)?,
        DedupScope::Container => {
            state::index::chunk_lookup(conn, hash)?.is_some_and(|loc| loc.ctid == job.ctid)
        }
    })
}

fn plan(
    job: &PassJob,
    conn: &Connection,
    batch: v1::EntryBatch,
    expected: &Expected,
    in_flight: &Mutex<HashSet<Hash32>>,
) -> Result<(PlannedBatch, v1::TransferDown), ReceiveError> {
    let seq = batch.seq;
    let total_chunks: usize = batch.entries.iter().map(|e| e.chunks.len()).sum();
    if total_chunks > p2c_common::manifest::limits::MAX_BATCH_CHUNKS {
        return Err(protocol("batch has too many chunks"));
    }
    let mut entries = Vec::with_capacity(batch.entries.len());
    for e in batch.entries {
        entries.push(Entry::try_from(e).map_err(|e| protocol(e.to_string()))?);
    }
    let mut excluded = Vec::with_capacity(entries.len());
    let mut remote = Vec::with_capacity(total_chunks);
    let mut need = Vec::new();
    let mut want = Vec::new();
    {
        let mut flying = in_flight.locked();
        for e in &entries {
            let skip = job.excludes.iter().any(|x| e.path.starts_with(x));
            excluded.push(skip);
            if let EntryData::Regular { chunks, .. } = &e.data {
                for c in chunks {
                    let idx = remote.len() as u32;
                    let send = !skip && !flying.contains(&c.hash) && !have_chunk(job, conn, &c.hash)?;
                    if send {
                        flying.insert(c.hash);
                        need.push(idx);
                        want.push(((seq, idx), (c.hash, c.len)));
                    }
                    remote.push(send);
                }
            }
        }
    }
    expected.locked().extend(want);
    let msg =
        v1::TransferDown { msg: Some(v1::transfer_down::Msg::Need(v1::NeedChunks { seq, indexes: need })) };
    Ok((PlannedBatch { seq, entries, excluded, remote }, msg))
}
