use super::*;
use crate::inventory::netconf::parse_ifupdown;
use procfs::FromRead;

#[test]
fn proc_route() {
    let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
eth0\t00000A0A\tFE01A8C0\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0\n";
    // The last line is a reject route: left out.
    let r = ipv4_routes(&RouteEntries::from_read(t.as_bytes()).unwrap().0);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].destination, "default");
    assert_eq!(r[0].gateway, Some("192.168.1.1".parse().unwrap()));
    assert_eq!(r[0].interface, "eth0");
    assert_eq!(r[1].destination, "10.10.0.0/16");
    assert_eq!(r[1].gateway, Some("192.168.1.254".parse().unwrap()));
}

#[test]
fn ipv6_route() {
    let t = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
short line
";
    let r = parse_ipv6_route(t);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].destination, "default");
    assert_eq!(r[0].gateway, Some("fe80::1".parse().unwrap()));
}

#[test]
fn resolv_conf() {
    let d = parse_resolv_conf(
        "# generated\nnameserver 10.0.0.2\nnameserver 10.0.0.2\nnameserver bogus\n\
         domain old.example\nsearch a.example b.example ; comment\noptions ndots:2\n",
    );
    assert_eq!(d.nameservers, vec!["10.0.0.2"]);
    assert_eq!(d.search, vec!["a.example", "b.example"]);
}

#[test]
fn dns_falls_back_to_config_behind_stub() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("etc")).unwrap();
    std::fs::write(t.path().join("etc/resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
    let conf =
        parse_ifupdown("iface eth0 inet static\n address 10.0.0.5/24\n dns-nameservers 10.0.0.1\n", "x");
    let (d, gaps) = read_dns(t.path(), &conf);
    assert!(gaps.is_empty());
    assert_eq!(d.nameservers, vec!["10.0.0.1"]);
}

#[test]
fn tree_view_folds_aliases_and_places_gateways() {
    let mut conf = parse_ifupdown(
        "iface eth0 inet static\n address 10.0.0.5/24\n hwaddress 52:54:00:00:00:01\n\
         iface eth0:1 inet static\n address 10.0.0.6/24\niface eth1 inet dhcp\n",
        "x",
    );
    conf.gateways.push("10.0.0.1".parse().unwrap());
    let (ifs, routes) = tree_interfaces(&conf);
    assert_eq!(ifs.len(), 2);
    assert_eq!(ifs[0].addresses.len(), 2);
    assert_eq!(ifs[0].mac.as_deref(), Some("52:54:00:00:00:01"));
    assert!(ifs[1].dhcp);
    assert_eq!(routes[0].interface, "eth0");
}

#[test]
fn subnets() {
    let a = IfAddr { address: "10.1.2.3".parse().unwrap(), prefix: 16 };
    assert!(in_subnet(&a, &"10.1.200.1".parse().unwrap()));
    assert!(!in_subnet(&a, &"10.2.0.1".parse().unwrap()));
    assert!(!in_subnet(&a, &"::1".parse().unwrap()));
}

#[test]
fn live_has_loopback() {
    let ifs = live_interfaces(&NetConfig::default()).unwrap();
    let lo = ifs.iter().find(|i| i.loopback).unwrap();
    assert_eq!(lo.name, "lo");
    assert!(lo.up);
    assert!(lo.addresses.iter().any(|a| a.address == IpAddr::from([127, 0, 0, 1]) && a.prefix == 8));
    assert!(lo.mtu > 0);
    // The loopback link has an all-zero hardware address: no MAC.
    assert_eq!(lo.mac, None);
}

#[test]
fn live_routes_of_this_namespace() {
    let (routes, gaps) = live_routes(Path::new("/proc"));
    assert!(gaps.is_empty(), "{gaps:?}");
    // Only default routes and routes through a gateway, each on a link of this namespace.
    let ifs = live_interfaces(&NetConfig::default()).unwrap();
    for r in &routes {
        assert!(r.destination == "default" || r.gateway.is_some(), "{r:?}");
        assert!(ifs.iter().any(|i| i.name == r.interface), "{r:?} {ifs:?}");
    }
    assert!(live_routes(Path::new("/nonexistent")).1.is_empty());
}
