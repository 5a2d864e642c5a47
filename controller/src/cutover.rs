//! The cutover of a synced migration: the pre-cutover hook, stop the source's services, copy
//! the last changes, finalise the container, the post-cutover hook.
//!
//! The downtime is measured from the moment the services are stopped to the moment the
//! container is ready. A failure before the container is finalised starts the services that
//! were stopped again and leaves the migration synced with the error shown
//! ([`MigrateError::CutoverAborted`]): the source keeps serving and `p2c cutover N` can be run
//! again. A failure while finalising also starts them again, and fails the migration.

use p2c_common::sync::Locked;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2c_common::inventory::Inventory;
use p2c_common::migration::{MigrateOptions, MigrationState};
use p2c_common::services::ServicesReport;
use p2c_proto::v1;
use tokio::sync::OwnedSemaphorePermit;
use tracing::error;

use crate::migrate::{self, MigrateError, MigrationHandle};
use crate::server::Controller;
use crate::session::{AgentConn, AgentReply};

/// What the agent gets to run a hook (its own timeout) and the answer's timeout on top.
const HOOK_TIMEOUT_SECS: u32 = 600;
const HOOK_MARGIN: Duration = Duration::from_secs(15);
/// The agent allows each service 120 s to stop or start; the answer may take that long for
/// each, plus a margin.
const PER_SERVICE: Duration = Duration::from_secs(120);
const SERVICES_MARGIN: Duration = Duration::from_secs(30);
/// Longest wait for the agent to be connected at a step of the cutover.
const AGENT_WAIT: Duration = Duration::from_secs(60);

/// Runs the cutover of `h`, whose live passes are done.
pub(crate) async fn run(ctl: &Controller, h: &Arc<MigrationHandle>) -> Result<(), MigrateError> {
    migrate::set_state(ctl, h, MigrationState::CuttingOver, None);
    let opts = h.options.locked().clone();
    let conn = agent(ctl, h).await.map_err(MigrateError::CutoverAborted)?;
    if let Some(hook) = &opts.pre_cutover_hook {
        h.log(format!("running the pre-cutover hook on the source: {hook}"));
        run_hook(&conn, hook)
            .await
            .map_err(|e| MigrateError::CutoverAborted(format!("the pre-cutover hook failed: {e}")))?;
    }
    // Outside the downtime: prove what is already there, so the downtime only re-reads what
    // the final pass writes.
    migrate::verify_before_cutover(ctl, h).await?;
    // Taken before anything stops: the final pass must not queue behind other migrations'
    // live passes while the services are down.
    let slot = migrate::copy_slot(ctl, h).await?;
    let services = &opts.stop_services;
    let stopped = if services.is_empty() {
        Vec::new()
    } else {
        h.log(format!("stopping services on the source: {}", services.join(", ")));
        if let Err((reason, stopped)) = stop(&conn, services).await {
            let note = start_again(ctl, h, &stopped).await;
            return Err(MigrateError::CutoverAborted(format!("{reason}{note}")));
        }
        services.clone()
    };
    // The downtime starts now.
    let t0 = Instant::now();
    let inv = match final_pass(ctl, h, &opts, slot).await {
        Ok(inv) => inv,
        Err(e) => {
            let note = start_again(ctl, h, &stopped).await;
            return Err(MigrateError::CutoverAborted(format!("{e}{note}")));
        }
    };
    migrate::set_state(ctl, h, MigrationState::Finalising, None);
    if let Err(e) = migrate::finalise(ctl, h, &inv, &opts).await {
        let note = start_again(ctl, h, &stopped).await;
        if !note.is_empty() {
            h.summary.locked().warnings.push(note.trim_start_matches("; ").into());
        }
        return Err(e);
    }
    let downtime = t0.elapsed().as_secs_f64();
    h.summary.locked().downtime_seconds = Some(downtime);
    if let Some(hook) = &opts.post_cutover_hook {
        h.log(format!("running the post-cutover hook on the source: {hook}"));
        let r = match agent(ctl, h).await {
            Ok(conn) => run_hook(&conn, hook).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            h.summary.locked().warnings.push(format!("post-cutover hook: {e}"));
        }
    }
    h.log(format!("container {} is ready; downtime {:.1}s", h.ctid, downtime));
    migrate::set_state(ctl, h, MigrationState::Done, None);
    Ok(())
}

