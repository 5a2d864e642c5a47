//! Issue 4: quotas end to end. A source with two ext4 partitions beneath its root, each
//! with its own user and group limits (quota files written by quota-tools, grace times
//! set), is migrated with `--quota-partition /home`:
//!
//! - `--layout ploop`: the config carries DISKSPACE/DISKINODES/QUOTAUGIDLIMIT/QUOTATIME,
//!   the image's own quota files hold exactly /home's limits, the summary says what was
//!   dropped from /srv, and a quota-capable kernel booted on the image stops a carried
//!   user at the block hard limit;
//! - simfs on a node whose container root is btrfs: the private area is a subvolume with
//!   a qgroup limit that stops writes past DISKSPACE, and a source larger than the limit
//!   is refused while receiving, with what was copied kept.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use p2c_agent::inventory::quotafile::{DiskQuota, QuotaType, read_quota_file};
use p2c_common::findings::Severity;
use p2c_common::migration::{MigrationState, MigrationSummary};
use p2c_controller::quota::ploop;
use p2c_tests::loopfs::{FsKind, LoopFs};
use p2c_tests::node::{Agent, Node, NodeOptions};
use p2c_tests::quota::{EnforceCheck, guest_prerequisites, run_quota_guest};
use p2c_tests::trees::random_bytes;
use p2c_tests::{require_root, trace_init};

use super::{assess, finding, p2c, read, sh, write};

const EDQUOT: i32 = 122;

/// `(id, block soft, block hard, inode soft, inode hard)` in 1 KiB blocks.
type Limit = (u32, u64, u64, u64, u64);

/// /home: three users, two groups (one with inode limits only); grace 3 days / 1 day.
const HOME_USERS: [Limit; 3] =
    [(2001, 3072, 4096, 100, 200), (2002, 8192, 10240, 0, 0), (2003, 1024, 2048, 50, 100)];
const HOME_GROUPS: [Limit; 2] = [(3001, 20480, 30720, 0, 0), (3002, 0, 0, 500, 1000)];
const HOME_GRACE: (u64, u64) = (3 * 86400, 86400);
/// /srv: its own limits, dropped by the move.
const SRV_USERS: [Limit; 2] = [(2001, 50000, 60000, 0, 0), (2004, 100, 200, 0, 0)];
const SRV_GROUPS: [Limit; 1] = [(3001, 70000, 80000, 0, 0)];
const SRV_GRACE: (u64, u64) = (7 * 86400, 7 * 86400);

/// A source server whose `/home` and `/srv` are ext4 partitions with quotas.
struct QuotaSource {
    _dir: tempfile::TempDir,
    root: PathBuf,
    // Unmounted before `_dir` goes.
    _home: LoopFs,
    _srv: LoopFs,
}

fn set_limits(mp: &Path, users: &[Limit], groups: &[Limit], grace: (u64, u64)) {
    let mp = mp.to_string_lossy();
    sh("quotacheck", &["-c", "-u", "-g", "-m", "-F", "vfsv1", &mp]);
    for (flag, limits) in [("-u", users), ("-g", groups)] {
        for (id, bs, bh, is, ih) in limits {
            let v = [id.to_string(), bs.to_string(), bh.to_string(), is.to_string(), ih.to_string()];
            sh("setquota", &[flag, "-F", "vfsv1", &v[0], &v[1], &v[2], &v[3], &v[4], &mp]);
        }
        sh("setquota", &["-t", flag, "-F", "vfsv1", &grace.0.to_string(), &grace.1.to_string(), &mp]);
    }
}

