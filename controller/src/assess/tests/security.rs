use p2c_common::inventory::{Selinux, SelinuxMode};
use p2c_common::paths::RelPath;
use p2c_common::scan::HighId;

use super::*;

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

#[test]
fn selinux_reports_mode_and_labels() {
    let mut inv = plain_inventory();
    inv.selinux = Selinux {
        mode: SelinuxMode::Enforcing,
        config_mode: Some(SelinuxMode::Enforcing),
        policy: Some("targeted".into()),
    };
    let mut scan = plain_scan();
    scan.selinux_labelled = 118_000;
    let r = run(&inv, Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::SELINUX);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("enforcing"));
    assert!(has(f, "SELINUX=enforcing, SELINUXTYPE=targeted"));
    assert!(has(f, "118000 file(s) carry a security.selinux label"));
    assert!(f.action.contains("SELINUX=disabled"));
    assert_eq!(f.data["mode"], "enforcing");
    assert_eq!(f.data["labelled_files"], 118_000);

    // configured enforcing, but the kernel does not run it now: it would at the next boot
    inv.selinux.mode = SelinuxMode::Disabled;
    let r = run(&inv, Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::SELINUX);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("configured enforcing") && f.title.contains("running: disabled"), "{}", f.title);

    // disabled, but files still labelled: worth knowing, nothing breaks
    inv.selinux.mode = SelinuxMode::Disabled;
    inv.selinux.config_mode = Some(SelinuxMode::Disabled);
    let r = run(&inv, Some(&scan), &plain_node(), &AssessOptions::default());
    assert_eq!(get(&r, codes::SELINUX).severity, Severity::Info);
}

fn xattr_scan() -> ScanResult {
    let mut s = plain_scan();
    let c = &mut s.xattrs;
    c.files = 3;
    c.bytes = 300;
    c.user.push(rel("srv/a"));
    c.system.push(rel("srv/b"));
    c.acl.push(rel("srv/b"));
    c.security.push(rel("usr/bin/ping"));
    c.capabilities.push(rel("usr/bin/ping"));
    s
}

fn xattr_report(keep: bool, supported: bool) -> Report {
    let node = NodeFacts { xattrs_supported: supported, ..plain_node() };
    let opts = AssessOptions { keep_xattrs: keep, ..Default::default() };
    run(&plain_inventory(), Some(&xattr_scan()), &node, &opts)
}

#[test]
fn xattrs_are_dropped_by_default_and_say_so() {
    let r = xattr_report(false, true);
    let f = get(&r, codes::XATTRS);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("3 file(s)") && f.title.contains("drops them"));
    assert!(has(f, "user.*: 1 file(s), e.g. /srv/a"));
    assert!(has(f, "POSIX ACLs: 1 file(s), e.g. /srv/b"));
    assert!(has(f, "file capabilities (security.capability): 1 file(s), e.g. /usr/bin/ping"));
    assert!(f.action.contains("--keep-xattrs"));
    assert!(f.action.contains("security.selinux labels are always dropped"));
    assert_eq!(f.data["namespaces"]["acl"]["total"], 1);
}

#[test]
fn keep_xattrs_keeps_them_where_the_node_can() {
    let f = xattr_report(true, true);
    let f = get(&f, codes::XATTRS);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.action.contains("kept on the node's ext4"));

    let r = xattr_report(true, false);
    let f = get(&r, codes::XATTRS);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("cannot store"));
}

#[test]
fn high_ids_are_listed() {
    let mut scan = plain_scan();
    scan.high_ids.push(HighId { path: rel("home/ldapuser/x"), uid: 70000, gid: 70000 });
    let r = run(&plain_inventory(), Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::HIGH_IDS);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "/home/ldapuser/x (uid 70000, gid 70000)"));
    assert_eq!(f.data["total"], 1);
}
