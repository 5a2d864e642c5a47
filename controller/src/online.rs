//! The agent port over a live session: [`Source`] for an agent connected to this controller.
//!
//! Commands go through [`crate::link`]; the transfer of a pass is registered in the
//! controller's waiting transfers, which the agent's gRPC `Transfer` stream picks up
//! (`crate::session`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2c_common::inventory::Inventory;
use p2c_common::scan::{ScanOptions, ScanResult};
use p2c_common::services::ServicesReport;
use p2c_common::sync::Locked;
use tokio::sync::oneshot;
use tracing::warn;

use crate::config::Compression;
use crate::context::{Controller, TransferSlot};
use crate::link::{AgentConn, AgentReply, CallError, Command, CommandResult, StartPass};
use crate::migration::{MigrateError, MigrationHandle};
use crate::port::{PassRequest, Source, StopFailure};
use crate::receive::{PassJob, PassOutcome, Progress};

/// How long a pass may go without any progress before it is cancelled and tried again, so a
/// stuck agent does not keep its copy slot for ever.
const STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the end of an interrupted transfer is awaited before the next attempt.
const WIND_DOWN: Duration = Duration::from_secs(60);
/// How long a pass waits for its agent to (re)connect.
const PASS_WAIT: Duration = Duration::from_secs(600);
/// How long an inventory request waits for the agent to connect, and for its answer.
const INVENTORY_WAIT: Duration = Duration::from_secs(30);
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(300);
/// A scan walks the whole source.
const SCAN_TIMEOUT: Duration = Duration::from_secs(3600);
/// What the agent gets to run a hook (its own timeout) and the answer's timeout on top.
const HOOK_TIMEOUT_SECS: u32 = 600;
const HOOK_MARGIN: Duration = Duration::from_secs(15);
/// The agent allows each service 120 s to stop or start; the answer may take that long for
/// each, plus a margin.
const PER_SERVICE: Duration = Duration::from_secs(120);
const SERVICES_MARGIN: Duration = Duration::from_secs(30);
/// Longest wait for the agent to be connected at a step of the cutover.
const AGENT_WAIT: Duration = Duration::from_secs(60);

/// An enrolled agent, reached through its session with this controller.
pub struct OnlineAgent {
    ctl: Controller,
    name: String,
}

impl OnlineAgent {
    pub fn new(ctl: &Controller, name: &str) -> OnlineAgent {
        OnlineAgent { ctl: ctl.clone(), name: name.to_string() }
    }

    /// The agent's session, waiting up to `wait` for it.
    async fn session(&self, wait: Duration) -> Result<Arc<AgentConn>, String> {
        self.ctl.sessions.wait_for(&self.name, wait).await.ok_or_else(|| {
            format!("agent {} is not connected; start `p2c-agent run` on the source", self.name)
        })
    }

