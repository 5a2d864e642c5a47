//! A migration as a state machine: its phases, the moves between them, and the registry of
//! the migrations this controller runs.
//!
//! ```text
//!            begin (p2c migrate / p2c import; a Synced, Done or Failed one again)
//!                 │
//!                 ▼
//!             Copying ──────────────► Synced ────── p2c cutover ──┐
//!                 │  (live passes      ▲   (source runs on)       │
//!                 │   converged)       │ cutover aborted          ▼
//!                 │                    └───────────────────── CuttingOver
//!                 │ --cutover ──────────────────────────────────►  │
//!                 │ (a bundle: its one pass is the last)           │
//!                 └─────────────► Finalising ◄────────────────────┘
//!                                     │
//!                                     ▼
//!                                   Done
//!  Copying, CuttingOver and Finalising can also end in Failed (running it again resumes).
//! ```
//!
//! Every move goes through [`Registry::transition`], which checks it and records it in the
//! store under the registry's one lock, so two callers cannot both make the same move: a
//! second `p2c cutover N` learns the phase the first one put the migration in and is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use p2c_common::findings::Report;
use p2c_common::migration::{Layout, MigrateOptions, MigrationState, MigrationSummary, Target};
use p2c_common::paths::RelPath;
use p2c_common::sync::Locked;
use tokio::sync::broadcast;
use tracing::info;

use crate::quota::{self, QuotaPlan};
use crate::receive::Progress;
use crate::state::{Store, StoreError};

/// Where a migration is, with what each phase carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Copy passes run while the source keeps running.
    Copying,
    /// Live passes done; the source still runs; waiting for `p2c cutover`. `aborted` says why
    /// the last cutover gave up, if one did.
    Synced { aborted: Option<String> },
    /// Services stopped (or stopping), the final pass running.
    CuttingOver,
    /// Config, guest rewrite, verification and quotas.
    Finalising,
    /// The container is ready.
    Done,
    /// Stopped with an error; running the same command again resumes.
    Failed { error: String },
}

impl Phase {
    /// The phase as `p2c status` names it.
    pub fn state(&self) -> MigrationState {
        match self {
            Phase::Copying => MigrationState::Copying,
            Phase::Synced { .. } => MigrationState::Synced,
            Phase::CuttingOver => MigrationState::CuttingOver,
            Phase::Finalising => MigrationState::Finalising,
            Phase::Done => MigrationState::Done,
            Phase::Failed { .. } => MigrationState::Failed,
        }
    }

    /// The error the summary shows in this phase.
    fn error(&self) -> Option<&str> {
        match self {
            Phase::Synced { aborted } => aborted.as_deref(),
            Phase::Failed { error } => Some(error),
            _ => None,
        }
    }

    /// True when `self` → `to` is a move the driver may make.
    pub fn may_become(&self, to: &Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Copying, Synced { .. } | CuttingOver | Finalising | Failed { .. })
                | (Synced { .. }, CuttingOver)
                | (CuttingOver, Synced { .. } | Finalising | Failed { .. })
                | (Finalising, Done | Failed { .. })
        )
    }
}

/// Why a move was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("CT {ctid} is {from}: {why}")]
    Refused { ctid: u32, from: &'static str, to: &'static str, why: String },
    #[error("cannot record the state of CT {ctid}: {source}")]
    Store {
        ctid: u32,
        #[source]
        source: StoreError,
    },
}

