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

/// The descriptor's elements both formats share, checked below `root`.
fn check_descriptor(x: &str, root: &str, kind: &str) {
    assert!(x.starts_with(&format!("<?xml version=\"1.0\"?>\n<{root}>")), "{x}");
    assert!(x.trim_end().ends_with(&format!("</{root}>")));
    let d = [root, "Disk_Parameters"];
    assert_eq!(element(x, &[d[0], d[1], "Disk_size"]), "20971520");
    assert_eq!(element(x, &[d[0], d[1], "Cylinders"]), "40960");
    assert_eq!(element(x, &[d[0], d[1], "Heads"]), "16");
    assert_eq!(element(x, &[d[0], d[1], "Sectors"]), "32");
    assert_eq!(element(x, &[d[0], d[1], "Padding"]), "0");
    let s = [root, "StorageData", "Storage"];
    assert_eq!(element(x, &[s[0], s[1], s[2], "Start"]), "0");
    assert_eq!(element(x, &[s[0], s[1], s[2], "End"]), "20971520");
    assert_eq!(element(x, &[s[0], s[1], s[2], "Blocksize"]), "2048");
    assert_eq!(element(x, &[s[0], s[1], s[2], "Image", "GUID"]), TOP_GUID);
    assert_eq!(element(x, &[s[0], s[1], s[2], "Image", "Type"]), kind);
    assert_eq!(element(x, &[s[0], s[1], s[2], "Image", "File"]), "root.hds");
    let n = [root, "Snapshots"];
    assert_eq!(element(x, &[n[0], n[1], "TopGUID"]), TOP_GUID);
    assert_eq!(element(x, &[n[0], n[1], "Shot", "GUID"]), TOP_GUID);
    assert_eq!(element(x, &[n[0], n[1], "Shot", "ParentGUID"]), NONE_GUID);
    // Well-formed enough: every opened element is closed.
    for tag in ["Disk_Parameters", "StorageData", "Storage", "Image", "Snapshots", "Shot"] {
        assert_eq!(x.matches(&format!("<{tag}>")).count(), x.matches(&format!("</{tag}>")).count());
    }
    // Nothing ploop writes only for other disks (preallocated, encrypted, volumes).
    for absent in ["Preallocated", "Encryption", "Volume", "Max_delta_size"] {
        assert!(!x.contains(absent), "{absent} in {x}");
    }
}

#[test]
fn disk_descriptor_content() {
    // Legacy OpenVZ: ploop's raw image as it was.
    check_descriptor(&disk_descriptor(Format::Raw, 20_971_520), "Parallels_disk_image", "Plain");
    // ploop 7 and 9 (lib/xml.c): the Virtuozzo root, an expanded image is "Compressed".
    check_descriptor(&disk_descriptor(Format::Expanded, 20_971_520), "Virtuozzo_disk_image", "Compressed");
}

