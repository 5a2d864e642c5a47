use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> IfAddr {
    parse_cidr(s).unwrap()
}

fn iface<'a>(c: &'a NetConfig, name: &str) -> &'a IfaceConfig {
    c.interfaces.iter().find(|i| i.name == name).unwrap_or_else(|| panic!("no interface {name} in {c:#?}"))
}

#[test]
fn helpers() {
    assert_eq!(netmask_to_prefix("255.255.255.0"), Some(24));
    assert_eq!(netmask_to_prefix("255.255.255.255"), Some(32));
    assert_eq!(netmask_to_prefix("0.0.0.0"), Some(0));
    assert_eq!(netmask_to_prefix("255.0.255.0"), None);
    assert_eq!(netmask_to_prefix("64"), Some(64));
    assert_eq!(netmask_to_prefix("garbage"), None);
    assert_eq!(cidr("10.1.2.3").prefix, 8);
    assert_eq!(cidr("172.16.0.1").prefix, 16);
    assert_eq!(cidr("192.168.1.1").prefix, 24);
    assert_eq!(cidr("2001:db8::1").prefix, 64);
    assert_eq!(cidr("\"fe80::1%eth0/64\"").address, ip("fe80::1"));
    assert_eq!(parse_cidr("10.0.0.1/33"), None);
    assert_eq!(parse_cidr("10.0.0.1/x"), None);
    assert_eq!(normalize_mac("AA-BB-CC-DD-EE-0F").as_deref(), Some("aa:bb:cc:dd:ee:0f"));
    assert_eq!(normalize_mac("aabb.ccdd.ee0f").as_deref(), Some("aa:bb:cc:dd:ee:0f"));
    assert_eq!(normalize_mac("aa:bb:cc"), None);
    assert_eq!(normalize_mac("zz:bb:cc:dd:ee:ff"), None);
    assert!(glob_match("en*", "enp0s3"));
    assert!(glob_match("eth?", "eth0"));
    assert!(!glob_match("eth?", "eth10"));
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b*c", "aXXbYYc"));
    assert!(!glob_match("a*b*c", "aXXbYY"));
}