/// Why a migration (or a command about one) did not go on.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("CTID must be a positive number")]
    BadCtid,
    #[error("agent name {name:?}: {source}")]
    BadName {
        name: String,
        #[source]
        source: p2c_common::pki::PkiError,
    },
    #[error(transparent)]
    Begin(#[from] BeginError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("CT {0} has no migration; start one with `p2c migrate NAME --ctid {0}`")]
    Unknown(u32),
    #[error(transparent)]
    Call(#[from] crate::link::CallError),
    #[error("the agent's inventory is unusable: {0}")]
    Inventory(String),
    #[error("pre-flight found {0} blocker(s): {1}; fix them or pass --force to migrate anyway")]
    Blocked(usize, String),
    #[error("copy pass {pass} failed: {reason}")]
    Pass { pass: u32, reason: String },
    #[error(
        "cannot record copy pass {pass}, so it counts as failed (a resume relies on the record): {source}"
    )]
    RecordPass {
        pass: u32,
        #[source]
        source: StoreError,
    },
    #[error("--exclude {given}: {source}")]
    Exclude {
        given: String,
        #[source]
        source: p2c_common::paths::PathError,
    },
    #[error("cutover aborted, the container was not finalised: {0}")]
    CutoverAborted(String),
    #[error("finalising the container failed: {0}")]
    Finalise(String),
    #[error("quota: {0}")]
    Quota(String),
    /// The bundle file is unusable (the message names it).
    #[error("{0}")]
    Bundle(String),
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// Something worth telling whoever watches the migration.
#[derive(Clone, Debug)]
pub enum Event {
    Log(String),
    Report(Box<Report>),
    Summary(Box<MigrationSummary>),
}

/// A migration's quota plan and the node method applying it.
pub struct QuotaState {
    pub plan: QuotaPlan,
    pub selection: quota::Selection,
    /// Where the container's files are written: the private area (simfs) or the mounted image.
    pub root: PathBuf,
    pub mount: Option<quota::ploop::MountGuard>,
}

/// A migration the controller runs or has run since it started. Its phase changes only
/// through [`Registry::transition`].
pub struct MigrationHandle {
    ctid: u32,
    agent: String,
    options: MigrateOptions,
    phase: Mutex<Phase>,
    progress: Arc<Progress>,
    events: broadcast::Sender<Event>,
    /// The next pass's number.
    next_pass: AtomicU32,
    summary: Mutex<MigrationSummary>,
    started: Instant,
    /// When the current copy pass started (for its rate and ETA).
    pass_started: Mutex<Option<Instant>>,
    /// What the migration waits for before it can copy (a copy slot, its agent), if anything.
    waiting: Mutex<Option<String>>,
    /// The quota plan, how it is applied, and the mounted image of a ploop container.
    quota: Mutex<Option<QuotaState>>,
    /// Files written since the tree's content was last fully verified; `None` when no full
    /// verification happened since (or too many files to list): verification re-reads all.
    written_since_verify: Mutex<Option<HashSet<RelPath>>>,
}

impl MigrationHandle {
    fn new(options: MigrateOptions, phase: Phase, summary: MigrationSummary) -> MigrationHandle {
        let (events, _) = broadcast::channel(256);
        MigrationHandle {
            ctid: options.ctid,
            agent: options.agent.clone(),
            next_pass: AtomicU32::new(summary.passes.iter().map(|p| p.pass + 1).max().unwrap_or(0)),
            options,
            phase: Mutex::new(phase),
            progress: Arc::new(Progress::default()),
            events,
            summary: Mutex::new(summary),
            started: Instant::now(),
            pass_started: Mutex::new(None),
            waiting: Mutex::new(None),
            quota: Mutex::new(None),
            written_since_verify: Mutex::new(None),
        }
    }

    pub fn ctid(&self) -> u32 {
        self.ctid
    }

    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// What the operator asked for when this run started.
    pub fn options(&self) -> &MigrateOptions {
        &self.options
    }

    pub fn state(&self) -> MigrationState {
        self.phase.locked().state()
    }

    /// True while a task works on the migration (a second one must not start).
    pub fn is_running(&self) -> bool {
        !self.state().is_idle()
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }

    pub fn log(&self, msg: impl Into<String>) {
        let m = msg.into();
        info!(ctid = self.ctid, agent = %self.agent, "{m}");
        self.send(Event::Log(m));
    }

    pub fn summary(&self) -> MigrationSummary {
        self.summary.locked().clone()
    }

    /// Changes the summary (what the final report shows).
    pub fn update_summary<R>(&self, f: impl FnOnce(&mut MigrationSummary) -> R) -> R {
        f(&mut self.summary.locked())
    }

