//! Agent sessions: identity from the client certificate, the control stream, and the
//! transfer streams agents open for copy passes.

use p2c_common::sync::Locked;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use p2c_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};

use crate::server::Controller;

/// What an agent answered to a command.
#[derive(Debug)]
pub enum AgentReply {
    Inventory(Vec<u8>),
    Result(v1::CommandResult),
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("agent {0} is not connected; start `p2c-agent run` on the source (see `p2c agents`)")]
    NotConnected(String),
    #[error("agent {0} disconnected before answering")]
    Disconnected(String),
    #[error("agent {0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

/// One connected agent.
pub struct AgentConn {
    pub name: String,
    pub id: u64,
    pub peer: String,
    pub hello: v1::Hello,
    pub connected_unix: u64,
    tx: mpsc::Sender<Result<v1::ControllerCommand, Status>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<AgentReply>>>,
    next: AtomicU64,
    close: watch::Sender<bool>,
}

impl AgentConn {
    /// Sends a command and returns the request id and a receiver for its answer.
    pub async fn send(
        &self,
        cmd: v1::controller_command::Command,
    ) -> Result<(u64, oneshot::Receiver<AgentReply>), CallError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.locked().insert(id, tx);
        let msg = v1::ControllerCommand { request_id: id, command: Some(cmd) };
        if self.tx.send(Ok(msg)).await.is_err() {
            self.pending.locked().remove(&id);
            return Err(CallError::Disconnected(self.name.clone()));
        }
        Ok((id, rx))
    }

    /// Sends a command and waits for the answer.
    pub async fn call(
        &self,
        cmd: v1::controller_command::Command,
        timeout: Duration,
    ) -> Result<AgentReply, CallError> {
        let (id, rx) = self.send(cmd).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Disconnected(self.name.clone())),
            Err(_) => {
                self.pending.locked().remove(&id);
                Err(CallError::Timeout(self.name.clone(), timeout))
            }
        }
    }

    fn resolve(&self, id: u64, reply: AgentReply) {
        if let Some(tx) = self.pending.locked().remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// A receiver that turns true when this session ends.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.close.subscribe()
    }
}

/// Connected agents by name.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<AgentConn>>>,
    next_id: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Sessions {
    pub fn get(&self, name: &str) -> Option<Arc<AgentConn>> {
        self.map.locked().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.map.locked().keys().cloned().collect()
    }

    pub fn close(&self, name: &str) {
        if let Some(c) = self.map.locked().remove(name) {
            let _ = c.close.send(true);
        }
        self.changed.notify_waiters();
    }

    pub fn close_all(&self) {
        for (_, c) in self.map.locked().drain() {
            let _ = c.close.send(true);
        }
    }

    /// Waits until `name` is connected, up to `timeout`.
    pub async fn wait_for(&self, name: &str, timeout: Duration) -> Option<Arc<AgentConn>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(c) = self.get(name) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(name);
            }
        }
    }
}

/// The controller's identity of the caller: only from its verified client certificate.
pub fn identify<T>(ctl: &Controller, req: &Request<T>) -> Result<String, Status> {
    let certs =
        req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs()).ok_or_else(
            || Status::unauthenticated("a client certificate is required; enrol the agent first"),
        )?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    let fp = p2c_common::pki::fingerprint(leaf);
    let name =
        ctl.store.agent_for_cert(&fp).map_err(|e| Status::internal(e.to_string()))?.ok_or_else(|| {
            Status::permission_denied("this agent's certificate is unknown or revoked; enrol it again")
        })?;
    match p2c_common::pki::common_name(leaf) {
        Ok(cn) if cn == name => Ok(name),
        _ => Err(Status::permission_denied("certificate name does not match the enrolled agent")),
    }
}

/// The remote address of a TLS connection, for logs.
pub fn peer_addr<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

pub struct AgentService {
    ctl: Controller,
}

