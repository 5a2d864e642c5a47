use p2c_common::paths::RelPath;
use p2c_common::scan::MacHit;

use super::*;

#[test]
fn ip_venet0_lists_every_address_with_interface_and_mac() {
    let r = plain_report();
    let f = get(&r, codes::IP_VENET0);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.title.starts_with("2 address(es)"));
    assert!(has(f, "192.0.2.10/24 on eth0 (MAC 52:54:00:12:34:56) → venet0 192.0.2.10/32"));
    assert!(has(f, "2001:db8::10/64 on eth0 (MAC 52:54:00:12:34:56) → venet0 2001:db8::10/128"));
    assert!(has(f, "link-local, not carried"));
    assert!(!has(f, "127.0.0.1"));
    assert_eq!(f.data["addresses"][0]["interface"], "eth0");
    assert_eq!(f.data["addresses"][0]["mac"], "52:54:00:12:34:56");
}

#[test]
fn ip_venet0_names_services_bound_to_one_address() {
    let mut inv = plain_inventory();
    inv.listeners.push(listener("tcp", "192.0.2.10", 3306, "mysqld"));
    inv.listeners.push(listener("tcp6", "[2001:db8::10]", 443, "nginx"));
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::IP_VENET0);
    assert_eq!(f.severity, Severity::Info);
    assert!(has(f, "mysqld listens on 192.0.2.10 port 3306/tcp only: the address moves with it"));
    assert!(has(f, "nginx listens on 2001:db8::10 port 443/tcp6 only"));
    assert_eq!(f.data["bound_services"].as_array().unwrap().len(), 2);

    // a service bound to an address the server no longer has
    inv.listeners.push(listener("tcp", "198.51.100.7", 8080, "old"));
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::IP_VENET0);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "the container will not have that address"));
}

#[test]
fn ip_venet0_warns_when_nothing_moves() {
    let mut inv = plain_inventory();
    inv.interfaces.truncate(1);
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::IP_VENET0);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("no network"));
}

#[test]
fn dhcp_addresses_become_static() {
    let mut inv = plain_inventory();
    inv.interfaces[1].dhcp = true;
    inv.interfaces.push(Interface {
        name: "eth1".into(),
        mac: Some("52:54:00:00:00:02".into()),
        dhcp: true,
        ..Default::default()
    });
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::DHCP);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(
        f,
        "eth0 is configured by DHCP; its address(es) 192.0.2.10/24, 2001:db8::10/64 become static"
    ));
    assert!(has(f, "eth1 is configured by DHCP and has no address now"));
    assert!(f.action.contains("static"));
}

fn hit(path: &str, mac: &str, spelling: &str) -> MacHit {
    MacHit {
        path: RelPath::new(path.as_bytes().to_vec()).unwrap(),
        mac: mac.into(),
        spelling: spelling.into(),
    }
}

#[test]
fn mac_bound_lists_every_file_naming_a_source_mac() {
    let mut scan = plain_scan();
    scan.mac_hits = vec![
        hit("opt/app/licence.dat", "52:54:00:12:34:56", "52-54-00-12-34-56"),
        hit("opt/app/licence.dat", "52:54:00:12:34:56", "525400123456"),
        hit("etc/udev/rules.d/70-persistent-net.rules", "52:54:00:12:34:56", "52:54:00:12:34:56"),
    ];
    let r = run(&plain_inventory(), Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::MAC_BOUND);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.starts_with("2 file(s)"), "{}", f.title);
    assert!(has(f, "source MACs: 52:54:00:12:34:56 (eth0)"));
    assert!(has(f, "/opt/app/licence.dat contains 52-54-00-12-34-56 (MAC of eth0)"));
    assert!(has(f, "/opt/app/licence.dat contains 525400123456"));
    assert_eq!(f.data["files"].as_array().unwrap().len(), 3);
    assert_eq!(f.data["files"][0]["path"], "/opt/app/licence.dat");
}

#[test]
fn mac_bound_says_which_files_were_not_searched() {
    let mut scan = plain_scan();
    scan.mac_skipped.push(p2c_common::manifest::Problem {
        path: RelPath::new(b"var/lib/big.db".to_vec()).unwrap(),
        reason: "too large".into(),
    });
    let r = run(&plain_inventory(), Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::MAC_BOUND);
    assert_eq!(f.severity, Severity::Info);
    assert!(has(f, "1 file(s) not searched: /var/lib/big.db (too large)"));
}
