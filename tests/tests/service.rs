//! The controller's service layer as the operator meets it: a migration's phases are checked
//! moves, so two `p2c cutover N` at once run one cutover and refuse the other, two
//! `p2c migrate` of one new CTID start one migration, and a pass the store cannot record
//! fails where the operator sees it instead of being lost to a later resume.

use p2c_common::migration::{MigrateOptions, MigrationState, MigrationSummary};
use p2c_tests::node::{Agent, Node, migrate_opts};
use p2c_tests::trees::random_tree;
use p2c_tests::{require_root, trace_init};

use crate::e2e::p2c;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cutovers_at_once_one_runs_and_the_other_is_refused() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), "twocut", 6, 256 << 10).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-cut2", src.path()).await.unwrap();
    let s = node.migrate(&MigrateOptions { cutover: false, ..migrate_opts("src-cut2", 401) }).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let state = node.state_dir();
    // Two operators type `p2c cutover 401` at the same moment.
    let (a, b) =
        tokio::join!(p2c(&state, &["cutover", "401", "--json"]), p2c(&state, &["cutover", "401", "--json"]));
    let (ran, refused) = if a.code == 0 { (a, b) } else { (b, a) };
    assert_eq!(ran.code, 0, "neither cutover ran: {}\n{}", ran.stderr, refused.stderr);
    assert_ne!(refused.code, 0, "both cutovers ran: {}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("CT 401 is cutting-over: a cutover already runs; watch it with `p2c status --watch`")
            || refused.stderr.contains("CT 401 is finalising")
            || refused.stderr.contains("CT 401 is done: it was cut over already"),
        "unclear refusal: {}",
        refused.stderr
    );
    let done: MigrationSummary =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout));
    assert_eq!(done.state, MigrationState::Done, "{:?}", done.error);
    // One cutover means one final pass after the live one.
    assert_eq!(done.passes.len(), 2, "{:?}", done.passes);
    // A third, later cutover is told it is done.
    let late = p2c(&state, &["cutover", "401"]).await;
    assert_ne!(late.code, 0);
    assert!(late.stderr.contains("CT 401 is done: it was cut over already"), "{}", late.stderr);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_of_one_new_ctid_start_exactly_one() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), "many", 4, 128 << 10).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-race", src.path()).await.unwrap();
    let state = node.state_dir();
    let runs = futures::future::join_all(
        (0..16).map(|_| p2c(&state, &["migrate", "src-race", "--ctid", "402", "--cutover", "--json"])),
    )
    .await;
    let ok: Vec<_> = runs.iter().filter(|r| r.code == 0).collect();
    assert_eq!(
        ok.len(),
        1,
        "{} migrations ran: {:?}",
        ok.len(),
        runs.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
    for r in runs.iter().filter(|r| r.code != 0) {
        assert!(
            r.stderr.contains("migration of CT 402 is already running"),
            "a refused migrate must say why: {}",
            r.stderr
        );
    }
    let done: MigrationSummary = serde_json::from_str(&ok[0].stdout).unwrap();
    assert_eq!(done.state, MigrationState::Done, "{:?}", done.error);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_that_cannot_be_recorded_fails_visibly() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), "norecord", 3, 64 << 10).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-norec", src.path()).await.unwrap();
    // The store refuses pass records (as a full or failing disk would), nothing else.
    let db = p2c_controller::state::connect(&node.controller().settings.db_path()).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_pass BEFORE INSERT ON passes BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END;",
    )
    .unwrap();
    let s = node.migrate(&migrate_opts("src-norec", 403)).await.unwrap();
    assert_eq!(s.state, MigrationState::Failed, "a pass without a record must not count: {s:?}");
    let error = s.error.unwrap_or_default();
    assert!(
        error.contains("cannot record copy pass 0, so it counts as failed")
            && error.contains("disk I/O error"),
        "{error}"
    );
    // `p2c status` says the same.
    let st = p2c(&node.state_dir(), &["status", "403"]).await;
    assert!(st.stdout.contains("failed") && st.stdout.contains("cannot record copy pass 0"), "{}", st.stdout);
    // Once the store takes records again, the same command resumes and finishes.
    db.execute_batch("DROP TRIGGER refuse_pass;").unwrap();
    let s = node.migrate(&migrate_opts("src-norec", 403)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_synced_migration_is_cut_over_after_a_controller_restart() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), "restart", 4, 128 << 10).unwrap();
    let mut node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-rs", src.path()).await.unwrap();
    let s = node.migrate(&MigrateOptions { cutover: false, ..migrate_opts("src-rs", 404) }).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    node.crash();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    node.restart().await.unwrap();
    node.wait_connected("src-rs", std::time::Duration::from_secs(30)).await.unwrap();
    let st = p2c(&node.state_dir(), &["status", "404"]).await;
    assert!(st.stdout.contains("synced"), "{}", st.stdout);
    // The operator cuts it over as if nothing had happened.
    let done = node.cutover(404).await.unwrap();
    assert_eq!(done.state, MigrationState::Done, "{:?}", done.error);
    agent.stop().await;
}
