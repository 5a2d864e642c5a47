use std::net::IpAddr;

use p2c_common::inventory::{IfAddr, Interface, Inventory, OsFamily};
use p2c_common::migration::Target;

use super::*;
use crate::guest::distro::detect;
use crate::guest::edit::Editor;
use crate::guest::tests::Fixture;

fn ifaddr(a: &str, prefix: u8) -> IfAddr {
    IfAddr { address: a.parse().unwrap(), prefix }
}

/// A server with eth0 (two IPv4 addresses), eth1 (DHCP, plus IPv6) and a tunnel.
pub(crate) fn inventory() -> Inventory {
    let nic = |name: &str, mac: &str, addrs: Vec<IfAddr>, dhcp: bool| Interface {
        name: name.into(),
        mac: Some(mac.into()),
        up: true,
        mtu: 1500,
        addresses: addrs,
        dhcp,
        ..Interface::default()
    };
    Inventory {
        interfaces: vec![
            Interface {
                name: "lo".into(),
                loopback: true,
                addresses: vec![ifaddr("127.0.0.1", 8)],
                ..Interface::default()
            },
            nic(
                "eth0",
                "52:54:00:12:34:56",
                vec![ifaddr("198.51.100.10", 24), ifaddr("198.51.100.11", 24)],
                false,
            ),
            nic(
                "eth1",
                "52:54:00:12:34:57",
                vec![ifaddr("203.0.113.5", 24), ifaddr("2001:db8:1::5", 64)],
                true,
            ),
        ],
        ..Inventory::default()
    }
}

pub(crate) fn options() -> GuestOptions {
    GuestOptions {
        addresses: ["198.51.100.10", "198.51.100.11", "203.0.113.5", "2001:db8:1::5"]
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap())
            .collect(),
        hostname: Some("web1.example.net".into()),
        nameservers: vec!["198.51.100.53".into()],
        search: vec!["example.net".into()],
        target: Target::Openvz,
    }
}

fn plan() -> Plan {
    Plan::new(&inventory(), &options())
}

type Changes = Vec<(String, String, Option<String>, String)>;

/// Runs the network step on `f` as a guest of `family` for legacy OpenVZ; the changes as
/// (path, action, backup, reason).
fn run(f: &Fixture, family: OsFamily) -> Changes {
    run_as(f, family, Target::Openvz)
}

/// [`run`] for `target`.
fn run_as(f: &Fixture, family: OsFamily, target: Target) -> Changes {
    let tree = f.tree();
    let mut distro = detect(&tree).unwrap();
    distro.family = family;
    let mut ed = Editor::open(&tree).unwrap();
    apply(&mut ed, &distro, &inventory(), &GuestOptions { target, ..options() }).unwrap();
    let out = ed
        .changes()
        .iter()
        .map(|c| (c.path.clone(), c.action.clone(), c.backup.clone(), c.reason.clone()))
        .collect();
    ed.finish().unwrap();
    out
}

fn actions(changes: &Changes) -> Vec<(&str, &str)> {
    changes.iter().map(|(p, a, _, _)| (p.as_str(), a.as_str())).collect()
}

/// Runs the step again and checks nothing moves: same records, same files.
fn rerun_is_stable(f: &Fixture, family: OsFamily, first: &Changes, files: &[&str]) {
    rerun_is_stable_as(f, family, Target::Openvz, first, files)
}

fn rerun_is_stable_as(f: &Fixture, family: OsFamily, target: Target, first: &Changes, files: &[&str]) {
    let before: Vec<String> = files.iter().map(|p| f.read(p)).collect();
    let again = run_as(f, family, target);
    assert_eq!(&again, first);
    let after: Vec<String> = files.iter().map(|p| f.read(p)).collect();
    assert_eq!(after, before);
}

const SUMMARY: &str =
    "venet0 carries every address of the server: 198.51.100.10, 198.51.100.11, 203.0.113.5, 2001:db8:1::5";
const NICS: &str = "configures the server's network hardware eth0 (198.51.100.10/24, 198.51.100.11/24), \
eth1 (203.0.113.5/24, 2001:db8:1::5/64), which the container does not have; every address is on venet0 now; \
eth1 used DHCP: its address is static on venet0 now (venet has no DHCP)";

#[test]
fn physical_names() {
    let n = plan().nics;
    for hw in [
        "eth0", "eth0:1", "eth1.100", "ens3", "enp0s25", "eno1", "em1", "p1p1", "wlan0", "bond0", "br0",
        "ib0",
    ] {
        assert!(n.is_physical(hw), "{hw}");
    }
    for virt in ["lo", "venet0", "venet0:3", "tun0", "wg0", "dummy0", "docker0", "veth1", "ppp0", "sit0"] {
        assert!(!n.is_physical(virt), "{virt}");
    }
    assert!(n.glob_is_physical("en*"));
    assert!(n.glob_is_physical("eth[0-9]"));
    assert!(n.glob_is_physical("e*"));
    assert!(!n.glob_is_physical("wg*"));
    assert!(!n.glob_is_physical("veth[!0]*"));
    assert!(glob("a[!b]c", "axc") && !glob("a[!b]c", "abc"));
}

const DEBIAN: &str = "\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
auto eth0
iface eth0 inet static
\taddress 198.51.100.10/24
\tgateway 198.51.100.1
\tdns-nameservers 198.51.100.53
\tdns-search example.net

auto eth0:1
iface eth0:1 inet static
\taddress 198.51.100.11/24

# The secondary network interface, from DHCP
allow-hotplug eth1
iface eth1 inet dhcp

iface eth1 inet6 static
\taddress 2001:db8:1::5/64
\tgateway 2001:db8:1::1

# A tunnel, not hardware
auto tun0
iface tun0 inet static
\tpre-up ip tuntap add tun0 mode tun
\taddress 10.8.0.1/24
";

