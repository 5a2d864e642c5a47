//! The boot check on real guests: a debootstrapped Debian tree, containerised for OpenVZ 7 /
//! Virtuozzo 7, with small real services (the host's static busybox run by the guest's
//! systemd units), booted with its own systemd under systemd-nspawn in the check's own
//! network namespaces.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2c_common::findings::Severity;
use p2c_common::inventory::{Inventory, Listener};
use p2c_common::migration::Target;
use p2c_controller::boot::{
    self, BootReport, BootRequest, HttpOutcome, InitState, ListenerStatus, TcpOutcome, codes,
};
use p2c_controller::guest::{GuestOptions, containerise};
use p2c_controller::tree::Tree;
use p2c_tests::bootguest::{
    BUSYBOX, add_unit, install_busybox, leftovers, server_addresses, server_inventory,
};
use p2c_tests::debian::debootstrap_lean_tree;
use p2c_tests::snapshot::Snapshot;

/// The server's physical network: two IPv4 addresses on eth0, one IPv6 address.
const INTERFACES: &str = "\
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet static
\taddress 198.51.100.10/24
\tgateway 198.51.100.1

auto eth0:1
iface eth0:1 inet static
\taddress 198.51.100.11/24

iface eth0 inet6 static
\taddress fd00:51::20/64
\tgateway fd00:51::1
";

fn addresses() -> Vec<IpAddr> {
    server_addresses()
}

fn inventory() -> Inventory {
    server_inventory()
}

fn listener(proto: &str, address: &str, port: u16, process: &str) -> Listener {
    Listener { proto: proto.into(), address: address.into(), port, process: Some(process.into()) }
}

