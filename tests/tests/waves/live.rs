//! Live migration: a service keeps writing on the source during the live passes; the cutover
//! stops it through its SysV init script, copies the last changes and finalises. A failed
//! stop aborts the cutover and starts again what was stopped.

use std::time::{Duration, Instant};

use p2c_common::migration::{MigrateOptions, MigrationState};
use p2c_tests::node::{Agent, Node, NodeOptions};
use p2c_tests::sources::{WRITER_SERVICE, Writer, server_tree, write_exec};
use p2c_tests::{require_root, trace_init, wait_for};

use super::shared::{assert_container_matches, assert_done};

/// A source tree with 24 MiB of data and the writer service running.
fn live_source(dir: &std::path::Path, seed: &str) -> (std::path::PathBuf, Writer) {
    let root = dir.join("root");
    server_tree(&root, seed, 6, 4 << 20).unwrap();
    let writer = Writer::install(&root).unwrap();
    assert!(writer.service("start").unwrap(), "the writer service does not start");
    (root, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_passes_then_cutover_leave_exactly_the_final_state() {
    require_root!();
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let (root, writer) = live_source(dir.path(), "live-1");
    wait_for("the writer to write", Duration::from_secs(10), || async { writer.rounds() > 3 }).await;
    let node = Node::start_with(NodeOptions { max_passes: Some(3), ..Default::default() }).await.unwrap();
    let _agent = Agent::start_with_services(&node, "live01", &root).await.unwrap();

    let started = Instant::now();
    let opts = MigrateOptions {
        agent: "live01".into(),
        ctid: 301,
        cutover: true,
        stop_services: vec![WRITER_SERVICE.into()],
        ..Default::default()
    };
    let task = node.spawn_migrate(&opts).await.unwrap();
    // The source keeps changing while the live passes run.
    let at_copy = wait_for("a live pass", Duration::from_secs(30), || async {
        node.status_of(301).await.ok().filter(|s| s.state == MigrationState::Copying).map(|_| writer.rounds())
    })
    .await;
    let s = task.await.unwrap().unwrap();
    let total = started.elapsed().as_secs_f64();

    assert_done(&s);
    assert!(!writer.running(), "the cutover stopped the writer service");
    let rounds = writer.rounds();
    assert!(rounds > at_copy, "the writer went on during the live passes ({at_copy} → {rounds})");
    assert!(s.passes.len() >= 2, "live passes and a final pass: {:?}", s.passes);
    let downtime = s.downtime_seconds.expect("a cutover reports its downtime");
    assert!(downtime > 0.0 && downtime < total && downtime < 30.0, "downtime {downtime}s of {total}s");
    // The container holds the source's final state: the writer's last round included.
    assert_container_matches(&root, &node.tree(301), &s, &[]);
    let counter = std::fs::read_to_string(node.tree(301).join("srv/live/counter")).unwrap();
    assert_eq!(counter.trim(), rounds.to_string());
    eprintln!("live migration: {} passes, downtime {downtime:.2}s, {rounds} writer rounds", s.passes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_stop_rolls_the_cutover_back_and_a_retry_finishes() {
    require_root!();
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let (root, writer) = live_source(dir.path(), "live-2");
    let broken = root.join("etc/init.d/stubborn");
    write_exec(
        &broken,
        "#!/bin/sh\n[ \"$1\" = stop ] && { echo 'stubborn: device busy' >&2; exit 1; }\nexit 0\n",
    )
    .unwrap();
    let node = Node::start_with(NodeOptions { max_passes: Some(2), ..Default::default() }).await.unwrap();
    let _agent = Agent::start_with_services(&node, "live02", &root).await.unwrap();

    let opts = MigrateOptions {
        agent: "live02".into(),
        ctid: 302,
        cutover: true,
        stop_services: vec![WRITER_SERVICE.into(), "stubborn".into()],
        ..Default::default()
    };
    let s = node.migrate(&opts).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "an aborted cutover leaves the migration synced: {s:?}");
    let err = s.error.as_deref().unwrap_or_default();
    assert!(err.contains("stubborn") && err.contains("device busy"), "{err}");
    assert!(err.contains("started again (p2c-writer)"), "{err}");
    assert!(writer.running(), "the stopped service runs again");
    assert!(s.downtime_seconds.is_none() && s.guest_changes.is_empty() && s.verify.is_none(), "{s:?}");
    assert!(!node.tree(302).join("etc/p2c").exists(), "nothing was finalised");
    let st = node.status_of(302).await.unwrap();
    assert_eq!((st.state, st.error.as_deref()), (MigrationState::Synced, Some(err)));

    // Fixed on the source, the cutover is run again and finishes.
    write_exec(&broken, "#!/bin/sh\nexit 0\n").unwrap();
    let s = node.cutover(302).await.unwrap();
    assert_done(&s);
    assert!(!writer.running());
    assert!(s.error.is_none());
    assert_container_matches(&root, &node.tree(302), &s, &[]);
}