/// vzctl 4.11's stanzas (`debian-add_ip.sh`), in iproute2.
const DEBIAN_VENET: &str = "\
# p2c venet0 begin. Generated by p2c: every address of this server is on venet0
# (OpenVZ venet: layer 3, point-to-point, no ARP, no DHCP). Everything up to the end
# marker is replaced when p2c runs again; the former file is in /etc/p2c/backup.
auto venet0
iface venet0 inet manual
\tup ip link set venet0 up
\tup ip addr add 127.0.0.2/32 dev venet0
\tup ip route add default dev venet0
\tdown ip route del default dev venet0
\tdown ip link set venet0 down
\tdns-nameservers 198.51.100.53
\tdns-search example.net

iface venet0 inet6 manual
\tup ip -6 addr add 2001:db8:1::5/128 dev venet0
\tdown ip -6 addr del 2001:db8:1::5/128 dev venet0
\tup ip -6 route add default dev venet0
\tdown ip -6 route del default dev venet0

auto venet0:0
iface venet0:0 inet static
\taddress 198.51.100.10
\tnetmask 255.255.255.255

auto venet0:1
iface venet0:1 inet static
\taddress 198.51.100.11
\tnetmask 255.255.255.255

auto venet0:2
iface venet0:2 inet static
\taddress 203.0.113.5
\tnetmask 255.255.255.255
# p2c venet0 end
";

/// libvzctl 7's stanzas (`debian-add_ip.sh`, `functions` `add_debian_ip6`).
const DEBIAN_VENET_VZ7: &str = "\
# p2c venet0 begin. Generated by p2c: every address of this server is on venet0
# (OpenVZ venet: layer 3, point-to-point, no ARP, no DHCP). Everything up to the end
# marker is replaced when p2c runs again; the former file is in /etc/p2c/backup.
auto venet0
iface venet0 inet static
\taddress 127.0.0.1
\tnetmask 255.255.255.255
\tbroadcast 0.0.0.0
\tup ip route add default dev venet0
\tdns-nameservers 198.51.100.53
\tdns-search example.net

iface venet0 inet6 static
\taddress 2001:db8:1::5/128
\tup ip -6 r a default dev venet0

auto venet0:0
iface venet0:0 inet static
\taddress 198.51.100.10
\tnetmask 255.255.255.255

auto venet0:1
iface venet0:1 inet static
\taddress 198.51.100.11
\tnetmask 255.255.255.255

auto venet0:2
iface venet0:2 inet static
\taddress 203.0.113.5
\tnetmask 255.255.255.255
# p2c venet0 end
";

/// libvzctl 8's stanzas (`debian-add_netif.sh`, routed): the source's /24 masks.
const DEBIAN_VENET_VZ9: &str = "\
# p2c venet0 begin. Generated by p2c: every address of this server is on venet0
# (Virtuozzo 9: a routed veth, the host routes each address to it). Everything up to the end
# marker is replaced when p2c runs again; the former file is in /etc/p2c/backup.
auto venet0
iface venet0 inet static
\taddress 198.51.100.10
\tnetmask 255.255.255.0
\t#4896d4dc-7035-45f9-ac14-2bd1d1809c26 venet0
\tup ip route add default dev venet0
\tdns-nameservers 198.51.100.53
\tdns-search example.net

iface venet0 inet6 static
\taddress 2001:db8:1::5
\tnetmask 128
\t#4896d4dc-7035-45f9-ac14-2bd1d1809c26 venet0
\tup ip -6 route add fe80::ffff:1:1 dev venet0
\tup ip -6 route add default via fe80::ffff:1:1 dev venet0

auto venet0:0
iface venet0:0 inet static
\taddress 198.51.100.11
\tnetmask 255.255.255.0

auto venet0:1
iface venet0:1 inet static
\taddress 203.0.113.5
\tnetmask 255.255.255.0
# p2c venet0 end
";

/// What the DEBIAN file keeps of itself.
const DEBIAN_KEPT: &str = "\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# A tunnel, not hardware
auto tun0
iface tun0 inet static
\tpre-up ip tuntap add tun0 mode tun
\taddress 10.8.0.1/24

";

#[test]
fn debian_ifupdown_per_target() {
    for (target, venet) in [(Target::Vz7, DEBIAN_VENET_VZ7), (Target::Vz9, DEBIAN_VENET_VZ9)] {
        let f = Fixture::new();
        f.file("etc/debian_version", "12.5\n");
        f.file("etc/network/interfaces", DEBIAN);
        let changes = run_as(&f, OsFamily::Debian, target);
        assert_eq!(f.read("etc/network/interfaces"), format!("{DEBIAN_KEPT}{venet}"), "{target}");
        assert_eq!(f.read("etc/p2c/backup/etc/network/interfaces"), DEBIAN);
        rerun_is_stable_as(&f, OsFamily::Debian, target, &changes, &["etc/network/interfaces"]);
    }
}

/// The case that broke: systemd-networkd configured the NICs, ifupdown is installed with
/// only `lo` (and an earlier p2c gave it venet0 too). venet0 is networkd's alone.
#[test]
fn networkd_guest_with_ifupdown_installed() {
    let lo_only = "# interfaces(5) file used by ifup(8) and ifdown(8)\nauto lo\niface lo inet loopback\n";
    for target in Target::ALL {
        let f = Fixture::new();
        f.file("etc/debian_version", "12.5\n");
        f.file("etc/network/interfaces", lo_only);
        f.file(
            "etc/systemd/network/10-eth0.network",
            "[Match]\nName=eth0\n\n[Network]\nAddress=198.51.100.10/24\nGateway=198.51.100.1\n",
        );
        let changes = run_as(&f, OsFamily::Debian, target);
        assert_eq!(f.read("etc/network/interfaces"), lo_only, "{target}");
        assert!(!changes.iter().any(|c| c.0 == "/etc/network/interfaces"), "{changes:#?}");
        assert!(!f.exists("etc/systemd/network/10-eth0.network"));
        let venet = f.read("etc/systemd/network/10-p2c-venet0.network");
        assert!(venet.contains("Address=198.51.100.10/"), "{venet}");
        rerun_is_stable_as(
            &f,
            OsFamily::Debian,
            target,
            &changes,
            &["etc/network/interfaces", "etc/systemd/network/10-p2c-venet0.network"],
        );

        // An earlier p2c put venet0 into both: ifupdown's copy goes.
        let g = Fixture::new();
        g.file("etc/debian_version", "12.5\n");
        let plan = Plan::new(&inventory(), &GuestOptions { target, ..options() });
        g.file("etc/network/interfaces", &format!("{lo_only}\n{}", ifupdown::block(&plan, &[], false)));
        g.file("etc/systemd/network/10-eth0.network", "[Match]\nName=eth0\n");
        let changes = run_as(&g, OsFamily::Debian, target);
        assert_eq!(g.read("etc/network/interfaces"), lo_only);
        let rec = changes.iter().find(|c| c.0 == "/etc/network/interfaces").unwrap();
        assert!(rec.3.contains("would bring it up twice"), "{}", rec.3);
        assert!(g.exists("etc/systemd/network/10-p2c-venet0.network"));
    }
}

