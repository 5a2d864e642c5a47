//! Choosing a method on fake nodes, and helpers shared by the quota unit tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use p2c_common::inventory::QuotaLimit;
use p2c_common::migration::{Layout, Target};

use super::cmd::fake::FakeRunner;
use super::plan::{Headroom, LimitOrigin, QuotaPlan};
use super::probe::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, MountEntry, NodeProbe};
use super::*;

/// A node described by hand.
#[derive(Default)]
pub struct FakeProbe {
    pub magic: u64,
    pub subvolumes: HashSet<PathBuf>,
    pub config: Option<String>,
    pub mount: Option<MountEntry>,
    pub paths: HashSet<PathBuf>,
    /// The loop device every file is attached to, if any.
    pub loop_device: Option<String>,
}

impl FakeProbe {
    pub fn btrfs() -> FakeProbe {
        FakeProbe { magic: BTRFS_SUPER_MAGIC, ..Default::default() }
    }

    pub fn subvolume(mut self, p: &Path) -> FakeProbe {
        self.subvolumes.insert(p.to_path_buf());
        self
    }
}

impl NodeProbe for FakeProbe {
    fn fs_magic(&self, _path: &Path) -> Result<u64> {
        Ok(self.magic)
    }
    fn mount_of(&self, _path: &Path) -> Option<MountEntry> {
        self.mount.clone()
    }
    fn is_btrfs_subvolume(&self, path: &Path) -> bool {
        self.subvolumes.contains(path)
    }
    fn kernel_config(&self) -> Option<(String, String)> {
        self.config.clone().map(|c| (c, "/proc/config.gz".into()))
    }
    fn kernel_release(&self) -> String {
        "6.1.0-test".into()
    }
    fn loop_device_of(&self, _file: &Path) -> Option<String> {
        self.loop_device.clone()
    }
    fn exists(&self, path: &Path) -> bool {
        self.paths.contains(path)
    }
}

pub fn limit(id: u32, block_soft: u64, block_hard: u64, inode_soft: u64, inode_hard: u64) -> QuotaLimit {
    QuotaLimit { id, block_soft, block_hard, inode_soft, inode_hard, ..Default::default() }
}

/// A plan with the given first-level limits, two users and one group.
pub fn plan_with(diskspace: (u64, u64), diskinodes: (u64, u64)) -> QuotaPlan {
    QuotaPlan {
        chosen: Some("/home".into()),
        partitions: Vec::new(),
        used_kib: 0,
        used_inodes: 0,
        diskspace,
        diskspace_origin: LimitOrigin::Operator,
        diskinodes,
        diskinodes_origin: LimitOrigin::Computed { used: 0, headroom: Headroom::default() },
        quotatime: 604800,
        ugid_limit: 100,
        users: vec![limit(1000, 1000, 2000, 10, 20), limit(1001, 0, 4096, 0, 0)],
        groups: vec![limit(100, 5000, 6000, 0, 0)],
        block_grace_secs: 604800,
        inode_grace_secs: 86400,
        layout: Layout::Simfs,
        warnings: Vec::new(),
    }
}

fn node(runner: FakeRunner, probe: FakeProbe) -> Node {
    Node { runner: Arc::new(runner), probe: Arc::new(probe) }
}

#[test]
fn virtuozzo_node_uses_its_tools() {
    let mut probe = FakeProbe::btrfs();
    probe.paths.insert(PathBuf::from("/proc/vz"));
    let n = node(FakeRunner::with_programs(&["vzctl", "vzquota", "vzdqload", "btrfs"]), probe);
    let sel = select(&n, Layout::Simfs, Target::Vz7, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::Vztools);
    assert!(sel.considered.iter().any(|c| c.method == Method::Ploop && !c.usable));
}

#[test]
fn vz_tools_without_vz_kernel_are_not_used() {
    let n = node(FakeRunner::with_programs(&["vzctl", "vzquota", "vzdqload", "btrfs"]), FakeProbe::btrfs());
    let sel = select(&n, Layout::Simfs, Target::Vz7, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::BtrfsQgroup);
    let vz = sel.considered.iter().find(|c| c.method == Method::Vztools).unwrap();
    assert!(vz.reason.contains("/proc/vz"), "{}", vz.reason);
}