    /// Sends `cmd` and reads a plain result.
    async fn result(&self, cmd: Command, timeout: Duration) -> Result<CommandResult, String> {
        let conn = self.session(AGENT_WAIT).await?;
        match conn.call(cmd, timeout).await {
            Ok(AgentReply::Result(r)) => Ok(r),
            Ok(AgentReply::Inventory(_)) => Err("the agent answered with an inventory".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The zstd level for this agent's chunks (0: none).
    fn zstd_level(&self, conn: &AgentConn) -> i32 {
        let s = &self.ctl.settings;
        match s.compression {
            Compression::None => 0,
            Compression::Zstd => s.zstd_level,
            Compression::Auto if conn.is_local() => 0,
            Compression::Auto => s.zstd_level,
        }
    }
}

/// Asks a connected agent for its inventory, checks it and stores it.
pub async fn fetch_inventory(ctl: &Controller, conn: &AgentConn) -> Result<Inventory, MigrateError> {
    let reply = conn.call(Command::Inventory, INVENTORY_TIMEOUT).await?;
    let AgentReply::Inventory(json) = reply else {
        return Err(MigrateError::Inventory("the agent answered something else".into()));
    };
    let inv = crate::preflight::parse_inventory(&json)?;
    let os = if inv.os.pretty_name.is_empty() { inv.os.id.clone() } else { inv.os.pretty_name.clone() };
    ctl.store.set_inventory(&conn.name, &String::from_utf8_lossy(&json), &inv.hostname, &os)?;
    Ok(inv)
}

fn services_timeout(services: &[String]) -> Duration {
    PER_SERVICE * u32::try_from(services.len()).unwrap_or(u32::MAX).max(1) + SERVICES_MARGIN
}

impl Source for OnlineAgent {
    type Link = Arc<AgentConn>;

    fn name(&self) -> &str {
        &self.name
    }

    fn is_live(&self) -> bool {
        true
    }

    fn invalid_data(&self) -> &'static str {
        "agent sent an invalid stream"
    }

    async fn inventory(&self) -> Result<Inventory, MigrateError> {
        let conn = self
            .ctl
            .sessions
            .wait_for(&self.name, INVENTORY_WAIT)
            .await
            .ok_or_else(|| CallError::NotConnected(self.name.clone()))?;
        fetch_inventory(&self.ctl, &conn).await
    }

    async fn scan(&self, opts: &ScanOptions) -> Option<ScanResult> {
        let agent = self.name.as_str();
        let conn = self.ctl.sessions.get(agent)?;
        match conn.call(Command::Scan(opts.clone()), SCAN_TIMEOUT).await {
            Ok(AgentReply::Result(r)) if r.ok => match ScanResult::from_json(&r.payload_json) {
                Ok(s) => return Some(s),
                Err(e) => warn!(agent, "scan result refused: {e}"),
            },
            Ok(AgentReply::Result(r)) => warn!(agent, "scan failed: {}", r.message),
            Ok(_) => warn!(agent, "unexpected answer to a scan"),
            Err(e) => warn!(agent, "scan failed: {e}"),
        }
        None
    }

    async fn reachable(&self) -> Result<(), String> {
        self.session(AGENT_WAIT).await.map(drop)
    }

    async fn connect(&self, h: &MigrationHandle) -> Result<Arc<AgentConn>, MigrateError> {
        if let Some(c) = self.ctl.sessions.get(&self.name) {
            return Ok(c);
        }
        h.set_waiting(Some(format!("agent {} to connect", self.name)));
        let conn = self.ctl.sessions.wait_for(&self.name, PASS_WAIT).await;
        h.set_waiting(None);
        conn.ok_or_else(|| MigrateError::Pass {
            pass: h.current_pass(),
            reason: format!("agent {} is not connected and did not come back within 10 minutes", self.name),
        })
    }

    fn is_gone(&self, link: &Arc<AgentConn>) -> bool {
        *link.closed().borrow()
    }

    async fn transfer(
        &self,
        conn: &Arc<AgentConn>,
        h: &MigrationHandle,
        job: PassJob,
        req: PassRequest,
    ) -> Result<PassOutcome, String> {
        let pass = job.pass;
        let migration_id = format!("ct{}", h.ctid());
        let (done_tx, done_rx) = oneshot::channel();
        let progress = job.progress.clone();
        self.ctl.transfers.locked().insert(
            migration_id.clone(),
            TransferSlot { agent: self.name.clone(), pass, job, done: done_tx },
        );
        let cmd = Command::StartPass(StartPass {
            migration_id: migration_id.clone(),
            pass,
            excludes: req.excludes,
            bwlimit: req.bwlimit,
            chunking: self.ctl.settings.chunking,
            zstd_level: self.zstd_level(conn),
            changes_since: req.changes_since,
            track_changes: req.track_changes,
        });
        let outcome = self.await_transfer(conn, &progress, cmd, done_rx, &migration_id).await;
        self.ctl.transfers.locked().remove(&migration_id);
        outcome
    }

    async fn stop_services(&self, services: &[String]) -> Result<(), StopFailure> {
        let cmd = Command::Services { services: services.to_vec(), start: false };
        let fail = |reason, stopped| Err(StopFailure { reason, stopped });
        let conn = match self.session(AGENT_WAIT).await {
            Ok(c) => c,
            Err(e) => return fail(e, Vec::new()),
        };
        match conn.call(cmd, services_timeout(services)).await {
            Ok(AgentReply::Result(r)) if r.ok => Ok(()),
            // The agent's report says which stopped; an answer without one (a refusal)
            // stopped nothing.
            Ok(AgentReply::Result(r)) => {
                let stopped = serde_json::from_slice::<ServicesReport>(&r.payload_json)
                    .map(|rep| rep.done())
                    .unwrap_or_default();
                fail(r.message, stopped)
            }
            Ok(AgentReply::Inventory(_)) => {
                fail("the agent answered with an inventory".into(), services.to_vec())
            }
            // No answer: any of them may have stopped.
            Err(e) => fail(format!("stopping the services: {e}"), services.to_vec()),
        }
    }

    async fn start_services(&self, services: &[String]) -> Result<(), String> {
        let cmd = Command::Services { services: services.to_vec(), start: true };
        let r = self.result(cmd, services_timeout(services)).await?;
        if r.ok { Ok(()) } else { Err(r.message) }
    }

    async fn run_hook(&self, command: &str) -> Result<(), String> {
        let cmd = Command::RunHook { command: command.to_string(), timeout_secs: HOOK_TIMEOUT_SECS };
        let r = self.result(cmd, Duration::from_secs(HOOK_TIMEOUT_SECS.into()) + HOOK_MARGIN).await?;
        if r.ok { Ok(()) } else { Err(format!("agent: {}", r.message)) }
    }
}

impl OnlineAgent {
    /// Asks the agent to run the pass and waits for the transfer's outcome, or the reason
    /// there is none.
    async fn await_transfer(
        &self,
        conn: &AgentConn,
        progress: &Progress,
        cmd: Command,
        mut done: oneshot::Receiver<PassOutcome>,
        migration_id: &str,
    ) -> Result<PassOutcome, String> {
        let (_, mut reply) = conn.send(cmd).await.map_err(|e| e.to_string())?;
        let mut closed = conn.closed();
        // What ends first: the transfer, the agent's answer to StartPass, the session, or the
        // progress.
        let why = tokio::select! {
            o = &mut done => return o.map_err(|_| "the transfer was dropped".to_string()),
            r = &mut reply => match r {
                Ok(AgentReply::Result(r)) if !r.ok => format!("agent: {}", r.message),
                _ => "the agent ended the pass without a transfer".to_string(),
            },
            () = async { drop(closed.wait_for(|c| *c).await) } => "the agent disconnected".to_string(),
            () = stalled(progress, STALL_TIMEOUT) => {
                let cancel = Command::CancelPass { migration_id: migration_id.to_string() };
                let _ = conn.send(cancel).await;
                // Retried whatever the cancelled transfer says, unless it finished after all.
                return match self.wind_down(&mut done, migration_id).await {
                    Some(o) if o.error.is_none() => Ok(o),
                    _ => Err(format!("no progress for {}s; the pass was cancelled", STALL_TIMEOUT.as_secs())),
                };
            }
        };
        self.wind_down(&mut done, migration_id).await.ok_or(why)
    }

    /// The outcome of a transfer that is ending: one that was opened ends on its own and
    /// says what it did (awaited so that no new attempt writes the tree while it still
    /// does); one that was not is dropped here, which ends the wait at once.
    async fn wind_down(
        &self,
        done: &mut oneshot::Receiver<PassOutcome>,
        migration_id: &str,
    ) -> Option<PassOutcome> {
        self.ctl.transfers.locked().remove(migration_id);
        tokio::time::timeout(WIND_DOWN, done).await.ok().and_then(Result::ok)
    }
}

/// Returns once `p` has not moved for `limit`.
async fn stalled(p: &Progress, limit: Duration) {
    use std::sync::atomic::Ordering;
    let snapshot = || {
        [&p.files_total, &p.files_done, &p.bytes_done, &p.wire_bytes, &p.local_bytes]
            .map(|a| a.load(Ordering::Relaxed))
    };
    let tick = (limit / 20).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let (mut last, mut since) = (snapshot(), Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let now = snapshot();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= limit {
            return;
        }
    }
}
