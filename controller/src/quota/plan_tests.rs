use p2c_common::inventory::{FsQuota, Inventory, Mount, MountKind, QuotaChoiceError, QuotaLimit};
use p2c_common::migration::MigrateOptions;

use super::*;
use crate::quota::select_tests::limit;

const GIB_KIB: u64 = 1024 * 1024;

fn mount(dev: &str, mp: &str, kind: MountKind, used_gib: u64, inodes: u64) -> Mount {
    Mount {
        device: dev.into(),
        mountpoint: mp.into(),
        fs_type: "ext4".into(),
        kind,
        used_bytes: used_gib << 30,
        inodes_used: inodes,
        ..Default::default()
    }
}

fn fsq(mp: &str, users: Vec<QuotaLimit>, groups: Vec<QuotaLimit>) -> FsQuota {
    FsQuota {
        mountpoint: mp.into(),
        device: format!("/dev/{}", mp.trim_start_matches('/')),
        fs_type: "ext4".into(),
        format: "vfsv1".into(),
        users,
        groups,
        block_grace_secs: 7 * 86400,
        inode_grace_secs: 86400,
        ..Default::default()
    }
}

/// `/` 10 GiB, `/home` 20 GiB (mounted twice), `/proc` ignored; quotas on `/home` and
/// `/srv`.
fn inventory() -> Inventory {
    let usage_only = |id| QuotaLimit { id, used_bytes: 4096, ..Default::default() };
    Inventory {
        mounts: vec![
            mount("/dev/sda1", "/", MountKind::Local, 10, 300_000),
            mount("/dev/sda2", "/home", MountKind::Local, 20, 100_000),
            mount("/dev/sda2", "/srv/home-bind", MountKind::Local, 20, 100_000),
            mount("proc", "/proc", MountKind::Pseudo, 1, 1),
        ],
        quotas: vec![
            fsq(
                "/home",
                vec![limit(1000, 1000, 2000, 0, 0), limit(1001, 0, 4096, 10, 20), usage_only(1002)],
                vec![limit(100, 0, 9000, 0, 0)],
            ),
            fsq("/srv", vec![limit(1000, 5, 6, 0, 0), limit(2000, 1, 2, 0, 0)], vec![usage_only(200)]),
        ],
        ..Default::default()
    }
}

fn opts(partition: Option<&str>) -> MigrateOptions {
    let mut o = MigrateOptions::default();
    o.assess.quota_partition = partition.map(str::to_string);
    o
}

#[test]
fn two_candidates_need_a_choice() {
    assert!(matches!(
        QuotaPlan::compute(&inventory(), &opts(None)),
        Err(QuotaError::Choice(QuotaChoiceError::Ambiguous { .. }))
    ));
    assert!(matches!(
        QuotaPlan::compute(&inventory(), &opts(Some("/data"))),
        Err(QuotaError::Choice(QuotaChoiceError::NotFound { .. }))
    ));
}

#[test]
fn kept_partition_carries_and_the_other_drops() {
    let p = QuotaPlan::compute(&inventory(), &opts(Some("/home"))).unwrap();
    assert_eq!(p.chosen.as_deref(), Some("/home"));
    assert_eq!(p.carried_limits(), 3, "uid 1000, uid 1001, gid 100");
    assert_eq!(p.dropped_limits(), 2, "uids 1000 and 2000 on /srv");
    let home = p.partitions.iter().find(|q| q.mountpoint == "/home").unwrap();
    assert!(home.kept);
    assert_eq!((home.user_limits, home.group_limits), (2, 1));
    let srv = p.partitions.iter().find(|q| q.mountpoint == "/srv").unwrap();
    assert!(!srv.kept);
    assert_eq!((srv.user_limits, srv.group_limits), (2, 0));
    assert!(p.warnings.iter().any(|w| w.contains("/srv") && w.contains("dropped")));
    assert_eq!(p.users.iter().map(|l| l.id).collect::<Vec<_>>(), [1000, 1001]);
    assert_eq!(p.groups[0].block_hard, 9000);
    assert_eq!((p.block_grace_secs, p.inode_grace_secs), (604800, 86400));
    assert_eq!(p.quotatime, 604800);
    assert!(p.has_second_level());
}

#[test]
fn default_headroom_is_20_and_25_percent_of_local_usage() {
    let p = QuotaPlan::compute(&inventory(), &opts(Some("/home"))).unwrap();
    // 10 GiB + 20 GiB: the bind mount of sda2 and /proc do not count.
    assert_eq!(p.used_kib, 30 * GIB_KIB);
    assert_eq!(p.diskspace, (36 * GIB_KIB, 37 * GIB_KIB + GIB_KIB / 2));
    assert_eq!(p.used_inodes, 400_000);
    assert_eq!(p.diskinodes, (480_000, 500_000));
    assert_eq!(
        p.diskspace_origin,
        LimitOrigin::Computed {
            used: 30 * GIB_KIB,
            headroom: Headroom { soft_percent: 20, hard_percent: 25 }
        }
    );
}

