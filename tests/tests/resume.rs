//! The transfer engine under failure: kills and broken links mid-pass resume with far fewer
//! bytes than a fresh copy; stale chunk-index entries never produce a wrong file; changes,
//! deletions and renames between passes land; files changing while read are reported.

use std::sync::atomic::Ordering;
use std::time::Duration;

use p2c_common::migration::{MigrateOptions, MigrationState, PassSummary};
use p2c_proto::v1;
use p2c_tests::fixtures::{CompareOptions, compare_trees};
use p2c_tests::linkproxy::LinkProxy;
use p2c_tests::node::{Agent, Node, migrate_opts, rewritten, summary_of};
use p2c_tests::trees::random_tree;
use p2c_tests::{require_root, trace_init, wait_for};

fn same_tree(src: &std::path::Path, dst: &std::path::Path, extra_excludes: &[std::path::PathBuf]) {
    let mut o = CompareOptions { ignore_all_xattrs: true, ignore_root: true, ..Default::default() };
    for e in extra_excludes {
        o = o.exclude(e.clone());
    }
    let d = compare_trees(src, dst, &o);
    assert!(
        d.is_empty(),
        "{} difference(s):\n{}",
        d.len(),
        d.iter().take(30).map(|x| x.to_string()).collect::<Vec<_>>().join("\n")
    );
}

/// Every pass the store recorded for a container (failed ones included), in order.
fn passes(node: &Node, ctid: u32) -> Vec<(bool, PassSummary)> {
    node.controller().store.passes(ctid).unwrap().into_iter().map(|p| (p.complete, p.summary)).collect()
}

/// Starts `p2c migrate` in the background and returns the stream to read its summary from.
async fn start_migrate(node: &Node, opts: &MigrateOptions) -> tonic::Streaming<v1::MigrateEvent> {
    let mut c = node.admin().await.unwrap();
    c.migrate(v1::JsonRequest { json: serde_json::to_vec(opts).unwrap() }).await.unwrap().into_inner()
}

/// Waits until the running pass of `ctid` has written at least `bytes`.
async fn wait_progress(node: &Node, ctid: u32, bytes: u64) {
    let ctl = node.controller().clone();
    wait_for(&format!("CT {ctid} to copy {bytes} bytes"), Duration::from_secs(60), || {
        let ctl = ctl.clone();
        async move {
            let m = ctl.migrations.get(ctid);
            m.is_some_and(|h| h.progress().bytes_done.load(Ordering::Relaxed) >= bytes)
        }
    })
    .await;
}

