//! Who may talk to the controller (the security model): one-time tokens that expire, agent
//! certificates from the node's CA only, revocation that cuts an agent off, no session
//! without a certificate. Every refusal says what to do and leaves the node as it was: no
//! agent identity written, no agent added to the store, no session.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2c_agent::enroll::{EnrollError, EnrollOptions, Enrolled};
use p2c_common::migration::AgentStatus;
use p2c_common::pki;
use p2c_common::token::{Token, TokenError};
use p2c_proto::v1;
use p2c_proto::v1::agent_session_client::AgentSessionClient;
use p2c_proto::v1::enrollment_client::EnrollmentClient;
use p2c_tests::fake_agent::FakeAgent;
use p2c_tests::node::{Agent, Node};
use p2c_tests::{require_root, trace_init, wait_for};
use tonic::transport::Channel;

async fn enroll(token: &str, state: &Path) -> Result<Enrolled, EnrollError> {
    p2c_agent::enroll::enroll(EnrollOptions { token, state_dir: state, controller: Vec::new(), proxy: None })
        .await
}

/// `p2c agents`, through the admin socket.
async fn agents(node: &Node) -> Vec<AgentStatus> {
    let mut admin = node.admin().await.expect("admin socket");
    let reply = admin.list_agents(v1::ListAgentsRequest {}).await.expect("p2c agents").into_inner();
    serde_json::from_slice(&reply.json).expect("agents JSON")
}

async fn agent(node: &Node, name: &str) -> Option<AgentStatus> {
    agents(node).await.into_iter().find(|a| a.name == name)
}

/// Checks what a refused enrolment must leave behind: nothing.
async fn assert_not_enrolled(node: &Node, state: &Path, name: &str) {
    assert!(!state.join("agent.toml").exists(), "{}: agent identity written", state.display());
    assert!(!state.join("agent.key").exists(), "{}: agent key written", state.display());
    assert!(agent(node, name).await.is_none(), "the store lists agent {name}");
}

fn node_ca(node: &Node) -> String {
    node.controller().pki.ca.cert_pem.clone()
}

/// A TLS channel to the node with `tls`.
async fn channel(node: &Node, tls: Arc<rustls::ClientConfig>) -> Result<Channel, String> {
    p2c_agent::connect::channel(&[node.addr.to_string()], tls, None).await.map_err(|e| e.to_string())
}

/// Opens a session with a Hello; `Ok` if the controller accepted it.
async fn try_session(ch: Channel, name: &str) -> Result<(), tonic::Status> {
    let hello = v1::Hello {
        agent_version: p2c_common::VERSION.into(),
        protocol_version: p2c_proto::PROTOCOL_VERSION,
        hostname: name.into(),
        root: b"/".to_vec(),
    };
    let ev = v1::AgentEvent { event: Some(v1::agent_event::Event::Hello(hello)) };
    let mut client = AgentSessionClient::new(ch);
    let mut s = client.session(tokio_stream::iter(vec![ev])).await?.into_inner();
    // Accepted: the stream stays open (no command is due); refused later: an error.
    match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
        Ok(Err(st)) => Err(st),
        _ => Ok(()),
    }
}