#[test]
fn the_target_chooses_the_format() {
    use p2c_common::migration::Target;
    assert_eq!(Format::of(Target::Openvz), Format::Raw);
    assert_eq!(Format::of(Target::Vz7), Format::Expanded);
    assert_eq!(Format::of(Target::Vz9), Format::Expanded);
    // Raw keeps its 64 MiB floor; an expanded image holds ploop's 128 MiB journal.
    assert_eq!(Format::Raw.image_sectors(1), 131_072);
    assert_eq!(Format::Expanded.image_sectors(1), 1_048_576);
    assert_eq!(Format::Expanded.image_sectors(10 << 20), 20_971_520);
    assert_eq!(Format::Expanded.image_sectors((1 << 20) + 1), 2_099_200);
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
        Ploop::new(node, Format::Raw).mount(&private, &mnt).unwrap().unmount().unwrap();
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

/// A Ploop for vz7/vz9 images over the fake kernel, its attachments under `run`.
fn expanded(k: &Arc<FakeKernel>, run: &Path) -> Ploop {
    let node = Node { runner: k.clone(), probe: Arc::new(FakeProbe::default()) };
    Ploop::with_host(node, Format::Expanded, k.clone(), run.to_path_buf())
}

use std::sync::Arc;

use crate::quota::ploop_attach::tests::{FakeKernel, PID};
use crate::quota::select_tests::FakeProbe;

#[test]
fn an_expanded_image_is_made_as_ploop_init_makes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (private, run) = (dir.path().join("101"), dir.path().join("run"));
    let k = Arc::new(FakeKernel::new());
    let p = expanded(&k, &run);
    assert_eq!(p.way(), Way::Qemu);
    p.create(&private, 1 << 20).unwrap();
    // Only what the platform expects: root.hdd with the image and its descriptor.
    let mut names: Vec<String> = std::fs::read_dir(&private)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["root.hdd"]);
    let x = std::fs::read_to_string(descriptor_path(&private)).unwrap();
    assert_eq!(element(&x, &["Virtuozzo_disk_image", "Disk_Parameters", "Disk_size"]), "2097152");
    let h = crate::quota::ploop1::read_header(&image_path(&private)).unwrap();
    assert_eq!((h.size_sectors, h.cluster_sectors, h.clusters), (2_097_152, 2048, 1024));

    let ran = k.ran();
    let at = |prefix: &str| {
        ran.iter().position(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {ran:#?}"))
    };
    let new_image = private.join(NEW_IMAGE_DIR).join(IMAGE_FILE);
    assert!(
        ran[0].starts_with("qemu-storage-daemon ") && ran[0].contains(&*new_image.to_string_lossy()),
        "{ran:#?}"
    );
    // The label, then the partition's device, the file system, the balloon file.
    assert!(ran[1].starts_with("sfdisk -q ") && ran[1].ends_with(" <stdin>"), "{ran:#?}");
    assert!(at("sfdisk -J") < at("losetup --find") && at("losetup --find") < at("mkfs.ext4"));
    assert_eq!(
        ran[at("mkfs.ext4")],
        "mkfs.ext4 -j -b4096 -Elazy_itable_init=1,resize=13421772800 -Jsize=128 /dev/loop9"
    );
    assert_eq!(ran[at("tune2fs")], "tune2fs -ouser_xattr,acl -c0 -i0 -eremount-ro /dev/loop9");
    assert!(ran[at("mount ")].starts_with("mount -t ext4 /dev/loop9 "), "{ran:#?}");
    assert_eq!(ran.last().map(String::as_str), Some("losetup -d /dev/loop9"));
    assert_eq!(*k.terminated.lock().unwrap(), [PID]);
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0, "an attachment is left in {}", run.display());

    // Made once: a resumed migration keeps it.
    let before = k.ran().len();
    p.create(&private, 1 << 20).unwrap();
    assert_eq!(k.ran().len(), before);
}

#[test]
fn an_expanded_image_is_mounted_through_its_attachment_and_detached_after() {
    let dir = tempfile::tempdir().unwrap();
    let (private, run, mnt) = (dir.path().join("101"), dir.path().join("run"), dir.path().join("root"));
    let k = Arc::new(FakeKernel::new());
    let p = expanded(&k, &run);
    p.create(&private, 1 << 20).unwrap();
    let from = k.ran().len();
    let g = p.mount(&private, &mnt).unwrap();
    let m = mnt.display().to_string();
    assert_eq!(
        g.commands().last().cloned(),
        Some(format!("mount -t ext4 -o {QUOTA_MOUNT_OPTIONS} /dev/loop9 {m}"))
    );
    assert_eq!(g.commands(), &k.ran()[from..]);
    assert_eq!(g.unmount().unwrap(), [format!("umount {m}"), "losetup -d /dev/loop9".to_string()]);
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
}

