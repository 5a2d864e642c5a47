//! A migration, start to finish: inventory, pre-flight report, live copy passes until the
//! changes converge, then (now or on `p2c cutover`) stop services, final pass, finalise.

use p2c_common::sync::Locked;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2c_common::findings::Report;
use p2c_common::inventory::{INVENTORY_SCHEMA, Inventory};
use p2c_common::migration::{MigrateOptions, MigrationState, MigrationSummary, PassSummary, VerifySummary};
use p2c_common::paths::RelPath;
use p2c_proto::v1;
use tokio::sync::{Notify, OwnedSemaphorePermit, broadcast, oneshot};
use tracing::{info, warn};

use std::path::PathBuf;

use crate::ctconf::CtConf;
use crate::quota::{self, QuotaPlan};
use crate::receive::{PassJob, PassOutcome, Progress};
use crate::server::{Controller, TransferSlot};
use crate::session::{AgentConn, AgentReply, CallError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("CTID must be a positive number")]
    BadCtid,
    #[error("migration of CT {0} is already running; watch it with `p2c status --watch`")]
    Running(u32),
    #[error("CT {ctid} is the migration of agent {other}; use another --ctid or `p2c discard {ctid}` first")]
    OtherAgent { ctid: u32, other: String },
    #[error("{0} already exists and is not a p2c migration; use another --ctid or remove it")]
    Occupied(String),
    #[error("CT {0} has no migration; start one with `p2c migrate NAME --ctid {0}`")]
    Unknown(u32),
    #[error("CT {0} is not waiting for a cutover (state {1})")]
    NotSynced(u32, String),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the agent's inventory is unusable: {0}")]
    Inventory(String),
    #[error("pre-flight found {0} blocker(s): {1}; fix them or pass --force to migrate anyway")]
    Blocked(usize, String),
    #[error("copy pass {pass} failed: {reason}")]
    Pass { pass: u32, reason: String },
    #[error("cutover aborted, the container was not finalised: {0}")]
    CutoverAborted(String),
    #[error("finalising the container failed: {0}")]
    Finalise(String),
    #[error("quota: {0}")]
    Quota(String),
    #[error("{0}")]
    Store(#[from] crate::state::StoreError),
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

/// A migration the controller is running or has run since it started.
pub struct MigrationHandle {
    pub ctid: u32,
    pub agent: String,
    pub options: Mutex<MigrateOptions>,
    pub progress: Arc<Progress>,
    pub events: broadcast::Sender<Event>,
    pub state: Mutex<MigrationState>,
    pub pass: AtomicU32,
    pub summary: Mutex<MigrationSummary>,
    pub cutover: Notify,
    pub cutover_requested: AtomicBool,
    pub started: Instant,
    /// When the current copy pass started (for its rate and ETA).
    pub pass_started: Mutex<Option<Instant>>,
    /// What the migration waits for before it can copy (a copy slot, its agent), if anything.
    pub waiting: Mutex<Option<String>>,
    /// The quota plan, how it is applied, and the mounted image of a ploop container.
    pub quota: Mutex<Option<QuotaState>>,
    /// Files written since the tree's content was last fully verified; `None` when no full
    /// verification happened since (or too many files to list): verification re-reads all.
    pub written_since_verify: Mutex<Option<std::collections::HashSet<RelPath>>>,
}

/// A migration's quota plan and the node method applying it.
pub struct QuotaState {
    pub plan: QuotaPlan,
    pub selection: quota::Selection,
    /// Where the container's files are written: the private area (simfs) or the mounted image.
    pub root: PathBuf,
    pub mount: Option<quota::ploop::MountGuard>,
}

impl MigrationHandle {
    pub fn state(&self) -> MigrationState {
        *self.state.locked()
    }

    pub(crate) fn log(&self, msg: impl Into<String>) {
        let m = msg.into();
        info!(ctid = self.ctid, agent = %self.agent, "{m}");
        let _ = self.events.send(Event::Log(m));
    }

    pub fn summary(&self) -> MigrationSummary {
        self.summary.locked().clone()
    }

    /// What the migration waits for, if anything (shown by `p2c status`).
    pub fn waiting(&self) -> Option<String> {
        self.waiting.locked().clone()
    }

    fn set_waiting(&self, what: Option<String>) {
        *self.waiting.locked() = what;
    }
}

fn now() -> u64 {
    crate::state::now()
}

pub(crate) fn set_state(ctl: &Controller, h: &MigrationHandle, st: MigrationState, error: Option<String>) {
    *h.state.locked() = st;
    let summary = {
        let mut s = h.summary.locked();
        s.state = st;
        if error.is_some() || st != MigrationState::Failed {
            s.error = error;
        }
        s.updated_unix = now();
        s.clone()
    };
    let json = serde_json::to_string(&summary).unwrap_or_default();
    if let Err(e) = ctl.store.set_migration_state(h.ctid, st.as_str(), Some(&json)) {
        warn!(ctid = h.ctid, "cannot record migration state: {e}");
    }
    if st.is_idle() {
        let _ = h.events.send(Event::Summary(Box::new(summary)));
    }
}

/// Marks migrations that were running when the controller stopped as failed, so that
/// `p2c migrate` resumes them.
pub fn recover(ctl: &Controller) {
    let Ok(rows) = ctl.store.migrations() else { return };
    for r in rows {
        let st = MigrationState::parse(&r.state).unwrap_or(MigrationState::Failed);
        if !st.is_idle() {
            let mut s: Option<MigrationSummary> =
                r.summary.as_deref().and_then(|j| serde_json::from_str(j).ok());
            if let Some(s) = s.as_mut() {
                s.state = MigrationState::Failed;
                s.error = Some(
                    "the controller stopped during the migration; run the same `p2c migrate` (or `p2c import`) again to resume"
                        .into(),
                );
            }
            let json = s.map(|s| serde_json::to_string(&s).unwrap_or_default());
            let _ = ctl.store.set_migration_state(r.ctid, MigrationState::Failed.as_str(), json.as_deref());
        }
    }
}

/// A running migration and a subscription to its events from before it started.
pub type Started = (Arc<MigrationHandle>, broadcast::Receiver<Event>);

/// Starts (or resumes) a migration in the background.
pub fn start(ctl: &Controller, opts: MigrateOptions) -> Result<Started, MigrateError> {
    let h = register(ctl, opts)?;
    let sub = h.events.subscribe();
    let (ctl2, h2) = (ctl.clone(), h.clone());
    let task = tokio::spawn(async move {
        let cutover = h2.options.locked().cutover;
        let r = match sync(&ctl2, &h2).await {
            Ok(()) if cutover => crate::cutover::run(&ctl2, &h2).await,
            other => other,
        };
        if let Err(e) = r {
            stopped(&ctl2, &h2, e);
        }
    });
    ctl.background.locked().push(task.abort_handle());
    Ok((h, sub))
}

/// Checks that container `opts.ctid` can be (re)built for `opts.agent`, records the
/// migration and returns its handle, not started: shared by `p2c migrate` and `p2c import`.
pub(crate) fn register(ctl: &Controller, opts: MigrateOptions) -> Result<Arc<MigrationHandle>, MigrateError> {
    if opts.ctid == 0 {
        return Err(MigrateError::BadCtid);
    }
    p2c_common::pki::validate_agent_name(&opts.agent).map_err(|e| MigrateError::Other(e.to_string()))?;
    let ctid = opts.ctid;
    let mut running = ctl.migrations.locked();
    if let Some(h) = running.get(&ctid)
        && !h.state().is_idle()
    {
        return Err(MigrateError::Running(ctid));
    }
    match ctl.store.migration(ctid)? {
        Some(row) if row.agent != opts.agent => {
            return Err(MigrateError::OtherAgent { ctid, other: row.agent });
        }
        Some(_) => {}
        None => {
            for p in [ctl.settings.private_dir(ctid), ctl.settings.conf_path(ctid)] {
                if p.exists() {
                    return Err(MigrateError::Occupied(p.display().to_string()));
                }
            }
        }
    }
    let options_json = serde_json::to_string(&opts).map_err(|e| MigrateError::Other(e.to_string()))?;
    ctl.store.upsert_migration(ctid, &opts.agent, MigrationState::Pending.as_str(), &options_json)?;
    let passes: Vec<PassSummary> =
        ctl.store.passes(ctid)?.into_iter().filter_map(|(_, _, j)| serde_json::from_str(&j).ok()).collect();
    let (events, _) = broadcast::channel(256);
    let summary = MigrationSummary {
        ctid,
        agent: opts.agent.clone(),
        state: MigrationState::Pending,
        private_dir: ctl.settings.private_dir(ctid).display().to_string(),
        conf_path: ctl.settings.conf_path(ctid).display().to_string(),
        passes,
        error: None,
        report: None,
        verify: None,
        downtime_seconds: None,
        guest_changes: Vec::new(),
        quota: None,
        warnings: Vec::new(),
        started_unix: now(),
        updated_unix: now(),
    };
    let h = Arc::new(MigrationHandle {
        ctid,
        agent: opts.agent.clone(),
        pass: AtomicU32::new(summary.passes.iter().map(|p| p.pass + 1).max().unwrap_or(0)),
        options: Mutex::new(opts),
        progress: Arc::new(Progress::default()),
        events,
        state: Mutex::new(MigrationState::Pending),
        summary: Mutex::new(summary),
        cutover: Notify::new(),
        cutover_requested: AtomicBool::new(false),
        started: Instant::now(),
        pass_started: Mutex::new(None),
        waiting: Mutex::new(None),
        quota: Mutex::new(None),
        written_since_verify: Mutex::new(None),
    });
    running.insert(ctid, h.clone());
    Ok(h)
}

/// Runs the cutover of a synced migration in the background.
pub fn cutover(ctl: &Controller, ctid: u32) -> Result<Started, MigrateError> {
    let h = ctl.migrations.locked().get(&ctid).cloned().ok_or(MigrateError::Unknown(ctid))?;
    let st = h.state();
    if st != MigrationState::Synced {
        return Err(MigrateError::NotSynced(ctid, st.as_str().to_string()));
    }
    let sub = h.events.subscribe();
    let (ctl2, h2) = (ctl.clone(), h.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = crate::cutover::run(&ctl2, &h2).await {
            stopped(&ctl2, &h2, e);
        }
    });
    ctl.background.locked().push(task.abort_handle());
    Ok((h, sub))
}

