use std::net::IpAddr;

use p2c_tests::netns::{HOST_IF, NetHost, node_can_reach, unique_addrs};
use p2c_tests::{require_root, trace_init};

/// Both families, both directions: node ↔ host; cutting the link stops traffic and restoring it
/// brings it back.
#[test]
fn host_and_node_reach_each_other_until_the_link_is_cut() {
    require_root!();
    trace_init();
    let addrs = unique_addrs().unwrap();
    let host = NetHost::new("src", &addrs, Some("02:aa:bb:cc:dd:01")).unwrap();
    let node_v4 = IpAddr::V4(host.node_v4().unwrap());
    let node_v6 = IpAddr::V6(host.node_v6().unwrap());
    let (host_v4, host_v6) = (addrs[0].0, addrs[1].0);

    let link = host.exec(&["ip", "-o", "link", "show", HOST_IF]).unwrap();
    assert!(link.contains("02:aa:bb:cc:dd:01"), "{link}");
    let a = host.exec(&["ip", "-o", "addr", "show", HOST_IF]).unwrap();
    assert!(a.contains(&format!("{host_v4}/24")) && a.contains(&format!("{host_v6}/64")), "{a}");

    for (node, remote) in [(node_v4, host_v4), (node_v6, host_v6)] {
        assert!(node_can_reach(remote), "node cannot reach {remote}");
        assert!(host.can_reach(node), "host cannot reach {node}");
    }

    host.link_down().unwrap();
    for (node, remote) in [(node_v4, host_v4), (node_v6, host_v6)] {
        assert!(!node_can_reach(remote), "node still reaches {remote} with the link down");
        assert!(!host.can_reach(node), "host still reaches {node} with the link down");
    }

    host.link_up().unwrap();
    for (node, remote) in [(node_v4, host_v4), (node_v6, host_v6)] {
        assert!(node_can_reach(remote), "node cannot reach {remote} after link_up");
        assert!(host.can_reach(node), "host cannot reach {node} after link_up");
    }
}

/// Several hosts at once get distinct names, subnets and MACs; a TCP listener in one host is
/// reachable from the node; dropping a host removes its namespace, link and processes.
#[test]
fn hosts_coexist_and_clean_up() {
    require_root!();
    trace_init();
    let a = NetHost::new("multi", &unique_addrs().unwrap(), None).unwrap();
    let b = NetHost::new("multi", &unique_addrs().unwrap(), None).unwrap();
    assert_ne!(a.name(), b.name());
    assert_ne!(a.mac(), b.mac());
    assert_ne!(a.node_v4(), b.node_v4());
    for h in [&a, &b] {
        assert!(node_can_reach(h.addrs()[0].0), "{}", h.name());
    }

    // A process in the host, listening on its address: the node connects to it.
    let (name, iface) = (a.name().to_owned(), a.node_interface().to_owned());
    let listen_on = a.addrs()[0].0;
    let sleeper = a.spawn(&["sleep", "600"]).unwrap();
    let server = a
        .thread(move || std::net::TcpListener::bind((listen_on, 0)).map(|l| (l.local_addr(), l)))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let (addr, listener) = (server.0.unwrap(), server.1);
    let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).map(drop));
    let _ = listener.accept().unwrap();
    client.join().unwrap().unwrap();

    drop(a);
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&name), "netns {name} left behind");
    let link = std::process::Command::new("ip").args(["link", "show", &iface]).output().unwrap();
    assert!(!link.status.success(), "veth {iface} left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{sleeper}")).exists()
            || std::fs::read_to_string(format!("/proc/{sleeper}/stat")).is_ok_and(|s| s.contains(") Z")),
        "process {sleeper} spawned in the host still runs"
    );
    assert!(node_can_reach(b.addrs()[0].0), "dropping one host broke another");
}