/// The agent's session, waiting a little for it to come back.
async fn agent(ctl: &Controller, h: &MigrationHandle) -> Result<Arc<AgentConn>, String> {
    ctl.sessions
        .wait_for(&h.agent, AGENT_WAIT)
        .await
        .ok_or_else(|| format!("agent {} is not connected; start `p2c-agent run` on the source", h.agent))
}

/// The last pass, with the source's fresh inventory for the finalisation.
async fn final_pass(
    ctl: &Controller,
    h: &Arc<MigrationHandle>,
    opts: &MigrateOptions,
    slot: OwnedSemaphorePermit,
) -> Result<Inventory, MigrateError> {
    let conn = agent(ctl, h).await.map_err(MigrateError::Other)?;
    let inv = migrate::fetch_inventory(ctl, &conn).await?;
    migrate::prepare_storage(ctl, h, &inv, None, opts)?;
    let excludes = migrate::excludes(opts)?;
    let s = migrate::run_pass(ctl, h, &excludes, opts, migrate::Walk::Full, Some(slot)).await?;
    h.log(format!("final pass {} done: {} written, {} deleted", s.pass, s.written, s.deleted));
    Ok(inv)
}

async fn run_hook(conn: &AgentConn, command: &str) -> Result<(), String> {
    let cmd = v1::controller_command::Command::RunHook(v1::RunHook {
        command: command.to_string(),
        timeout_secs: HOOK_TIMEOUT_SECS,
    });
    match conn.call(cmd, Duration::from_secs(HOOK_TIMEOUT_SECS.into()) + HOOK_MARGIN).await {
        Ok(AgentReply::Result(r)) if r.ok => Ok(()),
        Ok(AgentReply::Result(r)) => Err(format!("agent: {}", r.message)),
        Ok(AgentReply::Inventory(_)) => Err("the agent answered with an inventory".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Stops `services`; on failure, the reason and the services that may have stopped.
async fn stop(conn: &AgentConn, services: &[String]) -> Result<(), (String, Vec<String>)> {
    let cmd = v1::controller_command::Command::StopServices(v1::StopServices {
        services: services.to_vec(),
        start: false,
    });
    match conn.call(cmd, services_timeout(services)).await {
        Ok(AgentReply::Result(r)) if r.ok => Ok(()),
        // The agent's report says which stopped; an answer without one (a refusal) stopped
        // nothing.
        Ok(AgentReply::Result(r)) => {
            let stopped = serde_json::from_slice::<ServicesReport>(&r.payload_json)
                .map(|rep| rep.done())
                .unwrap_or_default();
            Err((r.message, stopped))
        }
        Ok(AgentReply::Inventory(_)) => {
            Err(("the agent answered with an inventory".into(), services.to_vec()))
        }
        // No answer: any of them may have stopped.
        Err(e) => Err((format!("stopping the services: {e}"), services.to_vec())),
    }
}

fn services_timeout(services: &[String]) -> Duration {
    PER_SERVICE * u32::try_from(services.len()).unwrap_or(u32::MAX).max(1) + SERVICES_MARGIN
}

/// Starts the services that were stopped again; returns a note for the error message.
async fn start_again(ctl: &Controller, h: &MigrationHandle, services: &[String]) -> String {
    if services.is_empty() {
        return String::new();
    }
    let list = services.join(", ");
    h.log(format!("starting the source's services again: {list}"));
    let cmd = v1::controller_command::Command::StopServices(v1::StopServices {
        services: services.to_vec(),
        start: true,
    });
    let r = match agent(ctl, h).await {
        Err(e) => Err(e),
        Ok(conn) => match conn.call(cmd, services_timeout(services)).await {
            Ok(AgentReply::Result(r)) if r.ok => Ok(()),
            Ok(AgentReply::Result(r)) => Err(r.message),
            Ok(AgentReply::Inventory(_)) => Err("the agent answered with an inventory".into()),
            Err(e) => Err(e.to_string()),
        },
    };
    match r {
        Ok(()) => format!("; the services stopped on the source were started again ({list})"),
        Err(e) => {
            error!(ctid = h.ctid, agent = %h.agent, services = %list, "cannot start the source's services again: {e}");
            format!("; starting the source's services again failed ({e}): start {list} on the source by hand")
        }
    }
}