impl AgentService {
    pub fn new(ctl: Controller) -> Self {
        Self { ctl }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl v1::agent_session_server::AgentSession for AgentService {
    type SessionStream = BoxStream<v1::ControllerCommand>;
    type TransferStream = BoxStream<v1::TransferDown>;

    #[instrument(skip_all, fields(agent))]
    async fn session(
        &self,
        req: Request<Streaming<v1::AgentEvent>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let name = identify(&self.ctl, &req)?;
        tracing::Span::current().record("agent", name.as_str());
        let peer = peer_addr(&req);
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(15), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 15s"))?;
        let hello = match first {
            Some(Ok(v1::AgentEvent { event: Some(v1::agent_event::Event::Hello(h)) })) => h,
            _ => return Err(Status::invalid_argument("the session must start with Hello")),
        };
        if hello.protocol_version != p2c_proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "agent speaks protocol {}, controller {}; run the same p2c release on both",
                hello.protocol_version,
                p2c_proto::PROTOCOL_VERSION
            )));
        }
        let mut hello = hello;
        hello.hostname.truncate(255);
        hello.agent_version.truncate(64);
        hello.root.truncate(4096);
        let (tx, rx) = mpsc::channel(64);
        let (close, mut closed) = watch::channel(false);
        let conn = Arc::new(AgentConn {
            name: name.clone(),
            id: self.ctl.sessions.next_id.fetch_add(1, Ordering::Relaxed),
            peer: peer.clone(),
            hello: hello.clone(),
            connected_unix: crate::state::now(),
            tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            close,
        });
        {
            let mut map = self.ctl.sessions.map.locked();
            if let Some(old) = map.insert(name.clone(), conn.clone()) {
                let _ = old.close.send(true);
            }
        }
        self.ctl.sessions.changed.notify_waiters();
        let _ = self.ctl.store.touch_agent(&name, Some(&hello.hostname));
        info!(agent = %name, %peer, hostname = %hello.hostname, "agent connected");
        let ctl = self.ctl.clone();
        let mut closed_out = conn.closed();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.changed() => break,
                    m = inbound.next() => match m {
                        Some(Ok(ev)) => match ev.event {
                            Some(v1::agent_event::Event::Heartbeat(_)) => {
                                let _ = ctl.store.touch_agent(&conn.name, None);
                            }
                            Some(v1::agent_event::Event::Inventory(inv)) => {
                                conn.resolve(inv.request_id, AgentReply::Inventory(inv.inventory_json));
                            }
                            Some(v1::agent_event::Event::Result(r)) => conn.resolve(r.request_id, AgentReply::Result(r)),
                            Some(v1::agent_event::Event::Hello(_)) | None => {
                                warn!(agent = %conn.name, "unexpected message on the session; closing it");
                                break;
                            }
                        },
                        Some(Err(e)) => {
                            info!(agent = %conn.name, "session ended: {}", e.message());
                            break;
                        }
                        None => break,
                    },
                }
            }
            {
                let mut map = ctl.sessions.map.locked();
                if map.get(&conn.name).is_some_and(|c| c.id == conn.id) {
                    map.remove(&conn.name);
                }
            }
            let _ = conn.close.send(true);
            conn.pending.locked().clear();
            ctl.sessions.changed.notify_waiters();
            info!(agent = %conn.name, "agent disconnected");
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).take_until(async move {
            let _ = closed_out.wait_for(|v| *v).await;
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[instrument(skip_all, fields(agent))]
    async fn transfer(
        &self,
        req: Request<Streaming<v1::TransferUp>>,
    ) -> Result<Response<Self::TransferStream>, Status> {
        let name = identify(&self.ctl, &req)?;
        tracing::Span::current().record("agent", name.as_str());
        // A transfer lives only as long as its agent's session. When the session ends (the
        // agent was revoked, went away, or connected again) the migration gives up on the
        // pass, so the stream must stop too: a revoked agent must not keep writing into the
        // tree, and a resumed pass must not share the tree with an orphaned one.
        let session = self.ctl.sessions.get(&name).ok_or_else(|| {
            Status::failed_precondition("open the session before a transfer; no pass is expected without one")
        })?;
        let mut session_closed = session.closed();
        let mut inbound = Box::pin(req.into_inner().take_until(async move {
            let _ = session_closed.wait_for(|closed| *closed).await;
        }));
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Open within 30s"))?;
        let open = match first {
            Some(Ok(v1::TransferUp { msg: Some(v1::transfer_up::Msg::Open(o)) })) => o,
            _ => return Err(Status::invalid_argument("a transfer must start with Open")),
        };
        let slot = {
            let mut t = self.ctl.transfers.locked();
            match t.get(&open.migration_id) {
                None => None,
                Some(s) if s.agent != name => {
                    warn!(agent = %name, migration = %open.migration_id, "agent tried to open another agent's transfer");
                    return Err(Status::permission_denied("that migration belongs to another agent"));
                }
                Some(s) if s.pass != open.pass => {
                    return Err(Status::failed_precondition(format!(
                        "pass {} is expected, not {}",
                        s.pass, open.pass
                    )));
                }
                Some(_) => t.remove(&open.migration_id),
            }
        };
        let mut slot =
            slot.ok_or_else(|| Status::failed_precondition("no pass of that migration is expected now"))?;
        match crate::receive::Changes::accept(&slot.job, &open) {
            Ok(c) => slot.job.changes = c.map(Arc::new),
            Err(why) => {
                warn!(agent = %name, migration = %open.migration_id, "{why}");
                let msg = format!("agent sent an invalid stream: {why}");
                let _ = slot.done.send(crate::receive::PassOutcome {
                    summary: p2c_common::migration::PassSummary { pass: open.pass, ..Default::default() },
                    written: None,
                    error: Some(crate::receive::PassError::Invalid(why)),
                    retryable: false,
                });
                return Err(Status::invalid_argument(msg));
            }
        }
        let (tx, rx) = mpsc::channel(256);
        let throttle = self.ctl.throttle.clone();
        tokio::spawn(async move {
            let outcome = if throttle.rate() > 0 {
                crate::receive::run_pass(slot.job, crate::throttle::paced(inbound, throttle), tx).await
            } else {
                crate::receive::run_pass(slot.job, inbound, tx).await
            };
            let _ = slot.done.send(outcome);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