/// ifupdown configured the NICs; networkd is there too (a stale p2c file of its own goes).
#[test]
fn ifupdown_guest_with_networkd_installed() {
    let f = Fixture::new();
    f.file("etc/debian_version", "12.5\n");
    f.file("etc/network/interfaces", DEBIAN);
    f.file("etc/systemd/network/10-p2c-venet0.network", "# Generated by p2c\n[Match]\nName=venet0\n");
    f.link(
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    );
    let changes = run_as(&f, OsFamily::Debian, Target::Vz7);
    assert!(f.read("etc/network/interfaces").contains("auto venet0:2\n"));
    assert!(!f.exists("etc/systemd/network/10-p2c-venet0.network"));
    let rec = changes.iter().find(|c| c.0 == "/etc/systemd/network/10-p2c-venet0.network").unwrap();
    assert_eq!(rec.1, "removed");
}

#[test]
fn debian_ifupdown() {
    let f = Fixture::new();
    f.file("etc/debian_version", "12.5\n");
    f.file("etc/network/interfaces", DEBIAN);
    f.file(
        "etc/network/interfaces.d/50-cloud-init.cfg",
        "# from cloud-init\nauto eth0\niface eth0 inet dhcp\n",
    );
    f.file("etc/network/interfaces.d/wg0", "auto wg0\niface wg0 inet manual\n");
    f.file(
        "etc/udev/rules.d/70-persistent-net.rules",
        "SUBSYSTEM==\"net\", ATTR{address}==\"52:54:00:12:34:56\", NAME=\"eth0\"\n",
    );
    f.file("lib/udev/rules.d/75-persistent-net-generator.rules", "# generator\n");
    let changes = run(&f, OsFamily::Debian);

    let want = format!(
        "\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# A tunnel, not hardware
auto tun0
iface tun0 inet static
\tpre-up ip tuntap add tun0 mode tun
\taddress 10.8.0.1/24

{DEBIAN_VENET}"
    );
    assert_eq!(f.read("etc/network/interfaces"), want);
    assert_eq!(f.read("etc/p2c/backup/etc/network/interfaces"), DEBIAN);
    assert!(!f.exists("etc/network/interfaces.d/50-cloud-init.cfg"));
    assert_eq!(f.read("etc/network/interfaces.d/wg0"), "auto wg0\niface wg0 inet manual\n");
    assert!(!f.exists("etc/udev/rules.d/70-persistent-net.rules"));
    assert_eq!(f.readlink("etc/udev/rules.d/75-persistent-net-generator.rules"), "/dev/null");
    assert_eq!(
        f.read("etc/resolv.conf"),
        "# Generated by p2c from the source server's DNS settings.\nsearch example.net\nnameserver 198.51.100.53\n"
    );
    assert_eq!(f.read("etc/hostname"), "web1.example.net\n");
    assert_eq!(
        actions(&changes),
        [
            ("/etc/network/interfaces", "rewritten"),
            ("/etc/network/interfaces.d/50-cloud-init.cfg", "removed"),
            ("/etc/udev/rules.d/70-persistent-net.rules", "removed"),
            ("/etc/udev/rules.d/75-persistent-net-generator.rules", "disabled"),
            ("/etc/resolv.conf", "created"),
            ("/etc/hostname", "created"),
        ]
    );
    assert_eq!(changes[0].3, format!("{SUMMARY}; {NICS}"));
    assert_eq!(changes[0].2.as_deref(), Some("/etc/p2c/backup/etc/network/interfaces"));
    rerun_is_stable(
        &f,
        OsFamily::Debian,
        &changes,
        &["etc/network/interfaces", "etc/p2c/backup/etc/network/interfaces"],
    );

    // The guest's own resolv.conf and hostname stay.
    let g = Fixture::new();
    g.file("etc/network/interfaces", "auto lo\niface lo inet loopback\n");
    g.link("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf");
    g.file("etc/hostname", "old\n");
    let changes = run(&g, OsFamily::Debian);
    assert_eq!(actions(&changes), [("/etc/network/interfaces", "rewritten")]);
    assert_eq!(
        g.read("etc/network/interfaces"),
        format!("auto lo\niface lo inet loopback\n\n{}", ifupdown::block(&plan(), &[], false))
    );
    assert_eq!(g.read("etc/hostname"), "old\n");
}

#[test]
fn debian_without_interfaces_and_an_openvz_source() {
    // No config at all: the family's format, with a loopback stanza (vzctl adds one).
    let f = Fixture::new();
    f.file("etc/debian_version", "12.5\n");
    let changes = run(&f, OsFamily::Debian);
    assert_eq!(actions(&changes)[0], ("/etc/network/interfaces", "created"));
    let text = f.read("etc/network/interfaces");
    assert!(text.starts_with("# p2c venet0 begin"));
    assert!(text.contains("\nauto lo\niface lo inet loopback\n\nauto venet0\n"));

    // A server that was an OpenVZ container already: vzctl's own stanzas are replaced.
    let g = Fixture::new();
    g.file(
        "etc/network/interfaces",
        "# Auto generated lo interface\nauto lo\niface lo inet loopback\n\n\
         # Auto generated venet0 interface\nauto venet0\niface venet0 inet manual\n\
         \tup ifconfig venet0 up\n\tup route add default dev venet0\n\n\
         auto venet0:0\niface venet0:0 inet static\n\taddress 198.51.100.10\n\tnetmask 255.255.255.255\n",
    );
    run(&g, OsFamily::Debian);
    let mut plan = plan();
    plan.nameservers.clear();
    assert_eq!(
        g.read("etc/network/interfaces"),
        format!(
            "# Auto generated lo interface\nauto lo\niface lo inet loopback\n\n{}",
            ifupdown::block(&plan, &[], false)
        )
    );
}

