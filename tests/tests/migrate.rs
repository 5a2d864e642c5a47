//! Full migrations through a real controller and agent over TCP + mTLS: every kind of
//! file-system object arrives exactly, the container config says what the source was.

use std::path::Path;
use std::time::Duration;

use p2c_common::migration::{Layout, MigrateOptions, MigrationState, Target};
use p2c_tests::fixtures::{CompareOptions, build_every_case_tree, compare_trees};
use p2c_tests::node::{Agent, Node, migrate_opts, rewritten};
use p2c_tests::{require_root, trace_init};

fn assert_no_differences(src: &std::path::Path, dst: &std::path::Path, opts: &CompareOptions) {
    let diffs = compare_trees(src, dst, opts);
    assert!(diffs.is_empty(), "{} difference(s):\n{}", diffs.len(), {
        diffs.iter().take(50).map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_case_is_carried_exactly() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let cases = build_every_case_tree(src.path()).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "every-case", src.path()).await.unwrap();
    let s = node.migrate(&migrate_opts("every-case", 101)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "migration failed: {:?}", s.error);
    assert!(s.verify.as_ref().is_some_and(|v| v.ok), "verify: {:?}", s.verify);

    // Sockets are skipped and reported, not copied.
    let reported: Vec<String> =
        s.passes.iter().flat_map(|p| p.skipped.iter().map(|x| x.path.display())).collect();
    for sock in cases.skipped() {
        let shown = format!("/{}", sock.display());
        assert!(reported.contains(&shown), "socket {shown} not reported in {reported:?}");
        assert!(!node.tree(101).join(sock).exists(), "socket {shown} was copied");
    }
    // Everything else is identical: type, mode, owner, size, content, mtime (ns), link
    // targets, device numbers, hard-link groups, allocated blocks of sparse files.
    // The default drops extended attributes, as VZFS does.
    let mut opts = CompareOptions { ignore_all_xattrs: true, ..Default::default() };
    for p in cases.skipped() {
        opts = opts.exclude(p);
    }
    for p in rewritten(&s) {
        opts = opts.exclude(p);
    }
    // The guest rewrite adds /dev nodes and /etc/p2c; the fixture has neither.
    opts = opts.exclude("dev").exclude("etc");
    opts.ignore_root = true;
    assert_no_differences(src.path(), &node.tree(101), &opts);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extended_attributes_are_kept_on_request() {
    require_root!();
    trace_init();
    let src = tempfile::tempdir().unwrap();
    let cases = build_every_case_tree(src.path()).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "xattrs", src.path()).await.unwrap();
    let mut o = migrate_opts("xattrs", 102);
    o.assess.keep_xattrs = true;
    let s = node.migrate(&o).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "migration failed: {:?}", s.error);
    let mut opts = CompareOptions::default().ignore_xattr("security.selinux");
    for p in cases.skipped() {
        opts = opts.exclude(p);
    }
    opts = opts.exclude("dev").exclude("etc");
    opts.ignore_root = true;
    assert_no_differences(src.path(), &node.tree(102), &opts);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_container_config_describes_the_source() {
    require_root!();
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    p2c_demo::build_sample(&src).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "web01", &src).await.unwrap();
    let s = node.migrate(&migrate_opts("web01", 103)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "migration failed: {:?}", s.error);
    let conf = p2c_controller::ctconf::parse(&std::fs::read_to_string(node.conf(103)).unwrap());
    // Made for this machine's default platform, Virtuozzo 7: the layout is the private area's
    // `.ve.layout` link, and the config is the area's `ve.conf` with the conf dir's entry a
    // link to it (what `vzctl register` accepts).
    assert_eq!(conf["IP_ADDRESS"], "192.0.2.10 2001:db8::10 192.0.2.11 198.51.100.7");
    assert!(!conf.contains_key("VE_LAYOUT"), "libvzctl has no VE_LAYOUT key");
    assert_eq!(conf["DISTRIBUTION"], "debian");
    let private = node.private(103);
    assert_eq!(std::fs::read_link(private.join(".ve.layout")).unwrap(), Path::new("4"));
    assert_eq!(std::fs::read_link(node.conf(103)).unwrap(), private.canonicalize().unwrap().join("ve.conf"));
    for d in ["fs", "dump", "scripts"] {
        assert!(private.join(d).is_dir(), "{d}/ missing from the private area");
    }
    assert_eq!(conf["HOSTNAME"], "web01");
    assert_eq!(conf["NAMESERVER"], "192.0.2.53 2001:db8::53");
    assert_eq!(conf["SEARCHDOMAIN"], "example.com");
    assert_eq!(conf["VE_PRIVATE"], format!("{}/vz/private/$VEID", node.dir.path().display()));
    assert_eq!(conf["OSTEMPLATE"], "debian-12-x86_64");
    for key in [
        "DISKSPACE",
        "DISKINODES",
        "QUOTATIME",
        "QUOTAUGIDLIMIT",
        "ONBOOT",
        "CPUUNITS",
        "PHYSPAGES",
        "SWAPPAGES",
    ] {
        assert!(conf.contains_key(key), "{key} missing from the config");
    }
    let (soft, hard) = conf["DISKSPACE"].split_once(':').unwrap();
    assert!(soft.parse::<u64>().unwrap() <= hard.parse::<u64>().unwrap());
    // The guest now brings its addresses up on venet0.
    let ifaces = std::fs::read_to_string(node.tree(103).join("etc/network/interfaces")).unwrap();
    assert!(ifaces.contains("iface venet0 inet static"), "{ifaces}");
    assert!(!ifaces.contains("iface eth0"), "{ifaces}");
    // p2c verify agrees after the fact.
    let mut admin = node.admin().await.unwrap();
    let v = admin.verify(p2c_proto::v1::CtidRef { ctid: 103 }).await.unwrap().into_inner();
    let v: p2c_common::migration::VerifySummary = serde_json::from_slice(&v.json).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(s.target, Some(Target::Vz7));
    assert_eq!(
        s.start_commands,
        [format!("vzctl register {} 103", private.display()), "vzctl start 103".into()]
    );
    agent.stop().await;
    let _ = Duration::ZERO;
}