#[test]
fn operator_headroom_and_small_sources() {
    let mut o = opts(Some("/home"));
    o.headroom_percent = Some(10);
    let p = QuotaPlan::compute(&inventory(), &o).unwrap();
    // 10 % soft, 13 % hard (1.25 x 10, rounded up).
    assert_eq!(p.diskspace, (33 * GIB_KIB, 30 * GIB_KIB + (30 * GIB_KIB * 13).div_ceil(100)));
    o.headroom_percent = Some(5000);
    assert!(matches!(QuotaPlan::compute(&inventory(), &o), Err(QuotaError::InvalidOption(_))));

    // A 1 MiB source gets the percentage of 256 MiB.
    let tiny = Inventory {
        mounts: vec![Mount {
            device: "/dev/sda1".into(),
            mountpoint: "/".into(),
            kind: MountKind::Local,
            used_bytes: 1 << 20,
            inodes_used: 10,
            ..Default::default()
        }],
        ..Default::default()
    };
    let p = QuotaPlan::compute(&tiny, &opts(None)).unwrap();
    assert_eq!(p.diskspace, (1024 + 52429, 1024 + 65536));
    assert_eq!(p.diskinodes, (10 + 3277, 10 + 4096));
    assert_eq!(p.chosen, None);
    assert_eq!(p.ugid_limit, 0);
    assert_eq!(p.quotatime, 0);
    assert!(!p.has_second_level());
}

#[test]
fn operator_limits_win_and_are_checked() {
    let mut o = opts(Some("/home"));
    o.diskspace = Some((1_000_000, 2_000_000));
    o.diskinodes = Some((50_000, 60_000));
    let p = QuotaPlan::compute(&inventory(), &o).unwrap();
    assert_eq!(p.diskspace, (1_000_000, 2_000_000));
    assert_eq!(p.diskinodes, (50_000, 60_000));
    assert_eq!(p.diskspace_origin, LimitOrigin::Operator);
    // Below the source's usage: allowed, but said.
    assert!(p.warnings.iter().any(|w| w.starts_with("DISKSPACE hard limit 2000000 KiB is below")));
    assert!(p.warnings.iter().any(|w| w.starts_with("DISKINODES hard limit 60000 is below")));

    o.diskspace = Some((3, 2));
    assert!(matches!(
        QuotaPlan::compute(&inventory(), &o),
        Err(QuotaError::InvalidLimit { what: "diskspace", soft: 3, hard: 2 })
    ));
    o.diskspace = None;
    o.diskinodes = Some((0, 0));
    assert!(matches!(
        QuotaPlan::compute(&inventory(), &o),
        Err(QuotaError::InvalidLimit { what: "diskinodes", .. })
    ));
}

#[test]
fn ugid_limit_covers_every_known_id_with_margin() {
    // uids 1000, 1001, 1002, 2000 and gids 100, 200: 6 ids, + 64, rounded to 100.
    let p = QuotaPlan::compute(&inventory(), &opts(Some("/srv"))).unwrap();
    assert_eq!(p.ugid_limit, 100);
    assert_eq!(ugid_limit_for(0), 0);
    assert_eq!(ugid_limit_for(6), 100);
    assert_eq!(ugid_limit_for(200), 300);
    assert_eq!(ugid_limit_for(1000), 1500);
}

#[test]
fn conf_keys_in_openvz_format() {
    let mut o = opts(Some("/home"));
    o.diskspace = Some((100, 200));
    o.diskinodes = Some((10, 20));
    let p = QuotaPlan::compute(&inventory(), &o).unwrap();
    let keys = p.conf_keys();
    let get = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("DISKSPACE"), Some("100:200"));
    assert_eq!(get("DISKINODES"), Some("10:20"));
    assert_eq!(get("QUOTATIME"), Some("604800"));
    assert_eq!(get("QUOTAUGIDLIMIT"), Some("100"));
    assert_eq!(keys.len(), 4);
}

#[test]
fn a_limit_above_the_container_total_is_reported() {
    let mut o = opts(Some("/home"));
    o.diskspace = Some((4000, 5000));
    let p = QuotaPlan::compute(&inventory(), &o).unwrap();
    assert!(p.warnings.iter().any(|w| w.starts_with("id 100: block hard limit 9000 KiB")));
}
