//! The gRPC adapter of the receive path: the only module of `receive/` that knows
//! `p2c_proto` and `tonic`. It converts an agent's `TransferUp` messages into domain
//! [`Up`] messages (validating every entry), the pipeline's [`Down`] events into
//! `TransferDown`, and the end of a pass into the `PassResult` or status the agent gets.
//! Pass manifests store entries in their wire form, so their encoding lives here too.

use futures::StreamExt;
use p2c_common::manifest::{Entry, Problem};
use p2c_proto::v1;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    Batch, Changes, Chunk, ChunkBody, Down, Downlink, Gone, Listing, PassJob, PassOutcome, ReceiveError, Up,
    drive, protocol,
};

/// What the pipeline sends the agent.
pub(crate) type Outbound = mpsc::Sender<Result<v1::TransferDown, Status>>;

/// Most problems a Done may report of each kind; more are dropped.
const MAX_PROBLEMS: usize = 100_000;

/// Runs one pass to its end with an agent's transfer stream. The caller has already read
/// the `Open` message.
pub async fn run_pass<S>(job: PassJob, inbound: S, outbound: Outbound) -> PassOutcome
where
    S: futures::Stream<Item = Result<v1::TransferUp, Status>> + Unpin + Send,
{
    let finished = drive(job, inbound.map(up_from_wire), Grpc(outbound.clone())).await;
    let summary = &finished.summary;
    let result = v1::PassResult {
        ok: finished.error.is_none(),
        message: finished.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
        files_written: summary.written,
        bytes_received: summary.wire_bytes,
        bytes_local: summary.local_bytes,
    };
    match &finished.error {
        None | Some(ReceiveError::Quota { .. }) => {
            let _ = outbound
                .send(Ok(v1::TransferDown { msg: Some(v1::transfer_down::Msg::Result(result)) }))
                .await;
        }
        Some(e) => {
            let _ = outbound.send(Err(Status::from(e))).await;
        }
    }
    finished.into_outcome()
}

/// The agent's end of a transfer, for the planner and writer threads.
#[derive(Clone)]
struct Grpc(Outbound);

impl Downlink for Grpc {
    fn send(&self, d: Down) -> Result<(), Gone> {
        self.0.blocking_send(Ok(v1::TransferDown::from(d))).map_err(|_| Gone)
    }
}

impl From<Down> for v1::TransferDown {
    fn from(d: Down) -> Self {
        let msg = match d {
            Down::Need { seq, indexes } => v1::transfer_down::Msg::Need(v1::NeedChunks { seq, indexes }),
            Down::Written { seq } => v1::transfer_down::Msg::Written(v1::BatchWritten { seq }),
        };
        v1::TransferDown { msg: Some(msg) }
    }
}

