use super::*;
use crate::quota::select_tests::plan_with;

/// Text of the one `<name>` element inside `xml` below the element path `parents`.
fn element<'a>(xml: &'a str, path: &[&str]) -> &'a str {
    let mut rest = xml;
    for p in path {
        let open = format!("<{p}>");
        let at = rest.find(&open).unwrap_or_else(|| panic!("no <{p}> in {rest}"));
        rest = &rest[at + open.len()..];
    }
    let last = path[path.len() - 1];
    let end = rest.find(&format!("</{last}>")).unwrap();
    rest[..end].trim()
}

#[test]
fn sizes_round_up_to_ploop_blocks() {
    assert_eq!(size_sectors(10 * 1024 * 1024), 20_971_520);
    // 100 MiB + 1 KiB: 204802 sectors, rounded up to 100 blocks of 2048.
    assert_eq!(size_sectors(100 * 1024 + 1), 206_848);
    // Never below 64 MiB.
    assert_eq!(size_sectors(1), 131_072);
}

#[test]
fn geometry_like_ploop() {
    // 10 GiB: not a multiple of 63, 32 sectors per track, 16 heads.
    assert_eq!(chs(20_971_520), Chs { cylinders: 40_960, heads: 16, sectors: 32 });
    // 1 GiB sits in the 504 MiB..8 GiB range: 16 heads, 63 sectors.
    assert_eq!(chs(2_097_152), Chs { cylinders: 2080, heads: 16, sectors: 63 });
    // 64 MiB: 131072 = 32 * 16 * 256.
    assert_eq!(chs(131_072), Chs { cylinders: 256, heads: 16, sectors: 32 });
}

#[test]
fn disk_descriptor_content() {
    let x = disk_descriptor(20_971_520);
    assert!(x.starts_with("<?xml version=\"1.0\"?>\n<Parallels_disk_image>"));
    assert!(x.trim_end().ends_with("</Parallels_disk_image>"));
    let d = ["Parallels_disk_image", "Disk_Parameters"];
    assert_eq!(element(&x, &[d[0], d[1], "Disk_size"]), "20971520");
    assert_eq!(element(&x, &[d[0], d[1], "Cylinders"]), "40960");
    assert_eq!(element(&x, &[d[0], d[1], "Heads"]), "16");
    assert_eq!(element(&x, &[d[0], d[1], "Sectors"]), "32");
    assert_eq!(element(&x, &[d[0], d[1], "Padding"]), "0");
    let s = ["Parallels_disk_image", "StorageData", "Storage"];
    assert_eq!(element(&x, &[s[0], s[1], s[2], "Start"]), "0");
    assert_eq!(element(&x, &[s[0], s[1], s[2], "End"]), "20971520");
    assert_eq!(element(&x, &[s[0], s[1], s[2], "Blocksize"]), "2048");
    assert_eq!(element(&x, &[s[0], s[1], s[2], "Image", "GUID"]), TOP_GUID);
    assert_eq!(element(&x, &[s[0], s[1], s[2], "Image", "Type"]), "Plain");
    assert_eq!(element(&x, &[s[0], s[1], s[2], "Image", "File"]), "root.hds");
    let n = ["Parallels_disk_image", "Snapshots"];
    assert_eq!(element(&x, &[n[0], n[1], "TopGUID"]), TOP_GUID);
    assert_eq!(element(&x, &[n[0], n[1], "Shot", "GUID"]), TOP_GUID);
    assert_eq!(element(&x, &[n[0], n[1], "Shot", "ParentGUID"]), NONE_GUID);
    // Well-formed enough: every opened element is closed.
    for tag in ["Disk_Parameters", "StorageData", "Storage", "Image", "Snapshots", "Shot"] {
        assert_eq!(x.matches(&format!("<{tag}>")).count(), x.matches(&format!("</{tag}>")).count());
    }
}

#[test]
fn quota_file_commands() {
    let plan = plan_with((1, 2), (1, 2));
    let cmds = Ploop::limit_commands(Path::new("/mnt/ct"), &plan);
    let lines: Vec<String> = cmds.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "quotacheck -c -u -g -m -F vfsv1 /mnt/ct",
            "setquota -u -F vfsv1 -b /mnt/ct <stdin>",
            "setquota -t -u -F vfsv1 604800 86400 /mnt/ct",
            "setquota -g -F vfsv1 -b /mnt/ct <stdin>",
            "setquota -t -g -F vfsv1 604800 86400 /mnt/ct",
        ]
    );
    assert_eq!(cmds[1].stdin.as_deref(), Some(&b"1000 1000 2000 10 20\n1001 0 4096 0 0\n"[..]));
    assert_eq!(cmds[3].stdin.as_deref(), Some(&b"100 5000 6000 0 0\n"[..]));
}

#[test]
fn paths_and_layout_name() {
    let p = Path::new("/vz/private/101");
    assert_eq!(image_path(p), Path::new("/vz/private/101/root.hdd/root.hds"));
    assert_eq!(descriptor_path(p), Path::new("/vz/private/101/root.hdd/DiskDescriptor.xml"));
    assert_eq!(LAYOUT, p2c_common::migration::Layout::Ploop.as_str());
}

#[test]
fn an_image_still_attached_is_mounted_through_its_loop_device() {
    use std::sync::Arc;

    use crate::quota::cmd::fake::FakeRunner;
    use crate::quota::select_tests::FakeProbe;

    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("101");
    std::fs::create_dir_all(image_dir(&private)).unwrap();
    std::fs::write(image_path(&private), b"").unwrap();
    let mnt = dir.path().join("mnt");
    let mount = |probe: FakeProbe| {
        let runner = Arc::new(FakeRunner::with_programs(&["mount", "umount"]));
        let node = Node { runner: runner.clone(), probe: Arc::new(probe) };
        Ploop::new(node).mount(&private, &mnt).unwrap().unmount().unwrap();
        runner.ran().iter().map(|c| c.to_string()).collect::<Vec<_>>()
    };
    let (image, m) = (image_path(&private).display().to_string(), mnt.display().to_string());
    assert_eq!(
        mount(FakeProbe::default()),
        [format!("mount -t ext4 -o loop,{QUOTA_MOUNT_OPTIONS} {image} {m}"), format!("umount {m}")]
    );
    // Kept up by another mount namespace: the same file system through the same device,
    // never a second loop device over the same image.
    let attached = FakeProbe { loop_device: Some("/dev/loop7".into()), ..Default::default() };
    assert_eq!(
        mount(attached),
        [format!("mount -t ext4 -o {QUOTA_MOUNT_OPTIONS} /dev/loop7 {m}"), format!("umount {m}")]
    );
}
