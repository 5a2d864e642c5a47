//! Air-gapped sources: `p2c-agent export` writes a server to a bundle, `p2c import` builds
//! the container from it on the node. The container is the one an online move builds; an
//! interrupted export continues; a damaged bundle is refused and leaves nothing; a hostile one
//! is refused by the receive path like a hostile agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use p2c_agent::export::{ExportOptions, export};
use p2c_agent::inventory::FactsFrom;
use p2c_common::bundle::ImportRequest;
use p2c_common::findings::Report;
use p2c_common::migration::{MigrateOptions, MigrationState, MigrationSummary};
use p2c_tests::bundles::{contents, flipped_copy, handmade, truncated_copy};
use p2c_tests::fake_agent::{dir, file, minimal_inventory};
use p2c_tests::fixtures::{CompareOptions, build_every_case_tree, compare_trees};
use p2c_tests::node::{Agent, Node, migrate_opts};
use p2c_tests::procs::bin;
use p2c_tests::{require_root, trace_init, wait_for};

/// Exports `root` as the source `name` to `out` (what `p2c-agent export --root ROOT
/// --facts tree --name NAME --out OUT` does), in this process.
async fn export_tree(root: &Path, name: &str, out: &Path) -> p2c_agent::export::ExportReport {
    let mut o = ExportOptions::new(out, root);
    o.facts = FactsFrom::Tree;
    o.name = Some(name.into());
    tokio::task::spawn_blocking(move || export(&o, &AtomicBool::new(false)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("export failed: {e}"))
}

fn import_req(bundle: &Path, ctid: u32) -> ImportRequest {
    ImportRequest {
        bundle: bundle.display().to_string(),
        options: MigrateOptions { ctid, cutover: true, ..Default::default() },
    }
}

/// The findings as a user compares them: code, severity, title (with the CTID neutral).
fn findings(r: &Report, ctid: u32) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = r
        .findings
        .iter()
        .map(|f| {
            (
                f.code.clone(),
                format!("{:?}", f.severity),
                f.title.replace(&format!("private/{ctid}"), "private/N"),
            )
        })
        .collect();
    v.sort();
    v
}

fn skipped(s: &MigrationSummary) -> Vec<String> {
    let mut v: Vec<String> =
        s.passes.iter().flat_map(|p| p.skipped.iter().map(|x| x.path.display())).collect();
    v.sort();
    v.dedup();
    v
}

