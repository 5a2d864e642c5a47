//! Quotas are enforced, not only written down: a btrfs qgroup on this kernel, and the
//! ploop image's own ext4 quota under a quota-capable Debian kernel booted with KVM.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use p2c_common::inventory::{FsQuota, Inventory, Mount, MountKind, QuotaLimit};
use p2c_common::migration::{Layout, MigrateOptions, Target};
use p2c_controller::quota::{self, Method, Node, QuotaPlan, ploop};
use p2c_tests::quota::{EnforceCheck, LoopMount, guest_prerequisites, have, is_root, run_quota_guest};

const EDQUOT: i32 = 122;

fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
}

#[test]
fn btrfs_qgroup_limits_the_container() {
    const T: &str = "btrfs_qgroup_limits_the_container";
    if !is_root() {
        return skip(T, "needs root (loop mounts, btrfs quota)");
    }
    if !have("mkfs.btrfs") || !have("btrfs") {
        return skip(T, "btrfs-progs is not installed");
    }
    assert_eq!(rustix::io::Errno::DQUOT.raw_os_error(), EDQUOT);
    let dir = tempfile::tempdir().unwrap();
    let node_fs =
        LoopMount::new(&dir.path().join("node.img"), 512, &["mkfs.btrfs", "-q"], &dir.path().join("node"))
            .unwrap();
    let private_root = node_fs.mountpoint.join("vz/private");
    let private = private_root.join("101");

    let node = Node::linux();
    let sel = quota::select(&node, Layout::Simfs, Target::Openvz, &private_root);
    assert_eq!(sel.method(), Method::BtrfsQgroup, "{:?}", sel.considered);

    let opts = MigrateOptions { diskspace: Some((15 * 1024, 20 * 1024)), ..Default::default() };
    let plan = QuotaPlan::compute(&Inventory::default(), &opts).unwrap();
    sel.backend.prepare(101, &private, &plan).unwrap();
    // "Received" files land in the subvolume; the quota follows them.
    std::fs::write(private.join("etc-hostname"), b"web1\n").unwrap();
    let out = sel.backend.apply(101, &private, &plan).unwrap();
    assert!(out.applied, "{out:?}");
    assert!(out.commands.iter().any(|c| c.contains("qgroup limit 20971520")));

    // 30 MiB into a 20 MiB container fails with EDQUOT.
    let mut f = std::fs::File::create(private.join("big")).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0usize;
    let err = loop {
        if written >= 30 << 20 {
            break f.sync_all().err();
        }
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(e) => break Some(e),
        }
    };
    let err = err.expect("writing 30 MiB into a 20 MiB qgroup succeeded");
    assert_eq!(err.raw_os_error(), Some(EDQUOT), "{err}");
    assert!(written <= 20 << 20, "{written} bytes written past the limit");
    eprintln!("btrfs: write stopped after {} MiB: {err}", written >> 20);
    drop(f);
    // Under the limit still works after freeing space.
    std::fs::remove_file(private.join("big")).unwrap();
    std::fs::write(private.join("small"), vec![1u8; 1 << 20]).unwrap();

    // A resumed migration's plain directory becomes a subvolume, contents kept.
    let resumed = private_root.join("102");
    std::fs::create_dir_all(resumed.join("etc")).unwrap();
    std::fs::write(resumed.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::hard_link(resumed.join("etc/passwd"), resumed.join("etc/passwd.link")).unwrap();
    std::os::unix::fs::symlink("passwd", resumed.join("etc/pw")).unwrap();
    sel.backend.prepare(102, &resumed, &plan).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&resumed).unwrap().ino(), 256, "102 is a subvolume");
    let a = std::fs::metadata(resumed.join("etc/passwd")).unwrap();
    let b = std::fs::metadata(resumed.join("etc/passwd.link")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link kept");
    assert_eq!(std::fs::read_link(resumed.join("etc/pw")).unwrap(), Path::new("passwd"));
    let leftovers: Vec<_> = std::fs::read_dir(&private_root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The in-image user quota of a ploop container stops uid 1001 at its block hard limit
/// when the container's kernel (Debian's, which has CONFIG_QFMT_V2) switches quota on.
#[test]
fn ploop_user_quota_is_enforced_by_a_quota_capable_kernel() {
    const T: &str = "ploop_user_quota_is_enforced_by_a_quota_capable_kernel";
    if !is_root() {
        return skip(T, "needs root (loop mounts)");
    }
    let (busybox, kernel) = match guest_prerequisites() {
        Ok(p) => p,
        Err(why) => return skip(T, &why),
    };
    eprintln!("booting {} from {}", kernel.vmlinuz.display(), kernel.package);

    // The container's plan: /home kept uid 1001's limits (3 MiB soft, 4 MiB hard).
    let inv = Inventory {
        mounts: vec![Mount {
            device: "/dev/sda1".into(),
            mountpoint: "/".into(),
            kind: MountKind::Local,
            used_bytes: 1 << 20,
            inodes_used: 100,
            ..Default::default()
        }],
        quotas: vec![FsQuota {
            mountpoint: "/home".into(),
            format: "vfsv1".into(),
            users: vec![QuotaLimit { id: 1001, block_soft: 3072, block_hard: 4096, ..Default::default() }],
            block_grace_secs: 7 * 86400,
            inode_grace_secs: 7 * 86400,
            ..Default::default()
        }],
        ..Default::default()
    };
    let opts = MigrateOptions {
        layout: Layout::Ploop,
        diskspace: Some((60 * 1024, 64 * 1024)),
        ..Default::default()
    };
    let plan = QuotaPlan::compute(&inv, &opts).unwrap();
    assert!(plan.has_second_level());

    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("vz/private/101");
    let node = Node::linux();
    let sel = quota::select(&node, Layout::Ploop, Target::Openvz, &dir.path().join("vz/private"));
    assert_eq!(sel.method(), Method::Ploop, "{:?}", sel.considered);
    sel.backend.prepare(101, &private, &plan).unwrap();
    let descriptor = std::fs::read_to_string(ploop::descriptor_path(&private)).unwrap();
    assert!(descriptor.contains("<Disk_size>131072</Disk_size>"));

    // Receive a few files owned by uid/gid 1001 into the mounted image.
    {
        let mnt = dir.path().join("root");
        let guard = ploop::Ploop::new(node.clone(), ploop::Format::Raw).mount(&private, &mnt).unwrap();
        let home = guard.path().join("home/u1001");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("notes.txt"), vec![b'n'; 64 * 1024]).unwrap();
        for p in [home.as_path(), &home.join("notes.txt")] {
            std::os::unix::fs::chown(p, Some(1001), Some(1001)).unwrap();
        }
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        guard.unmount().unwrap();
    }
    let out = sel.backend.apply(101, &private, &plan).unwrap();
    assert!(out.applied && out.second_level_applied, "{out:?}");

    // uid 1001 writes 1 MiB (under its 4 MiB hard limit), then 8 MiB (over it).
    let check =
        EnforceCheck { uid: 1001, gid: 1001, dir: "home/u1001".into(), under_kib: 1024, over_kib: 8192 };
    let disk = ploop::image_path(&private);
    let console =
        run_quota_guest(&busybox, &kernel, &disk, ploop::QUOTA_MOUNT_OPTIONS, &check, dir.path()).unwrap();
    eprintln!("guest ran under {:?}; console (filtered):\n{}", console.accel, console.filtered());
    let text = &console.text;
    assert!(!text.contains("P2C-INSMOD-FAILED"), "{text}");
    assert_eq!(console.line("P2C-MOUNT"), "P2C-MOUNT rc=0", "{text}");
    assert_eq!(console.line("P2C-QUOTAON"), "P2C-QUOTAON rc=0", "{text}");
    assert_eq!(console.line("P2C-UNDER"), "P2C-UNDER rc=0", "{text}");
    assert_eq!(console.line("P2C-OVER"), "P2C-OVER rc=1", "{text}");
    assert!(text.contains("Disk quota exceeded"), "{text}");
    assert!(text.contains("P2C-DONE"), "{text}");
}