#[test]
fn ifupdown_static_dhcp_and_aliases() {
    let text = "\
# The loopback network interface
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet static
    address 192.168.1.10
    netmask 255.255.255.0
    gateway 192.168.1.1
    dns-nameservers 8.8.8.8 1.1.1.1
    dns-search example.com
    hwaddress ether AA:BB:CC:DD:EE:01
    mtu 9000
    up ip addr add 10.9.9.9/32 dev eth0
iface eth0 inet6 static
    address 2001:db8::10
    netmask 64
    gateway 2001:db8::1

auto eth0:1
iface eth0:1 inet static
    address 192.168.1.11/24

allow-hotplug eth1
iface eth1 inet dhcp
iface eth2 inet6 dhcp
source /etc/network/interfaces.d/*
";
    let c = parse_ifupdown(text, "/etc/network/interfaces");
    let lo = iface(&c, "lo");
    assert!(lo.loopback);
    assert_eq!(lo.addresses, vec![cidr("127.0.0.1/8")]);
    let e0 = iface(&c, "eth0");
    assert!(!e0.dhcp());
    assert_eq!(e0.addresses, vec![cidr("10.9.9.9/32"), cidr("192.168.1.10/24"), cidr("2001:db8::10/64")]);
    assert_eq!(e0.gateways, vec![ip("192.168.1.1"), ip("2001:db8::1")]);
    assert_eq!(e0.mac.as_deref(), Some("aa:bb:cc:dd:ee:01"));
    assert_eq!(e0.mtu, Some(9000));
    assert_eq!(e0.source, "/etc/network/interfaces");
    assert_eq!(iface(&c, "eth0:1").addresses, vec![cidr("192.168.1.11/24")]);
    assert_eq!(iface(&c, "eth0:1").base_name(), "eth0");
    assert!(iface(&c, "eth1").dhcp4);
    assert!(iface(&c, "eth2").dhcp6 && !iface(&c, "eth2").dhcp4);
    assert_eq!(c.nameservers, vec!["8.8.8.8", "1.1.1.1"]);
    assert_eq!(c.search, vec!["example.com"]);
    assert!(c.dhcp_for("eth1"));
    assert!(!c.dhcp_for("eth0"));
    assert_eq!(ifupdown_includes(text), vec![(false, "/etc/network/interfaces.d/*".to_string())]);
}

#[test]
fn ifupdown_odd_input() {
    // Continuation lines, stray options outside a stanza, a netmask before the address,
    // a bad address, non-UTF-8 (already replaced by the reader) and a missing method.
    let raw = b"address 1.2.3.4\niface eth0 inet static\n  netmask 16\n  address \\\n 10.1.0.5\n\
  address not-an-ip\n\xff\xfe garbage\niface broken\n";
    let c = parse_ifupdown(&String::from_utf8_lossy(raw), "x");
    assert_eq!(iface(&c, "eth0").addresses, vec![cidr("10.1.0.5/16")]);
    assert_eq!(c.interfaces.len(), 1);
    assert_eq!(parse_ifupdown("", "x"), NetConfig::default());
}

#[test]
fn netplan_families() {
    let text = "\
# written by cloud-init
network:
  version: 2
  renderer: networkd
  ethernets:
    eth0:
      match:
        macaddress: \"52:54:00:AB:CD:EF\"
      set-name: eth0
      dhcp4: false
      addresses:
        - 192.168.1.10/24
        - \"2001:db8::10/64\"
        - 10.0.0.5/8:
            lifetime: 0
            label: \"eth0:ha\"
      routes:
        - to: default
          via: 192.168.1.1
        - to: 10.20.0.0/16
          via: 192.168.1.254
      gateway6: 2001:db8::1
      nameservers:
        addresses: [8.8.8.8, \"2001:4860:4860::8888\"]
        search: [corp.example]
      mtu: 1400
    id1:
      match:
        name: en*
      dhcp4: yes
      dhcp6: true
  bridges:
    br0:
      interfaces: [eth2]
      addresses: [172.16.0.1/12]
      dhcp4: no
";
    let c = parse_netplan(text, "/etc/netplan/50-cloud-init.yaml");
    let e0 = iface(&c, "eth0");
    assert_eq!(e0.addresses, vec![cidr("192.168.1.10/24"), cidr("2001:db8::10/64"), cidr("10.0.0.5/8")]);
    assert_eq!(e0.gateways, vec![ip("2001:db8::1"), ip("192.168.1.1")]);
    assert_eq!(e0.mac.as_deref(), Some("52:54:00:ab:cd:ef"));
    assert_eq!(e0.mtu, Some(1400));
    assert!(!e0.dhcp());
    let en = iface(&c, "en*");
    assert!(en.dhcp4 && en.dhcp6);
    assert!(c.dhcp_for("enp0s3"));
    assert!(!c.dhcp_for("eth0"));
    assert_eq!(iface(&c, "br0").addresses, vec![cidr("172.16.0.1/12")]);
    assert_eq!(c.nameservers, vec!["8.8.8.8", "2001:4860:4860::8888"]);
    assert_eq!(c.search, vec!["corp.example"]);
}

#[test]
fn netplan_odd_input() {
    // Tabs, a list item at the key's indentation, comments after values, anchors and
    // a flow mapping (skipped), stray top-level lists and a truncated file.
    let text = [
        "network:",
        " ethernets:",
        "  eth0:",
        "   addresses:",
        "   - 10.0.0.1/24 # main",
        "   dhcp4: \"no\"",
        "   foo: {a: 1}",
        "  eth1: &x",
        "   dhcp4: on",
        "- stray",
        "\t\tjunk: [",
        "network:",
        " ethernets:",
        "  eth9:",
        "   dhcp6: tr",
    ]
    .join("\n");
    let text = text.as_str();
    let c = parse_netplan(text, "f");
    assert_eq!(iface(&c, "eth0").addresses, vec![cidr("10.0.0.1/24")]);
    assert!(!iface(&c, "eth0").dhcp());
    assert!(iface(&c, "eth1").dhcp4);
    assert!(!iface(&c, "eth9").dhcp6);
    let bin = String::from_utf8_lossy(b"\xff\xfe\x00network:\n  ethernets:\n");
    assert_eq!(parse_netplan(&bin, "f"), NetConfig::default());
}

#[test]
fn networkd_files() {
    let text = "\
[Match]
Name=eth0 eth1
MACAddress=00:11:22:33:44:55

[Network]
DHCP=ipv6
Address=192.168.5.2/24
Address=2001:db8:5::2/64
Gateway=192.168.5.1
DNS=9.9.9.9
Domains=~. lan.example

[Address]
Address=192.168.5.3/24

[Route]
Destination=10.0.0.0/8
Gateway=192.168.5.254

[Route]
Gateway=fe80::1

[Link]
MTUBytes=1500
";
    let c = parse_networkd(text, "/etc/systemd/network/10-eth.network");
    assert_eq!(c.interfaces.len(), 2);
    let e = iface(&c, "eth1");
    assert!(e.dhcp6 && !e.dhcp4);
    assert_eq!(e.addresses, vec![cidr("192.168.5.2/24"), cidr("2001:db8:5::2/64"), cidr("192.168.5.3/24")]);
    assert_eq!(e.gateways, vec![ip("192.168.5.1"), ip("fe80::1")]);
    assert_eq!(e.mac.as_deref(), Some("00:11:22:33:44:55"));
    assert_eq!(e.mtu, Some(1500));
    assert_eq!(c.nameservers, vec!["9.9.9.9"]);
    assert_eq!(c.search, vec!["lan.example"]);
    let d = parse_networkd("[Match]\nName=en*\n[Network]\nDHCP=yes\n", "/x/20-wired.network");
    assert!(d.dhcp_for("enp1s0"));
    let noname = parse_networkd("[Network]\nDHCP=no\n", "/x/30-foo.network");
    assert_eq!(noname.interfaces[0].name, "30-foo");
    assert!(!noname.dhcp_for("30-foo"));
    let odd = parse_networkd("garbage\n[Network\nDHCP=both\n=\n", "/x/y.network");
    assert_eq!(odd.interfaces.len(), 1);
}

#[test]
fn nm_keyfiles() {
    let text = "\
[connection]
id=Wired connection 1
type=ethernet
interface-name=ens3

[ethernet]
mac-address=52:54:00:12:34:56
mtu=1450

[ipv4]
method=manual
address1=10.10.0.5/24,10.10.0.1
address2=10.10.0.6/24
dns=10.10.0.2;8.8.8.8;
dns-search=corp;

[ipv6]
method=dhcp
";
    let c = parse_nm_keyfile(text, "/etc/NetworkManager/system-connections/ens3.nmconnection");
    let e = iface(&c, "ens3");
    assert!(e.dhcp6 && !e.dhcp4);
    assert_eq!(e.addresses, vec![cidr("10.10.0.5/24"), cidr("10.10.0.6/24")]);
    assert_eq!(e.gateways, vec![ip("10.10.0.1")]);
    assert_eq!(e.mtu, Some(1450));
    assert_eq!(c.nameservers, vec!["10.10.0.2", "8.8.8.8"]);
    let auto = parse_nm_keyfile("[connection]\nid=eth9\n[ipv4]\nmethod=auto\n", "x");
    assert!(auto.dhcp_for("eth9"));
    assert!(parse_nm_keyfile("[ipv4]\nmethod=auto\n", "x").interfaces.is_empty());
}

#[test]
fn rhel_ifcfg() {
    let text = "\
DEVICE=eth0
BOOTPROTO=none
ONBOOT=yes
HWADDR=\"00:16:3E:AA:BB:CC\"
IPADDR=192.168.10.5
NETMASK=255.255.255.0
IPADDR1=192.168.10.6
PREFIX1=25
IPADDR2=10.1.1.1
IPV6INIT=yes
IPV6ADDR=2001:db8:10::5/64
IPV6ADDR_SECONDARIES=\"2001:db8:10::6/64 2001:db8:10::7\"
IPV6_DEFAULTGW=2001:db8:10::1%eth0
GATEWAY=192.168.10.1
DNS1=192.168.10.2
DOMAIN=\"a.example b.example\"
MTU=1500
";
    let c = parse_ifcfg_rhel(text, "eth0", "/etc/sysconfig/network-scripts/ifcfg-eth0");
    let e = iface(&c, "eth0");
    assert!(!e.dhcp());
    assert_eq!(
        e.addresses,
        vec![
            cidr("192.168.10.5/24"),
            cidr("192.168.10.6/25"),
            cidr("10.1.1.1/8"),
            cidr("2001:db8:10::5/64"),
            cidr("2001:db8:10::6/64"),
            cidr("2001:db8:10::7/64"),
        ]
    );
    assert_eq!(e.gateways, vec![ip("192.168.10.1"), ip("2001:db8:10::1")]);
    assert_eq!(e.mac.as_deref(), Some("00:16:3e:aa:bb:cc"));
    assert_eq!(c.nameservers, vec!["192.168.10.2"]);
    assert_eq!(c.search, vec!["a.example", "b.example"]);
    let d = parse_ifcfg_rhel("BOOTPROTO=dhcp\nDHCPV6C=yes\n", "ens192", "f");
    assert_eq!(d.interfaces[0].name, "ens192");
    assert!(d.interfaces[0].dhcp4 && d.interfaces[0].dhcp6);
    assert!(d.dhcp_for("ens192"));
    let alias = parse_ifcfg_rhel("DEVICE=eth0:1\nIPADDR=192.168.10.9\nPREFIX=24\n", "eth0:1", "f");
    assert_eq!(alias.interfaces[0].base_name(), "eth0");
    let lo = parse_ifcfg_rhel("DEVICE=lo\nIPADDR=127.0.0.1\n", "lo", "f");
    assert!(lo.interfaces[0].loopback);
    let odd = parse_ifcfg_rhel(
        &String::from_utf8_lossy(b"IPADDR=\xff\nPREFIX=99\nIPADDRX=1.2.3.4\nBOOTPROTO='bootp'\n"),
        "eth5",
        "f",
    );
    assert!(odd.interfaces[0].addresses.is_empty());
    assert!(odd.interfaces[0].dhcp4);
    let net = parse_rhel_network("NETWORKING=yes\nGATEWAY=10.0.0.1\nGATEWAYDEV=eth1\n", "f");
    assert_eq!(iface(&net, "eth1").gateways, vec![ip("10.0.0.1")]);
    let net = parse_rhel_network("GATEWAY=10.0.0.1\n", "f");
    assert_eq!(net.gateways, vec![ip("10.0.0.1")]);
}

#[test]
fn suse_ifcfg() {
    let text = "\
BOOTPROTO='static'
STARTMODE='auto'
IPADDR='192.168.20.5/24'
IPADDR_1='192.168.20.6/24'
LABEL_1='web'
IPADDR_2='10.20.0.1'
NETMASK_2='255.255.0.0'
IPADDR_v6='2001:db8:20::5/64'
LLADDR='00:16:3e:00:00:01'
";
    let c = parse_ifcfg_suse(text, "eth0", "/etc/sysconfig/network/ifcfg-eth0");
    let e = iface(&c, "eth0");
    assert_eq!(e.addresses, vec![cidr("192.168.20.5/24"), cidr("10.20.0.1/16"), cidr("2001:db8:20::5/64")]);
    assert_eq!(iface(&c, "eth0:web").addresses, vec![cidr("192.168.20.6/24")]);
    assert_eq!(e.mac.as_deref(), Some("00:16:3e:00:00:01"));
    assert!(!c.dhcp_for("eth0"));
    for (boot, v4, v6) in [
        ("dhcp", true, true),
        ("dhcp4", true, false),
        ("dhcp6", false, true),
        ("dhcp+autoip", true, true),
        ("none", false, false),
    ] {
        let d = parse_ifcfg_suse(&format!("BOOTPROTO='{boot}'\n"), "eth1", "f");
        assert_eq!((d.interfaces[0].dhcp4, d.interfaces[0].dhcp6), (v4, v6), "{boot}");
    }
    let routes = parse_suse_routes(
        "# comment\ndefault 192.168.20.1 - -\n10.0.0.0/8 192.168.20.254 - eth0\n\
         default 2001:db8:20::1 - eth0\nbroken\n",
        None,
    );
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0].destination, "default");
    assert_eq!(routes[0].interface, None);
    assert_eq!(routes[2].interface.as_deref(), Some("eth0"));
    let ifroute = parse_suse_routes("default 10.0.0.1 - -\n", Some("eth3"));
    assert_eq!(ifroute[0].interface.as_deref(), Some("eth3"));
}

#[test]
fn reads_a_tree() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let w = |p: &str, s: &str| {
        let p = r.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w(
        "/etc/network/interfaces",
        "auto lo\niface lo inet loopback\nsource interfaces.d/*.cfg\nsource /etc/network/interfaces\n",
    );
    w("/etc/network/interfaces.d/eth0.cfg", "iface eth0 inet dhcp\n");
    w("/etc/network/interfaces.d/eth1", "iface eth1 inet static\n address 10.0.1.1/24\n");
    w("/etc/network/interfaces.d/eth1~", "iface eth1 inet dhcp\n");
    w("/etc/netplan/01.yaml", "network:\n  ethernets:\n    ens5:\n      dhcp4: true\n");
    w("/etc/sysconfig/network-scripts/ifcfg-eth2", "BOOTPROTO=dhcp\n");
    w("/etc/sysconfig/network-scripts/ifcfg-eth2.bak", "IPADDR=1.1.1.1\n");
    w("/etc/sysconfig/network", "GATEWAY=10.0.1.254\n");
    let (c, gaps) = read_tree(r);
    assert!(gaps.is_empty(), "{gaps:?}");
    assert!(c.dhcp_for("eth0"));
    assert!(!c.dhcp_for("eth1"));
    assert!(c.dhcp_for("ens5"));
    assert!(c.dhcp_for("eth2"));
    assert!(iface(&c, "eth2").addresses.is_empty());
    assert_eq!(iface(&c, "eth1").addresses, vec![cidr("10.0.1.1/24")]);
    assert_eq!(c.gateways, vec![ip("10.0.1.254")]);

    // SUSE layout: /etc/sysconfig/network is a directory.
    let t = tempfile::tempdir().unwrap();
    let r2 = t.path();
    let p = r2.join("etc/sysconfig/network");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("ifcfg-eth0"), "BOOTPROTO='dhcp'\n").unwrap();
    std::fs::write(p.join("ifcfg-eth1"), "IPADDR='10.5.0.1/16'\n").unwrap();
    std::fs::write(p.join("routes"), "default 10.5.0.254 - -\n").unwrap();
    std::fs::write(p.join("ifroute-eth1"), "default 10.5.0.253 - -\n").unwrap();
    let (c, gaps) = read_tree(r2);
    assert!(gaps.is_empty(), "{gaps:?}");
    assert!(c.dhcp_for("eth0"));
    assert_eq!(c.gateways, vec![ip("10.5.0.254")]);
    assert_eq!(iface(&c, "eth1").gateways, vec![ip("10.5.0.253")]);
}