/// Records why a migration stopped: an aborted cutover leaves it synced (the source runs on
/// and the cutover can be tried again), anything else failed.
pub(crate) fn stopped(ctl: &Controller, h: &MigrationHandle, e: MigrateError) {
    if let MigrateError::CutoverAborted(_) = e {
        h.log(format!("{e}; run `p2c cutover {}` to try again", h.ctid));
        set_state(ctl, h, MigrationState::Synced, Some(e.to_string()));
    } else {
        h.log(format!("migration stopped: {e}"));
        set_state(ctl, h, MigrationState::Failed, Some(e.to_string()));
    }
}

async fn inventory(ctl: &Controller, h: &MigrationHandle) -> Result<Inventory, MigrateError> {
    let conn = ctl
        .sessions
        .wait_for(&h.agent, Duration::from_secs(30))
        .await
        .ok_or_else(|| CallError::NotConnected(h.agent.clone()))?;
    fetch_inventory(ctl, &conn).await
}

/// Asks a connected agent for its inventory, checks it and stores it.
pub async fn fetch_inventory(
    ctl: &Controller,
    conn: &crate::session::AgentConn,
) -> Result<Inventory, MigrateError> {
    let reply = conn
        .call(v1::controller_command::Command::Inventory(v1::RequestInventory {}), Duration::from_secs(300))
        .await?;
    let AgentReply::Inventory(json) = reply else {
        return Err(MigrateError::Inventory("the agent answered something else".into()));
    };
    let inv = parse_inventory(&json)?;
    let os = if inv.os.pretty_name.is_empty() { inv.os.id.clone() } else { inv.os.pretty_name.clone() };
    let _ = ctl.store.set_inventory(&conn.name, &String::from_utf8_lossy(&json), &inv.hostname, &os);
    Ok(inv)
}

