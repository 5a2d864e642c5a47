//! Change tracking: a live pass after the first lists only what the agent's fanotify watch
//! saw change, and still leaves the container exactly like the source; the final pass of a
//! cutover walks everything.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use p2c_common::migration::{MigrateOptions, MigrationState, VerifySummary};
use p2c_proto::v1;
use p2c_tests::fixtures::{CompareOptions, compare_trees};
use p2c_tests::node::{Agent, Node, migrate_opts, rewritten, summary_of};
use p2c_tests::trees::random_tree;
use p2c_tests::{require_root, trace_init};

fn differences(src: &Path, dst: &Path, excludes: &[std::path::PathBuf]) -> Vec<String> {
    let mut o = CompareOptions { ignore_all_xattrs: true, ignore_root: true, ..Default::default() };
    for e in excludes {
        o = o.exclude(e.clone());
    }
    compare_trees(src, dst, &o).iter().map(|d| d.to_string()).collect()
}

async fn verify(node: &Node, ctid: u32) -> VerifySummary {
    let mut admin = node.admin().await.unwrap();
    let v = admin.verify(v1::CtidRef { ctid }).await.unwrap().into_inner();
    serde_json::from_slice(&v.json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_passes_list_only_what_changed_and_land_exactly() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    random_tree(r, "tracked", 40, 64 << 10).unwrap();
    for d in ["srv/www/static", "srv/moving/inner", "var/gone/deep", "opt/becomes-file", "home/u"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("srv/www/static/index.html"), b"<h1>old</h1>").unwrap();
    std::fs::write(r.join("srv/moving/inner/payload"), p2c_tests::trees::random_bytes("mv", 200 << 10))
        .unwrap();
    std::fs::write(r.join("var/gone/deep/x"), b"x").unwrap();
    std::fs::write(r.join("opt/becomes-file/y"), b"y").unwrap();
    std::fs::write(r.join("home/u/becomes-dir"), b"a file first").unwrap();
    std::os::unix::fs::symlink("index.html", r.join("srv/www/static/link")).unwrap();
    // A file with two names in two directories; the first name goes away below.
    std::fs::create_dir_all(r.join("links/a")).unwrap();
    std::fs::create_dir_all(r.join("links/b")).unwrap();
    std::fs::write(r.join("links/a/first"), b"shared").unwrap();
    std::fs::hard_link(r.join("links/a/first"), r.join("links/b/second")).unwrap();

    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-t", r).await.unwrap();
    let live = MigrateOptions { cutover: false, max_passes: 1, ..migrate_opts("src-t", 311) };
    let s = node.migrate(&live).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let first = s.passes.last().unwrap().clone();
    assert_eq!(first.changes_since, None, "the first pass walks everything: {first:?}");

    // Nothing changed: the next pass lists nothing and the tree stays complete.
    let s = node.migrate(&live).await.unwrap();
    let idle = s.passes.last().unwrap().clone();
    assert_eq!(idle.changes_since, Some(first.pass), "{idle:?}");
    assert_eq!(idle.listed, 0, "nothing changed, yet entries were listed: {idle:?}");
    assert_eq!(idle.entries, first.entries, "the manifest lost entries: {idle:?}");
    assert_eq!((idle.written, idle.deleted, idle.wire_bytes), (0, 0, 0), "{idle:?}");
    assert!(differences(r, &node.tree(311), &[]).is_empty());

    // The source keeps living: content, metadata, creations, deletions, renames, type changes.
    std::fs::write(r.join("srv/www/static/index.html"), b"<h1>new</h1>").unwrap();
    std::fs::set_permissions(r.join("data/d3"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::remove_file(r.join("srv/www/static/link")).unwrap();
    std::os::unix::fs::symlink("elsewhere.html", r.join("srv/www/static/link")).unwrap();
    std::fs::create_dir_all(r.join("srv/new/a/b")).unwrap();
    std::fs::write(r.join("srv/new/a/b/fresh"), b"fresh").unwrap();
    std::fs::rename(r.join("srv/moving"), r.join("home/u/moved")).unwrap();
    std::fs::remove_dir_all(r.join("var/gone")).unwrap();
    std::fs::remove_dir_all(r.join("opt/becomes-file")).unwrap();
    std::fs::write(r.join("opt/becomes-file"), b"now a file").unwrap();
    std::fs::remove_file(r.join("home/u/becomes-dir")).unwrap();
    std::fs::create_dir_all(r.join("home/u/becomes-dir/z")).unwrap();
    std::fs::remove_file(r.join("links/a/first")).unwrap();

    let s = node.migrate(&live).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    let delta = s.passes.last().unwrap().clone();
    assert_eq!(delta.changes_since, Some(idle.pass), "{delta:?}");
    assert!(
        delta.listed > 0 && delta.listed < first.entries / 3,
        "listed {} of {}",
        delta.listed,
        first.entries
    );
    assert!(delta.deleted >= 5, "deletions not applied: {delta:?}");
    // The moved directory's data came from the node, not the wire.
    assert!(delta.wire_bytes < 64 << 10, "{delta:?}");
    // Everything matches but the hard link whose first name went away: an intermediate
    // pass cannot tell what its other name holds now, drops it, and the final walk brings
    // it back.
    let diffs = differences(r, &node.tree(311), &[]);
    assert!(
        diffs.len() == 1 && diffs[0].contains("links/b/second"),
        "unexpected differences after a listing of changes:\n{}",
        diffs.join("\n")
    );
    let v = verify(&node, 311).await;
    assert!(v.ok, "the container must match the pass's manifest: {v:?}");

    // The cutover walks everything and the container ends exactly like the source.
    std::fs::write(r.join("home/u/late"), b"written after the last live pass").unwrap();
    let mut c = node.admin().await.unwrap();
    let mut st = c.cutover(v1::CtidRef { ctid: 311 }).await.unwrap().into_inner();
    let s = summary_of(&mut st).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    let last = s.passes.last().unwrap();
    assert_eq!(last.changes_since, None, "the final pass must walk everything: {last:?}");
    assert_eq!(last.listed, last.entries);
    let ex: Vec<_> =
        rewritten(&s).into_iter().chain([std::path::PathBuf::from("dev"), "etc".into()]).collect();
    let diffs = differences(r, &node.tree(311), &ex);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    agent.stop().await;
}

/// A change the watch cannot vouch for (a changed file with other hard links) makes the
/// pass walk everything instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_file_with_other_links_makes_the_pass_walk_everything() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    random_tree(r, "linked", 8, 16 << 10).unwrap();
    std::fs::create_dir_all(r.join("l1")).unwrap();
    std::fs::create_dir_all(r.join("l2")).unwrap();
    std::fs::write(r.join("l1/one"), b"v1").unwrap();
    std::fs::hard_link(r.join("l1/one"), r.join("l2/two")).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-u", r).await.unwrap();
    let live = MigrateOptions { cutover: false, max_passes: 1, ..migrate_opts("src-u", 312) };
    let s = node.migrate(&live).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);
    // Written through one name: both names hold the new content.
    std::fs::write(r.join("l1/one"), b"version two").unwrap();
    let s = node.migrate(&live).await.unwrap();
    let p = s.passes.last().unwrap();
    assert_eq!(p.changes_since, None, "{p:?}");
    assert_eq!(p.listed, p.entries);
    let diffs = differences(r, &node.tree(312), &[]);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert_eq!(std::fs::read(node.tree(312).join("l2/two")).unwrap(), b"version two");
    agent.stop().await;
}

/// A file system mounted below the root between passes resets the watch (that pass walks
/// everything); from then on changes inside it are listed like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_mount_resets_the_watch_and_is_then_watched_too() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    random_tree(r, "mounts", 6, 16 << 10).unwrap();
    std::fs::create_dir_all(r.join("srv/data")).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "src-m", r).await.unwrap();
    let live = MigrateOptions { cutover: false, max_passes: 1, ..migrate_opts("src-m", 313) };
    let s = node.migrate(&live).await.unwrap();
    assert_eq!(s.state, MigrationState::Synced, "{:?}", s.error);

    let fs =
        p2c_tests::loopfs::LoopFs::new_at(p2c_tests::loopfs::FsKind::Ext4, 64 << 20, "", &r.join("srv/data"))
            .unwrap();
    std::fs::write(fs.path().join("on-the-new-fs"), b"first").unwrap();
    let s = node.migrate(&live).await.unwrap();
    let p = s.passes.last().unwrap();
    assert_eq!(p.changes_since, None, "a new mount must reset the watch: {p:?}");
    assert!(differences(r, &node.tree(313), &[]).is_empty());

    std::fs::create_dir(fs.path().join("later")).unwrap();
    std::fs::write(fs.path().join("later/second"), b"second").unwrap();
    std::fs::write(fs.path().join("on-the-new-fs"), b"first, rewritten").unwrap();
    let s = node.migrate(&live).await.unwrap();
    let p = s.passes.last().unwrap();
    assert_eq!(p.changes_since, Some(p.pass - 1), "{p:?}");
    assert!(p.listed < p.entries / 2, "{p:?}");
    let diffs = differences(r, &node.tree(313), &[]);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert_eq!(std::fs::read(node.tree(313).join("srv/data/later/second")).unwrap(), b"second");
    agent.stop().await;
    drop(fs);
}