const NETPLAN_CLOUD: &str = "\
# This file is generated from information provided by the datasource.
network:
    version: 2
    ethernets:
        ens3:
            dhcp4: true
            match:
                macaddress: 52:54:00:12:34:56
            set-name: ens3
";

const NETPLAN_MIXED: &str = "\
network:
  version: 2
  renderer: networkd
  ethernets:
    enp1s0:
      addresses: [198.51.100.10/24, \"2001:db8:1::5/64\"]
      routes:
        - to: default
          via: 198.51.100.1
  # the uplink bond
  bonds:
    bond0:
      interfaces: [enp1s0]
  tunnels:
    he-ipv6:
      mode: sit
      remote: 203.0.113.99
      local: 198.51.100.10
";

const NETPLAN_VENET: &str = "\
# Generated by p2c: every address of this server is on venet0 (OpenVZ venet:
# layer 3, point-to-point, no ARP, no DHCP);
# the default routes go through venet0.
# The server's former netplan files are in /etc/p2c/backup/etc/netplan.
network:
  version: 2
  ethernets:
    venet0:
      renderer: networkd
      dhcp4: false
      dhcp6: false
      accept-ra: false
      link-local: []
      addresses:
        - 198.51.100.10/32
        - 198.51.100.11/32
        - 203.0.113.5/32
        - \"2001:db8:1::5/128\"
      routes:
        - to: 0.0.0.0/0
          scope: link
        - to: \"::/0\"
          scope: link
      nameservers:
        search: [example.net]
        addresses: [198.51.100.53]
";

#[test]
fn netplan() {
    let f = Fixture::new();
    f.file("etc/netplan/50-cloud-init.yaml", NETPLAN_CLOUD);
    f.file("etc/netplan/01-netcfg.yaml", NETPLAN_MIXED);
    f.file("etc/hostname", "web1\n");
    f.file("etc/resolv.conf", "nameserver 127.0.0.53\n");
    let changes = run(&f, OsFamily::Debian);
    assert_eq!(
        actions(&changes),
        [
            ("/etc/netplan/01-netcfg.yaml", "rewritten"),
            ("/etc/netplan/50-cloud-init.yaml", "removed"),
            ("/etc/netplan/90-p2c-venet0.yaml", "created"),
        ]
    );
    assert_eq!(
        f.read("etc/netplan/01-netcfg.yaml"),
        "\
network:
  version: 2
  renderer: networkd
  tunnels:
    he-ipv6:
      mode: sit
      remote: 203.0.113.99
      local: 198.51.100.10
"
    );
    assert_eq!(f.read("etc/p2c/backup/etc/netplan/50-cloud-init.yaml"), NETPLAN_CLOUD);
    assert_eq!(f.read("etc/netplan/90-p2c-venet0.yaml"), NETPLAN_VENET);
    assert_eq!(f.mode("etc/netplan/90-p2c-venet0.yaml"), 0o600);
    assert!(changes[0].3.contains("enp1s0, bond0"), "{}", changes[0].3);
    rerun_is_stable(
        &f,
        OsFamily::Debian,
        &changes,
        &["etc/netplan/01-netcfg.yaml", "etc/netplan/90-p2c-venet0.yaml"],
    );

    // Flow style with devices: the whole file goes.
    let out = netplan::strip("network: {version: 2, ethernets: {eth0: {dhcp4: true}}}\n");
    assert!(out.empty && out.text.is_empty());
}

const NETWORKD_VENET: &str = "\
# Generated by p2c: every address of this server is on venet0 (OpenVZ venet:
# layer 3, point-to-point, no ARP, no DHCP);
# the default routes go through venet0.
[Match]
Name=venet0

[Network]
DHCP=no
LinkLocalAddressing=no
IPv6AcceptRA=no
Address=198.51.100.10/32
Address=198.51.100.11/32
Address=203.0.113.5/32
Address=2001:db8:1::5/128
DNS=198.51.100.53
Domains=example.net

[Route]
Destination=0.0.0.0/0

[Route]
Destination=::/0
";

/// The same for Virtuozzo 9's routed veth.
const NETWORKD_VENET_VZ9: &str = "\
# Generated by p2c: every address of this server is on venet0 (Virtuozzo 9: a routed veth,
# the host routes each address to it);
# the default routes go through venet0.
[Match]
Name=venet0

[Network]
DHCP=no
LinkLocalAddressing=ipv6
IPv6AcceptRA=no
Address=198.51.100.10/24
Address=198.51.100.11/24
Address=203.0.113.5/24
Address=2001:db8:1::5/128
DNS=198.51.100.53
Domains=example.net

[Route]
Destination=0.0.0.0/0

[Route]
Gateway=fe80::ffff:1:1
GatewayOnLink=yes
";

#[test]
fn networkd() {
    let f = Fixture::new();
    let dir = "etc/systemd/network";
    f.file(
        &format!("{dir}/10-eth0.network"),
        "[Match]\nName=eth0\n\n[Network]\nAddress=198.51.100.10/24\nGateway=198.51.100.1\n",
    );
    f.file(&format!("{dir}/20-wired.network"), "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n");
    f.file(&format!("{dir}/10-lan.link"), "[Match]\nMACAddress=52:54:00:12:34:57\n\n[Link]\nName=eth1\n");
    f.file(&format!("{dir}/25-br0.netdev"), "[NetDev]\nName=br0\nKind=bridge\n");
    f.file(&format!("{dir}/30-wg0.netdev"), "[NetDev]\nName=wg0\nKind=wireguard\n");
    f.file(&format!("{dir}/30-wg0.network"), "[Match]\nName=wg0\n\n[Network]\nAddress=10.9.0.1/24\n");
    let changes = run(&f, OsFamily::Debian);
    assert_eq!(
        actions(&changes),
        [
            ("/etc/systemd/network/10-eth0.network", "removed"),
            ("/etc/systemd/network/10-lan.link", "removed"),
            ("/etc/systemd/network/20-wired.network", "removed"),
            ("/etc/systemd/network/25-br0.netdev", "removed"),
            ("/etc/systemd/network/10-p2c-venet0.network", "created"),
            ("/etc/resolv.conf", "created"),
            ("/etc/hostname", "created"),
        ]
    );
    assert_eq!(f.read(&format!("{dir}/10-p2c-venet0.network")), NETWORKD_VENET);
    // vz7 writes the same (both are venet); vz9 the routed veth's.
    assert_eq!(
        networkd::render(&Plan::new(&inventory(), &GuestOptions { target: Target::Vz7, ..options() })),
        NETWORKD_VENET
    );
    assert_eq!(
        networkd::render(&Plan::new(&inventory(), &GuestOptions { target: Target::Vz9, ..options() })),
        NETWORKD_VENET_VZ9
    );
    assert!(f.exists(&format!("{dir}/30-wg0.network")));
    assert!(f.exists(&format!("{dir}/30-wg0.netdev")));
    assert!(f.exists("etc/p2c/backup/etc/systemd/network/20-wired.network"));
    rerun_is_stable(&f, OsFamily::Debian, &changes, &[&format!("{dir}/10-p2c-venet0.network")]);
}

const IFCFG_ETH0: &str = "\
DEVICE=eth0
HWADDR=52:54:00:12:34:56
BOOTPROTO=none
ONBOOT=yes
IPADDR=198.51.100.10
PREFIX=24
IPADDR2=198.51.100.11
PREFIX2=24
GATEWAY=198.51.100.1
IPV6INIT=yes
IPV6ADDR=2001:db8:1::5/64
IPV6ADDR_SECONDARIES=\"2001:db8:1::6/64 2001:db8:1::7/64\"
";

#[test]
fn redhat_ifcfg() {
    let f = Fixture::new();
    let dir = "etc/sysconfig/network-scripts";
    f.file("etc/redhat-release", "CentOS Linux release 7.9.2009 (Core)\n");
    // The initscripts' network service: ifcfg files are what brings venet0 up.
    f.file("etc/rc.d/init.d/network", "#! /bin/bash\n");
    f.file(&format!("{dir}/ifcfg-lo"), "DEVICE=lo\nIPADDR=127.0.0.1\n");
    f.file(&format!("{dir}/route-venet0"), "192.0.2.0/24 dev venet0 scope host\ndefault via 192.0.2.1\n");
    f.file(&format!("{dir}/ifcfg-eth0"), IFCFG_ETH0);
    f.file(&format!("{dir}/ifcfg-eth1"), "DEVICE=eth1\nBOOTPROTO=dhcp\nONBOOT=yes\n");
    f.file(&format!("{dir}/route-eth0"), "10.10.0.0/16 via 198.51.100.254 dev eth0\n");
    f.file(&format!("{dir}/ifcfg-Wired_connection_1"), "TYPE=Ethernet\nNAME=\"Wired connection 1\"\n");
    f.file(&format!("{dir}/ifup-eth"), "#!/bin/bash\n");
    f.file(
        "etc/sysconfig/network",
        "NETWORKING=yes\nHOSTNAME=web1.example.net\nGATEWAY=198.51.100.1\nNETWORKING_IPV6=yes\nIPV6_DEFAULTGW=2001:db8:1::1\n",
    );
    let mut opts_v6 = options();
    opts_v6.addresses.push("2001:db8:1::6".parse().unwrap());
    let tree = f.tree();
    let mut distro = detect(&tree).unwrap();
    distro.family = OsFamily::Rhel;
    let mut ed = Editor::open(&tree).unwrap();
    apply(&mut ed, &distro, &inventory(), &opts_v6).unwrap();
    let got: Vec<(String, String)> =
        ed.changes().iter().map(|c| (c.path.clone(), c.action.clone())).collect();
    let want: Vec<(String, String)> = [
        ("ifcfg-Wired_connection_1", "removed"),
        ("ifcfg-eth0", "removed"),
        ("ifcfg-eth1", "removed"),
        ("route-eth0", "removed"),
        ("route-venet0", "removed"),
        ("ifcfg-venet0", "created"),
        ("ifcfg-venet0:0", "created"),
        ("ifcfg-venet0:1", "created"),
        ("ifcfg-venet0:2", "created"),
    ]
    .iter()
    .map(|(p, a)| (format!("/{dir}/{p}"), a.to_string()))
    .chain([
        ("/etc/sysconfig/network".to_string(), "rewritten".to_string()),
        ("/etc/resolv.conf".to_string(), "created".to_string()),
    ])
    .collect();
    assert_eq!(got, want);
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0")),
        "\
# Generated by p2c: venet0 (OpenVZ venet: layer 3, point-to-point, no ARP);
# its IPv4 addresses are the aliases in ifcfg-venet0:N.
DEVICE=venet0
BOOTPROTO=static
ONBOOT=yes
IPADDR=127.0.0.1
NETMASK=255.255.255.255
BROADCAST=0.0.0.0
NM_CONTROLLED=\"no\"
ARPUPDATE=\"no\"
ARPCHECK=\"no\"
IPV6INIT=\"yes\"
IPV6ADDR_SECONDARIES=\"2001:db8:1::5/128 2001:db8:1::6/128\"
"
    );
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0:1")),
        "\
# Generated by p2c: one IPv4 address of the server, on venet0.
DEVICE=venet0:1
ONBOOT=yes
IPADDR=198.51.100.11
ARPCHECK=\"no\"
NM_CONTROLLED=\"no\"
NETMASK=255.255.255.255
"
    );
    // No route to a gateway that does not exist: an earlier p2c's route-venet0 goes.
    assert!(!f.exists(&format!("{dir}/route-venet0")));
    assert_eq!(
        f.read("etc/sysconfig/network"),
        "NETWORKING=\"yes\"\nHOSTNAME=web1.example.net\nNETWORKING_IPV6=\"yes\"\nGATEWAYDEV=\"venet0\"\nIPV6_DEFAULTDEV=\"venet0\"\n"
    );
    assert_eq!(f.read(&format!("etc/p2c/backup/{dir}/ifcfg-eth0")), IFCFG_ETH0);
    assert!(f.exists(&format!("{dir}/ifcfg-lo")));
    assert!(f.exists(&format!("{dir}/ifup-eth")));
    // No /etc/hostname on a RHEL sysvinit guest: HOSTNAME= stays where it is.
    assert!(!f.exists("etc/hostname"));

    // Fewer addresses next time: the extra alias is stale and goes.
    let mut ed = Editor::open(&tree).unwrap();
    apply(
        &mut ed,
        &distro,
        &inventory(),
        &GuestOptions {
            addresses: vec!["198.51.100.10".parse().unwrap()],
            target: Target::Openvz,
            ..GuestOptions::default()
        },
    )
    .unwrap();
    assert!(!f.exists(&format!("{dir}/ifcfg-venet0:2")));
    assert!(f.exists(&format!("{dir}/ifcfg-venet0:0")));
    assert!(!f.read(&format!("{dir}/ifcfg-venet0")).contains("IPV6"));
    assert_eq!(f.read(&format!("etc/p2c/backup/{dir}/ifcfg-eth0")), IFCFG_ETH0);
    assert_eq!(
        f.read("etc/sysconfig/network"),
        "NETWORKING=\"yes\"\nHOSTNAME=web1.example.net\nNETWORKING_IPV6=\"yes\"\nGATEWAYDEV=\"venet0\"\n"
    );
}

