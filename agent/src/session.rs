//! The long-lived session with the controller: dial out, say hello, answer commands,
//! reconnect with backoff when the controller or the link goes away.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use p2c_common::chunking::ChunkParams;
use p2c_common::inventory::MountKind;
use p2c_common::paths::RelPath;
use p2c_proto::v1;
use p2c_proto::v1::agent_session_client::AgentSessionClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::config::AgentSettings;
use crate::connect;
use crate::inventory::mounts::{MountInfo, parse_mountinfo};
use crate::inventory::{self, CollectOptions, FactsFrom};
use crate::track::{self, Tracking};
use crate::upload::{self, PassParams};
use std::os::unix::ffi::OsStrExt;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The directory treated as the server's root.
    pub root: PathBuf,
    pub facts: FactsFrom,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Stop services and run hooks even though the root is a directory, not `/` (the tree's
    /// own init scripts only; for tests and staged trees).
    pub allow_service_control: bool,
    /// Change tracking between passes, kept across sessions.
    pub tracking: Arc<Tracking>,
}

impl RunOptions {
    pub fn new(root: &Path) -> Self {
        let facts = if root == Path::new("/") { FactsFrom::Live } else { FactsFrom::Tree };
        Self {
            root: root.to_path_buf(),
            facts,
            max_backoff: Duration::from_secs(30),
            allow_service_control: false,
            tracking: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error(transparent)]
    Pki(#[from] p2c_common::pki::PkiError),
    #[error("the controller refused the session: {0}")]
    Refused(String),
    #[error("the session broke: {0}")]
    Broken(String),
}

/// Runs until `shutdown` turns true, reconnecting as needed.
pub async fn run(settings: AgentSettings, opts: RunOptions, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let res = tokio::select! {
            r = session(&settings, &opts) => r,
            _ = shutdown.changed() => return,
        };
        match res {
            Ok(()) => info!(agent = %settings.config.name, "session closed by the controller; reconnecting"),
            Err(e) => warn!(agent = %settings.config.name, "{e}; retrying in {:.1}s", backoff.as_secs_f64()),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

/// Mount points below `root` whose file systems are not copied (pseudo and network), from
/// the kernel's mount table, as paths relative to `root`.
pub fn skipped_mounts(root: &Path) -> HashSet<RelPath> {
    skipped_in(&mount_table(root))
}

fn skipped_in(table: &[(RelPath, MountInfo)]) -> HashSet<RelPath> {
    table
        .iter()
        .filter(|(rel, m)| MountKind::of_fs_type(&m.fs_type) != MountKind::Local && !rel.is_root())
        .map(|(rel, _)| rel.clone())
        .collect()
}

/// The kernel's mount table: the mounts at or below `root`, with their paths relative to it.
fn mount_table(root: &Path) -> Vec<(RelPath, MountInfo)> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else { return Vec::new() };
    let root_bytes = root.as_os_str().as_encoded_bytes();
    let rel_of = |mp: &[u8]| {
        let rel = if root_bytes == b"/" {
            mp.strip_prefix(b"/")
        } else if mp == root_bytes {
            Some(&b""[..])
        } else {
            mp.strip_prefix(root_bytes).and_then(|r| r.strip_prefix(b"/"))
        };
        rel.and_then(|r| RelPath::new(r.to_vec()).ok())
    };
    parse_mountinfo(&text).into_iter().filter_map(|m| Some((rel_of(&m.mount_point)?, m))).collect()
}

/// The local file systems below the root that a pass copies, for change tracking.
///
/// The watch stays valid while these mounts stay as they are; pseudo and network file
/// systems coming and going (a login's `/run/user/N`, a container runtime's mounts) do not
/// reset it.
fn tracked_mounts(
    root: &Path,
    table: &[(RelPath, MountInfo)],
    excludes: &[RelPath],
    skipped: &HashSet<RelPath>,
) -> track::Mounts {
    let copied: Vec<&(RelPath, MountInfo)> = table
        .iter()
        .filter(|(_, m)| MountKind::of_fs_type(&m.fs_type) == MountKind::Local)
        .filter(|(rel, _)| !excludes.iter().any(|x| rel.starts_with(x)))
        .filter(|(rel, _)| !skipped.iter().any(|s| rel.starts_with(s)))
        .collect();
    let local = copied
        .iter()
        .filter(|(rel, _)| !rel.is_root())
        .map(|(rel, _)| root.join(std::ffi::OsStr::from_bytes(rel.as_bytes())))
        .collect();
    // Mount point, device and type (mount ids and options may change without the tree).
    let signature = copied
        .iter()
        .map(|(rel, m)| format!("{} {}:{} {}", rel.display(), m.major, m.minor, m.fs_type))
        .collect();
    track::Mounts { local, signature }
}

fn result(id: u64, ok: bool, message: String, payload: Vec<u8>) -> v1::AgentEvent {
    v1::AgentEvent {
        event: Some(v1::agent_event::Event::Result(v1::CommandResult {
            request_id: id,
            ok,
            message,
            payload_json: payload,
        })),
    }
}

async fn session(settings: &AgentSettings, opts: &RunOptions) -> Result<(), SessionError> {
    let tls =
        Arc::new(p2c_common::pki::agent_config(&settings.ca_pem, &settings.cert_pem, &settings.key_pem)?);
    let ch = connect::channel(&settings.config.controller, tls.clone(), settings.proxy()).await?;
    let mut client = client(ch);
    let (tx, rx) = mpsc::channel::<v1::AgentEvent>(64);
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let hello = v1::Hello {
        agent_version: p2c_common::VERSION.to_string(),
        protocol_version: p2c_proto::PROTOCOL_VERSION,
        hostname,
        root: opts.root.as_os_str().as_encoded_bytes().to_vec(),
    };
    let _ = tx.send(v1::AgentEvent { event: Some(v1::agent_event::Event::Hello(hello)) }).await;
    let mut inbound = match client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let why = refusal(&s, &settings.config.controller, tls, settings.proxy()).await;
            return Err(SessionError::Refused(why));
        }
    };
    info!(agent = %settings.config.name, "connected to the controller");
    let mut tick = tokio::time::interval(Duration::from_secs(settings.config.heartbeat_secs.max(1)));
    let mut passes: HashMap<String, watch::Sender<bool>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                let hb = v1::AgentEvent { event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat { sent_unix_ms: ms })) };
                if tx.send(hb).await.is_err() {
                    return Err(SessionError::Broken("outbound closed".into()));
                }
            }
            msg = inbound.next() => {
                let cmd = match msg {
                    None => return Ok(()),
                    Some(Err(s)) => return Err(SessionError::Broken(s.message().to_string())),
                    Some(Ok(c)) => c,
                };
                handle(settings, opts, &client, &tx, &mut passes, cmd);
            }
        }
    }
}

