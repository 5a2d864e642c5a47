//! Every rule against synthetic inventories, scan results and node facts.

mod devices;
mod network;
mod node;
mod quota;
mod security;
mod storage;
mod system;

use std::net::IpAddr;

use p2c_common::findings::{Finding, Report, Severity, codes};
use p2c_common::inventory::{
    BlockDevice, IfAddr, Interface, Inventory, Listener, Mount, MountKind, OsFamily, OsInfo,
};
use p2c_common::migration::AssessOptions;
use p2c_common::scan::ScanResult;

use super::{NodeFacts, NodeOs, assess, scan_options};

pub(super) const GIB: u64 = 1 << 30;

pub(super) fn addr(s: &str, prefix: u8) -> IfAddr {
    IfAddr { address: s.parse::<IpAddr>().unwrap(), prefix }
}

pub(super) fn mount(device: &str, mp: &str, fs: &str, used_gib: u64) -> Mount {
    Mount {
        device: device.into(),
        mountpoint: mp.into(),
        fs_type: fs.into(),
        options: vec!["rw".into(), "relatime".into()],
        kind: MountKind::of_fs_type(fs),
        size_bytes: 4 * used_gib * GIB,
        used_bytes: used_gib * GIB,
        inodes_total: 1_000_000 * used_gib,
        inodes_used: 40_000 * used_gib,
        bind_of: None,
    }
}

