//! The pipeline end to end over a real tree and store in a temporary directory, with a
//! scripted peer.

use super::*;
use crate::receive::testing::{dir, file, job, symlink};
use crate::receive::{Down, PassError, peer::ChunkBody};
use futures::stream::{self, BoxStream};
use p2c_common::manifest::Entry;

struct Bench {
    _dir: tempfile::TempDir,
    job: PassJob,
}

fn bench() -> Bench {
    let d = tempfile::tempdir().unwrap();
    let mut j = job(100);
    j.tree = d.path().join("private/100");
    j.private_root = d.path().join("private");
    j.db = d.path().join("state.db");
    j.manifest = d.path().join("manifests/pass-0001.manifest");
    crate::state::Store::open(&j.db).unwrap();
    Bench { _dir: d, job: j }
}

/// Entries owned by whoever runs the test, so that it needs no privileges.
fn mine(mut e: Entry) -> Entry {
    e.meta.uid = rustix::process::getuid().as_raw();
    e.meta.gid = rustix::process::getgid().as_raw();
    e
}

fn script(msgs: Vec<Result<Up, ReceiveError>>) -> BoxStream<'static, Result<Up, ReceiveError>> {
    Box::pin(stream::iter(msgs))
}

fn batch(seq: u64, entries: Vec<Entry>) -> Result<Up, ReceiveError> {
    Ok(Up::Batch(Batch { seq, entries: entries.into_iter().map(mine).collect() }))
}

fn done() -> Result<Up, ReceiveError> {
    Ok(Up::Done { changed: Vec::new(), skipped: Vec::new() })
}

async fn run(b: &Bench, inbound: BoxStream<'static, Result<Up, ReceiveError>>) -> (Finished, Vec<Down>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let f = drive(b.job.clone(), inbound, tx).await;
    let mut down = Vec::new();
    while let Ok(d) = rx.try_recv() {
        down.push(d);
    }
    (f, down)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_without_data_runs_to_its_end() {
    let b = bench();
    let entries = vec![dir(""), dir("etc"), file("etc/empty", &[]), symlink("lnk", "etc")];
    let (f, down) = run(&b, script(vec![batch(0, entries), done()])).await;
    assert!(f.error.is_none(), "{:?}", f.error);
    assert_eq!((f.summary.pass, f.summary.entries, f.summary.written), (1, 4, 4));
    assert_eq!(f.written.unwrap().iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["/etc/empty"]);
    assert_eq!(down, [Down::Need { seq: 0, indexes: vec![] }, Down::Written { seq: 0 }]);
    assert!(b.job.tree.join("etc/empty").is_file());
    assert_eq!(std::fs::read_link(b.job.tree.join("lnk")).unwrap(), std::path::Path::new("etc"));
    assert!(b.job.manifest.is_file(), "the manifest is in place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_breaks_the_stream_rules_is_invalid() {
    let b = bench();
    let (f, _) = run(&b, script(vec![batch(1, vec![dir("")]), done()])).await;
    let e = f.into_outcome();
    assert_eq!(e.error, Some(PassError::Invalid("batch 1 out of sequence (expected 0)".into())));
    assert!(!e.retryable);

    let many = (0..=MAX_CHUNKS_PER_MESSAGE as u32)
        .map(|index| Chunk { seq: 0, index, body: ChunkBody::Plain(bytes::Bytes::new()) })
        .collect();
    let (f, _) = run(&b, script(vec![batch(0, vec![dir("")]), Ok(Up::Chunks(many)), done()])).await;
    assert_eq!(f.into_outcome().error, Some(PassError::Invalid("too many chunks in one message".into())));

    let chunk = Chunk { seq: 0, index: 0, body: ChunkBody::Plain(bytes::Bytes::from_static(b"x")) };
    let (f, _) = run(&b, script(vec![batch(0, vec![dir("")]), Ok(Up::Chunks(vec![chunk])), done()])).await;
    assert_eq!(f.into_outcome().error, Some(PassError::Invalid("chunk 0/0 was not requested".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_entry_ends_a_stream_left_open() {
    let b = bench();
    let open = script(vec![batch(0, vec![dir(""), file("a/b", &[])])]).chain(stream::pending());
    let (f, _) = run(&b, Box::pin(open)).await;
    let e = f.into_outcome().error.unwrap();
    assert_eq!(e.to_string(), "agent sent an invalid stream: /a/b: its parent directory was not sent first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_early_is_a_lost_link() {
    let b = bench();
    let (f, _) = run(&b, script(vec![batch(0, vec![dir("")])])).await;
    let o = f.into_outcome();
    assert!(o.retryable);
    assert!(
        matches!(&o.error, Some(PassError::Other(m)) if m.starts_with("the connection to the agent was lost"))
    );
}

#[test]
fn the_first_error_is_the_cause() {
    let stream = || ReceiveError::Stream("reset".into());
    let quota = || ReceiveError::Quota { what: "x".into() };
    let is =
        |e: Option<ReceiveError>, want: &str| assert_eq!(e.map(|e| e.to_string()).unwrap_or_default(), want);
    // The peer's invalid message wins over everything that followed from it.
    is(cause(Err(protocol("bad")), Some(stopped()), Some(stream())), "agent sent an invalid stream: bad");
    // A planner error wins over the writer's input ending.
    is(cause(Err(stopped()), Some(protocol("entry")), Some(stream())), "agent sent an invalid stream: entry");
    // The writer's own error wins over the reader stopping because of it.
    is(cause(Err(stopped()), None, Some(quota())), &quota().to_string());
    // Only consequences: the lost link explains them (and makes the pass retry).
    is(cause(Err(stream()), None, Some(stopped())), "the connection to the agent was lost: reset");
    is(cause(Err(stopped()), None, Some(stream())), "the connection to the agent was lost: reset");
    is(cause(Ok(()), None, None), "");
}
