//! A compromised source server with a valid certificate: whatever its agent sends, the
//! controller writes nothing outside that migration's private area, the migration fails with
//! an error naming the problem, and the controller keeps serving (the security model).
//!
//! Every case runs a real migration (`p2c migrate --cutover` through the admin API) against a
//! [`FakeAgent`] whose copy pass is scripted. Around each case the whole node directory is
//! snapshotted, except the store and that migration's own private area and pass manifests,
//! and must come out byte-for-byte unchanged; a canary directory next to the private areas
//! (`vz/outside`) is where planted symlinks and `..` paths point.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2c_common::migration::{MigrationState, MigrationSummary};
use p2c_proto::v1;
use p2c_tests::fake_agent::{
    self, FakeAgent, FakeEntry, Pass, Step, TransferOutcome, batch, char_device, chunk, dir, done, file,
    hardlink, symlink, unique_data,
};
use p2c_tests::node::{Agent, Node, migrate_opts, summary_of};
use p2c_tests::snapshot::Snapshot;
use p2c_tests::{require_root, trace_init};

/// What a canary file holds; any change to it is an escape.
const CANARY: &[u8] = b"node data, not the container's\n";

/// A node with a canary directory outside every private area.
struct Bench {
    node: Node,
    /// `<node>/vz/outside`: `../../outside` seen from `vz/private/<ctid>`.
    canary: PathBuf,
}

impl Bench {
    async fn start() -> Bench {
        trace_init();
        let node = Node::start().await.expect("controller starts");
        let canary = node.dir.path().join("vz/outside");
        std::fs::create_dir_all(canary.join("sub")).unwrap();
        std::fs::write(canary.join("file"), CANARY).unwrap();
        std::fs::write(canary.join("secret"), CANARY).unwrap();
        Bench { node, canary }
    }

