//! Decides, per chunk of each batch, whether the peer must send it.

use p2c_common::sync::Locked;
use std::collections::HashSet;
use std::sync::Mutex;

use p2c_common::manifest::{EntryData, Hash32};
use tokio::sync::{mpsc, oneshot};

use super::store::Store;
use super::{Batch, Down, Downlink, Expected, InFlight, PassJob, PlannedBatch, ReceiveError, WriterMsg};
use crate::config::DedupScope;

/// Plans batches until the reader stops sending them, tells the peer what to send and
/// hands each batch on to the writer. Returns the error that stopped planning, if any: it
/// is the cause of the pass's failure (the writer then only sees its input end), so the
/// caller reports it rather than a lost connection.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<S: Store, D: Downlink>(
    job: &PassJob,
    mut index: S,
    mut batches: mpsc::Receiver<Batch>,
    done: oneshot::Receiver<WriterMsg>,
    writer: mpsc::Sender<WriterMsg>,
    down: D,
    expected: Expected,
    in_flight: InFlight,
) -> Option<ReceiveError> {
    while let Some(batch) = batches.blocking_recv() {
        match plan(job, &mut index, batch, &expected, &in_flight) {
            Ok((planned, need)) => {
                if down.send(need).is_err() || writer.blocking_send(WriterMsg::Batch(planned)).is_err() {
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

/// Whether the node holds a chunk this pass may copy from.
fn have_chunk<S: Store>(job: &PassJob, index: &mut S, hash: &Hash32) -> Result<bool, ReceiveError> {
    Ok(match job.dedup {
        DedupScope::Node => index.chunk_exists(hash)?,
        DedupScope::Container => index.chunk_lookup(hash)?.is_some_and(|loc| loc.ctid == job.ctid),
    })
}

/// The plan of one batch: per chunk, whether the peer sends it (neither held on the node
/// nor already asked for in this pass, nor in an excluded entry), and the [`Down::Need`]
/// that asks for those. What is asked for is added to `expected` and `in_flight`.
pub(crate) fn plan<S: Store>(
    job: &PassJob,
    index: &mut S,
    batch: Batch,
    expected: &Expected,
    in_flight: &Mutex<HashSet<Hash32>>,
) -> Result<(PlannedBatch, Down), ReceiveError> {
    let Batch { seq, entries } = batch;
    let total_chunks: usize = entries
        .iter()
        .map(|e| match &e.data {
            EntryData::Regular { chunks, .. } => chunks.len(),
            _ => 0,
        })
        .sum();
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
                    let send = !skip && !flying.contains(&c.hash) && !have_chunk(job, index, &c.hash)?;
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
    Ok((PlannedBatch { seq, entries, excluded, remote }, Down::Need { seq, indexes: need }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::testing::{MemStore, file, job, rel};
    use crate::state::index::ChunkLocation;
    use p2c_common::manifest::ChunkRef;

    fn chunk(b: u8) -> ChunkRef {
        ChunkRef { hash: Hash32([b; 32]), offset: 0, len: 10 }
    }

    fn held_by(ctid: u32) -> ChunkLocation {
        ChunkLocation {
            ctid,
            key: b"old".to_vec(),
            offset: 0,
            len: 10,
            ino: 1,
            size: 10,
            mtime_ns: 0,
            ctime_ns: 0,
        }
    }

    #[test]
    fn only_chunks_the_node_lacks_are_asked_for_once() {
        let job = job(100);
        let mut store = MemStore::default();
        store.chunks.insert(Hash32([1; 32]), held_by(7));
        let expected: Expected = Default::default();
        let in_flight: InFlight = Default::default();
        // Chunk 3 was asked for by an earlier batch and is not here yet.
        in_flight.locked().insert(Hash32([3; 32]));
        let entries = vec![
            file("a", &[chunk(1), chunk(2)]),
            file("b", &[chunk(3), chunk(2), chunk(4)]),
            file("excluded/c", &[chunk(5)]),
        ];
        let mut job = job;
        job.excludes = vec![rel("excluded")];
        let (planned, need) =
            plan(&job, &mut store, Batch { seq: 4, entries }, &expected, &in_flight).unwrap();
        // Known on the node (1), asked for earlier (3), repeated within the batch (2 once),
        // excluded (5): only 2 and 4 are sent.
        assert_eq!(planned.remote, [false, true, false, false, true, false]);
        assert_eq!(planned.excluded, [false, false, true]);
        assert_eq!(need, Down::Need { seq: 4, indexes: vec![1, 4] });
        let mut asked: Vec<_> = expected.locked().keys().copied().collect();
        asked.sort();
        assert_eq!(asked, [(4, 1), (4, 4)]);
        assert!(in_flight.locked().contains(&Hash32([4; 32])));
        assert!(!in_flight.locked().contains(&Hash32([5; 32])));
    }

    #[test]
    fn container_scope_sends_what_only_other_containers_hold() {
        let mut job = job(100);
        job.dedup = DedupScope::Container;
        let mut store = MemStore::default();
        store.chunks.insert(Hash32([1; 32]), held_by(7));
        store.chunks.insert(Hash32([2; 32]), held_by(100));
        let (expected, in_flight): (Expected, InFlight) = Default::default();
        let batch = Batch { seq: 0, entries: vec![file("a", &[chunk(1), chunk(2)])] };
        let (planned, need) = plan(&job, &mut store, batch, &expected, &in_flight).unwrap();
        assert_eq!(planned.remote, [true, false]);
        assert_eq!(need, Down::Need { seq: 0, indexes: vec![0] });
        // A batch with nothing to send still says so.
        let batch = Batch { seq: 1, entries: vec![file("b", &[chunk(2)])] };
        let (_, need) = plan(&job, &mut store, batch, &expected, &in_flight).unwrap();
        assert_eq!(need, Down::Need { seq: 1, indexes: vec![] });
    }
}