#[test]
fn plain_ext4_node_without_quota_records_only() {
    let probe = FakeProbe {
        magic: EXT4_SUPER_MAGIC,
        config: Some("CONFIG_QUOTA=y\n# CONFIG_QFMT_V2 is not set\n# CONFIG_XFS_QUOTA is not set\n".into()),
        mount: Some(MountEntry {
            mountpoint: "/".into(),
            fs_type: "ext4".into(),
            source: "/dev/vda".into(),
            options: vec!["rw".into()],
        }),
        ..Default::default()
    };
    let n = node(FakeRunner::with_programs(&["btrfs", "chattr", "setquota"]), probe);
    let sel = select(&n, Layout::Simfs, Target::Vz7, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::RecordOnly);
    let pq = sel.considered.iter().find(|c| c.method == Method::ProjectQuota).unwrap();
    assert!(!pq.usable);
    assert!(pq.reason.contains("CONFIG_QFMT_V2"), "{}", pq.reason);
    let btrfs = sel.considered.iter().find(|c| c.method == Method::BtrfsQgroup).unwrap();
    assert!(btrfs.reason.contains("not btrfs"), "{}", btrfs.reason);

    let out = sel.backend.apply(101, Path::new("/vz/private/101"), &plan_with((10, 20), (1, 2))).unwrap();
    assert!(!out.applied && !out.second_level_applied);
    assert!(out.details[0].contains("NOT enforced"));
    assert!(out.details.iter().any(|d| d.contains("CONFIG_QFMT_V2")));
    assert_eq!(out.limits.conf[0], ("DISKSPACE".to_string(), "10:20".to_string()));
    assert_eq!(out.limits.users.len(), 2);
}

#[test]
fn project_quota_when_kernel_and_mount_allow() {
    let probe = FakeProbe {
        magic: EXT4_SUPER_MAGIC,
        config: Some("CONFIG_QUOTA=y\nCONFIG_QFMT_V2=m\n".into()),
        mount: Some(MountEntry {
            mountpoint: "/vz".into(),
            fs_type: "ext4".into(),
            source: "/dev/sdb1".into(),
            options: vec!["rw".into(), "prjquota".into()],
        }),
        ..Default::default()
    };
    let n = node(FakeRunner::with_programs(&["chattr", "setquota"]), probe);
    let sel = select(&n, Layout::Simfs, Target::Vz7, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::ProjectQuota);
}

#[test]
fn ploop_layout_uses_the_image() {
    let n = node(
        FakeRunner::with_programs(&["mkfs.ext4", "mount", "umount", "quotacheck", "setquota", "vzctl"]),
        FakeProbe::btrfs(),
    );
    assert_eq!(select(&n, Layout::Ploop, Target::Openvz, Path::new("/vz/private")).method(), Method::Ploop);
    let n = node(FakeRunner::with_programs(&["mount"]), FakeProbe::btrfs());
    let sel = select(&n, Layout::Ploop, Target::Openvz, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::RecordOnly);
    assert!(sel.considered[0].reason.contains("mkfs.ext4"));
}

#[test]
fn a_vz7_ploop_container_needs_the_tools_that_make_its_image() {
    let raw_tools = ["mkfs.ext4", "mount", "umount", "quotacheck", "setquota"];
    let n = node(FakeRunner::with_programs(&raw_tools), FakeProbe::btrfs());
    assert_eq!(select(&n, Layout::Ploop, Target::Openvz, Path::new("/vz/private")).method(), Method::Ploop);
    let sel = select(&n, Layout::Ploop, Target::Vz7, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::RecordOnly);
    assert!(
        sel.considered[0].reason.contains("qemu-storage-daemon (package qemu-system-common)"),
        "{:?}",
        sel.considered
    );
    let mut with_ploop = raw_tools.to_vec();
    with_ploop.push("ploop");
    let n = node(FakeRunner::with_programs(&with_ploop), FakeProbe::btrfs());
    let sel = select(&n, Layout::Ploop, Target::Vz9, Path::new("/vz/private"));
    assert_eq!(sel.method(), Method::Ploop);
    assert!(sel.considered[0].reason.contains("the node's ploop tool"), "{:?}", sel.considered);
}