/// Reads an inventory as an agent (or a bundle) reports it, refusing what this controller
/// cannot read.
pub(crate) fn parse_inventory(json: &[u8]) -> Result<Inventory, MigrateError> {
    if json.len() > 8 * 1024 * 1024 {
        return Err(MigrateError::Inventory("larger than 8 MiB".into()));
    }
    let inv: Inventory = serde_json::from_slice(json).map_err(|e| MigrateError::Inventory(e.to_string()))?;
    if inv.schema != INVENTORY_SCHEMA {
        return Err(MigrateError::Inventory(format!(
            "schema {} (this controller reads {INVENTORY_SCHEMA}); run the same p2c release on both sides",
            inv.schema
        )));
    }
    Ok(inv)
}

pub(crate) fn excludes(opts: &MigrateOptions) -> Result<Vec<RelPath>, MigrateError> {
    opts.assess
        .excludes
        .iter()
        .map(|x| {
            RelPath::from_user(&p2c_common::paths::unescape_bytes(x))
                .map_err(|e| MigrateError::Other(format!("--exclude {x}: {e}")))
        })
        .collect()
}

async fn sync(ctl: &Controller, h: &Arc<MigrationHandle>) -> Result<(), MigrateError> {
    set_state(ctl, h, MigrationState::Copying, None);
    let opts = h.options.locked().clone();
    h.log(format!("collecting the inventory of {}", h.agent));
    let inv = inventory(ctl, h).await?;
    // A migration that already copied re-uses the scan of its first run (a full walk of the
    // source); the inventory, and so the report, is fresh.
    let scan_file = ctl.settings.manifest_dir(h.ctid).join("scan.json");
    let earlier = if h.summary.locked().passes.is_empty() {
        None
    } else {
        std::fs::read(&scan_file).ok().and_then(|j| p2c_common::scan::ScanResult::from_json(&j).ok())
    };
    let (report, scan) = match earlier {
        Some(scan) => {
            let r = crate::preflight::assess_with(ctl, &h.agent, &inv, Some(&scan), &opts.assess).await;
            (r, Some(scan))
        }
        None => {
            let (r, scan) = crate::preflight::report(ctl, &h.agent, &inv, &opts.assess).await;
            if let Some(json) = scan.as_ref().and_then(|s| s.to_json().ok()) {
                let _ = std::fs::create_dir_all(ctl.settings.manifest_dir(h.ctid));
                let _ = std::fs::write(&scan_file, json);
            }
            (r, scan)
        }
    };
    let _ = h.events.send(Event::Report(Box::new(report.clone())));
    h.summary.locked().report = Some(report.clone());
    if report.has_blockers() && !opts.force {
        let list: Vec<String> = report.blockers().map(|f| format!("{} ({})", f.code, f.title)).collect();
        return Err(MigrateError::Blocked(list.len(), list.join("; ")));
    }
    prepare_storage(ctl, h, &inv, scan.as_ref(), &opts)?;
    let excludes = excludes(&opts)?;
    let conv = ctl.settings.converge_bytes.max(opts.converge_bytes.unwrap_or(0));
    let max_passes = if opts.max_passes > 0 { opts.max_passes } else { ctl.settings.max_passes };
    for i in 0..max_passes {
        let s = run_pass(ctl, h, &excludes, &opts, Walk::ChangesIfTracked, None).await?;
        if i == 0 || !ctl.settings.conf_path(h.ctid).exists() {
            write_conf(ctl, h, &inv, &opts)?;
        }
        let converged = s.changed_bytes <= conv && s.changed_during_read.is_empty();
        let listed = match s.changes_since {
            Some(b) => format!(" ({} changed since pass {b} listed)", s.listed),
            None => String::new(),
        };
        h.log(format!(
            "pass {} done: {} entries{listed}, {} written, {} deleted, {} on the wire, {} copied on the node{}",
            s.pass,
            s.entries,
            s.written,
            s.deleted,
            p2c_common::units::human_bytes(s.wire_bytes),
            p2c_common::units::human_bytes(s.local_bytes),
            if converged { "; converged" } else { "" }
        ));
        if converged || h.cutover_requested.load(Ordering::Relaxed) {
            break;
        }
    }
    if !opts.cutover {
        h.log(format!(
            "synced; the source keeps running. Run `p2c cutover {}` to stop its services, copy the last changes and finalise",
            h.ctid
        ));
        set_state(ctl, h, MigrationState::Synced, None);
    }
    Ok(())
}

