//! The admin API behind `p2c`, served on the root-only Unix socket.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::Stream;
use p2c_common::findings::Report;
use p2c_common::migration::{AgentStatus, AssessOptions, MigrateOptions, MigrationSummary, StatusEntry};
use p2c_common::token::{Token, random_hex, secret_hash};
use p2c_proto::v1;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::context::Controller;
use crate::migrate;
use crate::migration::{BeginError, Event, MigrateError, MigrationHandle, TransitionError};
use crate::online::{OnlineAgent, fetch_inventory};

pub struct AdminService {
    ctl: Controller,
}

impl AdminService {
    pub fn new(ctl: Controller) -> Self {
        Self { ctl }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Response<v1::JsonReply>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(v1::JsonReply { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

/// Only root (or the controller's own user) may use the admin socket. A call whose peer
/// cannot be told is refused.
fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    let cred = req.extensions().get::<tonic::transport::server::UdsConnectInfo>().and_then(|i| i.peer_cred);
    allowed(cred.map(|c| c.uid()), rustix::process::geteuid().as_raw())
}

/// The admin socket's rule: the caller's uid is root's or the controller's own.
fn allowed(peer_uid: Option<u32>, me: u32) -> Result<(), Status> {
    match peer_uid {
        Some(uid) if uid == 0 || uid == me => Ok(()),
        Some(_) => Err(Status::permission_denied("the admin socket is for root only")),
        None => Err(Status::permission_denied(
            "the admin socket could not tell who is calling; only root on the node may use it",
        )),
    }
}

impl From<MigrateError> for Status {
    fn from(e: MigrateError) -> Status {
        match e {
            MigrateError::BadCtid
            | MigrateError::BadName { .. }
            | MigrateError::Exclude { .. }
            | MigrateError::Bundle(_)
            | MigrateError::Other(_) => Status::invalid_argument(e.to_string()),
            MigrateError::Begin(BeginError::Store(_)) => Status::internal(e.to_string()),
            MigrateError::Begin(_) => Status::already_exists(e.to_string()),
            MigrateError::Unknown(_) => Status::not_found(e.to_string()),
            MigrateError::Transition(TransitionError::Refused { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            MigrateError::Call(_) => Status::unavailable(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

/// Creates a one-time enrolment token for `name`, valid `ttl_secs` (default one hour,
/// at most 30 days), naming `addrs` as the controller's addresses.
pub fn issue_token(
    ctl: &Controller,
    name: &str,
    ttl_secs: u64,
    addrs: Vec<String>,
) -> Result<Token, crate::state::StoreError> {
    let ttl = if ttl_secs == 0 { 3600 } else { ttl_secs.min(30 * 86400) };
    let (id, secret) = (random_hex(8), random_hex(32));
    let exp = crate::state::now() + ttl;
    ctl.store.insert_token(&id, name, &secret_hash(&secret), exp)?;
    Ok(Token { addrs, ca: ctl.pki.ca_fingerprint.clone(), id, secret, name: name.to_string(), exp })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::MigrateEvent, Status>> + Send>>;

fn progress_event(h: &MigrationHandle) -> v1::MigrateEvent {
    let p = h.progress();
    v1::MigrateEvent {
        event: Some(v1::migrate_event::Event::Progress(v1::Progress {
            ctid: h.ctid(),
            pass: h.current_pass(),
            phase: h.state().as_str().to_string(),
            files_done: p.files_done.load(Ordering::Relaxed),
            files_total: p.files_total.load(Ordering::Relaxed),
            bytes_done: p.bytes_done.load(Ordering::Relaxed),
            bytes_total: p.bytes_total.load(Ordering::Relaxed),
            bytes_sent: p.wire_bytes.load(Ordering::Relaxed),
            bytes_local: p.local_bytes.load(Ordering::Relaxed),
        })),
    }
}

fn to_event(e: Event) -> v1::MigrateEvent {
    let ev = match e {
        Event::Log(l) => v1::migrate_event::Event::Log(l),
        Event::Report(r) => v1::migrate_event::Event::ReportJson(serde_json::to_vec(&r).unwrap_or_default()),
        Event::Summary(s) => {
            v1::migrate_event::Event::SummaryJson(serde_json::to_vec(&s).unwrap_or_default())
        }
    };
    v1::MigrateEvent { event: Some(ev) }
}

/// Streams a migration's events and progress until it is idle.
fn follow(
    h: std::sync::Arc<MigrationHandle>,
    sub: Option<tokio::sync::broadcast::Receiver<Event>>,
) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    let replay_report = sub.is_none();
    let mut sub = sub.unwrap_or_else(|| h.subscribe());
    tokio::spawn(async move {
        if replay_report && let Some(r) = h.summary().report {
            let _ = tx.send(Ok(to_event(Event::Report(Box::new(r))))).await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if tx.send(Ok(progress_event(&h))).await.is_err() { return; }
                    if h.state().is_idle() {
                        // The summary may have been sent before we subscribed.
                        let _ = tx.send(Ok(to_event(Event::Summary(Box::new(h.summary()))))).await;
                        return;
                    }
                }
                e = sub.recv() => match e {
                    Ok(Event::Summary(s)) => {
                        let _ = tx.send(Ok(progress_event(&h))).await;
                        let _ = tx.send(Ok(to_event(Event::Summary(s)))).await;
                        return;
                    }
                    Ok(ev) => { if tx.send(Ok(to_event(ev))).await.is_err() { return; } }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    type MigrateStream = EventStream;
    type CutoverStream = EventStream;
    type WatchStream = EventStream;
    type ImportStream = EventStream;

    #[instrument(skip_all)]
    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        p2c_common::pki::validate_agent_name(&r.agent_name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let token = issue_token(&self.ctl, &r.agent_name, r.ttl_secs, self.ctl.settings.advertise.clone())
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::CreateTokenResponse { token: token.encode(), expires_unix: token.exp }))
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let rows = self.ctl.store.agents().map_err(|e| Status::internal(e.to_string()))?;
        let live = self.ctl.migrations.snapshot();
        let out: Vec<AgentStatus> = rows
            .into_iter()
            .map(|a| {
                let conn = self.ctl.sessions.get(&a.name);
                let running: Vec<String> = live
                    .values()
                    .filter(|m| m.agent() == a.name)
                    .map(|m| format!("CT {} {}", m.ctid(), m.state().as_str()))
                    .collect();
                AgentStatus {
                    connected: conn.is_some(),
                    peer: conn.as_ref().map(|c| c.peer.clone()),
                    hostname: conn.as_ref().map(|c| c.hello.hostname.clone()).or(a.hostname),
                    os: a.os,
                    revoked: a.revoked.is_some(),
                    enrolled_unix: a.enrolled,
                    last_seen_unix: a.last_seen,
                    summary: if running.is_empty() { None } else { Some(running.join(", ")) },
                    name: a.name,
                }
            })
            .collect();
        json(&out)
    }

    async fn revoke_agent(&self, req: Request<v1::AgentRef>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let name = req.into_inner().name;
        if !self.ctl.revoke(&name).map_err(|e| Status::internal(e.to_string()))? {
            return Err(Status::not_found(format!("no agent named {name}; see `p2c agents`")));
        }
        json(&serde_json::json!({ "revoked": name }))
    }

    async fn get_inventory(&self, req: Request<v1::AgentRef>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let name = req.into_inner().name;
        if let Some(conn) = self.ctl.sessions.get(&name) {
            let inv = fetch_inventory(&self.ctl, &conn).await?;
            return json(&inv);
        }
        match self.ctl.store.inventory(&name).map_err(|e| Status::internal(e.to_string()))? {
            Some(j) => Ok(Response::new(v1::JsonReply { json: j.into_bytes() })),
            None => Err(Status::unavailable(format!(
                "agent {name} is not connected and has never reported an inventory; start `p2c-agent run` on the source"
            ))),
        }
    }

    async fn assess(&self, req: Request<v1::AssessRequest>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let opts: AssessOptions = if r.options_json.is_empty() {
            AssessOptions::default()
        } else {
            serde_json::from_slice(&r.options_json).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        let conn = self.ctl.sessions.get(&r.agent_name).ok_or_else(|| {
            Status::unavailable(format!(
                "agent {} is not connected; start `p2c-agent run` on the source",
                r.agent_name
            ))
        })?;
        let inv = fetch_inventory(&self.ctl, &conn).await?;
        let src = OnlineAgent::new(&self.ctl, &r.agent_name);
        let (report, _): (Report, _) = crate::preflight::report(&self.ctl, &src, &inv, &opts).await;
        json(&report)
    }

    async fn migrate(&self, req: Request<v1::JsonRequest>) -> Result<Response<Self::MigrateStream>, Status> {
        authorize(&req)?;
        let opts: MigrateOptions = serde_json::from_slice(&req.into_inner().json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (h, sub) = migrate::start(&self.ctl, opts)?;
        Ok(Response::new(follow(h, Some(sub))))
    }

    async fn import(&self, req: Request<v1::JsonRequest>) -> Result<Response<Self::ImportStream>, Status> {
        authorize(&req)?;
        let r: p2c_common::bundle::ImportRequest = serde_json::from_slice(&req.into_inner().json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (h, sub) = crate::import::start(&self.ctl, r)?;
        Ok(Response::new(follow(h, Some(sub))))
    }

    async fn cutover(&self, req: Request<v1::CtidRef>) -> Result<Response<Self::CutoverStream>, Status> {
        authorize(&req)?;
        let (h, sub) = migrate::cutover(&self.ctl, req.into_inner().ctid)?;
        Ok(Response::new(follow(h, Some(sub))))
    }

    async fn watch(&self, req: Request<v1::CtidRef>) -> Result<Response<Self::WatchStream>, Status> {
        authorize(&req)?;
        let ctid = req.into_inner().ctid;
        let h =
            self.ctl.migrations.get(ctid).ok_or_else(|| {
                Status::not_found(format!("no migration of CT {ctid} runs in this controller"))
            })?;
        Ok(Response::new(follow(h, None)))
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let ctid = req.into_inner().ctid;
        let rows = self.ctl.store.migrations().map_err(|e| Status::internal(e.to_string()))?;
        let live = self.ctl.migrations.snapshot();
        let mut out = Vec::new();
        for r in rows.into_iter().filter(|r| ctid == 0 || r.ctid == ctid) {
            let summary: Option<&MigrationSummary> = r.summary.as_ref();
            let mut waiting = None;
            let live_summary = live.get(&r.ctid).map(|h| h.summary());
            let boot_check =
                live_summary.as_ref().or(summary).and_then(|s| s.last_boot_check().cloned()).map(|b| {
                    p2c_common::migration::BootCheckSummary { report: serde_json::Value::Null, ..b }
                });
            let (state, pass, done, total, rate, eta) = match live.get(&r.ctid) {
                Some(h) => {
                    let p = h.progress();
                    let done = p.bytes_done.load(Ordering::Relaxed);
                    let total = p.bytes_total.load(Ordering::Relaxed);
                    waiting = h.waiting();
                    // The rate of the pass running now, not averaged over queueing and
                    // earlier passes.
                    let secs = h.running_since().elapsed().as_secs_f64().max(0.001);
                    let copying = !h.state().is_idle() && waiting.is_none();
                    let rate = if copying { (done as f64 / secs) as u64 } else { 0 };
                    let eta = if rate > 0 && total > done { Some((total - done) / rate) } else { None };
                    (h.state(), h.current_pass(), done, total, rate, eta)
                }
                None => {
                    let st = r.state;
                    let pass = summary.as_ref().and_then(|s| s.passes.last()).map(|p| p.pass).unwrap_or(0);
                    let bytes =
                        summary.as_ref().and_then(|s| s.passes.last()).map(|p| p.data_bytes).unwrap_or(0);
                    (st, pass, bytes, bytes, 0, None)
                }
            };
            out.push(StatusEntry {
                ctid: r.ctid,
                agent: r.agent,
                state,
                pass,
                bytes_done: done,
                bytes_total: total,
                rate_bytes_per_sec: rate,
                eta_seconds: eta,
                error: summary.as_ref().and_then(|s| s.error.clone()),
                updated_unix: r.updated,
                waiting,
                boot_check,
            });
        }
        if ctid != 0 && out.is_empty() {
            return Err(Status::not_found(format!("no migration of CT {ctid}")));
        }
        json(&out)
    }

    async fn discard(&self, req: Request<v1::CtidRef>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let ctid = req.into_inner().ctid;
        if let Err(state) = self.ctl.migrations.forget(ctid) {
            return Err(Status::failed_precondition(format!(
                "CT {ctid} is being migrated ({}); wait for it to stop",
                state.as_str()
            )));
        }
        let known = self.ctl.store.migration(ctid).map_err(|e| Status::internal(e.to_string()))?.is_some();
        if !known {
            return Err(Status::not_found(format!("CT {ctid} is not a p2c migration; nothing was removed")));
        }
        let private = self.ctl.settings.private_dir(ctid);
        let conf = self.ctl.settings.conf_path(ctid);
        let manifests = self.ctl.settings.manifest_dir(ctid);
        let freed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if private.exists() {
                std::fs::remove_dir_all(&private)?;
            }
            // A platform's conf link dangles once the private area is gone: removed too.
            crate::private_area::remove_conf(&conf)?;
            if manifests.exists() {
                std::fs::remove_dir_all(&manifests)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        freed.map_err(|e| Status::internal(format!("cannot remove CT {ctid}: {e}")))?;
        self.ctl.store.delete_migration(ctid).map_err(|e| Status::internal(e.to_string()))?;
        json(&serde_json::json!({ "discarded": ctid }))
    }

    async fn boot_check(&self, req: Request<v1::JsonRequest>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let r: p2c_common::migration::BootCheckRequest = serde_json::from_slice(&req.into_inner().json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        use crate::bootcheck::OnDemandError as E;
        let report =
            crate::bootcheck::on_demand(&self.ctl, r.ctid, r.timeout_secs).await.map_err(|e| match e {
                E::Unknown(_) => Status::not_found(e.to_string()),
                E::Busy(..) | E::NoCopy(..) | E::Boot(crate::boot::BootError::Missing(_)) => {
                    Status::failed_precondition(e.to_string())
                }
                E::Boot(_) | E::Store(_) => Status::internal(e.to_string()),
            })?;
        json(&report)
    }

    async fn verify(&self, req: Request<v1::CtidRef>) -> Result<Response<v1::JsonReply>, Status> {
        authorize(&req)?;
        let ctid = req.into_inner().ctid;
        let row = self
            .ctl
            .store
            .migration(ctid)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("CT {ctid} is not a p2c migration")))?;
        let tree = self.ctl.settings.private_area(ctid, &row.options).tree();
        let opts = Some(row.options);
        let rewritten = row
            .summary
            .map(|s| {
                s.guest_changes
                    .iter()
                    .filter_map(|c| p2c_common::paths::RelPath::from_user(c.path.as_bytes()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let keep = opts.as_ref().is_some_and(|o| o.assess.keep_xattrs);
        let v = if let Some(o) = opts.as_ref().filter(|o| o.layout == p2c_common::migration::Layout::Ploop) {
            let (mp, guard) = crate::finalise::mount_image(&self.ctl, ctid, o)
                .map_err(|e| Status::failed_precondition(format!("cannot mount the container image: {e}")))?;
            let v = crate::finalise::verify_tree(&self.ctl, ctid, &mp, rewritten, keep, None).await;
            if let Err(e) = guard.unmount() {
                tracing::warn!(ctid, mountpoint = %mp.display(), "cannot unmount the container image after verifying it: {e}; unmount it by hand");
            }
            v?
        } else {
            crate::finalise::verify_tree(&self.ctl, ctid, &tree, rewritten, keep, None).await?
        };
        json(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_socket_refuses_unknown_and_foreign_callers() {
        assert!(allowed(Some(0), 1000).is_ok());
        assert!(allowed(Some(1000), 1000).is_ok());
        let foreign = allowed(Some(1001), 1000).unwrap_err();
        assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
        // No credentials is no permission.
        let unknown = allowed(None, 0).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::PermissionDenied);
        assert!(unknown.message().contains("could not tell who is calling"), "{}", unknown.message());
    }
}
