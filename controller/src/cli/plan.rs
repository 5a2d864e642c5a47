//! `p2c plan check|apply FILE`: a wave of migrations from one plan file, started together
//! (up to the plan's `max_parallel`; the node's copy slots and bandwidth cap apply on top),
//! followed in one combined display, with a table of how each ended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use p2c_common::cli::JsonArg;
use p2c_common::migration::{AgentStatus, MigrateOptions, StatusEntry};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::client::{Admin, Update};
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

pub async fn run(mut c: Admin, cmd: PlanCmd) -> anyhow::Result<i32> {
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
async fn load(c: &mut Admin, file: &std::path::Path) -> anyhow::Result<Plan> {
    let agents: Vec<AgentStatus> = serde_json::from_slice(&c.agents().await?)?;
    let enrolled: HashSet<String> = agents.into_iter().filter(|a| !a.revoked).map(|a| a.name).collect();
    Ok(Plan::load(file, Some(&enrolled))?)
}

async fn apply(mut c: Admin, file: &std::path::Path, json: bool) -> anyhow::Result<i32> {
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
                if let Ok(r) = c.status(None).await
                    && let Ok(entries) = serde_json::from_slice::<Vec<StatusEntry>>(&r)
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
async fn follow_one(mut c: Admin, opts: MigrateOptions, logs: mpsc::Sender<(u32, String)>) -> (u32, Outcome) {
    let ctid = opts.ctid;
    let mut updates = match c.migrate(&opts).await {
        Ok(u) => u,
        Err(e) => return (ctid, Outcome::Error(e.to_string())),
    };
    loop {
        match updates.next().await {
            Ok(Some(Update::Log(l))) => {
                let _ = logs.send((ctid, l)).await;
            }
            Ok(Some(Update::Summary(s))) => {
                let outcome = match s {
                    Some(s) => Outcome::Summary(s),
                    None => Outcome::Error("unreadable summary from the controller".into()),
                };
                return (ctid, outcome);
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let why = "the controller ended the stream without a summary; see `p2c status`";
                return (ctid, Outcome::Error(why.into()));
            }
            Err(s) => {
                let why = format!("lost the controller while following CT {ctid}: {s}; see `p2c status`");
                return (ctid, Outcome::Error(why));
            }
        }
    }
}
