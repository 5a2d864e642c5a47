//! Agent sessions: identity from the client certificate, the control stream, and the
//! transfer streams agents open for copy passes.

use p2c_common::sync::Locked;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use p2c_proto::v1;
use tokio::sync::mpsc;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};

use crate::context::Controller;
use crate::link::{AgentConn, AgentReply, Command, CommandResult, Hello};
use crate::receive::{PassError, PassOutcome};

/// A command as the agent reads it on the wire.
fn to_wire(request_id: u64, cmd: Command) -> v1::ControllerCommand {
    use v1::controller_command::Command as W;
    let command = match cmd {
        Command::Inventory => W::Inventory(v1::RequestInventory {}),
        Command::Scan(o) => W::Scan(v1::ScanRequest::from(&o)),
        Command::StartPass(p) => W::StartPass(v1::StartPass {
            migration_id: p.migration_id,
            pass: p.pass,
            excludes: p.excludes.iter().map(|e| e.as_bytes().to_vec()).collect(),
            bwlimit: p.bwlimit,
            chunking: Some(p.chunking.into()),
            zstd_level: p.zstd_level,
            changes_since: p.changes_since,
            track_changes: p.track_changes,
        }),
        Command::CancelPass { migration_id } => W::CancelPass(v1::CancelPass { migration_id }),
        Command::Services { services, start } => W::StopServices(v1::StopServices { services, start }),
        Command::RunHook { command, timeout_secs } => W::RunHook(v1::RunHook { command, timeout_secs }),
    };
    v1::ControllerCommand { request_id, command: Some(command) }
}

fn result_of(r: v1::CommandResult) -> CommandResult {
    CommandResult { ok: r.ok, message: r.message, payload_json: r.payload_json }
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
        let hello = Hello {
            hostname: bounded(hello.hostname, 255),
            agent_version: bounded(hello.agent_version, 64),
            root: hello.root.into_iter().take(4096).collect(),
        };
        let (conn, mut commands) =
            AgentConn::new(name.clone(), self.ctl.sessions.next_id(), peer.clone(), hello);
        self.ctl.sessions.insert(conn.clone());
        if let Err(e) = self.ctl.store.touch_agent(&name, Some(&conn.hello.hostname)) {
            warn!(agent = %name, "cannot record that the agent connected: {e}");
        }
        info!(agent = %name, %peer, hostname = %conn.hello.hostname, "agent connected");
        let (tx, rx) = mpsc::channel(64);
        let mut closed = conn.closed();
        let mut closed_out = conn.closed();
        // Commands out, in the session's order.
        tokio::spawn(async move {
            while let Some((id, cmd)) = commands.recv().await {
                if tx.send(Ok(to_wire(id, cmd))).await.is_err() {
                    break;
                }
            }
        });
        let ctl = self.ctl.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.wait_for(|c| *c) => break,
                    m = inbound.next() => match m {
                        Some(Ok(ev)) => match ev.event {
                            Some(v1::agent_event::Event::Heartbeat(_)) => {
                                if let Err(e) = ctl.store.touch_agent(&conn.name, None) {
                                    warn!(agent = %conn.name, "cannot record the agent's heartbeat: {e}");
                                }
                            }
                            Some(v1::agent_event::Event::Inventory(inv)) => {
                                conn.resolve(inv.request_id, AgentReply::Inventory(inv.inventory_json));
                            }
                            Some(v1::agent_event::Event::Result(r)) => {
                                conn.resolve(r.request_id, AgentReply::Result(result_of(r)));
                            }
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
            ctl.sessions.remove(&conn);
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
                let error = PassError::Invalid(why);
                let msg = error.to_string();
                let _ = slot.done.send(PassOutcome {
                    summary: p2c_common::migration::PassSummary { pass: open.pass, ..Default::default() },
                    written: None,
                    error: Some(error),
                    retryable: false,
                });
                return Err(Status::invalid_argument(msg));
            }
        }
        let (tx, rx) = mpsc::channel(256);
        let throttle = self.ctl.throttle.clone();
        tokio::spawn(async move {
            let outcome = if throttle.rate() > 0 {
                let size = |m: &v1::TransferUp| prost::Message::encoded_len(m) as u64;
                crate::receive::run_pass(slot.job, crate::throttle::paced(inbound, throttle, size), tx).await
            } else {
                crate::receive::run_pass(slot.job, inbound, tx).await
            };
            let _ = slot.done.send(outcome);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
