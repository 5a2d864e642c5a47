//! The combined display of a wave: one progress line per migration (state, pass, bytes,
//! rate, ETA) with their log lines above, or JSON lines with `--json`; then a table of how
//! each migration ended.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2c_common::migration::{MigrateOptions, MigrationState, MigrationSummary, StatusEntry};
use p2c_common::units::{human_bytes, human_duration};
use serde_json::json;

use crate::plan::Plan;

/// How one server of the plan ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The migration ran and stopped in this state.
    Summary(Box<MigrationSummary>),
    /// It did not start (the controller refused it) or could not be followed to its end.
    Error(String),
}

impl Outcome {
    /// Done, or synced when the plan did not ask for a cutover; with no error either way.
    pub fn succeeded(&self, opts: &MigrateOptions) -> bool {
        match self {
            Outcome::Summary(s) => {
                s.error.is_none()
                    && (s.state == MigrationState::Done
                        || (s.state == MigrationState::Synced && !opts.cutover))
            }
            Outcome::Error(_) => false,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Summary(s) => s.error.as_deref(),
            Outcome::Error(e) => Some(e),
        }
    }
}

pub struct WaveView {
    json: bool,
    multi: MultiProgress,
    bars: HashMap<u32, ProgressBar>,
    /// The wave's migrations started so far, by CTID.
    agents: HashMap<u32, String>,
    finished: HashSet<u32>,
}

impl WaveView {
    pub fn new(json: bool) -> Self {
        let target = if json { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Self {
            json,
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            agents: HashMap::new(),
            finished: HashSet::new(),
        }
    }

    pub fn started(&mut self, o: &MigrateOptions) {
        self.agents.insert(o.ctid, o.agent.clone());
        if self.json {
            line(json!({ "event": "started", "ctid": o.ctid, "agent": o.agent, "cutover": o.cutover }));
            return;
        }
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{prefix:<24} [{bar:24}] {bytes:>10}/{total_bytes:<10} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("CT {} {}", o.ctid, o.agent));
        bar.set_message("starting");
        self.bars.insert(o.ctid, bar);
    }

    pub fn log(&self, ctid: u32, msg: &str) {
        let agent = self.agents.get(&ctid).map(String::as_str).unwrap_or_default();
        if self.json {
            line(json!({ "event": "log", "ctid": ctid, "agent": agent, "message": msg }));
        } else {
            let _ = self.multi.println(format!("CT {ctid} {agent}: {msg}"));
        }
    }

    /// A `p2c status` snapshot: the lines of this wave's migrations still running.
    pub fn update(&self, entries: &[StatusEntry]) {
        let ours =
            entries.iter().filter(|e| self.agents.contains_key(&e.ctid) && !self.finished.contains(&e.ctid));
        for e in ours {
            if self.json {
                line(json!({ "event": "status", "status": e }));
            } else if let Some(bar) = self.bars.get(&e.ctid) {
                bar.set_length(e.bytes_total.max(e.bytes_done));
                bar.set_position(e.bytes_done);
                bar.set_message(progress(e));
            }
        }
    }

    pub fn finished(&mut self, ctid: u32, outcome: &Outcome, ok: bool) {
        self.finished.insert(ctid);
        let agent = self.agents.get(&ctid).map(String::as_str).unwrap_or_default();
        if self.json {
            let (state, summary) = match outcome {
                Outcome::Summary(s) => (Some(s.state.as_str()), serde_json::to_value(s).ok()),
                Outcome::Error(_) => (None, None),
            };
            line(json!({
                "event": "finished", "ctid": ctid, "agent": agent, "ok": ok, "state": state,
                "error": outcome.error(), "summary": summary,
            }));
        } else if let Some(bar) = self.bars.get(&ctid) {
            let state = match outcome {
                Outcome::Summary(s) => s.state.as_str(),
                Outcome::Error(_) => "not started",
            };
            bar.finish_with_message(format!("{} {state}", if ok { "ok" } else { "FAILED" }));
        }
    }

    /// Ends the display and prints the result table (or the JSON result line); true when
    /// every migration succeeded.
    pub fn finish(self, plan: &Plan, outcomes: &HashMap<u32, Outcome>) -> anyhow::Result<bool> {
        let _ = self.multi.clear();
        let rows: Vec<(&MigrateOptions, Option<&Outcome>, bool)> = plan
            .migrations
            .iter()
            .map(|m| {
                let o = outcomes.get(&m.ctid);
                (m, o, o.is_some_and(|o| o.succeeded(m)))
            })
            .collect();
        let all_ok = rows.iter().all(|(_, _, ok)| *ok);
        if self.json {
            let servers: Vec<_> = rows
                .iter()
                .map(|(m, o, ok)| {
                    let s = o.and_then(|o| match o {
                        Outcome::Summary(s) => Some(s),
                        Outcome::Error(_) => None,
                    });
                    json!({
                        "ctid": m.ctid, "agent": m.agent, "ok": ok,
                        "state": s.map(|s| s.state.as_str()),
                        "passes": s.map(|s| s.passes.len()),
                        "downtime_seconds": s.and_then(|s| s.downtime_seconds),
                        "error": o.and_then(|o| o.error()),
                    })
                })
                .collect();
            line(json!({ "event": "result", "ok": all_ok, "servers": servers }));
        } else {
            print!("{}", result_table(&rows));
        }
        Ok(all_ok)
    }
}

