//! End-to-end proofs through the whole product: real source hosts (network namespaces with
//! their own NICs, partitions mounted beneath a debootstrapped root, a real `p2c-agent`
//! process), the real `p2c` CLI, the controller's pipeline, and then the result used the way
//! a node would use it: the container started with its addresses on venet0, its quotas
//! enforced by a kernel.
//!
//! - `fixture`: a server with every P2C restriction (issue 3) is assessed live, migrated and
//!   started; a plain server's report has nothing to warn about.
//! - `layouts`: RHEL and SUSE trees get the network files their own tools expect.
//! - `passes`: passes over more file records than one page (found by `fixture`).
//! - `quotas`: one partition's quotas carried into a ploop image (and enforced by a
//!   quota-capable kernel), and a container total on btrfs (issue 4).

mod boot;
mod fixture;
mod layouts;
mod passes;
mod quotas;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use p2c_common::findings::{Finding, Report};
use p2c_tests::loopfs::{FsKind, LoopFs};
use p2c_tests::netns::NetHost;
use p2c_tests::node::{Node, NodeOptions};
use p2c_tests::procs::{HostAgent, bin};

/// Writes `text` to `rel` below `root`, making its directory.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

/// Reads `rel` below `root` as text.
pub fn read(root: &Path, rel: &str) -> String {
    let p = root.join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Runs a command that must succeed (setfattr, mkswap, quotacheck...).
pub fn sh(program: &str, args: &[&str]) -> String {
    p2c_tests::util::run(program, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// What a run of the real `p2c` CLI printed.
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `p2c` binary against the controller whose state dir is `state`.
pub async fn p2c(state: &Path, args: &[&str]) -> CliRun {
    let exe = bin("p2c").unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir").arg(state).args(args);
    let line = p2c_tests::util::command_line(&cmd);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let run = CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ {line}\n(exit {})", run.code);
    run
}

/// `p2c assess NAME --json [extra]`: the report (exit code 0, or 3 with blockers).
pub async fn assess(state: &Path, agent: &str, extra: &[&str]) -> Report {
    let mut args = vec!["assess", agent, "--json"];
    args.extend_from_slice(extra);
    let r = p2c(state, &args).await;
    assert!(matches!(r.code, 0 | 3), "p2c assess failed ({}): {}", r.code, r.stderr);
    let report: Report = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(r.code == 3, report.has_blockers(), "exit code and blockers disagree");
    report
}

/// The finding with `code`, or a failure listing the report.
pub fn finding<'a>(report: &'a Report, code: &str) -> &'a Finding {
    report.find(code).unwrap_or_else(|| panic!("no {code} finding in the report:\n{}", report.render()))
}

/// The strings of a JSON array of objects at `field` of each element.
pub fn strings(v: &serde_json::Value, field: &str) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x.get(field)?.as_str().map(str::to_string)).collect()
}

/// A node listening on every address, with its containers under `vz_root`, and a real
/// `p2c-agent run --root ROOT --facts live` inside `host`, enrolled as `name` and
/// connected.
pub async fn live_agent(host: &NetHost, name: &str, root: &Path, vz_root: &Path) -> (Node, HostAgent) {
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let node_addr = format!("{}:{port}", host.node_v4().unwrap());
    let node = Node::start_with(NodeOptions {
        listen: Some(format!("0.0.0.0:{port}")),
        advertise: vec![node_addr.clone()],
        vz_root: Some(vz_root.to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap();
    let token = node.token(name, 600);
    let agent = HostAgent::start(host, name, &token, &node_addr, root, &["--facts", "live"]).unwrap();
    node.wait_connected(name, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_tail(20)));
    (node, agent)
}

/// Scratch space for trees of a few hundred MiB: a 2 GiB sparse ext4 image, loop-mounted.
/// The machine's own disk is mounted with online discard, where deleting thousands of files
/// takes many seconds; dropping this deletes one image file. Source roots go in `root`, the
/// node's container root (`NodeOptions::vz_root`) in `vz`.
pub fn scratch() -> LoopFs {
    LoopFs::new(FsKind::Ext4, 2 << 30, "").unwrap()
}

/// The addresses of the config's `IP_ADDRESS` (without the `/prefix` Virtuozzo's carry).
pub fn conf_addresses(conf: &std::collections::BTreeMap<String, String>) -> Vec<IpAddr> {
    conf["IP_ADDRESS"]
        .split_whitespace()
        .map(|a| a.split_once('/').map_or(a, |(ip, _)| ip).parse().unwrap())
        .collect()
}
