use std::cell::Cell;
use std::collections::BTreeMap;

use p2c_common::inventory::{Mount, MountKind};

use super::*;
use crate::inventory::quotafile::QuotaFormat;
use crate::inventory::quotafile::tests::build;

/// A kernel with quotas in memory.
struct FakeCtl {
    /// `None`: quotas off (ESRCH).
    entries: Option<BTreeMap<(u8, u32), DiskQuota>>,
    next_supported: bool,
    fail_with: Option<i32>,
    calls: Cell<usize>,
}

impl FakeCtl {
    fn active(list: &[(QuotaType, DiskQuota)]) -> FakeCtl {
        FakeCtl {
            entries: Some(list.iter().map(|(k, q)| ((*k as u8, q.id), q.clone())).collect()),
            next_supported: true,
            fail_with: None,
            calls: Cell::new(0),
        }
    }

    fn off() -> FakeCtl {
        FakeCtl { entries: None, next_supported: true, fail_with: None, calls: Cell::new(0) }
    }

    fn check(
        &self,
        device: &Path,
        kind: QuotaType,
    ) -> Result<&BTreeMap<(u8, u32), DiskQuota>, QuotactlError> {
        self.calls.set(self.calls.get() + 1);
        if let Some(errno) = self.fail_with {
            return Err(QuotactlError::Sys {
                device: device.display().to_string(),
                op: "Q_GETINFO",
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        self.entries
            .as_ref()
            .ok_or(QuotactlError::NotActive { device: device.display().to_string(), kind: kind.name() })
    }
}

impl QuotaCtl for FakeCtl {
    fn info(&self, device: &Path, kind: QuotaType) -> Result<KernelInfo, QuotactlError> {
        self.check(device, kind)?;
        Ok(KernelInfo { block_grace: 600, inode_grace: 1200 })
    }

    fn format(&self, device: &Path, kind: QuotaType) -> Result<u32, QuotactlError> {
        self.check(device, kind)?;
        Ok(4)
    }

    fn next(&self, device: &Path, kind: QuotaType, id: u32) -> Result<Option<DiskQuota>, QuotactlError> {
        let e = self.check(device, kind)?;
        if !self.next_supported {
            return Err(QuotactlError::Unsupported {
                device: device.display().to_string(),
                op: "Q_GETNEXTQUOTA",
            });
        }
        Ok(e.range((kind as u8, id)..=(kind as u8, u32::MAX)).next().map(|(_, q)| q.clone()))
    }

    fn get(&self, device: &Path, kind: QuotaType, id: u32) -> Result<DiskQuota, QuotactlError> {
        let e = self.check(device, kind)?;
        Ok(e.get(&(kind as u8, id)).cloned().unwrap_or(DiskQuota { id, ..Default::default() }))
    }
}

fn q(id: u32, hard: u64) -> DiskQuota {
    DiskQuota {
        id,
        block_soft: hard / 2,
        block_hard: hard,
        inode_soft: 5,
        inode_hard: 10,
        cur_space: 4096,
        cur_inodes: 2,
        ..Default::default()
    }
}

fn mount(dir: &Path, mountpoint: &str, options: &[&str], is_mount_point: bool) -> LocatedMount {
    LocatedMount {
        mount: Mount {
            device: "/dev/fake1".into(),
            mountpoint: mountpoint.into(),
            fs_type: "ext4".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            kind: MountKind::Local,
            ..Default::default()
        },
        live_path: dir.to_path_buf(),
        major: 8,
        minor: 1,
        is_mount_point,
        fs_root: b"/".to_vec(),
    }
}

fn names() -> Names {
    Names { users: [(1000, "alice".to_string())].into(), groups: [(100, "users".to_string())].into() }
}

fn write_files(dir: &Path, users: &[DiskQuota], groups: &[DiskQuota]) {
    let u = build(QuotaFormat::VfsV0, QuotaType::User, users, (7, 8));
    let g = build(QuotaFormat::VfsV0, QuotaType::Group, groups, (9, 10));
    std::fs::write(dir.join("aquota.user"), u).unwrap();
    std::fs::write(dir.join("aquota.group"), g).unwrap();
}

#[test]
fn reads_active_kernel_quotas() {
    let t = tempfile::tempdir().unwrap();
    let ctl = FakeCtl::active(&[
        (QuotaType::User, q(1000, 100)),
        (QuotaType::User, q(1001, 200)),
        (QuotaType::User, q(u32::MAX, 1)),
        (QuotaType::Group, q(100, 300)),
    ]);
    let m = [mount(t.path(), "/home", &["rw", "usrquota", "grpquota"], true)];
    let (fq, gaps) = collect_quotas(&m, true, &ctl, &names());
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(fq.len(), 1);
    let f = &fq[0];
    assert_eq!(f.mountpoint, "/home");
    assert_eq!(f.source, QuotaSource::Kernel);
    assert_eq!(f.format, "vfsv1");
    assert_eq!((f.block_grace_secs, f.inode_grace_secs), (600, 1200));
    assert_eq!(f.users.len(), 3);
    assert_eq!(
        f.users[0],
        QuotaLimit {
            id: 1000,
            name: Some("alice".into()),
            block_soft: 50,
            block_hard: 100,
            inode_soft: 5,
            inode_hard: 10,
            used_bytes: 4096,
            used_inodes: 2,
        }
    );
    assert_eq!(f.users[2].id, u32::MAX);
    assert_eq!(f.groups[0].name.as_deref(), Some("users"));
}

#[test]
fn old_kernels_are_asked_for_the_ids_of_the_quota_file() {
    let t = tempfile::tempdir().unwrap();
    write_files(t.path(), &[q(1000, 1), q(1001, 1)], &[q(100, 1)]);
    let mut ctl = FakeCtl::active(&[(QuotaType::User, q(1001, 999))]);
    ctl.next_supported = false;
    let m = [mount(t.path(), "/", &[], true)];
    let (fq, gaps) = collect_quotas(&m, true, &ctl, &names());
    assert!(gaps.is_empty(), "{gaps:?}");
    let f = &fq[0];
    assert_eq!(f.source, QuotaSource::Kernel);
    // The kernel's values, for the file's ids.
    assert_eq!(f.users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![1000, 1001]);
    assert_eq!(f.users[1].block_hard, 999);
    assert_eq!(f.users[0].block_hard, 0);
}

#[test]
fn inactive_kernel_quotas_fall_back_to_files() {
    let t = tempfile::tempdir().unwrap();
    write_files(t.path(), &[q(1000, 100)], &[q(100, 300), q(200, 0)]);
    let ctl = FakeCtl::off();
    let m = [mount(t.path(), "/srv", &["usrquota"], true)];
    let (fq, gaps) = collect_quotas(&m, true, &ctl, &names());
    assert!(gaps.is_empty(), "{gaps:?}");
    let f = &fq[0];
    assert_eq!(f.source, QuotaSource::Files);
    assert_eq!(f.format, "vfsv0");
    assert_eq!((f.block_grace_secs, f.inode_grace_secs), (7, 8));
    assert_eq!(f.users[0].block_hard, 100);
    assert_eq!(f.groups.len(), 2);
    assert!(ctl.calls.get() > 0);
}

#[test]
fn tree_facts_and_plain_directories_never_ask_the_kernel() {
    let t = tempfile::tempdir().unwrap();
    write_files(t.path(), &[q(1000, 100)], &[]);
    let ctl = FakeCtl::active(&[(QuotaType::User, q(1, 1))]);
    let (fq, _) = collect_quotas(&[mount(t.path(), "/", &[], true)], false, &ctl, &names());
    assert_eq!(fq[0].users[0].id, 1000);
    let (fq, _) = collect_quotas(&[mount(t.path(), "/", &[], false)], true, &ctl, &names());
    assert_eq!(fq[0].users[0].id, 1000);
    assert_eq!(ctl.calls.get(), 0);
}

#[test]
fn kernel_errors_are_reported_and_files_used() {
    let t = tempfile::tempdir().unwrap();
    write_files(t.path(), &[q(1000, 100)], &[]);
    let mut ctl = FakeCtl::off();
    ctl.fail_with = Some(nix::libc::ENOTBLK);
    let (fq, gaps) = collect_quotas(&[mount(t.path(), "/data", &["quota"], true)], true, &ctl, &names());
    assert_eq!(fq[0].source, QuotaSource::Files);
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(gaps[0].starts_with("quotas of /data: quotactl"), "{gaps:?}");
}

#[test]
fn which_mounts_are_looked_at() {
    let t = tempfile::tempdir().unwrap();
    let ctl = FakeCtl::off();
    // No options, no files, not the root: skipped without a word.
    let (fq, gaps) = collect_quotas(&[mount(t.path(), "/var", &["rw"], true)], true, &ctl, &names());
    assert!(fq.is_empty() && gaps.is_empty());
    assert_eq!(ctl.calls.get(), 0);
    // The root without quotas: nothing to report either.
    let (fq, gaps) = collect_quotas(&[mount(t.path(), "/", &["rw"], true)], false, &ctl, &names());
    assert!(fq.is_empty() && gaps.is_empty());
    // Quota options but nothing readable: a gap that says why.
    let (fq, gaps) =
        collect_quotas(&[mount(t.path(), "/home", &["rw", "usrquota"], true)], false, &ctl, &names());
    assert!(fq.is_empty());
    assert!(gaps[0].contains("/home") && gaps[0].contains("usrquota"), "{gaps:?}");
    // Pseudo file systems are never looked at.
    let mut p = mount(t.path(), "/proc", &["usrquota"], true);
    p.mount.kind = MountKind::Pseudo;
    assert_eq!(collect_quotas(&[p], true, &ctl, &names()), (vec![], vec![]));
}

#[test]
fn journalled_quota_option_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let u = build(QuotaFormat::VfsV1, QuotaType::User, &[q(1000, 5)], (1, 1));
    std::fs::write(t.path().join("my.quota.user"), u).unwrap();
    let m = [mount(t.path(), "/", &["usrjquota=my.quota.user", "jqfmt=vfsv1"], true)];
    let (fq, gaps) = collect_quotas(&m, false, &FakeCtl::off(), &names());
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(fq[0].format, "vfsv1");
    assert!(fq[0].groups.is_empty());
}

#[test]
fn corrupt_files_become_gaps() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("aquota.user"), b"not a quota file at all, clearly").unwrap();
    write_group_only(t.path());
    let (fq, gaps) = collect_quotas(&[mount(t.path(), "/", &[], true)], false, &FakeCtl::off(), &names());
    assert_eq!(fq.len(), 1);
    assert!(fq[0].users.is_empty());
    assert_eq!(fq[0].groups.len(), 1);
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0].contains("aquota.user"), "{gaps:?}");
}

fn write_group_only(dir: &Path) {
    let g = build(QuotaFormat::VfsV1, QuotaType::Group, &[q(100, 1)], (3, 4));
    std::fs::write(dir.join("aquota.group"), g).unwrap();
}