/// The same server made for legacy OpenVZ: the tree is the private area itself, the config a
/// regular file that names the layout, with bare addresses and no DISTRIBUTION (vzctl 4 has
/// no such key). The migration cannot then be continued for another platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legacy_openvz_container_and_no_change_of_platform_part_way() {
    require_root!();
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    p2c_demo::build_sample(&src).unwrap();
    let node = Node::start().await.unwrap();
    let agent = Agent::start(&node, "web01", &src).await.unwrap();
    let opts = MigrateOptions { target: Some(Target::Openvz), ..migrate_opts("web01", 104) };
    let s = node.migrate(&opts).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "migration failed: {:?}", s.error);
    assert_eq!(
        (s.target, &s.start_commands[..]),
        (Some(Target::Openvz), &["vzctl start 104".to_string()][..])
    );
    let private = node.private(104);
    assert!(std::fs::symlink_metadata(node.conf(104)).unwrap().is_file(), "a regular config file");
    assert!(
        std::fs::symlink_metadata(private.join(".ve.layout")).is_err(),
        "no layout link on legacy OpenVZ"
    );
    assert!(!private.join("ve.conf").exists());
    assert_eq!(std::fs::read_to_string(private.join("etc/hostname")).unwrap(), "web01\n");
    let conf = p2c_controller::ctconf::parse(&std::fs::read_to_string(node.conf(104)).unwrap());
    assert_eq!(conf["VE_LAYOUT"], "simfs");
    assert_eq!(conf["IP_ADDRESS"], "192.0.2.10 2001:db8::10 192.0.2.11 198.51.100.7");
    assert!(!conf.contains_key("DISTRIBUTION"), "{conf:?}");

    for (target, layout) in [(Some(Target::Vz9), Layout::Simfs), (Some(Target::Openvz), Layout::Ploop)] {
        let again = MigrateOptions { target, layout, ..opts.clone() };
        let err = node.migrate(&again).await.unwrap_err().to_string();
        for part in [
            "CT 104 is being made for openvz with layout simfs",
            "--target openvz --layout simfs",
            "p2c discard 104",
        ] {
            assert!(err.contains(part), "`{part}` not in: {err}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(private.join("etc/hostname")).unwrap(),
        "web01\n",
        "the refused runs changed nothing"
    );
    agent.stop().await;
}

/// Sources the guest rewrite has little or nothing to rewrite in: it still adds its own
/// files (`/etc/p2c`), masks units in directories the source did not have, and the
/// verification must tell those apart from differences.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_with_little_to_rewrite_verify() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    // No /etc at all.
    let bare = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(bare.path().join("data")).unwrap();
    std::fs::write(bare.path().join("data/f"), b"hi\n").unwrap();
    // An /etc whose fstab has no disk line to remove.
    let quiet = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(quiet.path().join("etc")).unwrap();
    std::fs::write(quiet.path().join("etc/fstab"), b"proc /proc proc defaults 0 0\n").unwrap();
    std::fs::write(quiet.path().join("etc/hostname"), b"quiet\n").unwrap();
    // A systemd guest whose gettys are masked in directories it did not have.
    let units = tempfile::tempdir().unwrap();
    let u = units.path();
    std::fs::create_dir_all(u.join("etc")).unwrap();
    std::fs::create_dir_all(u.join("lib/systemd/system")).unwrap();
    std::fs::create_dir_all(u.join("sbin")).unwrap();
    std::fs::write(u.join("etc/fstab"), b"UUID=x / ext4 defaults 0 1\n").unwrap();
    std::fs::write(u.join("lib/systemd/system/getty@.service"), b"[Unit]\nDescription=getty\n").unwrap();
    std::fs::write(u.join("lib/systemd/systemd"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("/lib/systemd/systemd", u.join("sbin/init")).unwrap();
    for (i, (name, dir)) in
        [("bare", bare.path()), ("quiet", quiet.path()), ("units", u)].into_iter().enumerate()
    {
        let agent = Agent::start(&node, name, dir).await.unwrap();
        let ctid = 110 + i as u32;
        let s = node.migrate(&migrate_opts(name, ctid)).await.unwrap();
        assert_eq!(s.state, MigrationState::Done, "{name}: {:?}", s.error);
        assert!(s.verify.as_ref().is_some_and(|v| v.ok), "{name}: {:?}", s.verify);
        agent.stop().await;
    }
}
