use std::fs;

use crate::assess::node::{pretty_name, probe};

use super::*;

#[test]
fn probes_space_fs_xattrs_and_an_earlier_run() {
    let tmp = tempfile::tempdir().unwrap();
    let private = tmp.path().join("vz/private");
    let os_release = tmp.path().join("os-release");
    fs::write(&os_release, "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n").unwrap();

    // the private root does not exist yet: its parent is probed
    let n = probe(&private, Some(101), &os_release);
    assert!(n.gaps.is_empty(), "{:?}", n.gaps);
    assert!(n.free_bytes > 0 && n.free_inodes > 0);
    assert!(!n.fs_type.is_empty() && n.fs_type != "unknown");
    assert_eq!(n.os, NodeOs::Linux);
    assert_eq!(n.os_name, "Debian GNU/Linux 12");
    assert!(n.existing_private.is_none());
    if n.fs_type == "ext4" || n.fs_type == "xfs" || n.fs_type == "btrfs" {
        assert!(n.xattrs_supported);
    }
    // the probe leaves nothing behind
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);

    let ct = private.join("101");
    fs::create_dir_all(ct.join("etc")).unwrap();
    fs::write(ct.join("etc/hostname"), "web1\n").unwrap();
    fs::write(ct.join("big"), vec![1u8; 64 * 1024]).unwrap();
    fs::hard_link(ct.join("big"), ct.join("big2")).unwrap();
    std::os::unix::fs::symlink("/usr", ct.join("usr")).unwrap();
    let n = probe(&private, Some(101), &os_release);
    let e = n.existing_private.unwrap();
    assert_eq!(e.files, 4, "etc, etc/hostname, big (once), usr");
    assert!(e.bytes >= 64 * 1024);
    assert!(e.path.ends_with("vz/private/101"));
    assert!(probe(&private, Some(102), &os_release).existing_private.is_none());
}

#[test]
fn missing_facts_become_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let n = probe(tmp.path(), None, &tmp.path().join("no-os-release"));
    assert_eq!(n.gaps.len(), 1, "{:?}", n.gaps);
    assert!(n.gaps[0].contains("no-os-release"));
}

#[test]
fn os_release_names() {
    assert_eq!(pretty_name("PRETTY_NAME='Rocky Linux 9.3'\n"), "Rocky Linux 9.3");
    assert_eq!(pretty_name("NAME=Alpine\nVERSION_ID=3.19\n"), "Alpine 3.19");
    assert_eq!(pretty_name(""), "unknown Linux");
}