impl From<&ReceiveError> for Status {
    fn from(e: &ReceiveError) -> Status {
        match e {
            ReceiveError::Protocol(m) => Status::invalid_argument(m.clone()),
            ReceiveError::Quota { .. } => Status::resource_exhausted(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

/// One message of the agent, or why the stream cannot go on.
fn up_from_wire(msg: Result<v1::TransferUp, Status>) -> Result<Up, ReceiveError> {
    let msg = msg.map_err(|s| match s.code() {
        // gRPC refused a message over the size limit: a protocol violation the agent would
        // repeat, not a lost link to resume after.
        tonic::Code::OutOfRange => protocol(s.message()),
        _ => ReceiveError::Stream(s.message().to_string()),
    })?;
    match msg.msg {
        Some(v1::transfer_up::Msg::Batch(b)) => {
            let entries = b
                .entries
                .into_iter()
                .map(|e| Entry::try_from(e).map_err(|e| protocol(e.to_string())))
                .collect::<Result<_, _>>()?;
            Ok(Up::Batch(Batch { seq: b.seq, entries }))
        }
        Some(v1::transfer_up::Msg::Chunk(c)) => Ok(Up::Chunks(vec![chunk_from_wire(c)])),
        Some(v1::transfer_up::Msg::Chunks(b)) => {
            Ok(Up::Chunks(b.chunks.into_iter().map(chunk_from_wire).collect()))
        }
        Some(v1::transfer_up::Msg::Estimate(e)) => Ok(Up::Estimate { files: e.files, bytes: e.bytes }),
        Some(v1::transfer_up::Msg::Done(d)) => {
            let conv = |v: Vec<v1::Problem>| -> Result<Vec<Problem>, ReceiveError> {
                v.into_iter()
                    .take(MAX_PROBLEMS)
                    .map(|p| Problem::try_from(p).map_err(|e| protocol(e.to_string())))
                    .collect()
            };
            Ok(Up::Done { changed: conv(d.changed)?, skipped: conv(d.skipped)? })
        }
        Some(v1::transfer_up::Msg::Open(_)) => Err(protocol("second Open on one transfer")),
        None => Err(protocol("empty message")),
    }
}

fn chunk_from_wire(c: v1::ChunkData) -> Chunk {
    let body = if c.unavailable {
        ChunkBody::Unavailable(c.reason)
    } else if c.compressed {
        ChunkBody::Zstd(c.data)
    } else {
        ChunkBody::Plain(c.data)
    };
    Chunk { seq: c.seq, index: c.index, body }
}

impl Changes {
    /// Checks what an agent's Open says it lists against what the pass offered.
    pub fn accept(job: &PassJob, open: &v1::OpenTransfer) -> Result<Option<Changes>, String> {
        let listing = Listing {
            since: open.changes_since,
            changed_dirs: &open.changed_dirs,
            new_subtrees: &open.new_subtrees,
        };
        Changes::from_listing(job, &listing)
    }
}

/// Appends `e` to `buf` as a length-delimited `p2c.v1.Entry` (a manifest record).
pub(crate) fn encode_entry(e: &Entry, buf: &mut Vec<u8>) {
    // Encoding into a Vec cannot fail.
    let _ = v1::Entry::from(e).encode_length_delimited(buf);
}

/// An entry from an encoded `p2c.v1.Entry` (a manifest record, without its length),
/// validated as an agent's would be.
pub(crate) fn decode_entry(buf: &[u8]) -> Result<Entry, String> {
    let msg = v1::Entry::decode(buf).map_err(|e| e.to_string())?;
    Entry::try_from(msg).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::PassError;
    use crate::receive::testing::{file, job};
    use p2c_common::manifest::{ChunkRef, Hash32};

    fn up(msg: v1::transfer_up::Msg) -> Result<v1::TransferUp, Status> {
        Ok(v1::TransferUp { msg: Some(msg) })
    }

    #[test]
    fn agent_messages_become_domain_messages() {
        let e = file("etc/motd", &[ChunkRef { hash: Hash32([3; 32]), offset: 0, len: 5 }]);
        let batch = v1::EntryBatch { seq: 2, entries: vec![v1::Entry::from(&e)] };
        assert_eq!(
            up_from_wire(up(v1::transfer_up::Msg::Batch(batch))).unwrap(),
            Up::Batch(Batch { seq: 2, entries: vec![e] })
        );
        let data = |unavailable, compressed| v1::ChunkData {
            seq: 1,
            index: 4,
            data: bytes::Bytes::from_static(b"xyz"),
            compressed,
            unavailable,
            reason: "gone".into(),
        };
        let chunks = v1::ChunkBatch { chunks: vec![data(false, false), data(false, true), data(true, true)] };
        let Up::Chunks(got) = up_from_wire(up(v1::transfer_up::Msg::Chunks(chunks))).unwrap() else {
            panic!("not chunks")
        };
        let bodies: Vec<_> = got.into_iter().map(|c| (c.seq, c.index, c.body)).collect();
        assert_eq!(
            bodies,
            [
                (1, 4, ChunkBody::Plain(bytes::Bytes::from_static(b"xyz"))),
                (1, 4, ChunkBody::Zstd(bytes::Bytes::from_static(b"xyz"))),
                (1, 4, ChunkBody::Unavailable("gone".into())),
            ]
        );
    }

    #[test]
    fn what_an_agent_cannot_send_is_a_protocol_error() {
        let bad = v1::Entry { path: b"../escape".to_vec(), ..v1::Entry::from(&file("x", &[])) };
        let batch = v1::EntryBatch { seq: 0, entries: vec![bad] };
        let e = up_from_wire(up(v1::transfer_up::Msg::Batch(batch))).unwrap_err();
        assert!(matches!(&e, ReceiveError::Protocol(m) if m.contains("..")), "{e}");
        let open = v1::transfer_up::Msg::Open(v1::OpenTransfer::default());
        assert_eq!(
            up_from_wire(up(open)).unwrap_err().to_string(),
            "agent sent an invalid stream: second Open on one transfer"
        );
        assert!(matches!(up_from_wire(Ok(v1::TransferUp { msg: None })), Err(ReceiveError::Protocol(_))));
        // An oversized message is the agent's fault; anything else from gRPC a lost link.
        let big = up_from_wire(Err(Status::out_of_range("message length too large"))).unwrap_err();
        assert!(matches!(big, ReceiveError::Protocol(_)));
        let lost = up_from_wire(Err(Status::unavailable("reset"))).unwrap_err();
        assert!(matches!(lost, ReceiveError::Stream(_)));
    }

    #[test]
    fn events_errors_and_listings_at_the_edge() {
        let need = v1::TransferDown::from(Down::Need { seq: 3, indexes: vec![1, 2] });
        assert_eq!(
            need.msg,
            Some(v1::transfer_down::Msg::Need(v1::NeedChunks { seq: 3, indexes: vec![1, 2] }))
        );
        let written = v1::TransferDown::from(Down::Written { seq: 3 });
        assert_eq!(written.msg, Some(v1::transfer_down::Msg::Written(v1::BatchWritten { seq: 3 })));
        let s = Status::from(&protocol("batch 2 out of sequence (expected 1)"));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, "batch 2 out of sequence (expected 1)")
        );
        let s = Status::from(&ReceiveError::Quota { what: "x".into() });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let e = PassError::from(&protocol("bad"));
        assert_eq!(e.to_string(), "agent sent an invalid stream: bad");
        assert_eq!(e.describe("the bundle"), "the bundle sent an invalid stream: bad");
        let e = PassError::from(&ReceiveError::Stream("reset".into()));
        assert_eq!(e, PassError::Other("the connection to the agent was lost: reset".into()));

        let mut j = job(1);
        let open = v1::OpenTransfer {
            changes_since: Some(7),
            changed_dirs: vec![b"etc".to_vec()],
            ..Default::default()
        };
        assert_eq!(Changes::accept(&j, &open).unwrap_err(), "changes since pass 7 were not offered");
        j.changes_offered = Some((7, "/m".into()));
        let c = Changes::accept(&j, &open).unwrap().unwrap();
        assert!(c.covers(b"etc") && c.covers(b"etc\0motd") && !c.covers(b"usr"));
    }

    #[test]
    fn manifest_records_round_trip() {
        let e = file("a/b", &[ChunkRef { hash: Hash32([1; 32]), offset: 0, len: 9 }]);
        let mut buf = Vec::new();
        encode_entry(&e, &mut buf);
        // One length byte, then the message.
        assert_eq!(decode_entry(&buf[1..]).unwrap(), e);
        assert!(decode_entry(b"\xff\xff").is_err());
    }
}
