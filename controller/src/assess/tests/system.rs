use p2c_common::manifest::Problem;
use p2c_common::paths::RelPath;

use super::*;
use crate::assess::ExistingPrivate;

#[test]
fn kernel_modules_split_features_from_drivers() {
    let mut inv = plain_inventory();
    inv.kernel_modules =
        ["e1000e", "iptable_nat", "nf_conntrack", "tun", "snd-hda-intel"].map(String::from).to_vec();
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::KERNEL_MODULES);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "the node must provide: iptable_nat, nf_conntrack, tun"));
    assert!(has(f, "hardware drivers, not needed in a container: e1000e, snd-hda-intel"));

    inv.kernel_modules = vec!["e1000e".into()];
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    assert_eq!(get(&r, codes::KERNEL_MODULES).severity, Severity::Info);
}

#[test]
fn nested_container_runtimes_are_a_warning() {
    let mut inv = plain_inventory();
    inv.container_runtimes = vec!["docker".into(), "lxc".into()];
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::NESTED_CONTAINERS);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("docker, lxc"));
    assert!(f.action.contains("nesting"));
}

fn windows(version: Option<&str>, node_os: NodeOs) -> Report {
    let mut inv = plain_inventory();
    inv.os = OsInfo {
        id: "windows".into(),
        pretty_name: "Windows Server".into(),
        family: OsFamily::Windows,
        windows_version: version.map(str::to_string),
        ..Default::default()
    };
    let node = NodeFacts { os: node_os, ..plain_node() };
    run(&inv, None, &node, &AssessOptions::default())
}

#[test]
fn windows_sources_only_go_to_the_same_windows_version() {
    let win = |v: &str| NodeOs::Windows { version: v.to_string() };
    let r = windows(Some("2008"), win("Windows Server 2008"));
    assert_eq!(get(&r, codes::WINDOWS_VERSION).severity, Severity::Info);
    assert!(!r.has_blockers());

    let r = windows(Some("2008"), win("2003"));
    let f = get(&r, codes::WINDOWS_VERSION);
    assert_eq!(f.severity, Severity::Blocker);
    assert!(has(f, "this node: Windows Server 2003"));

    let r = windows(Some("2008"), win("2008 R2"));
    assert_eq!(get(&r, codes::WINDOWS_VERSION).severity, Severity::Blocker);

    let r = windows(Some("2003"), NodeOs::Linux);
    let f = get(&r, codes::WINDOWS_VERSION);
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.title.contains("Windows Server 2003 can only move to a node running Windows Server 2003"));
    assert!(has(f, "this node: Linux (Debian GNU/Linux 12 (bookworm))"));

    let r = windows(None, win("2008"));
    assert_eq!(get(&r, codes::WINDOWS_VERSION).severity, Severity::Blocker);

    // a Linux source never gets the finding
    assert!(plain_report().find(codes::WINDOWS_VERSION).is_none());
}

#[test]
fn sockets_and_scan_errors_are_listed() {
    let mut scan = plain_scan();
    scan.sockets.push(RelPath::new(b"var/spool/postfix/private/smtp".to_vec()).unwrap());
    scan.errors.push(Problem {
        path: RelPath::new(b"srv/locked".to_vec()).unwrap(),
        reason: "cannot open directory: Permission denied".into(),
    });
    let r = run(&plain_inventory(), Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::SKIPPED);
    assert_eq!(f.severity, Severity::Info);
    assert!(has(f, "1 socket(s), not copied"));
    assert!(has(f, "/var/spool/postfix/private/smtp"));
    assert!(has(f, "could not be scanned: /srv/locked: cannot open directory"));
}

#[test]
fn partial_retry_says_how_to_resume_or_discard() {
    let f = plain_report();
    let f = get(&f, codes::PARTIAL_RETRY);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.action.contains("p2c discard N"));
    assert!(f.action.contains("resumes"));

    let node = NodeFacts {
        existing_private: Some(ExistingPrivate {
            path: "/vz/private/101".into(),
            bytes: 5 * GIB,
            files: 42_000,
        }),
        ..plain_node()
    };
    let opts = AssessOptions { ctid: Some(101), ..Default::default() };
    let r = run(&plain_inventory(), Some(&plain_scan()), &node, &opts);
    let f = get(&r, codes::PARTIAL_RETRY);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.title.contains("42000 entries (5.0 GiB) for container 101"));
    assert!(has(f, "/vz/private/101: 42000 entries, 5.0 GiB"));
    assert!(f.action.contains("p2c discard 101"));
    assert_eq!(f.data["existing"]["bytes"], 5 * GIB);
}

#[test]
fn node_target_says_what_the_container_is_made_for_and_warns_on_another_platform() {
    use crate::platform::NodeTarget;
    use p2c_common::migration::Target;
    let inv = plain_inventory();
    let mut node = plain_node();
    node.target = Some(NodeTarget {
        target: Target::Vz7,
        evidence: "/etc/virtuozzo-release: OpenVZ release 7.0.11".into(),
        detected: true,
    });
    let r = run(&inv, Some(&plain_scan()), &node, &AssessOptions::default());
    let f = get(&r, codes::NODE_TARGET);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.title.contains("vz7 (OpenVZ 7 / Virtuozzo 7)"), "{}", f.title);
    assert!(has(f, "OpenVZ release 7.0.11"));
    assert_eq!(f.data["target"], "vz7");

    let vz9 = AssessOptions { target: Some(Target::Vz9), ..Default::default() };
    let f = get(&run(&inv, Some(&plain_scan()), &node, &vz9), codes::NODE_TARGET).clone();
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("made for vz9") && f.title.contains("this node is vz7"), "{}", f.title);

    // On a node with no platform marks, another target is what the operator asked for.
    node.target = Some(crate::platform::resolve(None, &crate::platform::Marks::default()));
    let f = get(&run(&inv, Some(&plain_scan()), &node, &vz9), codes::NODE_TARGET).clone();
    assert_eq!(f.severity, Severity::Info);
    assert!(has(&f, "asked for with --target"));
}

#[test]
fn node_boot_check_says_what_to_install() {
    let inv = plain_inventory();
    let mut node = plain_node();
    node.boot_tools = Some(Ok("/usr/bin/systemd-nspawn (systemd 252), overlayfs".into()));
    let f = get(&run(&inv, Some(&plain_scan()), &node, &AssessOptions::default()), codes::NODE_BOOT_CHECK)
        .clone();
    assert_eq!(f.severity, Severity::Info);
    assert!(has(&f, "systemd-nspawn"));
    node.boot_tools = Some(Err(crate::assess::MissingTool {
        what: "systemd-nspawn".into(),
        package: "systemd-container".into(),
    }));
    let f = get(&run(&inv, Some(&plain_scan()), &node, &AssessOptions::default()), codes::NODE_BOOT_CHECK)
        .clone();
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.action.contains("install systemd-container"), "{}", f.action);
    assert_eq!(f.data["package"], "systemd-container");
}