fn line(v: serde_json::Value) {
    println!("{v}");
}

/// The message of a migration's progress line.
fn progress(e: &StatusEntry) -> String {
    if let Some(w) = &e.waiting {
        return format!("{} pass {}: waiting for {w}", e.state.as_str(), e.pass);
    }
    let mut m = format!("{} pass {}", e.state.as_str(), e.pass);
    if e.rate_bytes_per_sec > 0 {
        let _ = write!(m, " {}/s", human_bytes(e.rate_bytes_per_sec));
    }
    if let Some(eta) = e.eta_seconds {
        let _ = write!(m, " ETA {}", human_duration(Duration::from_secs(eta)));
    }
    m
}

fn result_table(rows: &[(&MigrateOptions, Option<&Outcome>, bool)]) -> String {
    let mut out = format!(
        "{:<8} {:<20} {:<7} {:<13} {:>6} {:>9}  {}\n",
        "CTID", "AGENT", "RESULT", "STATE", "PASSES", "DOWNTIME", "ERROR"
    );
    for (m, o, ok) in rows {
        let (state, passes, downtime) = match o {
            Some(Outcome::Summary(s)) => (
                s.state.as_str(),
                s.passes.len().to_string(),
                s.downtime_seconds.map(|d| format!("{d:.1}s")).unwrap_or_else(|| "-".into()),
            ),
            Some(Outcome::Error(_)) => ("not started", "-".into(), "-".into()),
            None => ("not run", "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<20} {:<7} {:<13} {:>6} {:>9}  {}",
            m.ctid,
            m.agent,
            if *ok { "ok" } else { "FAILED" },
            state,
            passes,
            downtime,
            o.and_then(|o| o.error()).unwrap_or_default()
        );
    }
    let failed = rows.iter().filter(|(_, _, ok)| !ok).count();
    let _ = writeln!(out, "{} of {} migrations succeeded", rows.len() - failed, rows.len());
    out
}

/// `p2c plan check`: what the plan will do.
pub fn plan_table(file: &Path, plan: &Plan) -> String {
    let mut out = format!(
        "plan {}: {} server(s), {} at once\n{:<8} {:<20} {:<8} {:>10}  {}\n",
        file.display(),
        plan.migrations.len(),
        plan.max_parallel,
        "CTID",
        "AGENT",
        "CUTOVER",
        "BWLIMIT",
        "STOP SERVICES"
    );
    for m in &plan.migrations {
        let bw = if m.bwlimit == 0 { "-".into() } else { format!("{}/s", human_bytes(m.bwlimit)) };
        let _ = writeln!(
            out,
            "{:<8} {:<20} {:<8} {:>10}  {}",
            m.ctid,
            m.agent,
            if m.cutover { "yes" } else { "no" },
            bw,
            m.stop_services.join(",")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use p2c_common::migration::{MigrationState, MigrationSummary};

    use super::*;

    fn summary(ctid: u32, state: MigrationState, error: Option<&str>) -> Outcome {
        Outcome::Summary(Box::new(MigrationSummary {
            error: error.map(str::to_string),
            downtime_seconds: Some(1.25),
            ..MigrationSummary::new(ctid, &format!("a{ctid}"), state, String::new(), String::new(), 0)
        }))
    }

    #[test]
    fn success_depends_on_whether_a_cutover_was_asked_for() {
        let live = MigrateOptions { ctid: 1, ..Default::default() };
        let cut = MigrateOptions { ctid: 1, cutover: true, ..Default::default() };
        assert!(summary(1, MigrationState::Synced, None).succeeded(&live));
        assert!(!summary(1, MigrationState::Synced, None).succeeded(&cut));
        assert!(!summary(1, MigrationState::Synced, Some("cutover aborted")).succeeded(&live));
        assert!(summary(1, MigrationState::Done, None).succeeded(&cut));
        assert!(!summary(1, MigrationState::Failed, Some("x")).succeeded(&cut));
        assert!(!Outcome::Error("CT 1 is taken".into()).succeeded(&live));
    }

    #[test]
    fn the_result_table_names_each_failure() {
        let a = MigrateOptions { agent: "web01".into(), ctid: 101, cutover: true, ..Default::default() };
        let b = MigrateOptions { agent: "web02".into(), ctid: 102, ..Default::default() };
        let (oa, ob) = (summary(101, MigrationState::Done, None), Outcome::Error("CT 102 is taken".into()));
        let t = result_table(&[(&a, Some(&oa), true), (&b, Some(&ob), false)]);
        assert!(t.contains("101      web01                ok      done"), "{t}");
        assert!(t.contains("1.2s"), "{t}");
        assert!(t.contains("102      web02                FAILED  not started"), "{t}");
        assert!(t.contains("CT 102 is taken") && t.ends_with("1 of 2 migrations succeeded\n"), "{t}");
    }
}
