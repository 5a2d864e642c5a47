//! `p2c plan check|apply FILE`: a wave of migrations from one plan file, started together
//! (up to the plan's `max_parallel`; the node's copy slots and bandwidth cap apply on top),
//! followed in one combined display, with a table of how each ended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use p2c_common::cli::JsonArg;
use p2c_common::migration::{AgentStatus, MigrateOptions, StatusEntry};
use p2c_proto::v1;
use p2c_proto::v1::admin_client::AdminClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::client;
use super::wave_view::{Outcome, WaveView};
use crate::plan::Plan;

#[derive(Debug, Subcommand)]
pub enum PlanCmd {
    /// Validate a plan against this node (syntax, duplicates, enrolled agents); start nothing.
    Check {
        file: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Start every migration of a plan and follow them all; exits non-zero if any fails.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
}

pub async fn run(mut c: AdminClient<Channel>, cmd: PlanCmd) -> anyhow::Result<i32> {
    match cmd {
        PlanCmd::Check { file, json } => {
            let plan = load(&mut c, &file).await?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&plan.migrations)?);
            } else {
                print!("{}", super::wave_view::plan_table(&file, &plan));
            }
            Ok(0)
        }
        PlanCmd::Apply { file, json } => apply(c, &file, json.json).await,
    }
}

/// Reads and validates the plan against the agents this node has enrolled.
async fn load(c: &mut AdminClient<Channel>, file: &std::path::Path) -> anyhow::Result<Plan> {
    let r = c.list_agents(v1::ListAgentsRequest {}).await.map_err(client::status)?.into_inner();
    let agents: Vec<AgentStatus> = serde_json::from_slice(&r.json)?;
    let enrolled: HashSet<String> = agents.into_iter().filter(|a| !a.revoked).map(|a| a.name).collect();
    Ok(Plan::load(file, Some(&enrolled))?)
}

async fn apply(mut c: AdminClient<Channel>, file: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    let plan = load(&mut c, file).await?;
    let mut view = WaveView::new(json);
    let (log_tx, mut logs) = mpsc::channel::<(u32, String)>(256);
    let mut queue: VecDeque<MigrateOptions> = plan.migrations.iter().cloned().collect();
    let mut running = JoinSet::new();
    let mut outcomes: HashMap<u32, Outcome> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        while running.len() < plan.max_parallel {
            let Some(o) = queue.pop_front() else { break };
            view.started(&o);
            running.spawn(follow_one(c.clone(), o, log_tx.clone()));
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next() => {
                let (ctid, outcome) = joined.map_err(|e| anyhow::anyhow!("following a migration failed: {e}"))?;
                let opts = plan.migrations.iter().find(|m| m.ctid == ctid);
                view.finished(ctid, &outcome, opts.is_some_and(|o| outcome.succeeded(o)));
                outcomes.insert(ctid, outcome);
            }
            Some((ctid, line)) = logs.recv() => view.log(ctid, &line),
            _ = tick.tick() => {
                if let Ok(r) = c.status(v1::StatusRequest { ctid: 0 }).await
                    && let Ok(entries) = serde_json::from_slice::<Vec<StatusEntry>>(&r.into_inner().json)
                {
                    view.update(&entries);
                }
            }
        }
    }
    while let Ok((ctid, line)) = logs.try_recv() {
        view.log(ctid, &line);
    }
    let ok = view.finish(&plan, &outcomes)?;
    Ok(if ok { 0 } else { 1 })
}

/// Starts one migration and follows it to its summary, passing its log lines on.
async fn follow_one(
    mut c: AdminClient<Channel>,
    opts: MigrateOptions,
    logs: mpsc::Sender<(u32, String)>,
) -> (u32, Outcome) {
    let ctid = opts.ctid;
    let json = match serde_json::to_vec(&opts) {
        Ok(j) => j,
        Err(e) => return (ctid, Outcome::Error(e.to_string())),
    };
    let mut stream = match c.migrate(v1::JsonRequest { json }).await {
        Ok(s) => s.into_inner(),
        Err(s) => return (ctid, Outcome::Error(s.message().to_string())),
    };
    loop {
        match stream.message().await {
            Ok(Some(v1::MigrateEvent { event: Some(v1::migrate_event::Event::Log(l)) })) => {
                let _ = logs.send((ctid, l)).await;
            }
            Ok(Some(v1::MigrateEvent { event: Some(v1::migrate_event::Event::SummaryJson(j)) })) => {
                let outcome =
                    serde_json::from_slice(&j).map(|s| Outcome::Summary(Box::new(s))).unwrap_or_else(|e| {
                        Outcome::Error(format!("unreadable summary from the controller: {e}"))
                    });
                return (ctid, outcome);
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let why = "the controller ended the stream without a summary; see `p2c status`";
                return (ctid, Outcome::Error(why.into()));
            }
            Err(s) => {
                let why = format!(
                    "lost the controller while following CT {ctid}: {}; see `p2c status`",
                    s.message()
                );
                return (ctid, Outcome::Error(why));
            }
        }
    }
}