fn owned_file(path: &Path, len: usize, uid: u32, gid: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, random_bytes(&path.to_string_lossy(), len)).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn quota_source() -> QuotaSource {
    let dir = tempfile::Builder::new().prefix("p2c-e2e-quota-").tempdir().unwrap();
    let root = dir.path().join("root");
    write(
        &root,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    );
    write(&root, "etc/hostname", "files1\n");
    write(
        &root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nalice:x:2001:3001::/home/alice:/bin/sh\nbob:x:2002:3001::/home/bob:/bin/sh\n\
         carol:x:2003:3002::/home/carol:/bin/sh\ndave:x:2004:3002::/srv/dave:/bin/sh\n",
    );
    write(&root, "etc/group", "root:x:0:\ndevs:x:3001:\nops:x:3002:\n");
    write(&root, "etc/network/interfaces", "auto eth0\niface eth0 inet static\n\taddress 192.0.2.60/24\n");
    let home = LoopFs::new_at(FsKind::Ext4, 64 << 20, "usrquota,grpquota", &root.join("home")).unwrap();
    let srv = LoopFs::new_at(FsKind::Ext4, 64 << 20, "usrquota,grpquota", &root.join("srv")).unwrap();
    for (user, uid, gid) in [("alice", 2001, 3001), ("bob", 2002, 3001), ("carol", 2003, 3002)] {
        let d = root.join("home").join(user);
        owned_file(&d.join("notes.bin"), 256 << 10, uid, gid);
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
    }
    owned_file(&root.join("srv/dave/archive.bin"), 512 << 10, 2004, 3002);
    owned_file(&root.join("srv/shared/data.bin"), 512 << 10, 2001, 3001);
    set_limits(&root.join("home"), &HOME_USERS, &HOME_GROUPS, HOME_GRACE);
    set_limits(&root.join("srv"), &SRV_USERS, &SRV_GROUPS, SRV_GRACE);
    QuotaSource { _dir: dir, root, _home: home, _srv: srv }
}

/// A process started by a test in a mount namespace of its own, its pid in a file; killed
/// on drop.
struct Pinned(PathBuf);

