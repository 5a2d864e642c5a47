use super::*;
use std::process::Command;

fn image(len: u64, writes: &[(u64, &[u8])]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    for (off, b) in writes {
        f.as_file().write_all_at(b, *off).unwrap();
    }
    f
}

#[test]
fn signatures() {
    type Case = (Vec<(u64, &'static [u8])>, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (vec![(4086, b"SWAPSPACE2")], Some("swap")),
        (vec![(65526, b"SWAPSPACE2")], Some("swap")),
        (vec![(512, b"LABELONE"), (536, b"LVM2 001")], Some("LVM2_member")),
        (vec![(0, b"XFSB")], Some("xfs")),
        (vec![(65600, b"_BHRfS_M")], Some("btrfs")),
        (vec![(1080, &[0x53, 0xef])], Some("ext2")),
        (vec![(1080, &[0x53, 0xef]), (1024 + 0x5c, &[4])], Some("ext3")),
        (vec![(1080, &[0x53, 0xef]), (1024 + 0x60, &[0xc2, 0x02])], Some("ext4")),
        (vec![(4096, &[0xfc, 0x4e, 0x2b, 0xa9])], Some("linux_raid_member")),
        (vec![], None),
    ];
    for (writes, want) in cases {
        let f = image(128 << 10, &writes);
        assert_eq!(probe(f.path()).as_deref(), want, "{writes:?}");
    }
    // A tiny device: every read past its end fails cleanly.
    let f = image(100, &[]);
    assert_eq!(probe(f.path()), None);
    assert_eq!(probe(Path::new("/nonexistent/dev")), None);
}

#[test]
fn real_mkfs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let ok = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("skipping: mkfs.ext4 is not available");
        return;
    }
    assert_eq!(probe(&img).as_deref(), Some("ext4"));
    if Command::new("mkswap").arg(&img).output().is_ok_and(|o| o.status.success()) {
        assert_eq!(probe(&img).as_deref(), Some("swap"));
    }
}

#[test]
fn sysfs_tree() {
    let t = tempfile::tempdir().unwrap();
    let sys = t.path().join("sys");
    let devices = sys.join("devices/pci/block/sda");
    let class = sys.join("class/block");
    std::fs::create_dir_all(devices.join("sda1")).unwrap();
    std::fs::create_dir_all(devices.join("sda2/holders/dm-0")).unwrap();
    std::fs::create_dir_all(sys.join("devices/virtual/block/dm-0/dm")).unwrap();
    std::fs::create_dir_all(&class).unwrap();
    let w = |p: &Path, s: &str| std::fs::write(p, s).unwrap();
    w(&devices.join("dev"), "8:0\n");
    w(&devices.join("size"), "2048\n");
    w(&devices.join("sda1/dev"), "8:1\n");
    w(&devices.join("sda1/size"), "1024\n");
    w(&devices.join("sda1/partition"), "1\n");
    w(&devices.join("sda2/dev"), "8:2\n");
    w(&devices.join("sda2/size"), "1024\n");
    w(&devices.join("sda2/partition"), "2\n");
    let dm = sys.join("devices/virtual/block/dm-0");
    w(&dm.join("dev"), "253:0\n");
    w(&dm.join("size"), "512\n");
    w(&dm.join("dm/uuid"), "LVM-abcdef\n");
    w(&dm.join("dm/name"), "vg0-data\n");
    std::os::unix::fs::symlink(&devices, class.join("sda")).unwrap();
    std::os::unix::fs::symlink(devices.join("sda1"), class.join("sda1")).unwrap();
    std::os::unix::fs::symlink(devices.join("sda2"), class.join("sda2")).unwrap();
    std::os::unix::fs::symlink(&dm, class.join("dm-0")).unwrap();
    let mounts = vec![MountInfo {
        major: 8,
        minor: 1,
        mount_point: b"/boot".to_vec(),
        fs_type: "ext4".into(),
        ..Default::default()
    }];
    let dev = t.path().join("dev");
    let d = block_devices(&sys, &dev, &mounts, None).unwrap();
    let only = block_devices(&sys, &dev, &mounts, Some(&[(8, 1)])).unwrap();
    assert_eq!(only.len(), 1);
    let by = |n: &str| d.iter().find(|b| b.name == n).unwrap();
    assert_eq!(by("sda").kind, "disk");
    assert_eq!(by("sda").size_bytes, 2048 * 512);
    assert_eq!(by("sda").holders, vec!["sda1", "sda2"]);
    assert_eq!(by("sda1").mountpoint.as_deref(), Some("/boot"));
    assert_eq!(by("sda1").fs_type.as_deref(), Some("ext4"));
    assert_eq!(by("sda2").holders, vec!["vg0-data"]);
    assert_eq!(by("vg0-data").kind, "lvm");
    assert_eq!((by("vg0-data").major, by("vg0-data").minor), (253, 0));
    assert_eq!(by("vg0-data").fs_type, None);
}