    /// Everything under the node's directory except what migration `ctid` may change: its
    /// private area, its pass manifests, its config file and the store.
    fn snapshot(&self, ctid: u32) -> Snapshot {
        let allowed: Vec<PathBuf> = vec![
            PathBuf::from(format!("vz/private/{ctid}")),
            PathBuf::from(format!("state/manifests/{ctid}")),
            PathBuf::from(format!("etc/vz/conf/{ctid}.conf")),
        ];
        let skip = move |p: &Path| {
            allowed.iter().any(|a| p == a)
                || (p.parent() == Some(Path::new("state"))
                    && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("state.db")))
        };
        Snapshot::take(self.node.dir.path(), &skip).expect("snapshot of the node directory")
    }

    fn assert_unchanged_outside(&self, before: &Snapshot, ctid: u32) {
        // Directories a node's first migration creates (nothing agent-named).
        let new_dirs = [
            Path::new("vz/private"),
            Path::new("state/manifests"),
            Path::new("etc"),
            Path::new("etc/vz"),
            Path::new("etc/vz/conf"),
        ];
        before.assert_unchanged(
            &self.snapshot(ctid),
            &new_dirs,
            &format!("the node outside CT {ctid}'s private area"),
        );
        for name in ["file", "secret"] {
            assert_eq!(std::fs::read(self.canary.join(name)).unwrap(), CANARY, "canary {name} changed");
        }
        let mut names: Vec<String> = std::fs::read_dir(&self.canary)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["file", "secret", "sub"], "the canary directory gained or lost entries");
        assert_eq!(std::fs::read_dir(self.canary.join("sub")).unwrap().count(), 0);
    }

    /// Starts `p2c migrate NAME --ctid N --cutover` and returns its event stream.
    async fn start_migration(&self, agent: &str, ctid: u32) -> tonic::Streaming<v1::MigrateEvent> {
        let opts = migrate_opts(agent, ctid);
        let mut admin = self.node.admin().await.expect("admin socket");
        admin
            .migrate(v1::JsonRequest { json: serde_json::to_vec(&opts).unwrap() })
            .await
            .unwrap_or_else(|s| panic!("migrate CT {ctid} refused: {}", s.message()))
            .into_inner()
    }

    /// One hostile pass: starts a migration of `agent` into `ctid`, sends the script made
    /// from its `StartPass`, and returns what the transfer and the migration ended with.
    async fn hostile_pass<S: Into<Step>>(
        &self,
        agent: &FakeAgent,
        ctid: u32,
        script: impl FnOnce(&Pass) -> Vec<S>,
    ) -> (TransferOutcome, MigrationSummary) {
        let mut events = self.start_migration(&agent.name, ctid).await;
        let pass = agent.next_pass(Duration::from_secs(60)).await.expect("the controller starts a pass");
        let outcome = agent.transfer_steps(script(&pass).into_iter().map(Into::into).collect()).await;
        // A protocol violation is final: the controller must end the migration, not ask the
        // agent for the pass again as if the link had dropped.
        let summary = tokio::select! {
            s = summary_of(&mut events) => s.expect("migration summary"),
            p = agent.next_pass(Duration::from_secs(60)) => match p {
                Ok(p) => panic!(
                    "CT {ctid}: the controller asked for pass {} again after a protocol violation",
                    p.start.pass
                ),
                Err(e) => panic!("CT {ctid}: the migration did not end within 60s after a hostile pass: {e}"),
            },
        };
        assert!(agent.pending_pass().await.is_none(), "CT {ctid}: the controller retried the pass");
        (outcome, summary)
    }

    /// Runs a hostile case and checks what every case must show.
    async fn refused<S: Into<Step>>(
        &self,
        agent: &FakeAgent,
        ctid: u32,
        expect: &str,
        script: impl FnOnce(&Pass) -> Vec<S>,
    ) -> MigrationSummary {
        let before = self.snapshot(ctid);
        let (outcome, summary) = self.hostile_pass(agent, ctid, script).await;
        let error = summary.error.clone().unwrap_or_default();
        eprintln!("CT {ctid}: transfer: {}; migration: {error}", outcome.error());
        assert!(outcome.failed(), "CT {ctid}: the hostile transfer was accepted: {outcome:?}");
        assert_eq!(summary.state, MigrationState::Failed, "CT {ctid}: {summary:?}");
        assert!(error.contains(expect), "CT {ctid}: the error does not say {expect:?}: {error}");
        assert!(error.contains("copy pass"), "CT {ctid}: the error does not say which step failed: {error}");
        self.assert_unchanged_outside(&before, ctid);
        summary
    }

    /// A real agent still migrates a small tree: the hostile runs left the controller serving.
    async fn assert_still_serving(&self, ctid: u32) {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("etc")).unwrap();
        std::fs::write(src.path().join("etc/hostname"), "after-hostile\n").unwrap();
        std::fs::write(src.path().join("etc/motd"), unique_data("motd")).unwrap();
        let name = format!("real{ctid}");
        let agent = Agent::start(&self.node, &name, src.path()).await.expect("a real agent connects");
        let s = self.node.migrate(&migrate_opts(&name, ctid)).await.expect("migration summary");
        assert_eq!(s.state, MigrationState::Done, "the controller stopped serving: {:?}", s.error);
        assert_eq!(
            std::fs::read(self.node.tree(ctid).join("etc/motd")).unwrap(),
            std::fs::read(src.path().join("etc/motd")).unwrap()
        );
        agent.stop().await;
    }
}

fn root_dir() -> v1::Entry {
    dir(b"", 0o755)
}