impl Pinned {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The limits of a quota file's entries that have any, as [`Limit`]s.
fn limits_of(entries: &[DiskQuota]) -> Vec<Limit> {
    entries
        .iter()
        .filter(|q| q.block_soft | q.block_hard | q.inode_soft | q.inode_hard != 0)
        .map(|q| (q.id, q.block_soft, q.block_hard, q.inode_soft, q.inode_hard))
        .collect()
}

/// The report's quota-partition finding: a blocker while two partitions compete, the
/// carried and dropped counts once the operator picks /home.
async fn check_report(node: &Node, agent: &str) {
    let r = assess(&node.state_dir(), agent, &[]).await;
    let q = finding(&r, "quota-partition");
    assert_eq!(q.severity, Severity::Blocker, "{}", r.render());
    assert!(q.title.contains("2 partitions have quotas"), "{}", q.title);
    let r = assess(&node.state_dir(), agent, &["--quota-partition", "/home"]).await;
    let q = finding(&r, "quota-partition");
    assert_eq!(q.severity, Severity::Warning, "{}", r.render());
    assert_eq!(q.data["chosen"], "/home");
    assert_eq!(q.data["carried"], serde_json::json!({"users": 3, "groups": 2}));
    assert_eq!(q.data["dropped"], serde_json::json!({"users": 2, "groups": 1}));
    assert!(
        q.evidence
            .iter()
            .any(|e| e.starts_with("/home (") && e.ends_with("3 user and 2 group limit(s) — kept")),
        "{:#?}",
        q.evidence
    );
    assert!(
        q.evidence
            .iter()
            .any(|e| e.starts_with("/srv (") && e.ends_with("2 user and 1 group limit(s) — dropped")),
        "{:#?}",
        q.evidence
    );
}

fn dropped_warning(s: &MigrationSummary) {
    let w = "quotas of /srv (2 user and 1 group limits) are dropped: only /home keeps its quotas";
    assert!(s.warnings.iter().any(|x| x == w), "no `{w}` in {:#?}", s.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ploop_container_keeps_the_home_partitions_quotas() {
    require_root!();
    trace_init();
    let src = quota_source();
    let node = Node::start().await.unwrap();
    let agent = Agent::start_with_services(&node, "files1", &src.root).await.unwrap();
    check_report(&node, "files1").await;

    // While the image is mounted for receiving, something on the node starts a process in
    // a mount namespace of its own (a service with private mounts, a container): its copy
    // of the image's mount keeps the file system and its loop device up after p2c unmounts
    // it. The pre-cutover hook runs exactly then (the agent is on the node here).
    let pin = Pinned(src.root.join("pinned.pid"));
    let hook = format!(
        "setsid unshare --mount sleep 120 </dev/null >/dev/null 2>&1 & echo $! > {}",
        pin.0.display()
    );
    let t = Instant::now();
    let ctid = 151;
    let run = p2c(
        &node.state_dir(),
        &[
            "migrate",
            "files1",
            "--ctid",
            "151",
            "--quota-partition",
            "/home",
            "--layout",
            "ploop",
            // Legacy OpenVZ's raw image, which this test reads through a plain loop device.
            "--target",
            "openvz",
            "--pre-hook",
            &hook,
            "--cutover",
            "--json",
        ],
    )
    .await;
    assert!(pin.pid().is_some(), "the pre-cutover hook did not run");
    let s: MigrationSummary =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    assert_eq!((run.code, s.state), (0, MigrationState::Done), "{:?}", s.error);
    eprintln!("ploop migration in {:.1}s", t.elapsed().as_secs_f64());
    agent.stop().await;
    // `p2c verify` mounts the image again and agrees.
    let v = p2c(&node.state_dir(), &["verify", "151", "--json"]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    drop(pin);
    dropped_warning(&s);
    let outcome = s.quota.as_ref().expect("the summary says how quotas were applied");
    assert_eq!(outcome["method"], "ploop", "{outcome}");
    assert_eq!(
        (outcome["applied"].as_bool(), outcome["second_level_applied"].as_bool()),
        (Some(true), Some(true))
    );

    // The config: the container total, /home's grace, room for every uid and gid.
    let conf = p2c_controller::ctconf::parse(&std::fs::read_to_string(node.conf(ctid)).unwrap());
    assert_eq!(conf["VE_LAYOUT"], "ploop");
    let pair = |k: &str| -> (u64, u64) {
        let (a, b) = conf[k].split_once(':').unwrap_or_else(|| panic!("{k}={}", conf[k]));
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (ds, dh) = pair("DISKSPACE");
    let (is, ih) = pair("DISKINODES");
    assert!(ds <= dh && is <= ih, "{conf:?}");
    // Above what the source uses (2.3 MiB of files) and every carried hard limit.
    assert!(ds > 2400 && dh >= HOME_USERS.iter().chain(&HOME_GROUPS).map(|l| l.2).max().unwrap(), "{conf:?}");
    assert_eq!(conf["QUOTATIME"], HOME_GRACE.0.max(HOME_GRACE.1).to_string());
    // vzquota's ugid limit covers every uid and gid of both partitions' quota files.
    let ugid: u64 = conf["QUOTAUGIDLIMIT"].parse().unwrap();
    assert!(ugid >= 9, "QUOTAUGIDLIMIT {ugid}");

    // The image: sized from DISKSPACE, its quota files holding exactly /home's limits.
    let private = node.private(ctid);
    let descriptor = read(&ploop::image_dir(&private), ploop::DESCRIPTOR_FILE);
    let sectors = ploop::size_sectors(dh);
    assert!(descriptor.contains(&format!("<Disk_size>{sectors}</Disk_size>")), "{descriptor}");
    let image = ploop::image_path(&private);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), sectors * 512);
    let mnt = tempfile::tempdir().unwrap();
    // A loop device of its own, read-only: `mount -o loop` would reuse the device the
    // container's image may still be attached to (the pre-cutover hook pins a mount
    // namespace that holds it), and mounting that one again read-only is refused as busy.
    let dev = sh("losetup", &["--find", "--show", "--read-only", &image.to_string_lossy()]);
    let dev = dev.trim().to_string();
    sh("mount", &["-o", "ro,noload", &dev, &mnt.path().to_string_lossy()]);
    let users = read_quota_file(&mnt.path().join("aquota.user"), QuotaType::User);
    let groups = read_quota_file(&mnt.path().join("aquota.group"), QuotaType::Group);
    let alice =
        std::fs::metadata(mnt.path().join("home/alice/notes.bin")).map(|m| (m.uid(), m.gid(), m.len()));
    sh("umount", &[&mnt.path().to_string_lossy()]);
    sh("losetup", &["-d", &dev]);
    let (users, groups) = (users.unwrap(), groups.unwrap());
    assert_eq!(limits_of(&users.entries), HOME_USERS, "user limits in the image");
    assert_eq!(limits_of(&groups.entries), HOME_GROUPS, "group limits in the image");
    assert_eq!((users.block_grace, users.inode_grace), HOME_GRACE);
    assert_eq!((groups.block_grace, groups.inode_grace), HOME_GRACE);
    // quotacheck counted what the container's users own.
    let used = |id: u32| users.entries.iter().find(|q| q.id == id).map(|q| q.cur_space);
    assert!(used(2001).is_some_and(|b| b >= 256 << 10), "{:?}", users.entries);
    assert_eq!(alice.unwrap(), (2001, 3001, 256 << 10));

    // A kernel with ext4 quota support enforces them: alice (4 MiB hard) cannot write 8 MiB.
    let (busybox, kernel) = match guest_prerequisites() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP the enforcement half of ploop_container_keeps_the_home_partitions_quotas: {why}");
            return;
        }
    };
    let check =
        EnforceCheck { uid: 2001, gid: 3001, dir: "home/alice".into(), under_kib: 1024, over_kib: 8192 };
    let t = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let console =
        run_quota_guest(&busybox, &kernel, &image, ploop::QUOTA_MOUNT_OPTIONS, &check, work.path()).unwrap();
    eprintln!(
        "guest ran under {:?} in {:.1}s; console (filtered):\n{}",
        console.accel,
        t.elapsed().as_secs_f64(),
        console.filtered()
    );
    let text = &console.text;
    assert!(!text.contains("P2C-INSMOD-FAILED"), "{text}");
    assert_eq!(console.line("P2C-MOUNT"), "P2C-MOUNT rc=0", "{text}");
    assert_eq!(console.line("P2C-QUOTAON"), "P2C-QUOTAON rc=0", "{text}");
    assert_eq!(console.line("P2C-UNDER"), "P2C-UNDER rc=0", "{text}");
    assert_eq!(console.line("P2C-OVER"), "P2C-OVER rc=1", "{text}");
    assert!(text.contains("Disk quota exceeded"), "{text}");
}

/// Writes `len` bytes into a new file at `path`; the error that stopped it, if any, and
/// how much was written.
fn fill(path: &Path, len: usize) -> (Option<std::io::Error>, usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0usize;
    while written < len {
        if let Err(e) = f.write_all(&chunk) {
            return (Some(e), written);
        }
        written += chunk.len();
    }
    (f.sync_all().err(), written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn btrfs_node_limits_the_container_and_refuses_a_larger_source() {
    require_root!();
    trace_init();
    let storage = LoopFs::new(FsKind::Btrfs, 512 << 20, "").unwrap();
    let node =
        Node::start_with(NodeOptions { vz_root: Some(storage.path().join("vz")), ..Default::default() })
            .await
            .unwrap();

    // (1) The quota source with a small DISKSPACE: a subvolume with a qgroup limit.
    let src = quota_source();
    let agent = Agent::start(&node, "files1", &src.root).await.unwrap();
    let ctid = 161;
    let run = p2c(
        &node.state_dir(),
        &[
            "migrate",
            "files1",
            "--ctid",
            "161",
            "--quota-partition",
            "/home",
            "--diskspace",
            "24M:32M",
            "--cutover",
            "--json",
        ],
    )
    .await;
    let s: MigrationSummary =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    assert_eq!((run.code, s.state), (0, MigrationState::Done), "{:?}", s.error);
    agent.stop().await;
    dropped_warning(&s);
    let outcome = s.quota.as_ref().unwrap();
    assert_eq!(outcome["method"], "btrfs-qgroup", "{outcome}");
    assert_eq!(outcome["applied"], true, "{outcome}");
    let conf = p2c_controller::ctconf::parse(&std::fs::read_to_string(node.conf(ctid)).unwrap());
    assert_eq!(conf["DISKSPACE"], "24576:32768");
    assert_eq!(conf["QUOTATIME"], HOME_GRACE.0.max(HOME_GRACE.1).to_string());

    let private = node.private(ctid);
    assert_eq!(std::fs::metadata(&private).unwrap().ino(), 256, "{} is a btrfs subvolume", private.display());
    let p = private.to_string_lossy();
    let qgroups = sh("btrfs", &["qgroup", "show", "-re", "--raw", &p]);
    let id = sh("btrfs", &["inspect-internal", "rootid", &p]).trim().to_string();
    let line = qgroups
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("0/{id}")))
        .unwrap_or_else(|| panic!("no qgroup 0/{id}:\n{qgroups}"));
    assert_eq!(line.split_whitespace().nth(3), Some("33554432"), "max_rfer of 0/{id}: {qgroups}");
    assert_eq!(std::fs::metadata(node.tree(ctid).join("home/alice/notes.bin")).unwrap().len(), 256 << 10);

    // Writing past DISKSPACE into the container's private area fails with EDQUOT.
    let (err, written) = fill(&private.join("root-fill.bin"), 48 << 20);
    let err = err.expect("48 MiB into a 32 MiB container succeeded");
    assert_eq!(err.raw_os_error(), Some(EDQUOT), "{err}");
    assert!(written <= 32 << 20, "{written} bytes written past the limit");
    std::fs::remove_file(private.join("root-fill.bin")).unwrap();

    // (2) A source larger than its container: refused while receiving, with a clear
    // error, and what was copied is kept for a retry with more room.
    let big = tempfile::tempdir().unwrap();
    write(big.path(), "etc/hostname", "big1\n");
    write(
        big.path(),
        "etc/network/interfaces",
        "auto eth0\niface eth0 inet static\n\taddress 192.0.2.61/24\n",
    );
    for i in 0..12 {
        std::fs::create_dir_all(big.path().join("var/data")).unwrap();
        std::fs::write(
            big.path().join(format!("var/data/blob-{i:02}")),
            random_bytes(&format!("big {i}"), 1 << 20),
        )
        .unwrap();
    }
    let agent = Agent::start(&node, "big1", big.path()).await.unwrap();
    let run = p2c(
        &node.state_dir(),
        &["migrate", "big1", "--ctid", "162", "--diskspace", "4M:6M", "--cutover", "--json"],
    )
    .await;
    let s: MigrationSummary =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    assert_ne!(run.code, 0);
    assert_eq!(s.state, MigrationState::Failed, "{s:?}");
    let error = s.error.clone().unwrap_or_default();
    for part in [
        "would exceed its disk quota",
        "DISKSPACE hard limit 6291456",
        "raise --diskspace",
        "what was copied is kept",
    ] {
        assert!(error.contains(part), "`{part}` not in the error: {error}");
    }
    let kept = node.tree(162);
    assert_eq!(read(&kept, "etc/hostname"), "big1\n", "what was copied before the limit is kept");
    let blobs = std::fs::read_dir(kept.join("var/data")).map(|d| d.count()).unwrap_or(0);
    assert!((1..12).contains(&blobs), "{blobs} blobs kept");
    let status = node.status_of(162).await.unwrap();
    assert_eq!(status.state, MigrationState::Failed);
    agent.stop().await;
}
