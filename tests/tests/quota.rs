//! Quotas are enforced, not only written down: a btrfs qgroup on this kernel, and the
//! ploop image's own ext4 quota under a quota-capable Debian kernel booted with KVM.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use p2c_common::inventory::{FsQuota, Inventory, Mount, MountKind, QuotaLimit};
use p2c_common::migration::{Layout, MigrateOptions};
use p2c_controller::quota::{self, Method, Node, QuotaPlan, ploop};
use p2c_tests::quota::{
    Accel, Cpio, LoopMount, debian_kernel, have, is_root, module_bytes, module_closure, run_qemu,
};

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
    let sel = quota::select(&node, Layout::Simfs, &private_root);
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
    if !Path::new("/dev/kvm").exists() {
        return skip(T, "/dev/kvm is not available");
    }
    for p in
        ["qemu-system-x86_64", "mkfs.ext4", "quotacheck", "setquota", "quotaon", "setpriv", "modinfo", "ldd"]
    {
        if !have(p) {
            return skip(T, &format!("{p} is not installed"));
        }
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists() && p2c_tests::quota::sh("ldd", &[&p.to_string_lossy()]).is_err());
    let Some(busybox) = busybox else {
        return skip(T, "a static busybox (package busybox-static) is not installed");
    };
    let kernel = match debian_kernel() {
        Ok(k) => k,
        Err(e) => return skip(T, &format!("Debian's kernel package is unavailable: {e}")),
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
    let sel = quota::select(&node, Layout::Ploop, &dir.path().join("vz/private"));
    assert_eq!(sel.method(), Method::Ploop, "{:?}", sel.considered);
    sel.backend.prepare(101, &private, &plan).unwrap();
    let descriptor = std::fs::read_to_string(ploop::descriptor_path(&private)).unwrap();
    assert!(descriptor.contains("<Disk_size>131072</Disk_size>"));

    // Receive a few files owned by uid/gid 1001 into the mounted image.
    {
        let mnt = dir.path().join("root");
        let guard = ploop::Ploop::new(node.clone()).mount(&private, &mnt).unwrap();
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

    // An initramfs: busybox, quotaon and setpriv with their libraries, the modules.
    let modules =
        module_closure(&kernel.modules, &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "quota_v2"])
            .unwrap();
    let mut cpio = Cpio::default();
    cpio.file("bin/busybox", 0o755, &std::fs::read(busybox).unwrap());
    for d in ["proc", "sys", "dev", "mnt", "tmp", "etc"] {
        cpio.dir(d);
    }
    cpio.symlink("etc/mtab", "/proc/mounts");
    cpio.host_program(Path::new(
        &p2c_tests::quota::sh("sh", &["-c", "command -v quotaon"]).unwrap().trim().to_string(),
    ))
    .unwrap();
    cpio.host_program(Path::new(
        &p2c_tests::quota::sh("sh", &["-c", "command -v setpriv"]).unwrap().trim().to_string(),
    ))
    .unwrap();
    let mut insmods = String::new();
    for (name, path) in &modules {
        cpio.file(&format!("modules/{name}.ko"), 0o644, &module_bytes(path).unwrap());
        insmods.push_str(&format!("insmod /modules/{name}.ko || echo P2C-INSMOD-FAILED {name}\n"));
    }
    let quotaon = p2c_tests::quota::sh("sh", &["-c", "command -v quotaon"]).unwrap();
    let setpriv = p2c_tests::quota::sh("sh", &["-c", "command -v setpriv"]).unwrap();
    let as_user = format!("{} --reuid=1001 --regid=1001 --clear-groups", setpriv.trim());
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{insmods}
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
mount -t ext4 -o {opts} /dev/vda /mnt
echo "P2C-MOUNT rc=$?"
{quotaon} -v -u -g /mnt 2>&1
echo "P2C-QUOTAON rc=$?"
{as_user} dd if=/dev/zero of=/mnt/home/u1001/under bs=1024 count=1024 2>&1
echo "P2C-UNDER rc=$?"
{as_user} dd if=/dev/zero of=/mnt/home/u1001/over bs=1024 count=8192 2>&1
echo "P2C-OVER rc=$?"
ls -ln /mnt/home/u1001
sync
umount /mnt
echo P2C-DONE
poweroff -f
"#,
        opts = ploop::QUOTA_MOUNT_OPTIONS,
        quotaon = quotaon.trim(),
    );
    cpio.file("init", 0o755, init.as_bytes());
    let initrd = dir.path().join("initrd.cpio");
    std::fs::write(&initrd, cpio.finish()).unwrap();

    // KVM first; where a nested KVM guest hangs before its kernel prints anything (seen
    // on hosts that are themselves VMs), the same guest runs under TCG emulation.
    let disk = ploop::image_path(&private);
    let console = match run_qemu(&kernel.vmlinuz, &initrd, &disk, Accel::Kvm, Duration::from_secs(30)) {
        Ok(c) if c.contains("P2C-DONE") => {
            eprintln!("guest ran under KVM");
            c
        }
        other => {
            let why = match other {
                Ok(c) => format!("the guest stopped early:\n{c}"),
                Err(e) => e,
            };
            eprintln!("KVM guest failed ({}); running it under TCG", why.lines().next().unwrap_or(""));
            let c = run_qemu(&kernel.vmlinuz, &initrd, &disk, Accel::Tcg, Duration::from_secs(300)).unwrap();
            eprintln!("guest ran under TCG");
            c
        }
    };
    let p2c_lines: Vec<&str> =
        console.lines().filter(|l| l.contains("P2C-") || l.contains("dd:") || l.contains("quota")).collect();
    eprintln!("console (filtered):\n{}", p2c_lines.join("\n"));
    let line = |tag: &str| console.lines().find_map(|l| l.find(tag).map(|at| l[at..].trim())).unwrap_or("");
    assert!(!console.contains("P2C-INSMOD-FAILED"), "{console}");
    assert_eq!(line("P2C-MOUNT"), "P2C-MOUNT rc=0", "{console}");
    assert_eq!(line("P2C-QUOTAON"), "P2C-QUOTAON rc=0", "{console}");
    assert_eq!(line("P2C-UNDER"), "P2C-UNDER rc=0", "{console}");
    assert_eq!(line("P2C-OVER"), "P2C-OVER rc=1", "{console}");
    assert!(console.contains("Disk quota exceeded"), "{console}");
    assert!(console.contains("P2C-DONE"), "{console}");
}
