use super::*;
use crate::assess::ExistingPrivate;

#[test]
fn fs_merge_lists_local_mounts_and_names_the_rest() {
    let mut inv = plain_inventory();
    inv.mounts.push(mount("/dev/sdb1", "/home", "xfs", 10));
    inv.mounts.push(mount("nas:/export", "/mnt/nas", "nfs4", 0));
    let opts = AssessOptions { ctid: Some(101), ..Default::default() };
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &opts);
    let f = get(&r, codes::FS_MERGE);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.title.starts_with("2 local file system(s)"), "{}", f.title);
    assert!(has(f, "/: /dev/sda1 ext4, 12.0 GiB size, 3.0 GiB used"));
    assert!(has(f, "/home: /dev/sdb1 xfs") && has(f, "→ private/101/home/"));
    assert!(has(f, "/proc (proc), /sys (sysfs), /run (tmpfs)"));
    assert!(has(f, "network file systems (see network-mounts): /mnt/nas (nfs4)"));
    assert_eq!(f.data["local"][1]["mountpoint"], "/home");
    assert_eq!(f.data["network"][0]["fs_type"], "nfs4");
}

#[test]
fn network_mounts_are_a_warning() {
    let mut inv = plain_inventory();
    inv.mounts.push(mount("nas:/export", "/mnt/nas", "nfs4", 0));
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::NETWORK_MOUNTS);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "/mnt/nas: nas:/export (nfs4"));
    assert!(f.action.contains("fstab lines are kept"));
}

fn space(node_free: u64, inodes_free: u64, scan: Option<&ScanResult>) -> Report {
    let node = NodeFacts { free_bytes: node_free, free_inodes: inodes_free, ..plain_node() };
    run(&plain_inventory(), scan, &node, &AssessOptions::default())
}

#[test]
fn disk_space_blocks_when_the_source_does_not_fit() {
    let scan = plain_scan(); // 3 GiB, 120000 inodes
    assert!(space(100 * GIB, 10_000_000, Some(&scan)).find(codes::DISK_SPACE).is_none());

    let r = space(2 * GIB, 10_000_000, Some(&scan));
    let f = get(&r, codes::DISK_SPACE);
    assert_eq!(f.severity, Severity::Blocker);
    assert_eq!(f.data["need_bytes"], 3 * GIB);

    let r = space(100 * GIB, 100_000, Some(&scan));
    assert_eq!(get(&r, codes::DISK_SPACE).severity, Severity::Blocker);
    // a file system without a fixed inode count never runs out of inodes
    assert!(space(100 * GIB, u64::MAX, Some(&scan)).find(codes::DISK_SPACE).is_none());
}

#[test]
fn disk_space_warns_under_ten_percent_margin() {
    let scan = plain_scan();
    let r = space(3 * GIB + GIB / 20, 10_000_000, Some(&scan));
    let f = get(&r, codes::DISK_SPACE);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("less than 10%"));
    let r = space(3 * GIB + GIB / 2, 10_000_000, Some(&scan));
    assert!(r.find(codes::DISK_SPACE).is_none());
}

#[test]
fn disk_space_without_a_scan_uses_mounts_minus_excluded_ones() {
    let mut inv = plain_inventory();
    inv.mounts.push(mount("/dev/sdb1", "/home", "xfs", 10));
    inv.mounts.push(mount("/dev/sdb1", "/srv/home-bind", "xfs", 10));
    let node = NodeFacts { free_bytes: 12 * GIB, ..plain_node() };
    // 3 + 10 GiB (the bind mount counted once) does not fit in 12 GiB
    let r = run(&inv, None, &node, &AssessOptions::default());
    let f = get(&r, codes::DISK_SPACE);
    assert_eq!(f.severity, Severity::Blocker);
    assert_eq!(f.data["need_bytes"], 13 * GIB);
    // excluding /home and its bind mount leaves 3 GiB
    let opts =
        AssessOptions { excludes: vec!["/home".into(), "/srv/home-bind/".into()], ..Default::default() };
    let r = run(&inv, None, &node, &opts);
    assert!(r.find(codes::DISK_SPACE).is_none(), "{}", r.render());
    assert!(has(get(&r, codes::FS_MERGE), "/home: /dev/sdb1 xfs"));
    assert!(has(get(&r, codes::FS_MERGE), "excluded, not copied"));
    assert!(has(get(&r, codes::FS_MERGE), "/srv/home-bind: the same device as /home"));
}

#[test]
fn disk_space_counts_what_an_earlier_run_already_copied() {
    let node = NodeFacts {
        free_bytes: 2 * GIB,
        existing_private: Some(ExistingPrivate {
            path: "/vz/private/101".into(),
            bytes: 2 * GIB,
            files: 50_000,
        }),
        ..plain_node()
    };
    let r = run(&plain_inventory(), Some(&plain_scan()), &node, &AssessOptions::default());
    assert!(r.find(codes::DISK_SPACE).is_none(), "{}", r.render());
}
