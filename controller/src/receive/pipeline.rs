//! The pipeline of one pass, written once against the peer port ([`super::peer`]): the
//! reader routes what the peer sends to the planner, verifier and writer threads, and the
//! outcome names the first error in the pipeline as the cause.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use p2c_common::manifest::{EntryData, limits};
use p2c_common::migration::PassSummary;
use p2c_common::paths::RelPath;
use tokio::sync::mpsc;

use super::{
    Batch, Chunk, ChunkMsg, Downlink, Expected, InFlight, PassError, PassJob, PassOutcome, ReceiveError, Up,
    WriterMsg, planner, protocol, verifier, writer,
};
use crate::state;

/// Most chunks one message may carry.
const MAX_CHUNKS_PER_MESSAGE: usize = 4096;

/// How a pass ended: what it did, and the error that ended it, if any.
#[derive(Debug)]
pub struct Finished {
    pub summary: PassSummary,
    /// The regular files the pass wrote, even if it then failed (`None` when too many).
    pub written: Option<Vec<RelPath>>,
    pub error: Option<ReceiveError>,
}

impl Finished {
    /// The outcome as the migration driver sees it.
    pub fn into_outcome(self) -> PassOutcome {
        let retryable = matches!(self.error, Some(ReceiveError::Stream(_)));
        PassOutcome {
            summary: self.summary,
            written: self.written,
            error: self.error.as_ref().map(PassError::from),
            retryable,
        }
    }
}

