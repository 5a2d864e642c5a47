//! The agent keeps its session by itself: real `p2c-controller` and `p2c-agent` processes,
//! the controller killed with SIGKILL while the agent is connected, then started again.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use p2c_tests::procs::bin;
use p2c_tests::{require_root, trace_init, wait_for};

/// Kills the child on drop, whatever the test did.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(state: &std::path::Path) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(state.join("serve.log")).unwrap();
    Proc(
        Command::new(bin("p2c-controller").unwrap())
            .args(["serve", "--state-dir"])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn connected(state: &std::path::Path, name: &str) -> bool {
    let out = Command::new(bin("p2c").unwrap())
        .args(["--state-dir"])
        .arg(state)
        .args(["agents", "--json"])
        .output();
    let Ok(out) = out else { return false };
    let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) else { return false };
    list.iter().any(|a| a["name"] == name && a["connected"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_after_the_controller_is_killed() {
    require_root!();
    trace_init();
    let w = tempfile::tempdir().unwrap();
    let state = w.path().join("state");
    let listen = format!("127.0.0.1:{}", free_port());
    p2c_tests::node::Node::init_in(w.path(), &listen).unwrap();
    let mut ctl = serve(&state);
    let sock = state.join("admin.sock");
    wait_for("the controller's admin socket", Duration::from_secs(20), || {
        let s = sock.clone();
        async move { s.exists() }
    })
    .await;
    let token = Command::new(bin("p2c").unwrap())
        .args(["--state-dir"])
        .arg(&state)
        .args(["token", "create", "web01", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout).unwrap();
    let agent_state = w.path().join("agent");
    let src = w.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    let enrolled = Command::new(bin("p2c-agent").unwrap())
        .args(["enroll", "--token", token.trim(), "--state-dir"])
        .arg(&agent_state)
        .output()
        .unwrap();
    assert!(enrolled.status.success(), "{}", String::from_utf8_lossy(&enrolled.stderr));
    let mut agent = Proc(
        Command::new(bin("p2c-agent").unwrap())
            .args(["run", "--max-backoff", "1", "--state-dir"])
            .arg(&agent_state)
            .arg("--root")
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let st = state.clone();
    wait_for("the agent to connect", Duration::from_secs(30), move || {
        let st = st.clone();
        async move { connected(&st, "web01") }
    })
    .await;

    // A crash: SIGKILL, no goodbye to the agent.
    ctl.0.kill().unwrap();
    ctl.0.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent must keep running while the controller is away"
    );
    ctl = serve(&state);
    let st = state.clone();
    wait_for("the agent to reconnect by itself", Duration::from_secs(30), move || {
        let st = st.clone();
        async move { connected(&st, "web01") }
    })
    .await;
    drop(ctl);
    drop(agent);
}