#[test]
fn an_interrupted_creation_is_cleaned_up_and_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let (private, run) = (dir.path().join("101"), dir.path().join("run"));
    let new = private.join(NEW_IMAGE_DIR);
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join(IMAGE_FILE), b"half").unwrap();
    let k = Arc::new(FakeKernel::new());
    expanded(&k, &run).create(&private, 1 << 20).unwrap();
    assert!(!new.exists() && descriptor_path(&private).exists());
    // A root.hdd without its descriptor is not ours to guess about.
    let other = dir.path().join("102");
    std::fs::create_dir_all(image_dir(&other)).unwrap();
    let e = expanded(&k, &run).create(&other, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("holds no complete image") && e.contains("p2c discard"), "{e}");
}

#[test]
fn the_ploop_tool_makes_and_mounts_images_where_it_is_installed() {
    use crate::quota::cmd::fake::FakeRunner;
    let dir = tempfile::tempdir().unwrap();
    let (private, mnt) = (dir.path().join("101"), dir.path().join("root"));
    let runner = Arc::new(FakeRunner::with_programs(&["ploop", "quotacheck", "setquota"]));
    let node = Node { runner: runner.clone(), probe: Arc::new(FakeProbe::default()) };
    let p = Ploop::new(node.clone(), Format::Expanded);
    assert_eq!(p.way(), Way::PloopTool);
    assert!(detect(&node, Format::Expanded).unwrap().contains("ploop tool (ploop init, ploop mount)"));
    p.create(&private, 1 << 20).unwrap();
    assert!(image_dir(&private).is_dir() && !private.join(NEW_IMAGE_DIR).exists());
    // The tool's own descriptor and image: make them as ploop init would have.
    std::fs::write(image_path(&private), b"").unwrap();
    std::fs::write(descriptor_path(&private), b"").unwrap();
    p.mount(&private, &mnt).unwrap().unmount().unwrap();
    let dd = descriptor_path(&private).display().to_string();
    let lines: Vec<String> = runner.ran().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            format!(
                "ploop init -s 1048576K -f expanded -v 2 -t ext4 -b 2048 {}",
                private.join(NEW_IMAGE_DIR).join(IMAGE_FILE).display()
            ),
            format!("ploop mount -m {} -o {QUOTA_MOUNT_OPTIONS} {dd}", mnt.display()),
            format!("ploop umount {dd}"),
        ]
    );
}

#[test]
fn detect_says_which_way_and_what_to_install() {
    let k = FakeKernel {
        missing: ["ploop", "qemu-storage-daemon", "sfdisk"].map(String::from).into(),
        ..FakeKernel::new()
    };
    let mut probe = FakeProbe::default();
    let node = |k: FakeKernel, probe: FakeProbe| Node { runner: Arc::new(k), probe: Arc::new(probe) };
    let n = node(k, FakeProbe::default());
    let why = detect(&n, Format::Expanded).unwrap_err();
    assert!(why.contains("qemu-storage-daemon (package qemu-system-common)"), "{why}");
    assert!(why.contains("sfdisk (package fdisk)") && why.contains("/dev/fuse"), "{why}");
    assert!(!why.contains("qemu-img"), "{why}");
    // The legacy raw image needs none of that.
    assert!(detect(&n, Format::Raw).unwrap().contains("raw ext4 image"));
    probe.paths.insert("/dev/fuse".into());
    let k = FakeKernel { missing: ["ploop"].map(String::from).into(), ..FakeKernel::new() };
    let how = detect(&node(k, probe), Format::Expanded).unwrap();
    assert!(how.contains("without the ploop tool") && how.contains("qemu-storage-daemon"), "{how}");
    let k = FakeKernel { missing: ["mkfs.ext4"].map(String::from).into(), ..FakeKernel::new() };
    let why = detect(&node(k, FakeProbe::default()), Format::Raw).unwrap_err();
    assert!(why.contains("mkfs.ext4 (package e2fsprogs)"), "{why}");
}
