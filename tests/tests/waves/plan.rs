//! Wave plans through the real `p2c` binary: a bad plan is refused whole with every problem
//! named; a plan of three servers runs them together, one fails (its CTID is taken) while
//! the others finish, and the exit status and the result say so.

use std::path::Path;
use std::process::Output;

use p2c_common::migration::MigrationState;
use p2c_tests::node::{Agent, Node, NodeOptions};
use p2c_tests::procs::bin;
use p2c_tests::sources::server_tree;
use p2c_tests::{require_root, trace_init};
use serde_json::Value;

use super::shared::assert_container_matches;

async fn p2c(node: &Node, args: &[&str]) -> Output {
    tokio::process::Command::new(bin("p2c").unwrap())
        .arg("--state-dir")
        .arg(node.state_dir())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_plan(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wave_runs_together_and_one_failure_does_not_stop_the_others() {
    require_root!();
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(NodeOptions { max_concurrent: Some(2), ..Default::default() }).await.unwrap();
    let mut agents = Vec::new();
    for (name, files) in [("wave-a", 3), ("wave-b", 1), ("wave-c", 1)] {
        let root = dir.path().join(name);
        server_tree(&root, name, files, 4 << 20).unwrap();
        agents.push(Agent::start(&node, name, &root).await.unwrap());
    }
    // CT 503's private area already holds something that is not a p2c migration.
    std::fs::create_dir_all(node.private(503)).unwrap();
    std::fs::write(node.private(503).join("keep-me"), b"another container").unwrap();

    // A plan with mistakes is refused whole, every mistake named, nothing started.
    let bad = write_plan(
        dir.path(),
        "bad.toml",
        "[[server]]\nagent = \"wave-a\"\nctid = 501\n[[server]]\nagent = \"ghost\"\nctid = 501\n",
    );
    let out = p2c(&node, &["plan", "apply", &bad]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("2 problem(s); nothing was started"), "{err}");
    assert!(
        err.contains("agent ghost is not enrolled") && err.contains("CT 501 is already server 1"),
        "{err}"
    );
    assert!(node.status().await.unwrap().is_empty(), "a refused plan starts nothing");

    let plan = write_plan(
        dir.path(),
        "wave.toml",
        r#"
max_parallel = 3
[defaults]
cutover = true
excludes = ["/tmp"]
[[server]]
agent = "wave-a"
ctid = 501
bwlimit = "4M"
[[server]]
agent = "wave-b"
ctid = 502
cutover = false
[[server]]
agent = "wave-c"
ctid = 503
"#,
    );
    let out = p2c(&node, &["plan", "check", &plan]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3 server(s), 3 at once"), "{}", text(&out.stdout));

    let out = p2c(&node, &["plan", "apply", &plan, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "one failure makes the wave fail: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let events = |kind: &'static str| lines.iter().filter(move |l| l["event"] == kind);
    assert_eq!(events("started").count(), 3);
    // The combined display followed the running migrations.
    assert!(
        events("status").any(|l| l["status"]["ctid"] == 501 && l["status"]["bytes_total"].as_u64() > Some(0)),
        "no progress line for CT 501"
    );
    assert!(events("log").any(|l| l["ctid"] == 501), "no log line for CT 501");
    let result = events("result").next().expect("a result line");
    assert_eq!(result["ok"], false);
    let server = |ctid: u32| {
        result["servers"].as_array().unwrap().iter().find(|s| s["ctid"] == ctid).cloned().unwrap()
    };
    assert_eq!((server(501)["ok"].clone(), server(501)["state"].clone()), (true.into(), "done".into()));
    assert!(server(501)["downtime_seconds"].as_f64().is_some());
    assert_eq!((server(502)["ok"].clone(), server(502)["state"].clone()), (true.into(), "synced".into()));
    let failed = server(503);
    assert_eq!(failed["ok"], false);
    assert!(failed["error"].as_str().unwrap().contains("is not a p2c migration"), "{failed}");

    // The others really finished; the occupied CT was left alone.
    let st = node.status().await.unwrap();
    let state = |ctid| st.iter().find(|s| s.ctid == ctid).map(|s| s.state);
    assert_eq!(
        (state(501), state(502), state(503)),
        (Some(MigrationState::Done), Some(MigrationState::Synced), None)
    );
    let done = node.controller().migrations.get(501).unwrap().summary();
    assert_container_matches(&dir.path().join("wave-a"), &node.tree(501), &done, &["tmp"]);
    assert_eq!(std::fs::read(node.tree(503).join("keep-me")).unwrap(), b"another container");
}
