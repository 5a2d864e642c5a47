//! Issue 13: `p2c migrate --boot-check --cutover` on a real Debian server (a network
//! namespace with its own address, a debootstrapped systemd tree, a web server the source
//! really serves): the copy is booted before anything on the source stops, the finished
//! container after, both with their own systemd on an isolated network, and the results are
//! in the summary, in `--json` and in `p2c status`. A copy that does not boot cleanly stops
//! the cutover and the source keeps serving.

use std::net::IpAddr;
use std::path::Path;

use p2c_common::findings::Severity;
use p2c_common::migration::{BootStage, MigrationState, MigrationSummary};
use p2c_tests::bootguest::{BUSYBOX, add_unit, install_busybox};
use p2c_tests::debian::debootstrap_lean_tree;
use p2c_tests::netns::{HostAddr, NetHost, unique_addrs};
use p2c_tests::snapshot::Snapshot;
use p2c_tests::{require_root, trace_init};

use super::{live_agent, p2c, scratch, write};

/// A unit running busybox httpd on every address, port 80.
fn web_unit() -> String {
    format!(
        "[Unit]\nDescription=the web site\nWants=network-online.target\nAfter=network-online.target\n\n\
         [Service]\nExecStart={BUSYBOX} httpd -f -p 80 -h /srv/www\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// A unit that needs a disk a container does not have: it fails, it is not skipped.
const DISK_UNIT: &str = "[Unit]\nDescription=Checks the data disk\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
    ExecStart=/sbin/blockdev --getsize64 /dev/sdz\n\n[Install]\nWantedBy=multi-user.target\n";

fn boot_tools_here() -> bool {
    match p2c_controller::boot::tools() {
        Ok(_) => true,
        Err(m) => {
            eprintln!("skipping: {m}");
            false
        }
    }
}

/// The server: a debootstrapped Debian whose ifupdown config gives eth0 the host's addresses,
/// with the web site as a systemd unit, plus `extra` units; its web server runs on the source
/// (in the host's namespace) so the source's inventory lists the listener.
fn server(root: &Path, addrs: &[HostAddr], extra: &[(&str, &str)]) {
    debootstrap_lean_tree(root).unwrap();
    let mut ifaces = String::from("auto lo\niface lo inet loopback\n\nauto eth0\n");
    for (a, p) in addrs {
        let fam = if a.is_ipv4() { "inet" } else { "inet6" };
        ifaces.push_str(&format!("iface eth0 {fam} static\n\taddress {a}/{p}\n\n"));
    }
    write(root, "etc/network/interfaces", &ifaces);
    write(root, "etc/hostname", "bootweb\n");
    write(root, "srv/www/index.html", "<h1>bootweb</h1>\n");
    install_busybox(root).unwrap();
    add_unit(root, "p2c-web.service", &web_unit()).unwrap();
    for (name, text) in extra {
        add_unit(root, name, text).unwrap();
    }
}

fn summary(stdout: &str, stderr: &str) -> MigrationSummary {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_with_boot_check_boots_the_copy_and_the_finished_container() {
    require_root!();
    trace_init();
    if !boot_tools_here() {
        return;
    }
    let disk = scratch();
    let root = disk.path().join("root");
    let [v4, v6] = unique_addrs().unwrap();
    server(&root, &[v4, v6], &[]);
    let host = NetHost::new(&p2c_tests::unique_name("bootw"), &[v4, v6], None).unwrap();
    let www = root.join("srv/www");
    // The host's own busybox (busybox-static), serving the site on the source.
    host.spawn(&["/bin/busybox", "httpd", "-f", "-p", "80", "-h", &www.to_string_lossy()]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !host.exec(&["ss", "-Htln", "sport = :80"]).unwrap_or_default().contains(":80") {
        assert!(std::time::Instant::now() < deadline, "the source's web server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (node, agent) = live_agent(&host, "bootweb", &root, &disk.path().join("vz")).await;

    let run = p2c(
        &node.state_dir(),
        &["migrate", "bootweb", "--ctid", "181", "--cutover", "--boot-check", "--json"],
    )
    .await;
    let s = summary(&run.stdout, &run.stderr);
    assert_eq!(
        (run.code, s.state),
        (0, MigrationState::Done),
        "{:?}\n{}\n{}",
        s.error,
        run.stderr,
        agent.log_tail(20)
    );
    let stages: Vec<(BootStage, bool)> = s.boot_checks.iter().map(|b| (b.stage, b.passed)).collect();
    assert_eq!(
        stages,
        [(BootStage::BeforeCutover, true), (BootStage::AfterCutover, true)],
        "{:#?}",
        s.boot_checks
    );
    for b in &s.boot_checks {
        assert_eq!(b.init, "running", "{:#?}", b.findings);
        assert!(b.findings.iter().all(|f| f.severity != Severity::Blocker), "{:#?}", b.findings);
        // The source's web server is there and answers on every former address.
        let web = b.report["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["port"] == 80)
            .unwrap_or_else(|| panic!("no listener on port 80: {}", b.report["listeners"]));
        assert_eq!(web["status"], "present", "{web}");
        let probed: Vec<IpAddr> = web["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["address"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(probed, [v4.0, v6.0], "{web}");
        assert!(web["probes"].as_array().unwrap().iter().all(|p| p["tcp"]["result"] == "connected"), "{web}");
    }
    assert!(s.warnings.iter().all(|w| !w.contains("boot check")), "{:?}", s.warnings);

    // `p2c status 181` shows the last result.
    let st = p2c(&node.state_dir(), &["status", "181"]).await;
    assert!(st.stdout.contains("boot check passed after the cutover (init running"), "{}", st.stdout);

    // An on-demand check of the finished container leaves its private area as it was.
    let before = Snapshot::take(&node.private(181), &|_| false).unwrap();
    let bc = p2c(&node.state_dir(), &["boot-check", "181", "--json"]).await;
    assert_eq!(bc.code, 0, "{}\n{}", bc.stdout, bc.stderr);
    let report: serde_json::Value = serde_json::from_str(&bc.stdout).unwrap();
    assert_eq!(report["init"]["init"], "running", "{report}");
    let after = Snapshot::take(&node.private(181), &|_| false).unwrap();
    assert_eq!(before.diff(&after), vec![], "the check changed the private area");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_that_does_not_boot_cleanly_stops_the_cutover() {
    require_root!();
    trace_init();
    if !boot_tools_here() {
        return;
    }
    let disk = scratch();
    let root = disk.path().join("root");
    let [v4, v6] = unique_addrs().unwrap();
    server(&root, &[v4, v6], &[("p2c-disk.service", DISK_UNIT)]);
    let host = NetHost::new(&p2c_tests::unique_name("bootf"), &[v4, v6], None).unwrap();
    let (node, agent) = live_agent(&host, "bootbad", &root, &disk.path().join("vz")).await;

    let args = ["migrate", "bootbad", "--ctid", "182", "--cutover", "--boot-check", "--json"];
    let run = p2c(&node.state_dir(), &args).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    let st = node.status_of(182).await.unwrap();
    assert_eq!(st.state, MigrationState::Synced, "the source keeps serving: {st:?}");
    let err = st.error.unwrap_or_default();
    for part in
        ["the boot check failed", "p2c-disk.service", "Nothing on the source was stopped", "p2c cutover 182"]
    {
        assert!(err.contains(part), "`{part}` not in: {err}");
    }
    assert!(!node.private(182).join("fs/etc/p2c").exists(), "nothing was finalised");
    let status = p2c(&node.state_dir(), &["status", "182"]).await;
    assert!(status.stdout.contains("boot check FAILED before the cutover"), "{}", status.stdout);
    assert!(status.stdout.contains("boot-failed-unit"), "{}", status.stdout);

    // With --force the operator cuts over anyway; the summary says what failed.
    let mut forced = args.to_vec();
    forced.push("--force");
    let run = p2c(&node.state_dir(), &forced).await;
    let s = summary(&run.stdout, &run.stderr);
    assert_eq!(s.state, MigrationState::Done, "{:?}", s.error);
    assert!(s.warnings.iter().any(|w| w.contains("cut over anyway with --force")), "{:?}", s.warnings);
    let after = s.boot_checks.iter().find(|b| b.stage == BootStage::AfterCutover).unwrap();
    assert!(!after.passed && after.findings.iter().any(|f| f.code == "boot-failed-unit"), "{after:#?}");
    drop(agent);
}