#[test]
fn suse_ifcfg() {
    let f = Fixture::new();
    let dir = "etc/sysconfig/network";
    f.file("etc/os-release", "ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\nVERSION_ID=\"15.5\"\n");
    f.file(&format!("{dir}/ifcfg-lo"), "IPADDR=127.0.0.1\nSTARTMODE=nfsroot\n");
    f.file(
        &format!("{dir}/ifcfg-eth0"),
        "BOOTPROTO='static'\nSTARTMODE='auto'\nIPADDR='198.51.100.10/24'\nIPADDR_1='198.51.100.11/24'\nLABEL_1='1'\n",
    );
    f.file(&format!("{dir}/ifcfg-eth1"), "BOOTPROTO='dhcp'\nSTARTMODE='auto'\n");
    f.file(&format!("{dir}/ifroute-eth0"), "10.10.0.0/16 198.51.100.254 - eth0\n");
    f.file(
        &format!("{dir}/routes"),
        "# static routes\ndefault 198.51.100.1 - -\n10.10.0.0/16 198.51.100.254 - -\n172.16.0.0/12 - - tun0\n",
    );
    f.file(&format!("{dir}/config"), "NETCONFIG_DNS_POLICY=\"auto\"\n");
    let changes = run(&f, OsFamily::Suse);
    assert_eq!(
        actions(&changes),
        [
            ("/etc/sysconfig/network/ifcfg-eth0", "removed"),
            ("/etc/sysconfig/network/ifcfg-eth1", "removed"),
            ("/etc/sysconfig/network/ifroute-eth0", "removed"),
            ("/etc/sysconfig/network/ifcfg-venet0", "created"),
            ("/etc/sysconfig/network/ifroute-venet0", "created"),
            ("/etc/sysconfig/network/routes", "rewritten"),
            ("/etc/resolv.conf", "created"),
        ]
    );
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0")),
        "\
# Generated by p2c: venet0 (OpenVZ venet: layer 3, point-to-point, no ARP).
STARTMODE=onboot
BOOTPROTO=static
BROADCAST=0.0.0.0
NETMASK=255.255.255.255
IPADDR=127.0.0.1
IPADDR_0=198.51.100.10
PREFIXLEN_0=32
LABEL_0=0
IPADDR_1=198.51.100.11
PREFIXLEN_1=32
LABEL_1=1
IPADDR_2=203.0.113.5
PREFIXLEN_2=32
LABEL_2=2
IPADDR_3=2001:db8:1::5
PREFIXLEN_3=128
LABEL_3=3
"
    );
    assert_eq!(
        f.read(&format!("{dir}/ifroute-venet0")),
        "\
# Generated by p2c: the default routes through venet0, no gateway behind it.
default - - venet0
default :: - venet0
"
    );
    assert_eq!(f.read(&format!("{dir}/routes")), "# static routes\n172.16.0.0/12 - - tun0\n");
    assert!(f.exists(&format!("{dir}/ifcfg-lo")));
    assert!(f.exists(&format!("{dir}/config")));
    rerun_is_stable(
        &f,
        OsFamily::Suse,
        &changes,
        &[&format!("{dir}/ifcfg-venet0"), &format!("{dir}/routes")],
    );
}