/// Why the controller refused a session, for the operator of the source. A certificate the
/// controller does not accept fails the TLS handshake after the agent sent it (TLS 1.3), so
/// the call itself may only say "transport error" or "operation was canceled": the
/// controller's alert is looked for in the error's sources, then with a bare TLS probe.
pub async fn refusal(
    s: &tonic::Status,
    addrs: &[String],
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<String>,
) -> String {
    if let Some(hint) = certificate_hint(&connect::error_chain(s)) {
        return hint.into();
    }
    if matches!(s.code(), tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Unavailable) {
        for addr in addrs {
            if let Some(hint) = connect::tls_probe(addr, tls.clone(), proxy.as_deref())
                .await
                .as_deref()
                .and_then(certificate_hint)
            {
                return hint.into();
            }
        }
    }
    s.message().to_string()
}

/// What to do about a TLS alert the controller sent about this agent's certificate.
fn certificate_hint(error: &str) -> Option<&'static str> {
    if error.contains("CertificateRevoked") {
        return Some(
            "the controller revoked this agent's certificate; enrol it again with a new token \
             (`p2c token create NAME` on the node, then `p2c-agent enroll`)",
        );
    }
    if ["UnknownCA", "BadCertificate", "DecryptError", "CertificateUnknown"].iter().any(|a| error.contains(a))
    {
        return Some(
            "the controller does not accept this agent's certificate (it was not issued by this \
             controller's CA); enrol the agent with a token from this controller",
        );
    }
    None
}

fn client(ch: Channel) -> AgentSessionClient<Channel> {
    let max = p2c_common::manifest::limits::MAX_MESSAGE;
    AgentSessionClient::new(ch).max_decoding_message_size(max).max_encoding_message_size(max)
}