/// The root and `entries` in one batch, then (once the controller asked for chunks) the
/// chunks `datas` (indexes 0, 1...), then Done.
fn script(pass: &Pass, entries: Vec<v1::Entry>, datas: &[&[u8]]) -> Vec<Step> {
    let mut all = vec![root_dir()];
    all.extend(entries);
    let mut steps: Vec<Step> = vec![pass.open().into(), batch(0, all).into()];
    if !datas.is_empty() {
        steps.push(Step::AwaitNeed);
    }
    for (i, d) in datas.iter().enumerate() {
        steps.push(chunk(0, i as u32, d, false).into());
    }
    steps.push(done().into());
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_paths_are_refused() {
    require_root!();
    let b = Bench::start().await;
    let agent = FakeAgent::enroll(&b.node, "hostile-paths").await.unwrap();
    let data = unique_data("escape");
    let d = &data[..];

    b.refused(&agent, 201, "path ../escape has an empty, '.' or '..' component", |p| {
        script(p, vec![file(b"../escape", 0o644, d)], &[d])
    })
    .await;
    b.refused(&agent, 202, "path /etc/passwd is absolute", |p| {
        script(p, vec![file(b"/etc/passwd", 0o644, d)], &[d])
    })
    .await;
    b.refused(&agent, 203, "contains a NUL byte", |p| script(p, vec![dir(b"etc\0../../x", 0o755)], &[]))
        .await;
    let long = [b"d/".as_slice(), &[b'n'; 256]].concat();
    b.refused(&agent, 204, "has a component longer than 255 bytes", |p| {
        script(p, vec![dir(b"d", 0o755), file(&long, 0o644, d)], &[d])
    })
    .await;
    b.refused(&agent, 205, "/a/b: its parent directory was not sent first", |p| {
        script(p, vec![file(b"a/b", 0o644, d)], &[d])
    })
    .await;
    b.refused(&agent, 206, "/etc is out of walk order or repeated", |p| {
        script(p, vec![dir(b"etc", 0o755), dir(b"etc", 0o700)], &[])
    })
    .await;
    b.refused(&agent, 207, "/etc is out of walk order or repeated", |p| {
        script(p, vec![dir(b"usr", 0o755), dir(b"etc", 0o755)], &[])
    })
    .await;
    // The same path in two batches, the second time as a symlink out of the tree.
    b.refused(&agent, 208, "/etc is out of walk order or repeated", |p| {
        vec![
            p.open(),
            batch(0, vec![root_dir(), dir(b"etc", 0o755)]),
            batch(1, vec![symlink(b"etc", b"../../outside")]),
            done(),
        ]
    })
    .await;
    // A bad entry, then nothing: no Done, the stream left open. The controller must not
    // wait for the agent forever.
    b.refused(&agent, 209, "path ../escape has an empty", |p| {
        vec![p.open(), batch(0, vec![root_dir(), dir(b"../escape", 0o755)])]
    })
    .await;
    // A listing of changes nobody offered (a first pass has no base), and one that names
    // directories while claiming to walk everything.
    b.refused(&agent, 210, "changes since pass 7 were not offered", |p| {
        let mut open = p.open();
        if let Some(v1::transfer_up::Msg::Open(o)) = open.msg.as_mut() {
            o.changes_since = Some(7);
            o.changed_dirs = vec![b"etc".to_vec()];
        }
        vec![open, batch(0, vec![root_dir()]), done()]
    })
    .await;
    b.refused(&agent, 211, "changed directories sent for a pass that walks everything", |p| {
        let mut open = p.open();
        if let Some(v1::transfer_up::Msg::Open(o)) = open.msg.as_mut() {
            o.new_subtrees = vec![b"../../outside".to_vec()];
        }
        vec![open, batch(0, vec![root_dir()]), done()]
    })
    .await;
    b.assert_still_serving(291).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_symlinks_are_never_followed() {
    require_root!();
    let b = Bench::start().await;
    let agent = FakeAgent::enroll(&b.node, "hostile-links").await.unwrap();
    let data = unique_data("owned");
    let d = &data[..];
    let canary = b.canary.as_os_str().as_encoded_bytes().to_vec();

    // A relative symlink to the canary, then a file and a directory through it.
    b.refused(&agent, 211, "/link/owned: its parent /link is a symlink", |p| {
        script(p, vec![symlink(b"link", b"../../outside"), file(b"link/owned", 0o644, d)], &[d])
    })
    .await;
    b.refused(&agent, 212, "/link/dir: its parent /link is a symlink", |p| {
        script(p, vec![symlink(b"link", b"../../outside"), dir(b"link/dir", 0o755)], &[])
    })
    .await;
    // An absolute symlink to the canary.
    b.refused(&agent, 213, "/link/owned: its parent /link is a symlink", |p| {
        script(p, vec![symlink(b"link", &canary), file(b"link/owned", 0o644, d)], &[d])
    })
    .await;
    // Up and out of the node's private root.
    b.refused(&agent, 214, "/up/x: its parent /up is a symlink", |p| {
        script(p, vec![symlink(b"up", b"../../.."), file(b"up/x", 0o644, d)], &[d])
    })
    .await;
    // Deeper: a real directory, a symlink inside it, a file below the symlink.
    b.refused(&agent, 215, "/d/l/owned: its parent /d/l is a symlink", |p| {
        script(
            p,
            vec![dir(b"d", 0o755), symlink(b"d/l", b"../../../outside/sub"), file(b"d/l/owned", 0o644, d)],
            &[d],
        )
    })
    .await;
    // Hard links: out of the tree by `..`, to nothing, and through a planted symlink.
    b.refused(&agent, 216, "path ../../outside/file has an empty, '.' or '..' component", |p| {
        script(p, vec![hardlink(b"h", b"../../outside/file")], &[])
    })
    .await;
    b.refused(&agent, 217, "/h: hard link to /never-sent, which was not sent", |p| {
        script(p, vec![hardlink(b"h", b"never-sent")], &[])
    })
    .await;
    b.refused(&agent, 219, "/link2: hard link to /link/secret, beneath /link, which is a symlink", |p| {
        script(p, vec![symlink(b"link", b"../../outside"), hardlink(b"link2", b"link/secret")], &[])
    })
    .await;
    // What the refused runs left in their own areas: the planted links themselves, at most.
    for ctid in [211, 213, 214] {
        let private = b.node.tree(ctid);
        assert!(!private.join("owned").exists() && !private.join("x").exists());
    }
    b.assert_still_serving(292).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_chunks_are_refused() {
    require_root!();
    let b = Bench::start().await;
    let agent = FakeAgent::enroll(&b.node, "hostile-chunks").await.unwrap();

    // A chunk nobody asked for, sent before the one that was.
    let data = unique_data("requested");
    b.refused(&agent, 221, "chunk 0/7 was not requested", |p| {
        vec![
            p.open().into(),
            batch(0, vec![root_dir(), file(b"f", 0o644, &data)]).into(),
            Step::AwaitNeed,
            chunk(0, 7, b"unrequested bytes", false).into(),
            chunk(0, 0, &data, false).into(),
            done().into(),
        ]
    })
    .await;
    // A chunk nobody asked for in a pass that needs none.
    b.refused(&agent, 222, "chunk 0/0 was not requested", |p| {
        vec![
            p.open(),
            batch(0, vec![root_dir(), dir(b"etc", 0o755)]),
            chunk(0, 0, b"surprise", false),
            done(),
        ]
    })
    .await;
    // Data that is not what the chunk list says.
    let data = unique_data("announced");
    b.refused(&agent, 223, "chunk 0/0 does not match its hash", |p| {
        script(p, vec![file(b"f", 0o644, &data)], &[&unique_data("something else")])
    })
    .await;
    // A zstd frame that inflates far past the chunk's announced length.
    let data = unique_data("small");
    let bomb = vec![0u8; 64 << 20];
    b.refused(&agent, 224, "chunk 0/0 does not decompress to its announced", |p| {
        vec![
            p.open().into(),
            batch(0, vec![root_dir(), file(b"f", 0o644, &data)]).into(),
            Step::AwaitNeed,
            chunk(0, 0, &bomb, true).into(),
            done().into(),
        ]
    })
    .await;
    // A content digest that does not match the chunk list: in one entry, and across the
    // segments of a large file (only checked once the last segment is in).
    let data = unique_data("digest");
    b.refused(&agent, 225, "content digest does not match the chunk list", |p| {
        let mut e = file(b"f", 0o644, &data);
        e.content_digest = vec![7; 32];
        script(p, vec![e], &[&data])
    })
    .await;
    let (one, two) = (unique_data("segment one"), unique_data("segment two"));
    b.refused(&agent, 226, "/f: content digest does not match its chunks", |p| {
        let whole = [one.clone(), two.clone()].concat();
        let mut first = file(b"f", 0o644, &whole);
        first.chunks = vec![v1::ChunkRef {
            hash: blake3::hash(&one).as_bytes().to_vec(),
            offset: 0,
            len: one.len() as u32,
        }];
        first.content_digest = vec![9; 32];
        first.more = true;
        let mut second = first.clone();
        second.segment = 1;
        second.more = false;
        second.chunks = vec![v1::ChunkRef {
            hash: blake3::hash(&two).as_bytes().to_vec(),
            offset: one.len() as u64,
            len: two.len() as u32,
        }];
        script(p, vec![first, second], &[&one, &two])
    })
    .await;
    // Nothing of the refused files was committed in their own areas either.
    for ctid in [221, 223, 224, 225, 226] {
        assert!(!b.node.tree(ctid).join("f").exists(), "CT {ctid}: a refused file was committed");
    }
    b.assert_still_serving(293).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_messages_are_refused() {
    require_root!();
    let b = Bench::start().await;
    let agent = FakeAgent::enroll(&b.node, "hostile-size").await.unwrap();
    let big = vec![0x5a_u8; p2c_common::manifest::limits::MAX_MESSAGE + 1024];
    b.refused(&agent, 231, "message length too large", |p| {
        vec![p.open(), batch(0, vec![root_dir()]), chunk(0, 0, &big, false), done()]
    })
    .await;
    b.assert_still_serving(294).await;
}

/// Device nodes and setuid files are part of a server: they are carried, inside the tree, and
/// the node's private root keeps unprivileged users of the node away from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_and_setuid_files_stay_inside_the_tree() {
    require_root!();
    let b = Bench::start().await;
    let agent = FakeAgent::enroll(&b.node, "special").await.unwrap();
    let ctid = 241;
    let su = unique_data("setuid binary");
    let tree = fake_agent::tree(vec![
        (root_dir(), Vec::new()),
        (dir(b"bin", 0o755), Vec::new()),
        (file(b"bin/su", 0o4755, &su), su.clone()),
        (dir(b"dev", 0o755), Vec::new()),
        (char_device(b"dev/mem", 0o666, 1, 1), Vec::new()),
        (dir(b"etc", 0o755), Vec::new()),
    ]);
    let before = b.snapshot(ctid);
    let summary = serve_migration(&b, &agent, ctid, &tree).await;
    assert_eq!(summary.state, MigrationState::Done, "{:?}", summary.error);
    b.assert_unchanged_outside(&before, ctid);

    let private = b.node.tree(ctid);
    let su_md = std::fs::symlink_metadata(private.join("bin/su")).unwrap();
    assert_eq!(su_md.mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::read(private.join("bin/su")).unwrap(), su);
    let mem = std::fs::symlink_metadata(private.join("dev/mem")).unwrap();
    assert!(mem.file_type().is_char_device());
    assert_eq!((rustix::fs::major(mem.rdev()), rustix::fs::minor(mem.rdev())), (1, 1));
    // Every device node and setuid file under the node's directory (CT 0: nothing left out)
    // is inside this container's tree.
    for (p, o) in b.snapshot(0).0 {
        let ft = o.mode & 0o170000;
        let special = ft == 0o020000 || ft == 0o060000 || (ft == 0o100000 && o.mode & 0o6000 != 0);
        if special {
            assert!(
                p.starts_with(format!("vz/private/{ctid}")),
                "{} is special and outside the tree",
                p.display()
            );
        }
    }
    // Nobody but root may walk into a private area.
    let mode = std::fs::metadata(b.node.dir.path().join("vz/private")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "vz/private is open to other users of the node ({mode:o})");
}

/// Serves every pass of a migration with an honest tree until it ends.
async fn serve_migration(b: &Bench, agent: &FakeAgent, ctid: u32, tree: &[FakeEntry]) -> MigrationSummary {
    let mut events = b.start_migration(&agent.name, ctid).await;
    let serve = async {
        loop {
            let Ok(pass) = agent.next_pass(Duration::from_secs(120)).await else { return };
            agent.serve(&pass, tree).await.expect("honest pass");
        }
    };
    tokio::select! {
        s = summary_of(&mut events) => s.expect("migration summary"),
        _ = serve => panic!("CT {ctid}: the agent stopped getting passes but the migration did not end"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_are_bound_to_their_agent_and_pass() {
    require_root!();
    let b = Bench::start().await;
    let victim = FakeAgent::enroll(&b.node, "victim").await.unwrap();
    let attacker = FakeAgent::enroll(&b.node, "attacker").await.unwrap();
    let ctid = 251;
    let motd = unique_data("victim's motd");
    let tree = fake_agent::tree(vec![
        (root_dir(), Vec::new()),
        (dir(b"etc", 0o755), Vec::new()),
        (file(b"etc/motd", 0o644, &motd), motd.clone()),
    ]);
    let before = b.snapshot(ctid);
    let mut events = b.start_migration(&victim.name, ctid).await;
    let pass = victim.next_pass(Duration::from_secs(60)).await.unwrap();

    // The attacker opens the victim's pending pass.
    let evil = unique_data("attacker");
    let out = attacker
        .transfer(vec![
            pass.open(),
            batch(0, vec![root_dir(), dir(b"etc", 0o755), file(b"etc/motd", 0o644, &evil)]),
            chunk(0, 2, &evil, false),
            done(),
        ])
        .await;
    let status = out.status.as_ref().expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("belongs to another agent"), "{status:?}");

    // The attacker opens a transfer nobody expects, and one of its own with a wrong pass.
    let out = attacker.transfer(vec![up_open("ct999", 0), done()]).await;
    let status = out.status.as_ref().expect("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no pass of that migration is expected now"), "{status:?}");
    let out = attacker.transfer(vec![done()]).await;
    let status = out.status.as_ref().expect("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("must start with Open"), "{status:?}");
    let out = victim.transfer(vec![up_open(&pass.start.migration_id, pass.start.pass + 5), done()]).await;
    let status = out.status.as_ref().expect("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&format!("pass {} is expected", pass.start.pass)), "{status:?}");

    // The victim's migration is unaffected: the pending pass is still its to run.
    let r = victim.serve(&pass, &tree).await.expect("victim's pass");
    assert!(r.ok, "{}", r.message);
    let serve = async {
        while let Ok(pass) = victim.next_pass(Duration::from_secs(120)).await {
            victim.serve(&pass, &tree).await.expect("victim's pass");
        }
    };
    let summary = tokio::select! {
        s = summary_of(&mut events) => s.expect("summary"),
        _ = serve => panic!("the victim's migration did not end"),
    };
    assert_eq!(summary.state, MigrationState::Done, "{:?}", summary.error);
    assert_eq!(std::fs::read(b.node.tree(ctid).join("etc/motd")).unwrap(), motd);
    b.assert_unchanged_outside(&before, ctid);
    // The attacker got no pass of its own out of this.
    assert!(attacker.pending_pass().await.is_none());
}

fn up_open(migration_id: &str, pass: u32) -> v1::TransferUp {
    fake_agent::up(v1::transfer_up::Msg::Open(v1::OpenTransfer {
        migration_id: migration_id.into(),
        pass,
        ..Default::default()
    }))
}

/// Revocation cuts an agent off everywhere, including a copy pass it is in the middle of:
/// nothing it sends afterwards reaches the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_ends_a_running_transfer() {
    require_root!();
    let b = Bench::start().await;
    let agent = FakeAgent::enroll(&b.node, "revoked-mid-pass").await.unwrap();
    let ctid = 261;
    let before = b.snapshot(ctid);
    let _events = b.start_migration(&agent.name, ctid).await;
    let pass = agent.next_pass(Duration::from_secs(60)).await.unwrap();
    let (tx, mut inbound) = agent.open(&pass).await.unwrap();
    let data = unique_data("sent after revocation");
    tx.send(batch(0, vec![root_dir(), file(b"late", 0o644, &data)])).await.unwrap();
    let need = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.unwrap().unwrap();
    assert!(
        matches!(need, Some(v1::TransferDown { msg: Some(v1::transfer_down::Msg::Need(_)) })),
        "{need:?}"
    );

    let mut admin = b.node.admin().await.unwrap();
    admin.revoke_agent(v1::AgentRef { name: agent.name.clone() }).await.unwrap();
    // The transfer ends within a few seconds...
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "ended".to_string(),
                Err(s) => return format!("{:?}: {}", s.code(), s.message()),
            }
        }
    })
    .await
    .expect("the revoked agent's transfer is still open 5s after the revocation");
    eprintln!("transfer after revocation: {end}");
    // ...and what the agent still sends is not written.
    let _ = tx.send(chunk(0, 0, &data, false)).await;
    let _ = tx.send(done()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.node.tree(ctid).join("late").exists(), "a revoked agent's file was committed");
    b.assert_unchanged_outside(&before, ctid);
}