#[test]
fn network_manager_profiles_of_hardware_go() {
    let f = Fixture::new();
    let dir = "etc/NetworkManager/system-connections";
    f.file(
        &format!("{dir}/Wired connection 1.nmconnection"),
        "[connection]\nid=Wired connection 1\ntype=ethernet\ninterface-name=enp1s0\n",
    );
    f.file(&format!("{dir}/office.nmconnection"), "[connection]\nid=office\ntype=vpn\n");
    let changes = run(&f, OsFamily::Rhel);
    assert_eq!(
        actions(&changes)[0],
        ("/etc/NetworkManager/system-connections/Wired connection 1.nmconnection", "removed")
    );
    assert!(f.exists(&format!("{dir}/office.nmconnection")));
}

/// A CentOS 7 guest (initscripts) with eth0: the files venet0 gets on vz7 and vz9.
fn rhel_fixture(legacy_network: bool) -> Fixture {
    let f = Fixture::new();
    let dir = "etc/sysconfig/network-scripts";
    f.file("etc/redhat-release", "CentOS Linux release 7.9.2009 (Core)\n");
    if legacy_network {
        f.file("etc/rc.d/init.d/network", "#! /bin/bash\n");
    }
    f.file(&format!("{dir}/ifcfg-eth0"), IFCFG_ETH0);
    f.file("etc/sysconfig/network", "NETWORKING=yes\nGATEWAY=198.51.100.1\n");
    f
}

