//! The command lines and the dump against vzctl(8), vzquota(8) and vzdqload's parser.

use std::sync::Arc;

use super::*;
use crate::quota::cmd::fake::FakeRunner;
use crate::quota::select_tests::{FakeProbe, limit, plan_with};

#[test]
fn vzctl_set_line() {
    let plan = plan_with((1_000_000, 1_200_000), (200_000, 220_000));
    assert_eq!(
        vzctl_set(101, &plan).to_string(),
        "vzctl set 101 --diskspace 1000000:1200000 --diskinodes 200000:220000 --quotatime 604800 --quotaugidlimit 100 --save"
    );
}

#[test]
fn setlimit2_lines() {
    let plan = plan_with((1, 2), (1, 2));
    let lines: Vec<String> = setlimit2(101, &plan).unwrap().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "vzquota setlimit2 101 -t -u 604800 86400",
            "vzquota setlimit2 101 -t -g 604800 86400",
            "vzquota setlimit2 101 -u 1000 1000 2000 10 20",
            "vzquota setlimit2 101 -u 1001 0 4096 0 0",
            "vzquota setlimit2 101 -g 100 5000 6000 0 0",
        ]
    );
}

/// Reads a dump the way vzdqload does: skip `#` lines, then `%s%u`-style fields in order.
fn parse_like_vzdqload(dump: &str) -> (u32, Vec<[u64; 3]>, Vec<[u64; 6]>) {
    let mut lines = dump.lines().filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut fields = |label: &str| -> Vec<u64> {
        let l = lines.next().unwrap();
        assert!(!l.contains("  "), "fields are tab-separated: {l:?}");
        let mut f = l.split('\t');
        assert_eq!(f.next(), Some(label), "line {l:?}");
        f.map(|x| {
            let v: u64 = x.parse().unwrap();
            assert!(v <= u32::MAX as u64, "%u overflow in {l:?}");
            v
        })
        .collect()
    };
    let status = fields("ugid_quota_status:")[0] as u32;
    let grace: Vec<[u64; 3]> = (0..2).map(|_| fields("grace_time:").try_into().unwrap()).collect();
    let n = fields("ugid_number:")[0];
    let ugids = (0..n).map(|_| fields("ugid:").try_into().unwrap()).collect();
    assert!(lines.next().is_none(), "nothing after the last ugid line");
    (status, grace, ugids)
}

#[test]
fn dump_matches_vzdqload_format() {
    let plan = plan_with((1, 2), (1, 2));
    let d = dump(&plan).unwrap();
    assert!(d.starts_with("ugid_quota_status:\t1\n"));
    assert!(d.lines().all(|l| !l.is_empty()), "vzdqload does not skip empty lines");
    let (status, grace, ugids) = parse_like_vzdqload(&d);
    assert_eq!(status, 1);
    assert_eq!(grace, [[0, 604800, 86400], [1, 604800, 86400]]);
    assert_eq!(ugids, [[1000, 0, 1000, 2000, 10, 20], [1001, 0, 0, 4096, 0, 0], [100, 1, 5000, 6000, 0, 0],]);
    let cmd = vzdqload(101, &plan).unwrap();
    assert_eq!(cmd.argv(), ["vzdqload", "101", "-G", "-U"]);
    assert_eq!(cmd.stdin.as_deref(), Some(d.as_bytes()));
}

#[test]
fn dump_refuses_limits_past_32_bits() {
    let mut plan = plan_with((1, 2), (1, 2));
    plan.users.push(limit(7, 0, 5 << 32, 0, 0));
    assert!(matches!(dump(&plan), Err(QuotaError::TooLarge { value, .. }) if value == 5 << 32));
    // setlimit2 takes 64-bit block limits.
    assert!(setlimit2(101, &plan).is_ok());
}

#[test]
fn status_words() {
    assert!(status_running("CTID 101 exist mounted running\n"));
    assert!(!status_running("CTID 101 exist unmounted down\n"));
    assert!(!status_running(""));
}

fn backend(runner: FakeRunner) -> (VzToolsBackend, Arc<FakeRunner>) {
    let runner = Arc::new(runner);
    let node = Node { runner: runner.clone(), probe: Arc::new(FakeProbe::default()) };
    (VzToolsBackend::new(node), runner)
}

#[test]
fn stopped_container_gets_quotainit_and_vzdqload() {
    let (b, runner) =
        backend(FakeRunner::default().answer("vzctl status 101", 0, "CTID 101 exist unmounted down\n"));
    let plan = plan_with((10, 20), (1, 2));
    let out = b.apply(101, Path::new("/vz/private/101"), &plan).unwrap();
    assert!(out.applied && out.second_level_applied);
    let lines: Vec<String> = runner.ran().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "vzctl set 101 --diskspace 10:20 --diskinodes 1:2 --quotatime 604800 --quotaugidlimit 100 --save",
            "vzctl status 101",
            "vzctl quotainit 101",
            "vzdqload 101 -G -U <stdin>",
        ]
    );
    assert_eq!(out.commands, lines);
}

#[test]
fn running_container_gets_setlimit2() {
    let (b, runner) =
        backend(FakeRunner::default().answer("vzctl status 101", 0, "CTID 101 exist mounted running\n"));
    let out = b.apply(101, Path::new("/vz/private/101"), &plan_with((10, 20), (1, 2))).unwrap();
    assert!(out.second_level_applied);
    let ran = runner.ran();
    assert_eq!(ran.len(), 2 + 5);
    assert!(ran[2..].iter().all(|c| c.program == "vzquota" && c.argv()[1] == "setlimit2"));
}

#[test]
fn no_second_level_without_limits_and_failures_are_errors() {
    let mut plan = plan_with((10, 20), (1, 2));
    plan.users.clear();
    plan.groups.clear();
    plan.ugid_limit = 0;
    let (b, runner) = backend(FakeRunner::default());
    let out = b.apply(101, Path::new("/p"), &plan).unwrap();
    assert!(out.applied && !out.second_level_applied);
    assert_eq!(runner.ran().len(), 1);

    let (b, _) = backend(FakeRunner::default().answer("vzctl set", 3, ""));
    assert!(matches!(
        b.apply(101, Path::new("/p"), &plan),
        Err(QuotaError::Command { status, .. }) if status == "exit code 3"
    ));
}