fn handle(
    settings: &AgentSettings,
    opts: &RunOptions,
    client: &AgentSessionClient<Channel>,
    tx: &mpsc::Sender<v1::AgentEvent>,
    passes: &mut HashMap<String, watch::Sender<bool>>,
    cmd: v1::ControllerCommand,
) {
    let id = cmd.request_id;
    let tx = tx.clone();
    match cmd.command {
        Some(v1::controller_command::Command::Inventory(_)) => {
            let copts = CollectOptions { root: opts.root.clone(), facts: opts.facts };
            tokio::spawn(async move {
                let inv =
                    tokio::task::spawn_blocking(move || inventory::collect(&copts)).await.unwrap_or_default();
                let json = serde_json::to_vec(&inv).unwrap_or_default();
                let ev = v1::AgentEvent {
                    event: Some(v1::agent_event::Event::Inventory(v1::InventoryReport {
                        request_id: id,
                        inventory_json: json,
                    })),
                };
                let _ = tx.send(ev).await;
            });
        }
        Some(v1::controller_command::Command::StartPass(sp)) => {
            let chunking = sp.chunking.and_then(|c| ChunkParams::try_from(c).ok()).unwrap_or_default();
            let mut excludes: Vec<RelPath> =
                sp.excludes.into_iter().filter_map(|x| RelPath::new(x).ok()).collect();
            // Never copy the agent's own identity into the container.
            if let Ok(state) = settings.paths.dir.canonicalize()
                && let Ok(rel) = state.strip_prefix(&opts.root)
                && let Ok(p) = RelPath::new(rel.as_os_str().as_encoded_bytes().to_vec())
                && !p.is_root()
            {
                excludes.push(p);
            }
            let safe_id: String = sp
                .migration_id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                .take(64)
                .collect();
            let table = mount_table(&opts.root);
            let no_descend = skipped_in(&table);
            let mounts = tracked_mounts(&opts.root, &table, &excludes, &no_descend);
            let params = PassParams {
                migration_id: sp.migration_id.clone(),
                pass: sp.pass,
                root: opts.root.clone(),
                excludes,
                no_descend,
                bwlimit: sp.bwlimit,
                zstd_level: sp.zstd_level.clamp(-7, 19),
                chunking,
                cache_path: settings.paths.cache_dir().join(format!(
                    "{safe_id}-{}-{}-{}.cache",
                    chunking.min_size, chunking.avg_size, chunking.max_size
                )),
            };
            let (cancel_tx, cancel_rx) = watch::channel(false);
            if let Some(old) = passes.insert(sp.migration_id.clone(), cancel_tx) {
                let _ = old.send(true);
            }
            let client = client.clone();
            let tracking = opts.tracking.clone();
            let (since, track) = (sp.changes_since, sp.track_changes);
            tokio::spawn(async move {
                let (mid, pass) = (params.migration_id.clone(), params.pass);
                let prep = {
                    let (tracking, params) = (tracking.clone(), params.clone());
                    tokio::task::spawn_blocking(move || {
                        let opts = upload::walk_options(&params, true);
                        tracking.prepare(&params.migration_id, since, &params.root, mounts, &opts, track)
                    })
                    .await
                };
                let prep = prep.unwrap_or_default();
                let r = upload::run_pass(client, params, prep.listing, cancel_rx).await;
                if let (Ok(_), Some(e)) = (&r, prep.epoch) {
                    tracking.complete(&mid, pass, e);
                }
                let ev = match r {
                    Ok(rep) => {
                        result(id, true, "pass finished".into(), serde_json::to_vec(&rep).unwrap_or_default())
                    }
                    Err(e) => result(id, false, e.to_string(), Vec::new()),
                };
                let _ = tx.send(ev).await;
            });
        }
        Some(v1::controller_command::Command::CancelPass(c)) => {
            if let Some(t) = passes.remove(&c.migration_id) {
                let _ = t.send(true);
            }
            tokio::spawn(async move {
                let _ = tx.send(result(id, true, "cancelled".into(), Vec::new())).await;
            });
        }
        Some(v1::controller_command::Command::Scan(req)) => {
            let root = opts.root.clone();
            tokio::spawn(async move {
                let ev = match p2c_common::scan::ScanOptions::try_from(req) {
                    Err(e) => result(id, false, format!("invalid scan request: {e}"), Vec::new()),
                    Ok(o) => {
                        let r = tokio::task::spawn_blocking(move || crate::scan::scan(&root, &o)).await;
                        match r {
                            Ok(r) => match r.to_json() {
                                Ok(j) => result(id, true, "scanned".into(), j),
                                Err(e) => result(id, false, format!("scan result: {e}"), Vec::new()),
                            },
                            Err(e) => result(id, false, format!("scan failed: {e}"), Vec::new()),
                        }
                    }
                };
                let _ = tx.send(ev).await;
            });
        }
        Some(v1::controller_command::Command::StopServices(req)) => {
            let (root, allow) = (opts.root.clone(), opts.allow_service_control);
            tokio::spawn(async move {
                let (ok, msg, payload) = match crate::services::refusal(&root, allow) {
                    Some(why) => (false, why, Vec::new()),
                    None => crate::services::stop_services(&root, &req.services, req.start).await,
                };
                let _ = tx.send(result(id, ok, msg, payload)).await;
            });
        }
        Some(v1::controller_command::Command::RunHook(req)) => {
            let (root, allow) = (opts.root.clone(), opts.allow_service_control);
            tokio::spawn(async move {
                let (ok, msg, payload) = match crate::services::refusal(&root, allow) {
                    Some(why) => (false, why, Vec::new()),
                    None => crate::services::hook::run_hook(&root, &req.command, req.timeout_secs).await,
                };
                let _ = tx.send(result(id, ok, msg, payload)).await;
            });
        }
        Some(v1::controller_command::Command::Ping(_)) => {
            tokio::spawn(async move {
                let _ = tx.send(result(id, true, "pong".into(), Vec::new())).await;
            });
        }
        None => {
            tokio::spawn(async move {
                let _ = tx
                    .send(result(id, false, "this agent does not support that command".into(), Vec::new()))
                    .await;
            });
        }
    }
}
