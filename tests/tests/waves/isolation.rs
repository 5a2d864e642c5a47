//! One migration's trouble stays its own: an agent that goes away gives its copy slot to the
//! migrations waiting for one, and resumes when it is back.

use std::time::Duration;

use p2c_agent::inventory::FactsFrom;
use p2c_common::migration::{MigrateOptions, MigrationState};
use p2c_tests::node::{Agent, Node, NodeOptions};
use p2c_tests::sources::server_tree;
use p2c_tests::{require_root, trace_init, wait_for};

use super::shared::{assert_container_matches, assert_done};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absent_agent_gives_up_its_copy_slot_and_resumes_when_back() {
    require_root!();
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let (slow_root, quick_root) = (dir.path().join("slow"), dir.path().join("quick"));
    server_tree(&slow_root, "isolation-slow", 12, 4 << 20).unwrap();
    server_tree(&quick_root, "isolation-quick", 2, 1 << 20).unwrap();
    // One copy slot: whoever holds it decides whether the other can copy at all.
    let node = Node::start_with(NodeOptions { max_concurrent: Some(1), ..Default::default() }).await.unwrap();
    let slow = Agent::start(&node, "slow01", &slow_root).await.unwrap();
    let _quick = Agent::start(&node, "quick01", &quick_root).await.unwrap();

    // 48 MiB at 6 MiB/s: about 8 s per pass.
    let slow_opts = MigrateOptions { bwlimit: 6 << 20, ..p2c_tests::node::migrate_opts("slow01", 401) };
    let slow_task = node.spawn_migrate(&slow_opts).await.unwrap();
    wait_for("the slow migration to copy", Duration::from_secs(30), || async {
        node.status_of(401).await.is_ok_and(|s| s.state == MigrationState::Copying && s.bytes_done > 0)
    })
    .await;
    let quick_task = node.spawn_migrate(&p2c_tests::node::migrate_opts("quick01", 402)).await.unwrap();
    let queued = wait_for("the quick migration to queue for the slot", Duration::from_secs(30), || async {
        node.status_of(402).await.ok().filter(|s| s.waiting.is_some())
    })
    .await;
    assert_eq!(queued.waiting.as_deref(), Some("a copy slot"));
    // `p2c status` shows both, the copying one with its rate and ETA.
    let copying = node.status_of(401).await.unwrap();
    assert!(copying.rate_bytes_per_sec > 0 && copying.eta_seconds.is_some(), "{copying:?}");
    assert!(copying.bytes_total >= 48 << 20, "{copying:?}");

    // The slow source goes away mid-pass: the quick one gets the slot and finishes.
    let state = slow.stop().await;
    let quick = tokio::time::timeout(Duration::from_secs(60), quick_task)
        .await
        .expect("the quick migration finished while the slow agent was away")
        .unwrap()
        .unwrap();
    assert_done(&quick);
    assert_container_matches(&quick_root, &node.tree(402), &quick, &[]);
    let away = wait_for("the slow migration to wait for its agent", Duration::from_secs(10), || async {
        node.status_of(401).await.ok().filter(|s| s.waiting.is_some())
    })
    .await;
    assert_eq!(away.state, MigrationState::Copying, "{away:?}");
    assert_eq!(away.waiting.as_deref(), Some("agent slow01 to connect"), "{away:?}");

    // Back again, the slow one resumes and finishes.
    let _slow = Agent::run(state, "slow01", &slow_root, FactsFrom::Tree).unwrap();
    let s = tokio::time::timeout(Duration::from_secs(90), slow_task).await.unwrap().unwrap().unwrap();
    assert_done(&s);
    assert_container_matches(&slow_root, &node.tree(401), &s, &[]);
}