/// Plans the quotas, picks how the node applies them and prepares the private area (a btrfs
/// subvolume, a ploop image mounted at the container's root...) before any file arrives.
pub(crate) fn prepare_storage(
    ctl: &Controller,
    h: &MigrationHandle,
    inv: &Inventory,
    scan: Option<&p2c_common::scan::ScanResult>,
    opts: &MigrateOptions,
) -> Result<(), MigrateError> {
    let mut guard = h.quota.locked();
    if guard.is_some() {
        return Ok(());
    }
    // A directory source says nothing true about its usage through its mounts (they are the
    // node's): use what the scan counted instead.
    let mut sized = inv.clone();
    if let (true, Some(scan)) = (inv.facts_from == "tree", scan) {
        let mut first = true;
        for m in sized.mounts.iter_mut().filter(|m| m.kind == p2c_common::inventory::MountKind::Local) {
            m.used_bytes = if first { scan.used_bytes } else { 0 };
            m.inodes_used = if first { scan.inodes } else { 0 };
            first = false;
        }
    }
    let plan = QuotaPlan::compute(&sized, opts).map_err(|e| MigrateError::Quota(e.to_string()))?;
    let private_root = ctl.settings.vz_root.join("private");
    root_only_dir(&private_root)
        .map_err(|e| MigrateError::Quota(format!("{}: {e}", private_root.display())))?;
    let selection = quota::select(&quota::Node::linux(), opts.layout, &private_root);
    let private = ctl.settings.private_dir(h.ctid);
    selection.backend.prepare(h.ctid, &private, &plan).map_err(|e| MigrateError::Quota(e.to_string()))?;
    h.log(format!("quotas will be applied by {}", selection.backend.name()));
    let (root, mount) = if opts.layout == p2c_common::migration::Layout::Ploop {
        let mp = ctl.settings.root_dir(h.ctid);
        if let Some(parent) = mp.parent() {
            root_only_dir(parent).map_err(|e| MigrateError::Quota(format!("{}: {e}", parent.display())))?;
        }
        // A crashed run may have left the image mounted there.
        let _ = std::process::Command::new("umount").arg(&mp).stderr(std::process::Stdio::null()).status();
        let g = quota::ploop::Ploop::new(quota::Node::linux())
            .mount(&private, &mp)
            .map_err(|e| MigrateError::Quota(e.to_string()))?;
        (mp, Some(g))
    } else {
        (private, None)
    };
    *guard = Some(QuotaState { plan, selection, root, mount });
    Ok(())
}

