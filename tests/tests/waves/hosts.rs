//! Several source hosts, each a network namespace with its own addresses and MAC running a
//! real `p2c-agent` process, migrated in parallel by one controller. Cutting one host's link
//! mid-transfer leaves the others unaffected; that one resumes and finishes once its link is
//! back.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use p2c_common::migration::{MigrateOptions, MigrationState};
use p2c_tests::netns::{NetHost, unique_addrs};
use p2c_tests::node::{Node, NodeOptions, migrate_opts};
use p2c_tests::procs::HostAgent;
use p2c_tests::sources::server_tree;
use p2c_tests::{require_root, trace_init, wait_for};

use super::shared::{assert_container_matches, assert_done};

/// A source host: its namespace, its tree and its agent process.
struct Source {
    host: NetHost,
    root: std::path::PathBuf,
    agent: HostAgent,
    ctid: u32,
}

impl Source {
    fn v4(&self) -> IpAddr {
        self.host.addrs()[0].0
    }

    /// Where the controller sees this agent's session come from.
    fn peer(&self, node: &Node) -> Option<IpAddr> {
        let conn = node.controller().sessions.get(&self.agent.name)?;
        conn.peer.parse::<SocketAddr>().ok().map(|a| a.ip())
    }
}

/// A port the node can listen on for every host (`0.0.0.0`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_migrate_in_parallel_and_a_cut_link_only_delays_its_own() {
    require_root!();
    trace_init();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let hosts: Vec<NetHost> =
        (0..3).map(|_| NetHost::new("wave", &unique_addrs().unwrap(), None).unwrap()).collect();
    let port = free_port();
    let node_addr = |h: &NetHost| format!("{}:{port}", h.node_v4().unwrap());
    let node = Node::start_with(NodeOptions {
        listen: Some(format!("0.0.0.0:{port}")),
        advertise: vec![node_addr(&hosts[0])],
        ..Default::default()
    })
    .await
    .unwrap();

    // 48 MiB on two hosts; 96 MiB on the one whose link is cut, paced so the cut lands
    // mid-transfer.
    let mut sources = Vec::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let name = format!("wave-host{i}");
        let root = dir.path().join(&name);
        let files = if i == 1 { 24 } else { 12 };
        server_tree(&root, &name, files, 4 << 20).unwrap();
        let token = node.token(&name, 600);
        let agent = HostAgent::start(&host, &name, &token, &node_addr(&host), &root, &[]).unwrap();
        sources.push(Source { host, root, agent, ctid: 601 + i as u32 });
    }
    for s in &sources {
        node.wait_connected(&s.agent.name, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", s.agent.log_tail(20)));
        // Each agent is a host of its own: the controller sees it come from the host's address.
        assert_eq!(s.peer(&node), Some(s.v4()), "agent {} dials from its own host", s.agent.name);
    }
    let macs: std::collections::HashSet<&str> = sources.iter().map(|s| s.host.mac()).collect();
    assert_eq!(macs.len(), 3, "every host has its own MAC");

    let mut tasks = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let mut opts: MigrateOptions = migrate_opts(&s.agent.name, s.ctid);
        if i == 1 {
            opts.bwlimit = 8 << 20;
        }
        tasks.push(Some(node.spawn_migrate(&opts).await.unwrap()));
    }
    // `p2c status` follows them all at once.
    let status = wait_for("all three to copy", Duration::from_secs(30), || async {
        node.status()
            .await
            .ok()
            .filter(|st| st.len() == 3 && st.iter().all(|e| e.state != MigrationState::Pending))
    })
    .await;
    assert_eq!(status.iter().map(|e| e.ctid).collect::<Vec<_>>(), [601, 602, 603]);

    let cut = &sources[1];
    let at = wait_for("host 1 a quarter through its first pass", Duration::from_secs(60), || async {
        node.status_of(cut.ctid).await.ok().filter(|e| {
            e.state == MigrationState::Copying && e.bytes_total > 0 && e.bytes_done * 4 >= e.bytes_total
        })
    })
    .await;
    assert!(at.bytes_done < at.bytes_total, "the cut must land mid-transfer: {at:?}");
    assert!(at.rate_bytes_per_sec > 0 && at.eta_seconds.is_some(), "rate and ETA while copying: {at:?}");
    cut.host.link_down().unwrap();
    let cut_at = Instant::now();

    // The other two finish while host 1 is cut off.
    for i in [0, 2] {
        let task = tasks[i].take().unwrap();
        let s = tokio::time::timeout(Duration::from_secs(90), task)
            .await
            .unwrap_or_else(|_| panic!("host {i} did not finish while host 1 was cut off"))
            .unwrap()
            .unwrap();
        assert_done(&s);
        assert_container_matches(&sources[i].root, &node.tree(sources[i].ctid), &s, &[]);
    }
    // The controller notices the dead link (HTTP/2 keepalive) and waits for the agent.
    wait_for("the controller to drop host 1's session", Duration::from_secs(60), || async {
        node.controller().sessions.get(&cut.agent.name).is_none()
    })
    .await;
    let away = wait_for("host 1's migration to wait for its agent", Duration::from_secs(30), || async {
        node.status_of(cut.ctid).await.ok().filter(|e| e.waiting.is_some())
    })
    .await;
    assert_eq!(away.state, MigrationState::Copying, "{away:?}");
    eprintln!(
        "host 1 cut off for {:.1}s; the other hosts finished meanwhile",
        cut_at.elapsed().as_secs_f64()
    );

    cut.host.link_up().unwrap();
    let s = tokio::time::timeout(Duration::from_secs(120), tasks[1].take().unwrap())
        .await
        .unwrap_or_else(|_| {
            panic!("host 1 did not finish after its link came back\n{}", cut.agent.log_tail(30))
        })
        .unwrap()
        .unwrap();
    assert_done(&s);
    assert_container_matches(&cut.root, &node.tree(cut.ctid), &s, &[]);
    assert_eq!(s.agent, cut.agent.name);
    let passes = node.controller().store.passes(cut.ctid).unwrap();
    assert!(passes.iter().any(|p| !p.complete), "the interrupted pass is on record: {passes:?}");
    assert_eq!(cut.peer(&node), Some(cut.v4()), "the agent came back from its own host");
    eprintln!("three hosts migrated in {:.1}s", started.elapsed().as_secs_f64());
}