/// Opens a transfer for a migration nobody runs; the status tells whether the caller was
/// identified (FAILED_PRECONDITION) or refused.
async fn try_transfer(ch: Channel) -> tonic::Status {
    let open = v1::TransferUp {
        msg: Some(v1::transfer_up::Msg::Open(v1::OpenTransfer {
            migration_id: "ct4242".into(),
            pass: 0,
            ..Default::default()
        })),
    };
    let mut client = AgentSessionClient::new(ch);
    match client.transfer(tokio_stream::iter(vec![open])).await {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_tokens_are_refused() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    let good = node.token("web01", 600);
    let state = tempfile::tempdir().unwrap();
    let state = state.path().join("agent");

    // Damaged on the way: the agent refuses it before dialling anything.
    let mut flipped = good.clone().into_bytes();
    flipped[5] ^= 0x01; // first character of the base64 body: the JSON's opening brace
    let damaged = [
        ("garbage", "hello".to_string()),
        ("empty", String::new()),
        ("truncated", good[..good.len() - 12].to_string()),
        ("flipped byte", String::from_utf8(flipped).unwrap()),
    ];
    for (what, token) in damaged {
        let err = enroll(&token, &state).await.expect_err(what);
        assert!(matches!(err, EnrollError::Token(TokenError::Malformed(_))), "{what}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("copy the whole line printed by `p2c token create`"), "{what}: {msg}");
        assert_not_enrolled(&node, &state, "web01").await;
    }

    // Well-formed but wrong: one flipped digit of the secret. Only the controller can tell.
    let mut t = Token::decode(&good).unwrap();
    let last = t.secret.pop().unwrap();
    t.secret.push(if last == '0' { '1' } else { '0' });
    let err = enroll(&t.encode(), &state).await.expect_err("wrong secret");
    let msg = err.to_string();
    assert!(matches!(err, EnrollError::Refused(_)), "{err:?}");
    assert!(msg.contains("unknown enrolment token; create one with `p2c token create NAME`"), "{msg}");
    assert_not_enrolled(&node, &state, "web01").await;

    // The controller checks requests itself, whatever the agent does.
    let tls = Arc::new(pki::enroll_config(&t.ca).unwrap());
    let ch = p2c_agent::connect::channel(&t.addrs, tls, None).await.unwrap();
    let mut c = EnrollmentClient::new(ch);
    let bad = v1::EnrollRequest { token_id: "zz".into(), token_secret: "x".into(), csr_der: vec![1, 2, 3] };
    let st = c.enroll(bad).await.expect_err("malformed request");
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("copy the whole token"), "{st:?}");
    // A real token with a CSR that is not one: refused, and the token is not spent.
    let good_t = Token::decode(&good).unwrap();
    let garbage_csr = v1::EnrollRequest {
        token_id: good_t.id.clone(),
        token_secret: good_t.secret.clone(),
        csr_der: vec![0x30; 64],
    };
    let st = c.enroll(garbage_csr).await.expect_err("garbage CSR");
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("certificate signing request is invalid"), "{st:?}");
    assert_not_enrolled(&node, &state, "web01").await;

    // None of this used the token up.
    let e = enroll(&good, &state).await.expect("the genuine token still works");
    assert_eq!(e.name, "web01");
    assert!(state.join("agent.toml").exists());
    assert_eq!(agents(&node).await.iter().filter(|a| a.name == "web01").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_tokens_are_refused() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    let token =
        p2c_controller::admin::issue_token(node.controller(), "exp01", 1, vec![node.addr.to_string()])
            .unwrap()
            .encode();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent");

    let err = enroll(&token, &state).await.expect_err("expired token");
    assert!(matches!(err, EnrollError::Token(TokenError::Expired(_))), "{err:?}");
    assert!(err.to_string().contains("create a new one with `p2c token create`"), "{err}");
    assert_not_enrolled(&node, &state, "exp01").await;

    // The controller enforces expiry itself: the same token with its `exp` pushed into the
    // future passes the agent's check and is refused by the controller's own record.
    let mut forged = Token::decode(&token).unwrap();
    forged.exp = p2c_controller::state::now() + 3600;
    let err = enroll(&forged.encode(), &state).await.expect_err("forged expiry");
    let msg = err.to_string();
    assert!(matches!(err, EnrollError::Refused(_)), "{err:?}");
    assert!(msg.contains("the enrolment token expired"), "{msg}");
    assert!(msg.contains("p2c token create"), "{msg}");
    assert_not_enrolled(&node, &state, "exp01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_work_once() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    let token = node.token("once01", 600);
    let first = tempfile::tempdir().unwrap();
    enroll(&token, first.path()).await.expect("first use");
    let before = agent(&node, "once01").await.expect("enrolled");

    let second = tempfile::tempdir().unwrap();
    let err = enroll(&token, second.path()).await.expect_err("second use");
    let msg = err.to_string();
    assert!(matches!(err, EnrollError::Refused(_)), "{err:?}");
    assert!(msg.contains("already used"), "{msg}");
    assert!(msg.contains("create a new one"), "{msg}");
    assert!(!second.path().join("agent.toml").exists());
    let all = agents(&node).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0], before, "the refused enrolment changed the agent's record");

    // The first enrolment's identity is untouched and works.
    let src = tempfile::tempdir().unwrap();
    let a = Agent::run(first, "once01", src.path(), p2c_agent::inventory::FactsFrom::Tree).unwrap();
    node.wait_connected("once01", Duration::from_secs(20)).await.unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_from_another_ca_are_refused() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    // A real agent of that name exists (enrolled, not running).
    let real = tempfile::tempdir().unwrap();
    enroll(&node.token("web02", 600), real.path()).await.unwrap();
    let ca_pem = node_ca(&node);
    let ca_der = pki::cert_der_from_pem(&ca_pem, "node CA").unwrap();
    let node_ca_name = pki::common_name(&ca_der).unwrap();

    // Another CA, then one that even copies the node CA's name.
    for foreign_name in ["p2c node CA elsewhere".to_string(), node_ca_name] {
        let foreign = pki::create_ca(&foreign_name).unwrap();
        let (csr, key) = pki::make_csr("web02").unwrap();
        let cert = pki::der_to_pem(&pki::sign_agent_csr(&foreign, &csr, "web02").unwrap());
        let tls = Arc::new(pki::agent_config(&ca_pem, &cert, &key).unwrap());
        // TLS 1.3 checks the client certificate after the client thinks it is done, so the
        // refusal shows either on connecting or on the first call.
        let refusal = match channel(&node, tls.clone()).await {
            Err(e) => e,
            Ok(ch) => match try_session(ch, "web02").await {
                Ok(()) => panic!("a certificate from CA {foreign_name:?} opened a session"),
                Err(st) => {
                    assert!(
                        !matches!(st.code(), tonic::Code::Ok | tonic::Code::FailedPrecondition),
                        "{st:?}"
                    );
                    // What the agent tells its operator.
                    let said =
                        p2c_agent::session::refusal(&st, &[node.addr.to_string()], tls.clone(), None).await;
                    assert!(said.contains("does not accept this agent's certificate"), "{said}");
                    format!("{:?}: {}", st.code(), p2c_agent::connect::error_chain(&st))
                }
            },
        };
        eprintln!("foreign CA {foreign_name:?}: {refusal}");
        assert!(node.controller().sessions.get("web02").is_none(), "a session exists for web02");
        let a = agent(&node, "web02").await.unwrap();
        assert!(!a.connected && !a.revoked, "{a:?}");
    }
    assert_eq!(agents(&node).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_agents_are_cut_off() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("hostname"), "rev01\n").unwrap();
    let agent_run = Agent::start(&node, "rev01", src.path()).await.unwrap();
    let state = agent_run.state.path().to_path_buf();
    // Another connection with the agent's identity, identified before the revocation.
    let held = FakeAgent::channel(&state).await.unwrap();
    let st = try_transfer(held.clone()).await;
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "not identified before revocation: {st:?}");

    let mut admin = node.admin().await.unwrap();
    admin.revoke_agent(v1::AgentRef { name: "rev01".into() }).await.expect("p2c agent revoke rev01");

    // The session ends within a few seconds.
    wait_for("rev01's session to end", Duration::from_secs(5), || async {
        node.controller().sessions.get("rev01").is_none()
    })
    .await;
    // It stays away while the agent keeps trying (it reconnects at least once a second).
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(node.controller().sessions.get("rev01").is_none(), "the revoked agent came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A connection made before the revocation is refused at its next call.
    let st = try_transfer(held).await;
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("revoked"), "{st:?}");
    // A fresh connection with its certificate is refused at the handshake.
    let s = p2c_agent::config::AgentSettings::load(&state).unwrap();
    let tls = Arc::new(pki::agent_config(&s.ca_pem, &s.cert_pem, &s.key_pem).unwrap());
    let refusal = match channel(&node, tls.clone()).await {
        Err(e) => e,
        Ok(ch) => {
            let st = try_session(ch, "rev01").await.expect_err("a revoked certificate opened a session");
            assert!(
                !matches!(
                    st.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::Ok
                ),
                "{st:?}"
            );
            let said = p2c_agent::session::refusal(&st, &[node.addr.to_string()], tls.clone(), None).await;
            assert!(said.contains("revoked this agent's certificate; enrol it again"), "{said}");
            format!("{:?}: {}", st.code(), p2c_agent::connect::error_chain(&st))
        }
    };
    eprintln!("revoked certificate: {refusal}");
    assert!(!refusal.contains("unknown or revoked"), "refused after the handshake, not at it: {refusal}");

    let a = agent(&node, "rev01").await.unwrap();
    assert!(a.revoked && !a.connected, "{a:?}");
    let st = admin.revoke_agent(v1::AgentRef { name: "nobody".into() }).await.expect_err("unknown agent");
    assert_eq!(st.code(), tonic::Code::NotFound);
    assert!(st.message().contains("see `p2c agents`"), "{st:?}");
    agent_run.stop().await;
    assert!(node.controller().sessions.get("rev01").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_need_a_client_certificate() {
    require_root!();
    trace_init();
    let node = Node::start().await.unwrap();
    let tls = Arc::new(pki::anonymous_config(&node_ca(&node)).unwrap());
    let ch = channel(&node, tls).await.expect("TLS without a certificate");
    let st = try_session(ch.clone(), "anon").await.expect_err("a session without a certificate");
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("enrol the agent first"), "{st:?}");
    let st = try_transfer(ch).await;
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("enrol"), "{st:?}");
    assert!(node.controller().sessions.names().is_empty());
    assert!(agents(&node).await.is_empty());
}