/// Gives what the guest rewrite wrote in `b` (the files it changed or created, their
/// directories, its own `/etc/p2c` and `/dev`) the modification times they have in `a`: the
/// rewrite ran at another moment for each container, and that is the only way they may differ.
fn same_rewrite_times(a: &Path, b: &Path, s: &MigrationSummary) {
    use std::os::unix::fs::MetadataExt;
    let mut touched: Vec<PathBuf> = Vec::new();
    for c in &s.guest_changes {
        let mut p = PathBuf::from(c.path.trim_start_matches('/'));
        loop {
            touched.push(p.clone());
            if !p.pop() || p.as_os_str().is_empty() {
                break;
            }
        }
    }
    for own in ["etc/p2c", "dev"] {
        for p in p2c_tests::fixtures::walk_tree(&b.join(own)).unwrap() {
            touched.push(Path::new(own).join(p));
        }
    }
    for rel in touched {
        let (Ok(ma), Ok(_)) =
            (std::fs::symlink_metadata(a.join(&rel)), std::fs::symlink_metadata(b.join(&rel)))
        else {
            continue;
        };
        let ts = |sec: i64, nsec: i64| rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
        let times = rustix::fs::Timestamps {
            last_access: ts(ma.atime(), ma.atime_nsec()),
            last_modification: ts(ma.mtime(), ma.mtime_nsec()),
        };
        rustix::fs::utimensat(rustix::fs::CWD, b.join(&rel), &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .unwrap();
    }
}

/// `text` without its comment lines (they name the CTID and the time).
fn settings(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundle_builds_the_container_an_online_move_builds() {
    require_root!();
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    // A server (network config, hostname, resolv.conf...) holding every case of file.
    p2c_demo::build_sample(&src).unwrap();
    build_every_case_tree(&src).unwrap();
    let node = Node::start().await.unwrap();

    // Online: agent, migrate with cutover into CT 101.
    let agent = Agent::start(&node, "web01", &src).await.unwrap();
    let online = node.migrate(&migrate_opts("web01", 101)).await.unwrap();
    assert_eq!(online.state, MigrationState::Done, "online move failed: {:?}", online.error);
    agent.stop().await;

    // Air-gapped: export the same server, import the bundle into CT 102.
    let media = w.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let bundle = media.join("web01.p2cb");
    let exported = export_tree(&src, "web01", &bundle).await;
    assert!(exported.trailer.objects > 50, "{:?}", exported.trailer);
    p2c_proto::bundle::verify(&bundle, true, &mut |_| {}).unwrap();
    let imported = node.import(&import_req(&bundle, 102)).await.unwrap();
    assert_eq!(imported.state, MigrationState::Done, "import failed: {:?}", imported.error);
    assert_eq!(imported.agent, "web01");
    assert!(imported.verify.as_ref().is_some_and(|v| v.ok), "verify: {:?}", imported.verify);

    // The same assessment...
    let (ro, ri) = (online.report.as_ref().unwrap(), imported.report.as_ref().unwrap());
    assert_eq!(findings(ro, 101), findings(ri, 102));
    // ... the same entries not carried (sockets), the same guest rewrite...
    assert_eq!(skipped(&online), skipped(&imported));
    assert!(!skipped(&imported).is_empty());
    let changes = |s: &MigrationSummary| {
        let mut v: Vec<(String, String)> =
            s.guest_changes.iter().map(|c| (c.path.clone(), c.action.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(changes(&online), changes(&imported));
    // ... the same tree, path by path, rewrites included: the rewrite's own files differ only
    // in when it wrote them, which is made equal first...
    same_rewrite_times(&node.tree(101), &node.tree(102), &imported);
    let diffs = compare_trees(&node.tree(101), &node.tree(102), &CompareOptions::default());
    assert!(diffs.is_empty(), "{} difference(s):\n{}", diffs.len(), {
        diffs.iter().take(50).map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
    });
    // ... and the same config but for the lines naming the CTID and the time.
    let (ca, cb) =
        (std::fs::read_to_string(node.conf(101)).unwrap(), std::fs::read_to_string(node.conf(102)).unwrap());
    assert_eq!(settings(&ca), settings(&cb));
    assert!(cb.contains("IP_ADDRESS=\"192.0.2.10 2001:db8::10 192.0.2.11 198.51.100.7\""), "{cb}");
    // Chunks the node already held (CT 101's) were copied on the node, not read from the bundle.
    let pass = imported.passes.last().unwrap();
    assert!(pass.local_bytes > 0 && pass.wire_bytes < pass.local_bytes, "{pass:?}");

    // `p2c verify` agrees after the fact, and `p2c status` lists the import like a migration.
    let mut admin = node.admin().await.unwrap();
    let v = admin.verify(p2c_proto::v1::CtidRef { ctid: 102 }).await.unwrap().into_inner();
    let v: p2c_common::migration::VerifySummary = serde_json::from_slice(&v.json).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(node.status_of(102).await.unwrap().state, MigrationState::Done);
}

/// A source with enough data that a paced export takes a few seconds.
fn slow_source(root: &Path) {
    p2c_tests::sources::server_tree(root, "export-resume", 48, 256 * 1024).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_export_continues_to_the_same_bundle() {
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    slow_source(&src);
    let out = w.path().join("web01.p2cb");
    let args = |out: &Path| -> Vec<String> {
        ["export", "--root", &src.display().to_string(), "--facts", "tree", "--name", "web01", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.display().to_string()])
            .collect()
    };
    // The real binary, paced to ~2 MiB/s, killed (SIGKILL) part way.
    let mut child = Command::new(bin("p2c-agent").unwrap())
        .args(args(&out))
        .args(["--bwlimit", "2M"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the export to write 3 MiB", Duration::from_secs(60), || async {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 3 << 20)
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "the export finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::fs::read(&out).unwrap();

    // What is left is refused as incomplete, with the way out.
    let v = Command::new(bin("p2c").unwrap()).args(["bundle", "verify"]).arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success(), "an interrupted bundle verified");
    assert!(
        (err.contains("is truncated") || err.contains("is incomplete"))
            && err.contains("run the export again")
            || err.contains("run it again with the same --out"),
        "{err}"
    );

    // Run again: it keeps what is complete and finishes.
    let again = Command::new(bin("p2c-agent").unwrap()).args(args(&out)).arg("--json").output().unwrap();
    assert!(again.status.success(), "resumed export failed: {}", String::from_utf8_lossy(&again.stderr));
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let kept = report["resumed_at"].as_u64().expect("the export says where it resumed") as usize;
    assert!(kept > 1 << 20, "only {kept} bytes kept of {}", killed.len());
    let done = std::fs::read(&out).unwrap();
    assert_eq!(done[..kept], killed[..kept], "the kept part of the bundle was rewritten");
    let v = Command::new(bin("p2c-agent").unwrap()).args(["export", "--verify"]).arg(&out).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // The same content as an export that was never interrupted.
    let whole = w.path().join("whole.p2cb");
    let once = Command::new(bin("p2c-agent").unwrap()).args(args(&whole)).output().unwrap();
    assert!(once.status.success(), "{}", String::from_utf8_lossy(&once.stderr));
    let (a, b) = (contents(&out).unwrap(), contents(&whole).unwrap());
    assert_eq!(a.header, b.header);
    // The inventory is the one taken when the export started; what may differ from a later
    // one is the live usage of the host's file systems (a tree's facts take mounts from the
    // host), which the writing of the bundles changed meanwhile.
    let usage_free = |mut v: serde_json::Value| {
        for m in v["mounts"].as_array_mut().into_iter().flatten() {
            m["used_bytes"] = 0.into();
            m["inodes_used"] = 0.into();
        }
        v
    };
    assert_eq!(usage_free(a.inventory.clone()), usage_free(b.inventory.clone()));
    assert_eq!(a.scan, b.scan);
    assert_eq!(a.problems, b.problems);
    assert_eq!(a.entries.len(), b.entries.len());
    for (x, y) in a.entries.iter().zip(&b.entries) {
        assert_eq!(x, y, "the resumed bundle's entry differs from the uninterrupted one's");
    }
    assert!(a.chunks == b.chunks, "the resumed bundle holds other chunks than an uninterrupted one");
}

/// Nothing of CT `ctid` anywhere on the node: no private area, no config, no record.
async fn assert_nothing_left(node: &Node, ctid: u32) {
    assert!(!node.private(ctid).exists(), "{} was created", node.private(ctid).display());
    assert!(!node.conf(ctid).exists(), "{} was created", node.conf(ctid).display());
    assert!(node.status().await.unwrap().iter().all(|s| s.ctid != ctid), "`p2c status` lists CT {ctid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_bundle_is_refused_and_leaves_nothing() {
    require_root!();
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    p2c_tests::sources::server_tree(&src, "damaged", 8, 200 * 1024).unwrap();
    let good = w.path().join("good.p2cb");
    export_tree(&src, "web02", &good).await;
    let size = std::fs::metadata(&good).unwrap().len() as usize;
    let flipped = w.path().join("flipped.p2cb");
    flipped_copy(&good, &flipped, size / 2).unwrap();
    let short = w.path().join("short.p2cb");
    truncated_copy(&good, &short, size * 2 / 3).unwrap();
    let node = Node::start().await.unwrap();

    for (ctid, bad, expect) in [(111, &flipped, "is corrupted"), (112, &short, "is truncated")] {
        // `p2c bundle verify` names the problem and where it is.
        let v = Command::new(bin("p2c").unwrap()).args(["bundle", "verify"]).arg(bad).output().unwrap();
        let err = String::from_utf8_lossy(&v.stderr);
        assert!(!v.status.success(), "{} verified", bad.display());
        assert!(err.contains(expect) && err.contains("at byte"), "{err}");
        // `p2c import` through the real CLI refuses it with the same words...
        let out = Command::new(bin("p2c").unwrap())
            .arg("--state-dir")
            .arg(node.state_dir())
            .args(["import", &bad.display().to_string(), "--ctid", &ctid.to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "CT {ctid}: a damaged bundle was imported");
        assert!(err.contains(expect), "CT {ctid}: {err}");
        // ... before anything on the node changed.
        assert_nothing_left(&node, ctid).await;
    }

    // The good bundle still imports into one of those CTIDs.
    let s = node.import(&import_req(&good, 111)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_bundle_is_refused_by_the_receive_path() {
    require_root!();
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let node = Node::start().await.unwrap();
    let canary = node.dir.path().join("vz/outside");
    std::fs::create_dir_all(&canary).unwrap();
    let data = b"an agent-controlled file\n";
    let bundle = w.path().join("hostile.p2cb");
    handmade(
        &bundle,
        "hostile",
        &minimal_inventory("hostile"),
        vec![dir(b"", 0o755), file(b"../outside/escape", 0o644, data)],
        &[data],
    )
    .unwrap();
    // Well framed: the framing alone does not judge entries...
    p2c_proto::bundle::verify(&bundle, false, &mut |_| {}).unwrap();
    // ... `p2c bundle verify` does,
    let v = Command::new(bin("p2c").unwrap()).args(["bundle", "verify"]).arg(&bundle).output().unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success() && err.contains("has an empty, '.' or '..' component"), "{err}");
    // ... and so does the receive path, as it judges an agent's pass.
    let s = node.import(&import_req(&bundle, 120)).await.unwrap();
    let error = s.error.clone().unwrap_or_default();
    assert_eq!(s.state, MigrationState::Failed, "{s:?}");
    assert!(
        error.contains("copy pass 0 failed: the bundle is invalid")
            && error.contains("path ../outside/escape has an empty, '.' or '..' component"),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 0, "something was written outside the container");
    let escaped: Vec<PathBuf> =
        [node.dir.path().join("vz/escape"), node.dir.path().join("vz/private/escape")]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
    // What the refused pass left is the container's own, and discardable.
    let mut admin = node.admin().await.unwrap();
    admin.discard(p2c_proto::v1::CtidRef { ctid: 120 }).await.unwrap();
    assert_nothing_left(&node, 120).await;
}