    /// The number of the pass that runs (or ran last); 0 before the first.
    pub fn current_pass(&self) -> u32 {
        self.next_pass.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Takes the next pass's number and starts its clock and progress afresh.
    pub fn begin_pass(&self) -> u32 {
        let pass = self.next_pass.fetch_add(1, Ordering::Relaxed);
        self.progress.reset();
        *self.pass_started.locked() = Some(Instant::now());
        pass
    }

    /// Since when the current pass (or, before one, the migration) has run.
    pub fn running_since(&self) -> Instant {
        self.pass_started.locked().unwrap_or(self.started)
    }

    /// What the migration waits for, if anything (shown by `p2c status`).
    pub fn waiting(&self) -> Option<String> {
        self.waiting.locked().clone()
    }

    pub fn set_waiting(&self, what: Option<String>) {
        *self.waiting.locked() = what;
    }

    /// Runs `f` on the quota state (`None` before the storage is prepared).
    pub fn with_quota<R>(&self, f: impl FnOnce(&mut Option<QuotaState>) -> R) -> R {
        f(&mut self.quota.locked())
    }

    /// Adds what a pass wrote to the files verification must re-read (`None`: unknown, so
    /// verification re-reads everything).
    pub fn note_written(&self, written: Option<Vec<RelPath>>) {
        let mut w = self.written_since_verify.locked();
        match (w.as_mut(), written) {
            (Some(set), Some(list)) => set.extend(list),
            _ => *w = None,
        }
    }

    /// The files verification must re-read, if known.
    pub fn written_since_verify(&self) -> Option<HashSet<RelPath>> {
        self.written_since_verify.locked().clone()
    }

    /// After a full verification: only `paths` (and what later passes write) need re-reading.
    pub fn verified_except(&self, paths: Vec<RelPath>) {
        *self.written_since_verify.locked() = Some(paths.into_iter().collect());
    }
}

/// The migrations this controller runs or ran since it started, by CTID.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<u32, Arc<MigrationHandle>>>,
}

/// Why a migration could not begin.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error("migration of CT {0} is already running ({1}); watch it with `p2c status --watch`")]
    Running(u32, &'static str),
    #[error("CT {ctid} is the migration of agent {other}; use another --ctid or `p2c discard {ctid}` first")]
    OtherAgent { ctid: u32, other: String },
    #[error(
        "CT {ctid} is being made for {was} with layout {was_layout}; this run asks for {asked} with layout {asked_layout}. A container cannot change platform or layout part way: run it again with `--target {was} --layout {was_layout}`, or `p2c discard {ctid}` to start over"
    )]
    OtherStorage { ctid: u32, was: Target, was_layout: Layout, asked: Target, asked_layout: Layout },
    #[error("{0} already exists and is not a p2c migration; use another --ctid or remove it")]
    Occupied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The paths a new migration of a CTID must not find on the node.
pub struct Claim<'a> {
    pub store: &'a Store,
    pub private_dir: PathBuf,
    pub conf_path: PathBuf,
}

impl Registry {
    pub fn get(&self, ctid: u32) -> Option<Arc<MigrationHandle>> {
        self.map.locked().get(&ctid).cloned()
    }