#[test]
fn redhat_ifcfg_vz7_and_vz9() {
    let dir = "etc/sysconfig/network-scripts";
    let f = rhel_fixture(true);
    let changes = run_as(&f, OsFamily::Rhel, Target::Vz7);
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0")),
        "\
# Generated by p2c: venet0 (OpenVZ venet: layer 3, point-to-point, no ARP);
# its IPv4 addresses are the aliases in ifcfg-venet0:N.
DEVICE=venet0
BOOTPROTO=static
ONBOOT=yes
IPADDR=127.0.0.1
NETMASK=255.255.255.255
BROADCAST=0.0.0.0
NM_CONTROLLED=\"no\"
ARPUPDATE=\"no\"
ARPCHECK=\"no\"
GATEWAYDEV=\"venet0\"
IPV6INIT=\"yes\"
IPV6_DEFAULTDEV=\"venet0\"
IPV6ADDR_SECONDARIES=\"2001:db8:1::5/128\"
"
    );
    assert!(f.read(&format!("{dir}/ifcfg-venet0:2")).contains("IPADDR=203.0.113.5\n"));
    assert!(!f.exists(&format!("{dir}/route-venet0")));
    assert!(!f.exists(&format!("{dir}/route6-venet0")));
    assert_eq!(f.read("etc/sysconfig/network"), "NETWORKING=\"yes\"\nNETWORKING_IPV6=\"yes\"\n");
    rerun_is_stable_as(&f, OsFamily::Rhel, Target::Vz7, &changes, &[&format!("{dir}/ifcfg-venet0")]);

    let f = rhel_fixture(true);
    let changes = run_as(&f, OsFamily::Rhel, Target::Vz9);
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0")),
        "\
# Generated by p2c: venet0 (Virtuozzo 9: a routed veth, the host routes each address to it).
# 4896d4dc-7035-45f9-ac14-2bd1d1809c26 venet0
ARPUPDATE=no
ARPCHECK=no
DEVICE=\"venet0\"
ONBOOT=\"yes\"
BOOTPROTO=static
NM_CONTROLLED=no
IPADDR=\"198.51.100.10\"
NETMASK=\"255.255.255.0\"
IPV6INIT=\"yes\"
IPV6ADDR_SECONDARIES=\"2001:db8:1::5/128\"
"
    );
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0:1")),
        "\
# Generated by p2c: one IPv4 address of the server, on venet0.
# 4896d4dc-7035-45f9-ac14-2bd1d1809c26 venet0:1
ARPUPDATE=no
ARPCHECK=no
DEVICE=\"venet0:1\"
ONBOOT=yes
BOOTPROTO=static
NM_CONTROLLED=no
IPADDR=\"203.0.113.5\"
NETMASK=\"255.255.255.0\"
"
    );
    assert!(!f.exists(&format!("{dir}/ifcfg-venet0:2")));
    assert_eq!(f.read(&format!("{dir}/route-venet0")), "default dev venet0\n");
    assert_eq!(
        f.read(&format!("{dir}/route6-venet0")),
        "fe80::ffff:1:1 dev venet0\ndefault via fe80::ffff:1:1 dev venet0\n"
    );
    assert_eq!(f.read("etc/sysconfig/network"), "NETWORKING=\"yes\"\nNETWORKING_IPV6=\"yes\"\n");
    rerun_is_stable_as(
        &f,
        OsFamily::Rhel,
        Target::Vz9,
        &changes,
        &[&format!("{dir}/ifcfg-venet0"), &format!("{dir}/route6-venet0")],
    );
    // Migrated again for vz7: the routed veth's files go.
    run_as(&f, OsFamily::Rhel, Target::Vz7);
    assert!(!f.exists(&format!("{dir}/route-venet0")));
    assert!(!f.exists(&format!("{dir}/route6-venet0")));
    assert!(f.exists(&format!("{dir}/ifcfg-venet0:2")));
}

const NM_VENET: &str = "\
# Generated by p2c: every address of this server is on venet0 (OpenVZ venet:
# layer 3, point-to-point, no ARP, no DHCP); the default routes go through venet0.
[connection]
id=venet0
uuid=6d73e1a0-4e41-458e-9ecc-c0475ccd49a1
type=generic
interface-name=venet0
autoconnect=true

[ipv4]
method=manual
address1=198.51.100.10/32
address2=198.51.100.11/32
address3=203.0.113.5/32
route1=0.0.0.0/0
dns=198.51.100.53;
dns-search=example.net;

[ipv6]
method=manual
address1=2001:db8:1::5/128
route1=::/0
";

const NM_ROUTED: &str = "\
# Generated by p2c: every address of this server is on venet0 (Virtuozzo 9: a routed
# veth, the host routes each address to it and answers for 169.254.0.1 by proxy ARP).
[connection]
id=vz-venet0
uuid=4896d4dc-7035-45f9-ac14-2bd1d1809c26
type=ethernet
interface-name=venet0

[ipv4]
method=manual
address1=198.51.100.10/24,169.254.0.1
address2=198.51.100.11/24
address3=203.0.113.5/24
dns=198.51.100.53;
dns-search=example.net;

[ipv6]
method=manual
address1=2001:db8:1::5/128,fe80::ffff:1:1
";

