//! Sources whose only way out is an HTTP CONNECT proxy (DMZs, customer
//! networks). The agent is the real `p2c-agent` binary; the proxy is the harness's
//! [`ConnectProxy`].

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use p2c_common::migration::MigrationState;
use p2c_tests::node::{Node, migrate_opts};
use p2c_tests::procs::bin;
use p2c_tests::proxy::{ConnectProxy, Policy};
use p2c_tests::{require_root, trace_init, wait_for};

/// `p2c-agent` with no proxy in its environment: only what the test gives it.
fn agent_cmd() -> Command {
    let mut c = Command::new(bin("p2c-agent").unwrap());
    for v in ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        c.env_remove(v);
    }
    c
}

/// `p2c-agent run` in the background, its output in `log`.
fn run_agent(state: &Path, root: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let mut c = agent_cmd();
    c.args(["run", "--state-dir"]).arg(state).arg("--root").arg(root).args(["--max-backoff", "1"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = std::fs::File::create(log).unwrap();
    c.stdout(Stdio::null()).stderr(out).spawn().unwrap()
}

/// Kills the agent when the test ends, however it ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_reaches_the_controller_only_through_a_connect_proxy() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    // The agent is told a name that only the proxy resolves (`.invalid` resolves nowhere):
    // whatever it reaches, it reaches through the proxy.
    let hidden = format!("controller.p2c.invalid:{}", node.addr.port());
    let proxy = ConnectProxy::start(Policy::Forward([(hidden.clone(), node.addr)].into())).await.unwrap();
    assert!(p2c_agent::connect::tcp(&hidden, None).await.is_err(), "{hidden} is reachable without the proxy");

    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    p2c_demo::build_sample(&src).unwrap();
    let state = w.path().join("agent");
    let token = p2c_controller::admin::issue_token(node.controller(), "dmz01", 600, vec![hidden.clone()])
        .unwrap()
        .encode();
    let out = agent_cmd()
        .args(["enroll", "--token", &token, "--state-dir"])
        .arg(&state)
        .args(["--proxy", &proxy.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enrolment through the proxy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = std::fs::read_to_string(state.join("agent.toml")).unwrap();
    assert!(conf.contains(&proxy.url()), "the proxy is not kept in agent.toml:\n{conf}");

    let log = w.path().join("agent.log");
    let _agent = Reap(run_agent(&state, &src, &log, &[]));
    node.wait_connected("dmz01", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    let s = node.migrate(&migrate_opts("dmz01", 130)).await.unwrap();
    assert_eq!(s.state, MigrationState::Done, "migration through the proxy failed: {:?}", s.error);
    assert_eq!(std::fs::read_to_string(node.tree(130).join("etc/hostname")).unwrap(), "web01\n");

    // Enrolment and the session each went through the proxy, to the hidden name only.
    let seen = proxy.requests();
    assert!(seen.len() >= 2, "the proxy saw {seen:?}");
    let want = format!("CONNECT {hidden} HTTP/1.1");
    assert!(seen.iter().all(|r| *r == want), "unexpected requests: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_that_refuses_gives_a_clear_error() {
    trace_init();
    let node = Node::start().await.unwrap();
    let proxy = ConnectProxy::start(Policy::Refuse("403 Forbidden".into())).await.unwrap();
    let target = node.addr.to_string();
    let refused = format!("proxy {} refused CONNECT {target}: HTTP/1.1 403 Forbidden", proxy.url());
    let w = tempfile::tempdir().unwrap();

    // Enrolment names the proxy, the request and the proxy's answer, and leaves no identity.
    let state = w.path().join("agent");
    let out = agent_cmd()
        .args(["enroll", "--token", &node.token("dmz02", 600), "--state-dir"])
        .arg(&state)
        .args(["--proxy", &proxy.url()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "enrolment through a refusing proxy succeeded");
    assert!(err.contains(&refused), "{err}");
    assert!(!state.join("agent.toml").exists());

    // An enrolled agent whose proxy (from `https_proxy`) starts refusing says so in its log
    // at every attempt, and never reaches the controller.
    let direct = w.path().join("direct");
    let out = agent_cmd()
        .args(["enroll", "--token", &node.token("dmz03", 600), "--state-dir"])
        .arg(&direct)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = w.path().join("agent.log");
    let _agent = Reap(run_agent(&direct, w.path(), &log, &[("https_proxy", &proxy.url())]));
    wait_for("the agent to log the refusal", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&refused))
    })
    .await;
    assert!(node.controller().sessions.get("dmz03").is_none(), "the agent got past a refusing proxy");
    assert!(proxy.requests().iter().filter(|r| r.starts_with(&format!("CONNECT {target} "))).count() >= 2);
}