    /// Every migration of this run, in CTID order.
    pub fn snapshot(&self) -> BTreeMap<u32, Arc<MigrationHandle>> {
        self.map.locked().iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Starts (or resumes) the migration `opts` describes: checked and recorded in the store
    /// as [`Phase::Copying`] under the registry's lock, so of two callers for one CTID exactly
    /// one begins.
    pub fn begin(&self, claim: Claim<'_>, opts: MigrateOptions) -> Result<Arc<MigrationHandle>, BeginError> {
        let ctid = opts.ctid;
        let mut map = self.map.locked();
        if let Some(h) = map.get(&ctid)
            && h.is_running()
        {
            return Err(BeginError::Running(ctid, h.state().as_str()));
        }
        let passes = match claim.store.migration(ctid)? {
            Some(row) if row.agent != opts.agent => {
                return Err(BeginError::OtherAgent { ctid, other: row.agent });
            }
            Some(row) if row.options.made_for() != opts.made_for() || row.options.layout != opts.layout => {
                return Err(BeginError::OtherStorage {
                    ctid,
                    was: row.options.made_for(),
                    was_layout: row.options.layout,
                    asked: opts.made_for(),
                    asked_layout: opts.layout,
                });
            }
            Some(_) => {
                claim.store.passes(ctid)?.into_iter().filter(|p| p.complete).map(|p| p.summary).collect()
            }
            None => {
                for p in [&claim.private_dir, &claim.conf_path] {
                    // A dangling conf link is in the way too.
                    if std::fs::symlink_metadata(p).is_ok() {
                        return Err(BeginError::Occupied(p.display().to_string()));
                    }
                }
                Vec::new()
            }
        };
        let summary = MigrationSummary {
            passes,
            target: Some(opts.made_for()),
            ..MigrationSummary::new(
                ctid,
                &opts.agent,
                MigrationState::Copying,
                claim.private_dir.display().to_string(),
                claim.conf_path.display().to_string(),
                crate::state::now(),
            )
        };
        claim.store.upsert_migration(ctid, &opts.agent, MigrationState::Copying, &opts)?;
        claim.store.set_migration_state(ctid, MigrationState::Copying, Some(&summary))?;
        let h = Arc::new(MigrationHandle::new(opts, Phase::Copying, summary));
        map.insert(ctid, h.clone());
        Ok(h)
    }

    /// Moves `h` to `to` if that move is allowed from where it is, recording the phase and
    /// the summary in the store first; an idle phase also sends the summary to watchers.
    pub fn transition(&self, store: &Store, h: &MigrationHandle, to: Phase) -> Result<(), TransitionError> {
        let _registry = self.map.locked();
        let mut phase = h.phase.locked();
        if !phase.may_become(&to) {
            let why = match (&*phase, &to) {
                (Phase::CuttingOver | Phase::Finalising, Phase::CuttingOver) => {
                    "a cutover already runs; watch it with `p2c status --watch`".to_string()
                }
                (Phase::Done, Phase::CuttingOver) => "it was cut over already".to_string(),
                (Phase::Copying, Phase::CuttingOver) => {
                    "its live passes still run; wait until `p2c status` shows it synced".to_string()
                }
                (Phase::Failed { .. }, Phase::CuttingOver) => {
                    "run the same `p2c migrate` again to resume it first".to_string()
                }
                (_, to) => format!("it cannot become {} now", to.state().as_str()),
            };
            return Err(TransitionError::Refused {
                ctid: h.ctid,
                from: phase.state().as_str(),
                to: to.state().as_str(),
                why,
            });
        }
        let summary = {
            let mut s = h.summary.locked();
            s.state = to.state();
            s.error = to.error().map(str::to_string);
            s.updated_unix = crate::state::now();
            s.clone()
        };
        let recorded = store
            .set_migration_state(h.ctid, to.state(), Some(&summary))
            .map_err(|source| TransitionError::Store { ctid: h.ctid, source });
        // A migration that stops stops even when the store cannot say so: nothing runs for
        // it any more, and the operator must be able to run it again.
        if recorded.is_err() && !matches!(to, Phase::Failed { .. }) {
            return recorded;
        }
        let idle = to.state().is_idle();
        *phase = to;
        if idle {
            h.send(Event::Summary(Box::new(summary)));
        }
        recorded
    }

    /// Loads a migration the store holds as synced (after a restart), so that `p2c cutover`
    /// and `p2c status` find it as they did before.
    pub fn restore(&self, row: crate::state::MigrationRow) {
        let Some(summary) = row.summary else { return };
        let aborted = summary.error.clone();
        let h = MigrationHandle::new(row.options, Phase::Synced { aborted }, summary);
        self.map.locked().entry(row.ctid).or_insert_with(|| Arc::new(h));
    }

    /// Forgets `ctid` if it is not running (`p2c discard`, or an import that changed nothing).
    pub fn forget(&self, ctid: u32) -> Result<(), MigrationState> {
        let mut map = self.map.locked();
        match map.get(&ctid) {
            Some(h) if h.is_running() => Err(h.state()),
            _ => {
                map.remove(&ctid);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