/// RHEL 9: NetworkManager, no initscripts. ifcfg-eth0 (read by NetworkManager's ifcfg-rh)
/// and a keyfile for eth1 go; venet0 gets a keyfile, no ifcfg-venet0.
#[test]
fn network_manager_guest_gets_a_keyfile() {
    let dir = "etc/NetworkManager/system-connections";
    let ifcfg = "etc/sysconfig/network-scripts";
    for target in Target::ALL {
        let f = rhel_fixture(false);
        f.file(
            &format!("{dir}/eth1.nmconnection"),
            "[connection]\nid=eth1\ntype=ethernet\ninterface-name=eth1\n\n[ipv4]\nmethod=auto\n",
        );
        f.link(
            "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
            "/usr/lib/systemd/system/NetworkManager.service",
        );
        let changes = run_as(&f, OsFamily::Rhel, target);
        assert!(!f.exists(&format!("{ifcfg}/ifcfg-eth0")));
        assert!(!f.exists(&format!("{ifcfg}/ifcfg-venet0")), "{target}");
        assert!(!f.exists(&format!("{dir}/eth1.nmconnection")));
        let (profile, text) = match target {
            Target::Vz9 => ("vz-venet0", NM_ROUTED),
            _ => ("venet0.nmconnection", NM_VENET),
        };
        let path = format!("{dir}/{profile}");
        assert_eq!(f.read(&path), text, "{target}");
        assert_eq!(f.mode(&path), 0o600);
        if target == Target::Vz9 {
            let conf = "etc/NetworkManager/conf.d/vz-venet0.conf";
            assert_eq!(
                f.read(conf),
                "# Generated by p2c as libvzctl's nm_create_config writes it.\n[main]\nno-auto-default+=venet0\nplugins-=ifcfg-rh\n"
            );
            assert_eq!(f.mode(conf), 0o600);
        }
        // The physical gateway goes from /etc/sysconfig/network; nothing there for venet0.
        assert_eq!(f.read("etc/sysconfig/network"), "NETWORKING=yes\n");
        assert!(changes.iter().any(|c| c.0 == format!("/{path}") && c.1 == "created"));
        rerun_is_stable_as(&f, OsFamily::Rhel, target, &changes, &[&path]);
    }
}

#[test]
fn suse_ifcfg_vz7_and_vz9() {
    let dir = "etc/sysconfig/network";
    let suse = || {
        let f = Fixture::new();
        f.file("etc/os-release", "ID=\"sles\"\nID_LIKE=\"suse\"\nVERSION_ID=\"15.5\"\n");
        f.file(&format!("{dir}/ifcfg-eth0"), "BOOTPROTO='static'\nIPADDR='198.51.100.10/24'\n");
        f.file(
            &format!("{dir}/ifroute-venet0"),
            "192.0.2.1 - 255.255.255.255 venet0\ndefault 192.0.2.1 - venet0\n",
        );
        f
    };
    let f = suse();
    let changes = run_as(&f, OsFamily::Suse, Target::Vz7);
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0")),
        "\
# Generated by p2c: venet0 (OpenVZ venet: layer 3, point-to-point, no ARP).
STARTMODE=onboot
BOOTPROTO=static
BROADCAST=0.0.0.0
NETMASK=255.255.255.255
IPADDR=127.0.0.1
IPADDR_0=198.51.100.10
LABEL_0=0
IPADDR_1=198.51.100.11
LABEL_1=1
IPADDR_2=203.0.113.5
LABEL_2=2
IPADDR_3=2001:db8:1::5
LABEL_3=3
PREFIXLEN_3=128
"
    );
    assert_eq!(
        f.read(&format!("{dir}/ifroute-venet0")),
        "# Generated by p2c: the default routes through venet0, no gateway behind it.\n\
         default - - venet0\ndefault :: - venet0\n"
    );
    rerun_is_stable_as(&f, OsFamily::Suse, Target::Vz7, &changes, &[&format!("{dir}/ifroute-venet0")]);

    let f = suse();
    let changes = run_as(&f, OsFamily::Suse, Target::Vz9);
    assert_eq!(
        f.read(&format!("{dir}/ifcfg-venet0")),
        "\
# 4896d4dc-7035-45f9-ac14-2bd1d1809c26 venet0
# Generated by p2c: venet0 (Virtuozzo 9: a routed veth, the host routes each address to it).
STARTMODE=onboot
BOOTPROTO=static
IPADDR=198.51.100.10
NETMASK=255.255.255.0
IPADDR_1=198.51.100.11
LABEL_1=1
NETMASK_1=255.255.255.0
IPADDR_2=203.0.113.5
LABEL_2=2
NETMASK_2=255.255.255.0
IPADDR_3=2001:db8:1::5
LABEL_3=3
PREFIXLEN_3=128
"
    );
    assert_eq!(
        f.read(&format!("{dir}/ifroute-venet0")),
        "# Generated by p2c: the default routes through the host end of venet0.\n\
         169.254.0.1 - - -\nfe80::ffff:1:1 - - -\ndefault 169.254.0.1 - -\ndefault fe80::ffff:1:1 - -\n"
    );
    rerun_is_stable_as(&f, OsFamily::Suse, Target::Vz9, &changes, &[&format!("{dir}/ifcfg-venet0")]);
}

/// Every stack at once, for each target: running twice changes nothing, and no file names
/// a fake gateway or its network.
#[test]
fn every_target_is_idempotent_and_has_no_fake_gateway() {
    let files = [
        "etc/network/interfaces",
        "etc/netplan/90-p2c-venet0.yaml",
        "etc/sysconfig/network-scripts/ifcfg-venet0",
        "etc/sysconfig/network",
    ];
    for (family, target) in Target::ALL.iter().flat_map(|t| [(OsFamily::Debian, *t), (OsFamily::Rhel, *t)]) {
        let f = Fixture::new();
        f.file("etc/rc.d/init.d/network", "#! /bin/bash\n");
        f.file("etc/network/interfaces", DEBIAN);
        f.file("etc/netplan/50-cloud-init.yaml", NETPLAN_CLOUD);
        f.file("etc/sysconfig/network-scripts/ifcfg-eth0", IFCFG_ETH0);
        f.file("etc/sysconfig/network", "NETWORKING=yes\n");
        let changes = run_as(&f, family, target);
        let present: Vec<&str> = files.iter().copied().filter(|p| f.exists(p)).collect();
        rerun_is_stable_as(&f, family, target, &changes, &present);
        for p in &present {
            assert!(!f.read(p).contains("192.0.2."), "{target}: {p}:\n{}", f.read(p));
        }
        // netplan configured the NICs: it alone has venet0.
        assert!(f.exists("etc/netplan/90-p2c-venet0.yaml"));
        assert!(!f.read("etc/network/interfaces").contains("venet0"), "{target}");
        assert!(!f.exists("etc/sysconfig/network-scripts/ifcfg-venet0"));
    }
}