/// Creates `dir` for root only, or takes group and other access away from it.
///
/// Container trees hold what the source server held: setuid-root binaries, device nodes such
/// as `/dev/mem` (mode 0666), and each tree's own root takes the source root's mode (0755).
/// What keeps unprivileged users of the node from running or opening those is the directory
/// above the trees, which must therefore be root-only, as vzctl keeps `/vz/private`.
fn root_only_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        warn!(dir = %dir.display(), "container trees were open to other users of the node ({mode:o}); making it 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// Where the container's files are (the private area, or its mounted image).
fn ct_root(ctl: &Controller, h: &MigrationHandle) -> PathBuf {
    h.quota.locked().as_ref().map(|q| q.root.clone()).unwrap_or_else(|| ctl.settings.private_dir(h.ctid))
}

fn write_conf(
    ctl: &Controller,
    h: &MigrationHandle,
    inv: &Inventory,
    opts: &MigrateOptions,
) -> Result<CtConf, MigrateError> {
    let mut c = CtConf::from_inventory(h.ctid, &h.agent, &ctl.settings.vz_root, opts.layout, inv);
    c.created = time_string();
    c.quota = h.quota.locked().as_ref().map(|q| q.plan.conf_keys()).unwrap_or_default();
    c.write(&ctl.settings.conf_path(h.ctid))
        .map_err(|e| MigrateError::Finalise(format!("{}: {e}", ctl.settings.conf_path(h.ctid).display())))?;
    Ok(c)
}

fn time_string() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("unix time {}", now()))
}

/// How long a pass may go without any progress before it is cancelled and tried again, so a
/// stuck agent does not keep its copy slot for ever.
const STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the end of an interrupted transfer is awaited before the next attempt.
const WIND_DOWN: Duration = Duration::from_secs(60);
/// Attempts of one pass before the migration fails.
const PASS_ATTEMPTS: u32 = 20;