/// A unit running busybox httpd on `bind` (`[addr:]port`), after the network is online.
fn httpd_unit(what: &str, bind: &str) -> String {
    format!(
        "[Unit]\nDescription={what}\nWants=network-online.target\nAfter=network-online.target\n\n\
         [Service]\nExecStart={BUSYBOX} httpd -f -p {bind} -h /srv/www\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

/// The listeners the source served, as its inventory lists them: the web server on every
/// address (a dual-stack `::`), an API on one address, and its DHCP client.
fn source_listeners() -> Vec<Listener> {
    vec![
        listener("tcp6", "::", 80, "busybox"),
        listener("tcp", "198.51.100.11", 8080, "busybox"),
        listener("udp", "0.0.0.0", 68, "dhclient"),
    ]
}

struct Guest {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
}

/// A Debian server with its physical network config and the two web services, containerised
/// for `target`; `extra` adds units of its own.
fn guest(target: Target, extra: &[(&str, String)]) -> Guest {
    let dir = tempfile::Builder::new().prefix("p2c-boot-").tempdir_in("/var/tmp").unwrap();
    let root = dir.path().join("root");
    debootstrap_lean_tree(&root).unwrap();
    std::fs::write(root.join("etc/network/interfaces"), INTERFACES).unwrap();
    std::fs::write(root.join("etc/hostname"), "web1\n").unwrap();
    install_busybox(&root).unwrap();
    std::fs::create_dir_all(root.join("srv/www")).unwrap();
    std::fs::write(root.join("srv/www/index.html"), "<h1>web1</h1>\n").unwrap();
    add_unit(&root, "p2c-web.service", &httpd_unit("the web site", "80")).unwrap();
    add_unit(&root, "p2c-api.service", &httpd_unit("the API", "198.51.100.11:8080")).unwrap();
    for (name, text) in extra {
        add_unit(&root, name, text).unwrap();
    }
    let tree = Tree::open(&root).unwrap();
    let opts = GuestOptions {
        addresses: addresses(),
        hostname: Some("web1".into()),
        target,
        ..GuestOptions::default()
    };
    containerise(&tree, &inventory(), &opts).unwrap();
    let work = dir.path().join("work");
    Guest { _dir: dir, root, work }
}

fn request(ctid: u32, g: &Guest, target: Target, listeners: Vec<Listener>, timeout: Duration) -> BootRequest {
    BootRequest {
        ctid,
        root: g.root.clone(),
        addresses: addresses(),
        target,
        listeners,
        timeout,
        work_dir: g.work.clone(),
        rewrite: None,
    }
}

/// Extended attributes and change times of every object (what the snapshot does not cover):
/// a write that leaves content and mode alone still moves the ctime.
/// An object's change time (seconds, nanoseconds) and its extended attributes (name, value).
type Meta = (i64, i64, Vec<(Vec<u8>, Vec<u8>)>);

fn meta(root: &Path, snap: &Snapshot) -> BTreeMap<PathBuf, Meta> {
    snap.0
        .keys()
        .map(|rel| {
            let p = root.join(rel);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mut names = vec![0u8; 65536];
            let n = rustix::fs::llistxattr(&p, &mut names).unwrap_or(0);
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(|name| {
                    let mut v = vec![0u8; 65536];
                    let len = rustix::fs::lgetxattr(&p, name, &mut v).unwrap_or(0);
                    (name.to_vec(), v[..len].to_vec())
                })
                .collect();
            xattrs.sort();
            (rel.clone(), (md.ctime(), md.ctime_nsec(), xattrs))
        })
        .collect()
}

fn shown(r: &BootReport) -> String {
    format!("{}\nconsole:\n{}", r.render(), r.console_tail.join("\n"))
}

fn skip() -> bool {
    if !p2c_tests::is_root() {
        eprintln!("skipping: the boot check needs root (namespaces, overlayfs, systemd-nspawn)");
        return true;
    }
    if let Err(m) = boot::tools() {
        eprintln!("skipping: {m}");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_server_boots_serves_everything_and_leaves_no_trace() {
    if skip() {
        return;
    }
    p2c_tests::trace_init();
    let g = guest(Target::Vz7, &[]);
    let before = Snapshot::take(&g.root, &|_| false).unwrap();
    let before_meta = meta(&g.root, &before);

    let r = boot::run(&request(801, &g, Target::Vz7, source_listeners(), Duration::from_secs(120)))
        .await
        .unwrap();
    let text = shown(&r);
    eprintln!("{text}");

    assert_eq!(r.init, InitState::Running, "{text}");
    assert!(r.failed_units.is_empty(), "{text}");
    assert!(r.addresses.iter().all(|a| a.up), "{text}");
    let web = r.listeners.iter().find(|l| l.port == 80).unwrap();
    assert_eq!(web.status, ListenerStatus::Present, "{text}");
    assert_eq!(web.container_program.as_deref(), Some("busybox"), "{text}");
    // The web site answers HTTP on every former address, IPv4 and IPv6.
    let probed: Vec<IpAddr> = web.probes.iter().map(|p| p.address).collect();
    assert_eq!(probed, addresses(), "{text}");
    for p in &web.probes {
        assert_eq!(p.tcp, TcpOutcome::Connected, "{text}");
        assert_eq!(p.http, Some(HttpOutcome::Response { status: 200 }), "{text}");
    }
    let api = r.listeners.iter().find(|l| l.port == 8080).unwrap();
    assert_eq!(api.status, ListenerStatus::Present, "{text}");
    assert_eq!(api.probes.len(), 1, "{text}");
    assert_eq!(api.probes[0].address, "198.51.100.11".parse::<IpAddr>().unwrap());
    assert!(api.probes[0].answered(), "{text}");
    let dhcp = r.listeners.iter().find(|l| l.port == 68).unwrap();
    assert_eq!(dhcp.status, ListenerStatus::Retired, "{text}");
    assert!(r.passed(), "{text}");
    assert!(r.find(codes::BOOT_PASSED).is_some(), "{text}");
    assert!(r.findings.iter().all(|f| f.severity != Severity::Blocker), "{text}");
    assert!(r.cleanup_problems.is_empty(), "{text}");
    assert!(r.boot_secs > 0.0 && r.boot_secs < 120.0);

    // The tree is exactly as it was: content, metadata, xattrs and change times.
    let after = Snapshot::take(&g.root, &|_| false).unwrap();
    assert_eq!(before.diff(&after), vec![]);
    assert_eq!(before_meta, meta(&g.root, &after));
    let left = leftovers(801, &g.work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_server_reports_the_failed_unit_with_its_log_and_the_missing_listener() {
    if skip() {
        return;
    }
    p2c_tests::trace_init();
    // A unit that needs a disk the container does not have (it fails, not skips), and a
    // service bound to an address the container does not get.
    let disk = "[Unit]\nDescription=Checks the data disk\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
                ExecStart=/sbin/blockdev --getsize64 /dev/sdz\n\n[Install]\nWantedBy=multi-user.target\n"
        .to_string();
    let legacy = httpd_unit("the legacy site", "198.51.100.50:8081");
    let g = guest(Target::Vz7, &[("p2c-disk.service", disk), ("p2c-legacy.service", legacy)]);
    let mut listeners = source_listeners();
    listeners.push(listener("tcp", "198.51.100.50", 8081, "busybox"));

    let r = boot::run(&request(802, &g, Target::Vz7, listeners, Duration::from_secs(120))).await.unwrap();
    let text = shown(&r);
    eprintln!("{text}");

    assert_eq!(r.init, InitState::Degraded, "{text}");
    let names: Vec<&str> = r.failed_units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["p2c-disk.service", "p2c-legacy.service"], "{text}");
    let disk = &r.failed_units[0];
    assert!(!disk.isolated);
    assert_eq!(disk.result, "exit-code", "{text}");
    assert!(disk.log_tail.iter().any(|l| l.contains("/dev/sdz")), "{:#?}", disk.log_tail);
    let legacy = &r.failed_units[1];
    assert!(
        legacy.log_tail.iter().any(|l| l.contains("Cannot assign requested address")),
        "{:#?}",
        legacy.log_tail
    );
    let f = r.find(codes::BOOT_FAILED_UNIT).unwrap();
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.evidence.iter().any(|e| e.contains("/dev/sdz")), "{:#?}", f.evidence);

    let missing = r.listeners.iter().find(|l| l.port == 8081).unwrap();
    assert_eq!(missing.status, ListenerStatus::Missing, "{text}");
    assert_eq!(missing.note.as_deref(), Some("198.51.100.50 is not an address of the container"));
    let f = r.find(codes::BOOT_LISTENER_MISSING).unwrap();
    assert_eq!(f.severity, Severity::Blocker);
    assert_eq!(
        f.evidence,
        ["tcp 198.51.100.50:8081 (busybox): 198.51.100.50 is not an address of the container"]
    );
    // The rest of the server is still up and answering.
    let web = r.listeners.iter().find(|l| l.port == 80).unwrap();
    assert!(web.probes.len() == 3 && web.probes.iter().all(|p| p.answered()), "{text}");
    assert!(r.find(codes::BOOT_UNREACHABLE).is_none(), "{text}");
    assert!(!r.passed());
    let left = leftovers(802, &g.work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_that_times_out_is_reported_and_cleaned_up() {
    if skip() {
        return;
    }
    p2c_tests::trace_init();
    // A start job that never finishes keeps systemd `starting`.
    let slow = "[Unit]\nDescription=Waits forever\n\n[Service]\nType=oneshot\nTimeoutStartSec=infinity\n\
                ExecStart=/bin/sleep 3600\n\n[Install]\nWantedBy=multi-user.target\n"
        .to_string();
    let g = guest(Target::Vz7, &[("p2c-slow.service", slow)]);
    let before = Snapshot::take(&g.root, &|_| false).unwrap();

    let r =
        boot::run(&request(803, &g, Target::Vz7, source_listeners(), Duration::from_secs(8))).await.unwrap();
    let text = shown(&r);
    eprintln!("{text}");

    assert_eq!(r.init, InitState::StartingTimedOut { last: "starting".into() }, "{text}");
    assert!(r.boot_secs >= 8.0 && r.boot_secs < 30.0, "{}", r.boot_secs);
    assert!(r.pending_jobs.iter().any(|j| j.starts_with("p2c-slow.service start")), "{:?}", r.pending_jobs);
    let f = r.find(codes::BOOT_TIMEOUT).unwrap();
    assert_eq!(f.severity, Severity::Blocker);
    assert!(!r.passed());
    assert!(r.cleanup_problems.is_empty(), "{text}");
    let left = leftovers(803, &g.work);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(before.diff(&Snapshot::take(&g.root, &|_| false).unwrap()), vec![]);
}

/// Virtuozzo 9: venet0 is a routed veth (proxy ARP and fe80::ffff:1:1 on the node end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz9_routed_venet0_serves_every_address() {
    if skip() {
        return;
    }
    p2c_tests::trace_init();
    let g = guest(Target::Vz9, &[]);
    // The guest rewrite gave venet0 the routed config libvzctl 8's debian-add_netif.sh writes.
    let ifaces = std::fs::read_to_string(g.root.join("etc/network/interfaces")).unwrap();
    assert!(ifaces.contains("default via fe80::ffff:1:1 dev venet0"), "{ifaces}");
    let r = boot::run(&request(804, &g, Target::Vz9, source_listeners(), Duration::from_secs(120)))
        .await
        .unwrap();
    let text = shown(&r);
    eprintln!("{text}");
    assert_eq!(r.init, InitState::Running, "{text}");
    assert!(r.addresses.iter().all(|a| a.up), "{text}");
    let web = r.listeners.iter().find(|l| l.port == 80).unwrap();
    let probed: Vec<IpAddr> = web.probes.iter().map(|p| p.address).collect();
    assert_eq!(probed, addresses(), "{text}");
    assert!(web.probes.iter().all(|p| p.answered()), "{text}");
    assert!(r.passed(), "{text}");
    let left = leftovers(804, &g.work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_dropped_mid_boot_removes_everything() {
    if skip() {
        return;
    }
    p2c_tests::trace_init();
    let slow = "[Unit]\nDescription=Waits forever\n\n[Service]\nType=oneshot\nTimeoutStartSec=infinity\n\
                ExecStart=/bin/sleep 3600\n\n[Install]\nWantedBy=multi-user.target\n"
        .to_string();
    let g = guest(Target::Vz7, &[("p2c-slow.service", slow)]);
    let req = request(805, &g, Target::Vz7, source_listeners(), Duration::from_secs(120));
    // The caller gives up (a cancelled CLI, a dropped task) while the guest is booting.
    let mut run = Box::pin(boot::run(&req));
    let booting = tokio::time::timeout(Duration::from_secs(6), &mut run).await;
    assert!(booting.is_err(), "the check should still be waiting for the slow unit");
    let during = leftovers(805, &g.work);
    assert!(during.iter().any(|l| l.starts_with("network namespace")), "{during:#?}");
    assert!(during.iter().any(|l| l.contains("sleep 3600")), "the guest should be running: {during:#?}");
    drop(run);
    let left = leftovers(805, &g.work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_that_cannot_boot_is_reported_and_cleaned_up() {
    if skip() {
        return;
    }
    p2c_tests::trace_init();
    let g = guest(Target::Vz7, &[]);
    // systemd-nspawn boots only what looks like an OS tree (it has an os-release file).
    for f in ["etc/os-release", "usr/lib/os-release"] {
        let _ = std::fs::remove_file(g.root.join(f));
    }
    let r =
        boot::run(&request(806, &g, Target::Vz7, source_listeners(), Duration::from_secs(60))).await.unwrap();
    let text = shown(&r);
    eprintln!("{text}");
    assert!(matches!(r.init, InitState::Exited { .. }), "{text}");
    let f = r.find(codes::BOOT_INIT_FAILED).unwrap();
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.evidence.iter().any(|e| e.contains("os-release")), "{:#?}", f.evidence);
    assert!(r.boot_secs < 30.0, "{}", r.boot_secs);
    assert!(!r.passed());
    let left = leftovers(806, &g.work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