/// Runs one pass to its end with the peer behind `inbound` (what it sends, after its Open)
/// and `down` (what it is told while the pass runs). Reporting the end to the peer is the
/// caller's.
pub async fn drive<S, D>(job: PassJob, mut inbound: S, down: D) -> Finished
where
    S: futures::Stream<Item = Result<Up, ReceiveError>> + Unpin + Send,
    D: Downlink,
{
    let started = std::time::Instant::now();
    let expected: Expected = Arc::default();
    let in_flight: InFlight = Arc::default();
    let (plan_tx, plan_rx) = mpsc::channel::<Batch>(4);
    let (write_tx, write_rx) = mpsc::channel::<WriterMsg>(8);
    let (chunk_in_tx, chunk_in_rx) = mpsc::channel::<Vec<Chunk>>(16);
    let (chunk_tx, chunk_rx) = mpsc::channel::<Vec<ChunkMsg>>(16);

    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<WriterMsg>();
    let planner = {
        let job = job.clone();
        let down = down.clone();
        let expected = expected.clone();
        let in_flight = in_flight.clone();
        std::thread::Builder::new().name(format!("plan-{}", job.ctid)).spawn(move || {
            let index = match state::connect(&job.db) {
                Ok(c) => c,
                Err(e) => return Some(ReceiveError::from(e)),
            };
            planner::run(&job, index, plan_rx, done_rx, write_tx, down, expected, in_flight)
        })
    };
    let verifier = {
        let expected = expected.clone();
        let progress = job.progress.clone();
        std::thread::Builder::new()
            .name(format!("verify-{}", job.ctid))
            .spawn(move || verifier::run(chunk_in_rx, chunk_tx, expected, progress))
    };
    // Fires when the writer stops. Before `Done` that means the pass failed (the writer's
    // error, or the planner's, which ends the writer's input), and the reader must stop too:
    // a hostile or stuck peer that just keeps the stream open must not hold the pass.
    let (writer_end_tx, mut writer_end) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let job = job.clone();
        let expected = expected.clone();
        std::thread::Builder::new().name(format!("write-{}", job.ctid)).spawn(move || {
            let r = writer::run(&job, write_rx, chunk_rx, down, expected, in_flight);
            let _ = writer_end_tx.send(());
            r
        })
    };
    let (planner, verifier, writer) = match (planner, verifier, writer) {
        (Ok(p), Ok(v), Ok(w)) => (p, v, w),
        _ => {
            return Finished {
                summary: PassSummary { pass: job.pass, ..Default::default() },
                written: None,
                error: Some(ReceiveError::Internal("cannot start receive threads".into())),
            };
        }
    };

    // The reader: route inbound messages until Done, an error or the end of the stream.
    let read_result: Result<(), ReceiveError> = async {
        let mut next_seq = 0u64;
        loop {
            let msg = tokio::select! {
                m = inbound.next() => m,
                _ = &mut writer_end => return Err(stopped()),
            };
            let Some(msg) = msg else { break };
            match msg? {
                Up::Batch(b) => {
                    if b.seq != next_seq {
                        return Err(protocol(format!(
                            "batch {} out of sequence (expected {next_seq})",
                            b.seq
                        )));
                    }
                    if b.entries.len() > limits::MAX_BATCH_ENTRIES {
                        return Err(protocol("batch has too many entries"));
                    }
                    let chunks: usize = b
                        .entries
                        .iter()
                        .map(|e| match &e.data {
                            EntryData::Regular { chunks, .. } => chunks.len(),
                            _ => 0,
                        })
                        .sum();
                    if chunks > limits::MAX_BATCH_CHUNKS {
                        return Err(protocol("batch has too many chunks"));
                    }
                    next_seq += 1;
                    plan_tx.send(b).await.map_err(|_| stopped())?;
                }
                Up::Chunks(c) => {
                    if c.len() > MAX_CHUNKS_PER_MESSAGE {
                        return Err(protocol("too many chunks in one message"));
                    }
                    chunk_in_tx.send(c).await.map_err(|_| stopped())?;
                }
                Up::Estimate { files, bytes } => {
                    job.progress.files_total.store(files, Ordering::Relaxed);
                    job.progress.bytes_total.store(bytes, Ordering::Relaxed);
                }
                Up::Done { changed, skipped } => {
                    // Done goes through the planner so that it follows every planned batch.
                    let _ = done_tx.send(WriterMsg::Done { changed, skipped });
                    return Ok(());
                }
            }
        }
        Err(ReceiveError::Stream(
            "the transfer ended before the pass was done (the agent closed it, or its session ended)".into(),
        ))
    }
    .await;

    // Close the pipes so the threads end; the writer reports the real outcome.
    drop(plan_tx);
    drop(chunk_in_tx);
    let joined = tokio::task::spawn_blocking(move || {
        let w = writer.join();
        let p = planner.join();
        let _ = verifier.join();
        (w, p)
    })
    .await;
    let (writer_result, plan_err) = match joined {
        Ok((w, Ok(p))) => (Ok(w), p),
        Ok((w, Err(_))) => (Ok(w), Some(ReceiveError::Internal("planner thread panicked".into()))),
        Err(e) => (Err(e), None),
    };
    let (mut summary, written, write_err) = match writer_result {
        Ok(Ok((summary, written, err))) => (summary, written, err),
        _ => (PassSummary::default(), None, Some(ReceiveError::Internal("writer thread panicked".into()))),
    };
    summary.pass = job.pass;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.wire_bytes = job.progress.wire_bytes.load(Ordering::Relaxed);
    summary.local_bytes = job.progress.local_bytes.load(Ordering::Relaxed);
    Finished { summary, written, error: cause(read_result, plan_err, write_err) }
}

/// The first error in the pipeline is the cause; later ones are consequences: a stage
/// whose input or output ended reports `Stream` or `Internal`. A planner error ends the
/// writer's input, so it must win over the writer's "transfer ended", which would otherwise
/// read as a lost link and make the pass retry forever.
fn cause(
    read: Result<(), ReceiveError>,
    plan: Option<ReceiveError>,
    write: Option<ReceiveError>,
) -> Option<ReceiveError> {
    let consequence = |e: &ReceiveError| matches!(e, ReceiveError::Stream(_) | ReceiveError::Internal(_));
    match (read, plan, write) {
        (Err(r @ ReceiveError::Protocol(_)), _, _) => Some(r),
        (_, Some(p), _) => Some(p),
        (_, None, Some(w)) if !consequence(&w) => Some(w),
        // Only consequences left: a lost link (retryable) explains the others.
        (Err(r @ ReceiveError::Stream(_)), None, _) => Some(r),
        (_, None, Some(w @ ReceiveError::Stream(_))) => Some(w),
        (Err(r), None, _) => Some(r),
        (Ok(()), None, w) => w,
    }
}

fn stopped() -> ReceiveError {
    ReceiveError::Internal("the writer stopped".into())
}

#[cfg(test)]
mod tests;
