use p2c_common::inventory::{FsQuota, QuotaLimit};

use super::*;

fn limit(id: u32, hard_kib: u64, used_bytes: u64) -> QuotaLimit {
    QuotaLimit {
        id,
        name: Some(format!("u{id}")),
        block_soft: hard_kib / 2,
        block_hard: hard_kib,
        used_bytes,
        ..Default::default()
    }
}

fn fsq(mp: &str, users: Vec<QuotaLimit>, groups: Vec<QuotaLimit>) -> FsQuota {
    FsQuota {
        mountpoint: mp.into(),
        device: format!("/dev/x{}", mp.len()),
        fs_type: "ext4".into(),
        format: "vfsv1".into(),
        users,
        groups,
        ..Default::default()
    }
}

fn with_quotas(quotas: Vec<FsQuota>, requested: Option<&str>) -> Report {
    let mut inv = plain_inventory();
    inv.quotas = quotas;
    let opts = AssessOptions { quota_partition: requested.map(str::to_string), ..Default::default() };
    run(&inv, Some(&plain_scan()), &plain_node(), &opts)
}

#[test]
fn one_partition_with_quotas_is_kept_by_default() {
    let r = with_quotas(
        vec![fsq("/home", vec![limit(1000, 1 << 20, 0), limit(1001, 0, 0)], vec![limit(100, 1 << 20, 0)])],
        None,
    );
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.title.contains("/home are kept: 1 user and 1 group"), "{}", f.title);
    assert_eq!(f.data["chosen"], "/home");
    assert_eq!(f.data["carried"]["users"], 1);
    assert_eq!(f.data["dropped"]["users"], 0);
}

#[test]
fn two_candidates_without_a_choice_block() {
    let quotas = vec![
        fsq("/home", vec![limit(1000, 100, 0)], vec![]),
        fsq("/srv", vec![limit(1000, 100, 0), limit(1002, 100, 0)], vec![]),
    ];
    let r = with_quotas(quotas.clone(), None);
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.title.contains("/home, /srv"));
    assert!(f.action.contains("--quota-partition"));
    assert!(has(f, "/srv (/dev/x4 ext4, vfsv1 quota): 2 user and 0 group limit(s) — candidate"));

    let r = with_quotas(quotas, Some("/srv"));
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.data["carried"]["users"], 2);
    assert_eq!(f.data["dropped"]["users"], 1);
    assert!(has(f, "/home (/dev/x5 ext4, vfsv1 quota): 1 user and 0 group limit(s) — dropped"));
    assert!(f.action.contains("applied container-wide"));
}

#[test]
fn a_requested_partition_without_quotas_blocks() {
    // nothing has quotas at all
    let r = with_quotas(vec![], Some("/home"));
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.title.contains("no source partition with quotas"));
    // quotas are on for /var but set no limits
    let r = with_quotas(
        vec![fsq("/home", vec![limit(1, 10, 0)], vec![]), fsq("/var", vec![limit(1, 0, 0)], vec![])],
        Some("/var"),
    );
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.title.contains("sets no quota limits"));
}

#[test]
fn users_over_their_container_wide_limit_are_named() {
    let r = with_quotas(
        vec![
            fsq("/home", vec![limit(1000, 1024, 800 << 10)], vec![]),
            fsq("/var", vec![limit(1000, 0, 500 << 10)], vec![]),
        ],
        None,
    );
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "uid 1000 (u1000): uses 1.3 MiB"), "{:?}", f.evidence);
    assert_eq!(f.data["over_limit"][0]["id"], 1000);
}

#[test]
fn quota_options_without_readable_limits_are_reported() {
    let mut inv = plain_inventory();
    inv.mounts[0].options.push("usrquota".into());
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::QUOTA_PARTITION);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "/: mounted with quota options, but its limits could not be read"));
}