/// One NIC, one ext4 root, no quotas, no SELinux, no raw devices.
pub(super) fn plain_inventory() -> Inventory {
    Inventory {
        schema: 1,
        hostname: "web1".into(),
        os: OsInfo {
            id: "debian".into(),
            name: "Debian GNU/Linux".into(),
            version_id: "12".into(),
            pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
            family: OsFamily::Debian,
            ..Default::default()
        },
        memory_bytes: 4 * GIB,
        mounts: vec![
            mount("/dev/sda1", "/", "ext4", 3),
            mount("proc", "/proc", "proc", 0),
            mount("sysfs", "/sys", "sysfs", 0),
            mount("tmpfs", "/run", "tmpfs", 0),
        ],
        interfaces: vec![
            Interface {
                name: "lo".into(),
                loopback: true,
                up: true,
                addresses: vec![addr("127.0.0.1", 8), addr("::1", 128)],
                ..Default::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                up: true,
                mtu: 1500,
                addresses: vec![
                    addr("192.0.2.10", 24),
                    addr("2001:db8::10", 64),
                    addr("fe80::5054:ff:fe12:3456", 64),
                ],
                ..Default::default()
            },
        ],
        listeners: vec![
            listener("tcp", "0.0.0.0", 22, "sshd"),
            listener("tcp6", "::", 80, "nginx"),
            listener("tcp", "127.0.0.1", 25, "exim4"),
        ],
        block_devices: vec![
            BlockDevice {
                name: "sda".into(),
                kind: "disk".into(),
                size_bytes: 20 * GIB,
                holders: vec!["sda1".into()],
                ..Default::default()
            },
            BlockDevice {
                name: "sda1".into(),
                kind: "part".into(),
                size_bytes: 20 * GIB,
                fs_type: Some("ext4".into()),
                mountpoint: Some("/".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

pub(super) fn listener(proto: &str, address: &str, port: u16, process: &str) -> Listener {
    Listener { proto: proto.into(), address: address.into(), port, process: Some(process.into()) }
}

pub(super) fn plain_scan() -> ScanResult {
    let mut s = ScanResult::new();
    s.entries = 120_000;
    s.inodes = 120_000;
    s.used_bytes = 3 * GIB;
    s.mac_files_searched = 900;
    s
}

pub(super) fn plain_node() -> NodeFacts {
    NodeFacts {
        free_bytes: 500 * GIB,
        free_inodes: 30_000_000,
        fs_type: "ext4".into(),
        xattrs_supported: true,
        os: NodeOs::Linux,
        os_name: "Debian GNU/Linux 12 (bookworm)".into(),
        existing_private: None,
        gaps: Vec::new(),
        target: None,
        boot_tools: None,
    }
}

pub(super) fn run(
    inv: &Inventory,
    scan: Option<&ScanResult>,
    node: &NodeFacts,
    opts: &AssessOptions,
) -> Report {
    assess("web1", inv, scan, node, opts)
}

pub(super) fn plain_report() -> Report {
    run(&plain_inventory(), Some(&plain_scan()), &plain_node(), &AssessOptions::default())
}

pub(super) fn get<'a>(r: &'a Report, code: &str) -> &'a Finding {
    r.find(code).unwrap_or_else(|| panic!("no {code} finding in\n{}", r.render()))
}

pub(super) fn has(f: &Finding, text: &str) -> bool {
    f.evidence.iter().any(|e| e.contains(text))
}

#[test]
fn a_plain_server_has_only_the_always_true_info_items() {
    let r = plain_report();
    let got: Vec<(&str, Severity)> = r.findings.iter().map(|f| (f.code.as_str(), f.severity)).collect();
    assert_eq!(
        got,
        [
            (codes::FS_MERGE, Severity::Info),
            (codes::IP_VENET0, Severity::Info),
            (codes::PARTIAL_RETRY, Severity::Info),
        ],
        "{}",
        r.render()
    );
    assert!(!r.has_blockers());
    assert_eq!(r.agent, "web1");
    assert_eq!(r.hostname, "web1");
}

#[test]
fn every_finding_says_what_the_migration_does() {
    let r = plain_report();
    for f in &r.findings {
        assert!(!f.title.is_empty() && !f.action.is_empty(), "{f:?}");
        assert!(!f.evidence.is_empty(), "{f:?}");
        assert!(f.data.is_object(), "{f:?}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["findings"][0]["code"], "fs-merge");
    assert_eq!(json["findings"][0]["severity"], "info");
    assert!(r.render().contains("[info] ip-venet0"));
}

#[test]
fn a_quick_assessment_says_what_it_did_not_check() {
    let r = run(&plain_inventory(), None, &plain_node(), &AssessOptions::default());
    assert!(!r.has_blockers());
    assert!(get(&r, codes::MAC_BOUND).title.contains("not searched"));
    assert!(get(&r, codes::XATTRS).title.contains("not counted"));
    assert!(r.findings.iter().all(|f| f.severity == Severity::Info));
}

#[test]
fn evidence_is_capped_but_data_is_complete() {
    let mut inv = plain_inventory();
    for i in 0..60 {
        inv.mounts.push(mount(&format!("/dev/sd{i}"), &format!("/d{i}"), "xfs", 1));
    }
    let r = run(&inv, None, &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::FS_MERGE);
    assert_eq!(f.evidence.len(), super::MAX_EVIDENCE);
    assert!(f.evidence.last().unwrap().contains("more (all of them in --json)"));
    assert_eq!(f.data["local"].as_array().unwrap().len(), 61);
}

#[test]
fn the_scan_asks_for_the_source_macs_and_excludes() {
    let mut inv = plain_inventory();
    inv.interfaces.push(Interface {
        name: "eth0.10".into(),
        mac: Some("52-54-00-12-34-56".into()),
        ..Default::default()
    });
    inv.interfaces.push(Interface {
        name: "tun0".into(),
        mac: Some("00:00:00:00:00:00".into()),
        ..Default::default()
    });
    let opts = AssessOptions { excludes: vec!["/var/cache".into(), "srv/tmp".into()], ..Default::default() };
    let o = scan_options(&inv, &opts);
    assert_eq!(o.mac_addresses, ["52:54:00:12:34:56"]);
    assert_eq!(o.excludes, ["/var/cache", "/srv/tmp"]);
    assert_eq!(o.mac_scan_roots, p2c_common::scan::DEFAULT_MAC_SCAN_ROOTS);
    assert!(o.validate().is_ok());
}
