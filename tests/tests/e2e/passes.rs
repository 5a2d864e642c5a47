//! Passes over a tree larger than one page of the controller's file records (1024): an
//! unchanged pass writes nothing, and files deleted on the source between passes are
//! deleted from the container wherever they sit in walk order.
//!
//! Found by the fixture test, whose later passes rewrote every 1025th entry: the writer
//! counted the entry it was about to match as already processed when its record cursor
//! refilled, so that entry's record, and the records of files deleted just before it,
//! were skipped at each page boundary. The deleted files stayed in the container and the
//! cutover's verification failed on every run. (Fixed on main in fa2534c meanwhile; this
//! is the end-to-end proof of the deletion half.)

use p2c_common::migration::MigrationState;
use p2c_tests::node::{Agent, Node, NodeOptions, migrate_opts};
use p2c_tests::{require_root, trace_init};

use super::{scratch, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletions_at_a_record_page_boundary_reach_the_container() {
    require_root!();
    trace_init();
    let disk = scratch();
    let src = disk.path().join("src");
    for i in 0..2000 {
        write(&src, &format!("d/f{i:04}"), &format!("file {i}\n"));
    }
    let node = Node::start_with(NodeOptions { vz_root: Some(disk.path().join("vz")), ..Default::default() })
        .await
        .unwrap();
    let agent = Agent::start(&node, "pages", &src).await.unwrap();
    let mut o = migrate_opts("pages", 171);
    o.cutover = false;
    let s = node.migrate(&o).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    // The same `p2c migrate` again: one more live pass over the unchanged source.
    let s = node.migrate(&o).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let second = s.passes.last().unwrap();
    assert_eq!(
        (second.pass, second.written, second.changed_bytes),
        (1, 0, 0),
        "an unchanged pass: {second:?}"
    );

    // Records are paged 1024 at a time in walk order (/, d, d/f0000...): these straddle
    // the end of the first page.
    let gone: Vec<String> = (1018..1026).map(|i| format!("d/f{i:04}")).collect();
    for p in &gone {
        std::fs::remove_file(src.join(p)).unwrap();
    }
    let s = node.cutover(171).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    let last = s.passes.last().unwrap();
    assert_eq!((last.deleted, last.written), (gone.len() as u64, 1), "only the directory changes: {last:?}");
    let left: Vec<&String> = gone.iter().filter(|p| node.tree(171).join(p).exists()).collect();
    assert!(left.is_empty(), "deleted on the source, still in the container: {left:?}");
    agent.stop().await;
}