/// Runs one copy pass, resuming on a new connection if the link breaks.
///
/// The migration holds a copy slot only while its agent is connected and a transfer runs:
/// it waits for an absent agent, and between attempts, without one, so that the others copy
/// meanwhile. A `slot` handed in (the cutover's, taken before the services stopped) is kept
/// through every attempt.
pub(crate) async fn run_pass(
    ctl: &Controller,
    h: &Arc<MigrationHandle>,
    excludes: &[RelPath],
    opts: &MigrateOptions,
    walk: Walk,
    mut slot: Option<OwnedSemaphorePermit>,
) -> Result<PassSummary, MigrateError> {
    let keep_slot = slot.is_some();
    let mut attempts = 0;
    loop {
        let conn = wait_agent(ctl, h).await?;
        if slot.is_none() {
            let permit = copy_slot(ctl, h).await?;
            if *conn.closed().borrow() {
                continue; // the agent left while the migration queued
            }
            slot = Some(permit);
        }
        let mut job = next_pass_job(ctl, h, excludes, opts);
        if walk == Walk::ChangesIfTracked {
            job.changes_offered = changes_base(ctl, h, job.pass, excludes, opts);
        }
        let changes_since = job.changes_offered.as_ref().map(|(b, _)| *b);
        let pass = job.pass;
        let migration_id = format!("ct{}", h.ctid);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        ctl.transfers
            .locked()
            .insert(migration_id.clone(), TransferSlot { agent: h.agent.clone(), pass, job, done: done_tx });
        let bwlimit = bandwidth(ctl, opts);
        let cmd = v1::controller_command::Command::StartPass(v1::StartPass {
            migration_id: migration_id.clone(),
            pass,
            excludes: excludes.iter().map(|e| e.as_bytes().to_vec()).collect(),
            bwlimit,
            chunking: Some(ctl.settings.chunking.into()),
            zstd_level: zstd_level(ctl, &conn),
            changes_since,
            // After the final pass of a cutover nothing more is copied: no watch.
            track_changes: ctl.settings.change_tracking && walk != Walk::Full,
        });
        h.log(format!("copy pass {pass} started"));
        let outcome = transfer(ctl, h, &conn, cmd, done_rx, &migration_id).await;
        ctl.transfers.locked().remove(&migration_id);
        let (mut summary, err, retry) = match outcome {
            Ok(o) => {
                note_written(h, o.written);
                (o.summary, o.error.map(|e| e.to_string()), o.retryable)
            }
            Err(e) => {
                // Nothing says what the lost transfer wrote: verify everything.
                note_written(h, None);
                (PassSummary { pass, ..Default::default() }, Some(e), true)
            }
        };
        summary.scope = pass_scope(excludes, opts);
        record_pass(ctl, h, &summary, err.is_none());
        match err {
            None => return Ok(summary),
            Some(reason) if retry && attempts < PASS_ATTEMPTS => {
                attempts += 1;
                if !keep_slot {
                    slot = None;
                }
                h.log(format!("pass {pass} interrupted ({reason}); resuming when the agent is back"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(reason) => return Err(MigrateError::Pass { pass, reason }),
        }
    }
}

/// How a pass reads the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Only what changed since the last pass, when the agent's change tracking covers it
    /// (live passes).
    ChangesIfTracked,
    /// The whole tree: the final pass of a cutover (writes through a shared memory mapping
    /// raise no change event, and this pass must miss nothing).
    Full,
}

/// What decides which entries a pass copies; a listing of changes needs the same as its base.
fn pass_scope(excludes: &[RelPath], opts: &MigrateOptions) -> String {
    let mut b = Vec::new();
    for x in excludes {
        b.extend_from_slice(x.as_bytes());
        b.push(0);
    }
    b.push(u8::from(opts.assess.keep_xattrs));
    p2c_common::manifest::Hash32::of(&b).to_hex()
}

/// The pass a new pass may list changes against: the one just before it, if it completed
/// with the same scope and its manifest is there.
fn changes_base(
    ctl: &Controller,
    h: &MigrationHandle,
    pass: u32,
    excludes: &[RelPath],
    opts: &MigrateOptions,
) -> Option<(u32, PathBuf)> {
    if !ctl.settings.change_tracking {
        return None;
    }
    let prev = pass.checked_sub(1)?;
    let passes = ctl.store.passes(h.ctid).ok()?;
    let (_, complete, json) = passes.iter().find(|(p, _, _)| *p == prev)?;
    let summary: PassSummary = serde_json::from_str(json).ok()?;
    let manifest = crate::receive::manifest::pass_path(&ctl.settings.manifest_dir(h.ctid), prev);
    (*complete && summary.scope == pass_scope(excludes, opts) && manifest.is_file())
        .then_some((prev, manifest))
}

/// The job of the migration's next copy pass (its number taken, its progress reset).
pub(crate) fn next_pass_job(
    ctl: &Controller,
    h: &MigrationHandle,
    excludes: &[RelPath],
    opts: &MigrateOptions,
) -> PassJob {
    let pass = h.pass.fetch_add(1, Ordering::Relaxed);
    h.progress.reset();
    *h.pass_started.locked() = Some(Instant::now());
    let limits =
        h.quota.locked().as_ref().map(|q| (q.plan.diskspace.1.saturating_mul(1024), q.plan.diskinodes.1));
    PassJob {
        ctid: h.ctid,
        pass,
        tree: ct_root(ctl, h),
        private_root: ctl.settings.vz_root.join("private"),
        db: ctl.settings.db_path(),
        manifest: crate::receive::manifest::pass_path(&ctl.settings.manifest_dir(h.ctid), pass),
        excludes: excludes.to_vec(),
        keep_xattrs: opts.assess.keep_xattrs,
        dedup: ctl.settings.dedup_scope,
        byte_limit: limits.map(|(b, _)| b),
        inode_limit: limits.map(|(_, i)| i),
        progress: h.progress.clone(),
        changes_offered: None,
        changes: None,
    }
}

/// Records a pass in the store, and in the migration's summary if it completed.
pub(crate) fn record_pass(ctl: &Controller, h: &MigrationHandle, summary: &PassSummary, complete: bool) {
    let json = serde_json::to_string(summary).unwrap_or_default();
    let _ = ctl.store.record_pass(h.ctid, summary.pass, complete, &json);
    if complete {
        h.summary.locked().passes.push(summary.clone());
    }
}

/// Adds what a pass wrote to the files verification must re-read.
fn note_written(h: &MigrationHandle, written: Option<Vec<RelPath>>) {
    let mut w = h.written_since_verify.locked();
    match (w.as_mut(), written) {
        (Some(set), Some(list)) => set.extend(list),
        _ => *w = None,
    }
}

/// Verifies every file's content now (before a cutover stops anything), so that the
/// verification inside the downtime only re-reads what the final pass writes. Files found
/// different lose their record, so the final pass copies them again.
pub(crate) async fn verify_before_cutover(
    ctl: &Controller,
    h: &Arc<MigrationHandle>,
) -> Result<(), MigrateError> {
    let root = ct_root(ctl, h);
    let keep = h.options.locked().assess.keep_xattrs;
    h.log("verifying the container's content before the cutover");
    let v = verify_tree(ctl, h.ctid, &root, Default::default(), keep, None).await?;
    if !v.ok {
        h.log(format!("{} difference(s) found; the final pass copies them again", v.mismatches.len()));
        ctl.store.forget_files(h.ctid, &v.mismatched_paths)?;
    }
    *h.written_since_verify.locked() = Some(v.mismatched_paths.into_iter().collect());
    Ok(())
}

/// The zstd level for an agent's chunks (0: none).
fn zstd_level(ctl: &Controller, conn: &AgentConn) -> i32 {
    use crate::config::Compression;
    match ctl.settings.compression {
        Compression::None => 0,
        Compression::Zstd => ctl.settings.zstd_level,
        Compression::Auto => {
            let local = conn.peer.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
            if local { 0 } else { ctl.settings.zstd_level }
        }
    }
}

/// The agent's session, waiting up to 10 minutes for it to (re)connect.
async fn wait_agent(ctl: &Controller, h: &MigrationHandle) -> Result<Arc<AgentConn>, MigrateError> {
    if let Some(c) = ctl.sessions.get(&h.agent) {
        return Ok(c);
    }
    h.set_waiting(Some(format!("agent {} to connect", h.agent)));
    let conn = ctl.sessions.wait_for(&h.agent, Duration::from_secs(600)).await;
    h.set_waiting(None);
    conn.ok_or_else(|| MigrateError::Pass {
        pass: h.pass.load(Ordering::Relaxed),
        reason: format!("agent {} is not connected and did not come back within 10 minutes", h.agent),
    })
}

/// One of the node's copy slots, queueing (first come, first served) when all are taken.
pub(crate) async fn copy_slot(
    ctl: &Controller,
    h: &MigrationHandle,
) -> Result<OwnedSemaphorePermit, MigrateError> {
    if let Ok(p) = ctl.copy_slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    h.log(format!("waiting for a copy slot (this node runs {} copies at once)", ctl.settings.max_concurrent));
    h.set_waiting(Some("a copy slot".into()));
    let permit = ctl.copy_slots.clone().acquire_owned().await;
    h.set_waiting(None);
    permit.map_err(|_| MigrateError::Other("the controller is shutting down".into()))
}

/// Asks the agent to run the pass and waits for the transfer's outcome, or the reason there
/// is none.
async fn transfer(
    ctl: &Controller,
    h: &MigrationHandle,
    conn: &AgentConn,
    cmd: v1::controller_command::Command,
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
        () = stalled(&h.progress, STALL_TIMEOUT) => {
            let cancel = v1::CancelPass { migration_id: migration_id.to_string() };
            let _ = conn.send(v1::controller_command::Command::CancelPass(cancel)).await;
            // Retried whatever the cancelled transfer says, unless it finished after all.
            return match wind_down(ctl, &mut done, migration_id).await {
                Some(o) if o.error.is_none() => Ok(o),
                _ => Err(format!("no progress for {}s; the pass was cancelled", STALL_TIMEOUT.as_secs())),
            };
        }
    };
    wind_down(ctl, &mut done, migration_id).await.ok_or(why)
}

/// The outcome of a transfer that is ending: one that was opened ends on its own and says
/// what it did (awaited so that no new attempt writes the tree while it still does); one that
/// was not is dropped here, which ends the wait at once.
async fn wind_down(
    ctl: &Controller,
    done: &mut oneshot::Receiver<PassOutcome>,
    migration_id: &str,
) -> Option<PassOutcome> {
    ctl.transfers.locked().remove(migration_id);
    tokio::time::timeout(WIND_DOWN, done).await.ok().and_then(Result::ok)
}

/// Returns once `p` has not moved for `limit`.
async fn stalled(p: &Progress, limit: Duration) {
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

/// The rate the agent paces itself to: this migration's own limit, capped by the node's
/// (which the controller also enforces across all transfers together, see `throttle`).
fn bandwidth(ctl: &Controller, opts: &MigrateOptions) -> u64 {
    match (ctl.settings.node_bwlimit, opts.bwlimit) {
        (0, b) => b,
        (n, 0) => n,
        (n, b) => n.min(b),
    }
}

/// Config, guest rewrite, verification against the last manifest, then quotas.
pub(crate) async fn finalise(
    ctl: &Controller,
    h: &Arc<MigrationHandle>,
    inv: &Inventory,
    opts: &MigrateOptions,
) -> Result<(), MigrateError> {
    let conf = write_conf(ctl, h, inv, opts)?;
    let root = ct_root(ctl, h);
    let changes = crate::preflight::containerise(&root, inv, &conf).map_err(MigrateError::Finalise)?;
    h.log(format!(
        "guest rewritten for a container: {} file(s) changed, backups in /etc/p2c/backup",
        changes.len()
    ));
    let rewritten = changes.iter().filter_map(|c| RelPath::from_user(c.path.as_bytes()).ok()).collect();
    h.summary.locked().guest_changes = changes;
    let only = h.written_since_verify.locked().clone();
    let v = verify_tree(ctl, h.ctid, &root, rewritten, opts.assess.keep_xattrs, only).await?;
    if !v.ok {
        let first = v.mismatches.first().cloned().unwrap_or_default();
        h.summary.locked().verify = Some(v.clone());
        return Err(MigrateError::Finalise(format!(
            "verification found {} difference(s) between the container and the source (first: {first}); run the migration again",
            v.mismatches.len()
        )));
    }
    h.log(format!("verified {} entries against the source manifest", v.checked));
    h.summary.locked().verify = Some(v);
    let tree = crate::tree::Tree::open(&root).map_err(|e| MigrateError::Finalise(e.to_string()))?;
    tokio::task::spawn_blocking(move || rustix::fs::syncfs(tree.root_fd()))
        .await
        .map_err(|e| MigrateError::Finalise(e.to_string()))?
        .map_err(|e| MigrateError::Finalise(format!("sync: {e}")))?;
    apply_quota(ctl, h).await
}

/// Applies the quota plan with the selected method (after unmounting a ploop image).
async fn apply_quota(ctl: &Controller, h: &Arc<MigrationHandle>) -> Result<(), MigrateError> {
    let Some(mut q) = h.quota.locked().take() else { return Ok(()) };
    if let Some(m) = q.mount.take() {
        m.unmount().map_err(|e| MigrateError::Quota(e.to_string()))?;
    }
    let private = ctl.settings.private_dir(h.ctid);
    let ctid = h.ctid;
    let (outcome, q) = tokio::task::spawn_blocking(move || {
        let o = q.selection.backend.apply(ctid, &private, &q.plan);
        (o, q)
    })
    .await
    .map_err(|e| MigrateError::Quota(e.to_string()))?;
    let outcome = outcome.map_err(|e| MigrateError::Quota(e.to_string()))?;
    if outcome.applied {
        h.log(format!("quotas applied by {}", outcome.method.as_str()));
    } else {
        let why = outcome.details.first().cloned().unwrap_or_default();
        h.log(format!("quotas recorded, not enforced: {why}"));
        h.summary.locked().warnings.push(format!("quotas not enforced on this node: {why}"));
    }
    {
        let mut s = h.summary.locked();
        s.quota = serde_json::to_value(&outcome).ok();
        s.warnings.extend(q.plan.warnings.iter().cloned());
    }
    Ok(())
}

/// Verifies a container tree against its last complete manifest.
pub async fn verify_tree(
    ctl: &Controller,
    ctid: u32,
    root: &std::path::Path,
    rewritten: std::collections::HashSet<RelPath>,
    keep_xattrs: bool,
    content_only: Option<std::collections::HashSet<RelPath>>,
) -> Result<VerifySummary, MigrateError> {
    let dir = ctl.settings.manifest_dir(ctid);
    let (_, manifest) = crate::receive::manifest::latest(&dir)
        .ok_or_else(|| MigrateError::Other(format!("CT {ctid} has no complete copy pass to verify")))?;
    let tree = root.to_path_buf();
    let mut own_dirs = vec![crate::tree::rel("etc/p2c")];
    let mut rewritten = rewritten;
    // A ploop image's file system has its own lost+found (mkfs.ext4 makes it), not the
    // source's unless the source sent one (which the manifest then checks as any entry),
    // and its own quota files at its root, written when the quotas are applied.
    if quota::ploop::image_path(&ctl.settings.private_dir(ctid)).exists() {
        own_dirs.push(crate::tree::rel("lost+found"));
        rewritten.extend(["aquota.user", "aquota.group"].map(crate::tree::rel));
    }
    let opts =
        crate::verify::VerifyOptions { rewritten, own_dirs, keep_xattrs, sweep_temps: true, content_only };
    tokio::task::spawn_blocking(move || crate::verify::verify(&tree, &manifest, &opts))
        .await
        .map_err(|e| MigrateError::Other(e.to_string()))?
        .map_err(|e| MigrateError::Other(e.to_string()))
}