fn slow(agent: &str, ctid: u32) -> MigrateOptions {
    MigrateOptions { bwlimit: 12 << 20, cutover: false, ..migrate_opts(agent, ctid) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumes_after_the_agent_is_killed() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let total = random_tree(src.path(), "kill-agent", 48, 1 << 20).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-a", src.path()).await.unwrap();
    let mut stream = start_migrate(&node, &slow("src-a", 301)).await;
    wait_progress(&node, 301, total / 3).await;
    let state = agent.stop().await; // the agent dies mid-pass
    tokio::time::sleep(Duration::from_millis(500)).await;
    let agent = Agent::run(state, "src-a", src.path(), p2c_agent::inventory::FactsFrom::Tree).unwrap();
    let s = summary_of(&mut stream).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let p = passes(&node, 301);
    assert!(p.len() >= 2 && !p[0].0, "the first pass should have been interrupted: {p:?}");
    let resumed = &p.last().unwrap().1;
    let sent_before = p[0].1.wire_bytes;
    assert!(sent_before >= total / 4, "the killed pass sent only {sent_before} bytes");
    // Only what was missing travels again.
    assert!(
        resumed.wire_bytes <= total - sent_before + total / 10,
        "resumed pass sent {} of {total}",
        resumed.wire_bytes
    );
    assert!(resumed.local_bytes == 0 || resumed.wire_bytes < total);
    same_tree(src.path(), &node.tree(301), &[]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumes_after_the_controller_is_killed() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let total = random_tree(src.path(), "kill-ctl", 48, 1 << 20).unwrap();
    let mut node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-b", src.path()).await.unwrap();
    let _stream = start_migrate(&node, &slow("src-b", 302)).await;
    wait_progress(&node, 302, total / 3).await;
    node.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.restart().await.unwrap();
    node.wait_connected("src-b", Duration::from_secs(30)).await.unwrap();
    // The operator runs the same command again.
    let s = node.migrate(&slow("src-b", 302)).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let p = passes(&node, 302);
    let resumed = &p.last().unwrap().1;
    assert!(resumed.wire_bytes < total * 3 / 4, "resumed pass sent {} of {total}", resumed.wire_bytes);
    same_tree(src.path(), &node.tree(302), &[]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumes_after_the_link_breaks() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let total = random_tree(src.path(), "cut-link", 48, 1 << 20).unwrap();
    let node = Node::start().await.unwrap();
    let proxy = LinkProxy::start(node.addr).await.unwrap();
    let agent = Agent::start_via(&node, "src-c", src.path(), &proxy.addr.to_string()).await.unwrap();
    let mut stream = start_migrate(&node, &slow("src-c", 303)).await;
    wait_progress(&node, 303, total / 3).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let s = summary_of(&mut stream).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let p = passes(&node, 303);
    assert!(p.iter().any(|(ok, _)| !ok), "no pass was interrupted: {p:?}");
    let resumed = &p.last().unwrap().1;
    assert!(resumed.wire_bytes < total * 3 / 4, "resumed pass sent {} of {total}", resumed.wire_bytes);
    same_tree(src.path(), &node.tree(303), &[]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_chunk_index_entry_never_produces_a_wrong_file() {
    require_root!();
    trace_init();
    let a = tempfile::tempdir().unwrap();
    random_tree(a.path(), "stale", 6, 1 << 20).unwrap();
    let node = Node::start().await.unwrap();
    let agent_a = Agent::start(&node, "src-d", a.path()).await.unwrap();
    let s = node.migrate(&migrate_opts("src-d", 304)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    // Damage CT 304's copy behind p2c's back, keeping size and mtime.
    let victim = node.tree(304).join("data/d0/f0000.bin");
    let meta = std::fs::metadata(&victim).unwrap();
    let mut data = std::fs::read(&victim).unwrap();
    for b in &mut data[100_000..400_000] {
        *b ^= 0xff;
    }
    std::fs::write(&victim, &data).unwrap();
    let f = std::fs::File::options().write(true).open(&victim).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
    drop(f);
    // A second server with the same files: the index points at CT 304's damaged copy.
    let b = tempfile::tempdir().unwrap();
    random_tree(b.path(), "stale", 6, 1 << 20).unwrap();
    let agent_b = Agent::start(&node, "src-e", b.path()).await.unwrap();
    let s = node.migrate(&migrate_opts("src-e", 305)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    let ex: Vec<_> =
        rewritten(&s).into_iter().chain([std::path::PathBuf::from("dev"), "etc".into()]).collect();
    same_tree(b.path(), &node.tree(305), &ex);
    let p0 = &s.passes[0];
    assert!(p0.local_bytes > 0, "nothing came from the node's index: {p0:?}");
    assert!(p0.wire_bytes >= 300_000, "the damaged region must travel again: {p0:?}");
    agent_a.stop().await;
    agent_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_deletions_and_renames_between_passes_land() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    random_tree(r, "between", 10, 256 << 10).unwrap();
    std::fs::create_dir_all(r.join("var/old")).unwrap();
    std::fs::write(r.join("var/old/gone.txt"), b"soon deleted").unwrap();
    std::fs::write(r.join("var/turns-into-dir"), b"a file first").unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-f", r).await.unwrap();
    let s = node.migrate(&MigrateOptions { cutover: false, ..migrate_opts("src-f", 306) }).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    // The source keeps living.
    std::fs::write(r.join("data/d0/f0000.bin"), b"rewritten with other content").unwrap();
    let mut same_size = std::fs::read(r.join("data/d1/f0001.bin")).unwrap();
    same_size[1000] ^= 1;
    std::fs::write(r.join("data/d1/f0001.bin"), &same_size).unwrap();
    std::fs::remove_dir_all(r.join("var/old")).unwrap();
    std::fs::rename(r.join("data/d2/f0002.bin"), r.join("data/renamed.bin")).unwrap();
    std::fs::write(r.join("conf/new.conf"), b"added").unwrap();
    std::fs::set_permissions(r.join("conf/c00"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    std::fs::remove_file(r.join("var/turns-into-dir")).unwrap();
    std::fs::create_dir_all(r.join("var/turns-into-dir/sub")).unwrap();
    let mut c = node.admin().await.unwrap();
    let mut st = c.cutover(v1::CtidRef { ctid: 306 }).await.unwrap().into_inner();
    let s = summary_of(&mut st).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    let last = s.passes.last().unwrap();
    assert!(last.deleted >= 3, "deletions not applied: {last:?}");
    // The renamed file's data came from the node, not the wire.
    assert!(last.wire_bytes < 200 << 10, "rename/rewrite sent too much: {last:?}");
    let ex: Vec<_> =
        rewritten(&s).into_iter().chain([std::path::PathBuf::from("dev"), "etc".into()]).collect();
    same_tree(r, &node.tree(306), &ex);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_changing_while_read_are_reported_not_fatal() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let r = src.path().to_path_buf();
    random_tree(&r, "churn", 4, 1 << 20).unwrap();
    std::fs::create_dir_all(r.join("var/log")).unwrap();
    std::fs::write(r.join("var/log/busy.log"), p2c_tests::trees::random_bytes("log", 48 << 20)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (r, stop) = (r.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut i = 0u64;
            let mut log = std::fs::OpenOptions::new().append(true).open(r.join("var/log/busy.log")).unwrap();
            std::fs::create_dir_all(r.join("var/spool")).unwrap();
            while !stop.load(Ordering::Relaxed) {
                log.write_all(format!("line {i}\n").as_bytes()).unwrap();
                let _ = std::fs::write(r.join(format!("var/spool/job{i}")), b"job");
                let _ = std::fs::remove_file(r.join(format!("var/spool/job{}", i.saturating_sub(3))));
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-g", &r).await.unwrap();
    let o = MigrateOptions { cutover: false, max_passes: 2, ..migrate_opts("src-g", 307) };
    let s = node.migrate(&o).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "changing files must not fail the pass: {:?}", s.error);
    let reported: Vec<String> =
        s.passes.iter().flat_map(|p| p.changed_during_read.iter().map(|c| c.path.display())).collect();
    assert!(reported.iter().any(|p| p.starts_with("/var/")), "nothing reported as changing: {reported:?}");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut c = node.admin().await.unwrap();
    let mut st = c.cutover(v1::CtidRef { ctid: 307 }).await.unwrap().into_inner();
    let s = summary_of(&mut st).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    let ex: Vec<_> =
        rewritten(&s).into_iter().chain([std::path::PathBuf::from("dev"), "etc".into()]).collect();
    same_tree(&r, &node.tree(307), &ex);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unchanged_pass_writes_nothing_whatever_the_tree_size() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    // More entries than the writer reads from the store at once.
    for d in 0..6 {
        let dir = src.path().join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..700 {
            std::fs::write(dir.join(format!("f{f:04}")), format!("file {d}/{f}\n")).unwrap();
        }
    }
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-h", src.path()).await.unwrap();
    let once = MigrateOptions { cutover: false, max_passes: 1, ..migrate_opts("src-h", 308) };
    let s = node.migrate(&once).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let s = node.migrate(&once).await.unwrap();
    let last = s.passes.last().unwrap();
    assert!(last.entries > 4200, "{last:?}");
    assert_eq!((last.written, last.deleted, last.wire_bytes, last.local_bytes), (0, 0, 0, 0), "{last:?}");
    same_tree(src.path(), &node.tree(308), &[]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bandwidth_limit_holds() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let total = random_tree(src.path(), "bwlimit", 24, 1 << 20).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-i", src.path()).await.unwrap();
    let limit: u64 = 6 << 20;
    let o = MigrateOptions { bwlimit: limit, cutover: false, max_passes: 1, ..migrate_opts("src-i", 309) };
    let s = node.migrate(&o).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let p = &s.passes[0];
    assert!(p.wire_bytes >= total * 9 / 10, "{p:?}");
    // The first quarter second may burst; after that the agent keeps to the limit.
    let floor = (p.wire_bytes as f64 / limit as f64) - 0.5;
    assert!(p.seconds >= floor, "{} bytes in {:.2}s is faster than {} B/s", p.wire_bytes, p.seconds, limit);
    let rate = p.wire_bytes as f64 / p.seconds;
    assert!(rate <= limit as f64 * 1.15, "rate {rate:.0} B/s over the limit {limit}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_file_changed_in_the_middle_is_updated_in_place() {
    require_root!();
    trace_init();
    use std::os::unix::fs::{FileExt, MetadataExt};
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    std::fs::write(r.join("big.bin"), p2c_tests::trees::random_bytes("big", 80 << 20)).unwrap();
    // A sparse image: data at the start and the end, a hole between.
    let img = std::fs::File::create(r.join("sparse.img")).unwrap();
    img.set_len(80 << 20).unwrap();
    img.write_all_at(&p2c_tests::trees::random_bytes("head", 1 << 20), 0).unwrap();
    img.write_all_at(&p2c_tests::trees::random_bytes("tail", 1 << 20), 79 << 20).unwrap();
    drop(img);
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-j", r).await.unwrap();
    let once = MigrateOptions { cutover: false, max_passes: 1, ..migrate_opts("src-j", 310) };
    let s = node.migrate(&once).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let ino = |p: &str| std::fs::metadata(node.tree(310).join(p)).unwrap().ino();
    let (big_ino, img_ino) = (ino("big.bin"), ino("sparse.img"));

    // 4 MiB rewritten in the middle of the big file; in the image, new data in the hole and
    // the head punched out.
    let big = std::fs::OpenOptions::new().write(true).open(r.join("big.bin")).unwrap();
    big.write_all_at(&p2c_tests::trees::random_bytes("patch", 4 << 20), 38 << 20).unwrap();
    drop(big);
    let img = std::fs::OpenOptions::new().write(true).open(r.join("sparse.img")).unwrap();
    img.write_all_at(&p2c_tests::trees::random_bytes("middle", 1 << 20), 40 << 20).unwrap();
    rustix::fs::fallocate(
        &img,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        0,
        1 << 20,
    )
    .unwrap();
    drop(img);

    let s = node.migrate(&once).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let p = s.passes.last().unwrap();
    assert!(p.wire_bytes < 7 << 20, "only the changes travel: {p:?}");
    assert!(p.local_bytes < 8 << 20, "unchanged chunks stay where they are: {p:?}");
    assert_eq!(ino("big.bin"), big_ino, "big.bin was copied afresh, not updated in place");
    assert_eq!(ino("sparse.img"), img_ino, "sparse.img was copied afresh, not updated in place");
    // Content, holes included (allocated blocks are compared too).
    same_tree(r, &node.tree(310), &[]);
    agent.stop().await;
}
