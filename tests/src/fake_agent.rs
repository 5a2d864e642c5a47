//! A hostile agent with a valid certificate: it enrols for real and holds a real mTLS session,
//! but every copy pass it runs is scripted by the test, message by message.
//!
//! [`FakeAgent`] answers the controller's inventory request with a minimal valid inventory and
//! its scan request with a failure (the report is not under test), and hands each `StartPass`
//! to the test ([`FakeAgent::next_pass`]). The test then either sends a scripted list of
//! `TransferUp` messages ([`FakeAgent::transfer`]) or serves an honest pass of a small
//! in-memory tree ([`FakeAgent::serve`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use p2c_common::inventory::{INVENTORY_SCHEMA, Inventory};
use p2c_common::manifest::{ChunkRef, ContentHasher, Hash32};
use p2c_proto::v1;
use p2c_proto::v1::agent_session_client::AgentSessionClient;
use tokio::sync::{Mutex, mpsc};
use tonic::transport::Channel;

use crate::node::Node;

/// How long a scripted transfer may take before the test calls it a hang.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

/// A `StartPass` the controller sent, with the request id to answer it under.
#[derive(Clone, Debug)]
pub struct Pass {
    pub request_id: u64,
    pub start: v1::StartPass,
}

impl Pass {
    /// The `Open` message of this pass.
    pub fn open(&self) -> v1::TransferUp {
        up(v1::transfer_up::Msg::Open(v1::OpenTransfer {
            migration_id: self.start.migration_id.clone(),
            pass: self.start.pass,
            ..Default::default()
        }))
    }
}

/// One step of a scripted transfer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Send a message.
    Send(v1::TransferUp),
    /// Wait for the controller's next `NeedChunks` (as an honest agent does before sending
    /// chunk data; a chunk sent before it is requested is refused).
    AwaitNeed,
}

impl From<v1::TransferUp> for Step {
    fn from(m: v1::TransferUp) -> Step {
        Step::Send(m)
    }
}

/// What came back on a transfer: every message, and the status that ended it (if it ended
/// with an error, or the RPC was refused outright).
#[derive(Debug, Default)]
pub struct TransferOutcome {
    pub downs: Vec<v1::TransferDown>,
    pub status: Option<tonic::Status>,
}

impl TransferOutcome {
    /// The pass result, if the controller sent one.
    pub fn result(&self) -> Option<&v1::PassResult> {
        self.downs.iter().find_map(|d| match &d.msg {
            Some(v1::transfer_down::Msg::Result(r)) => Some(r),
            _ => None,
        })
    }

    /// True when the transfer failed: an error status, or a result that is not ok.
    pub fn failed(&self) -> bool {
        self.status.is_some() || self.result().is_some_and(|r| !r.ok)
    }

    /// The controller's error text (status message or failed result's message).
    pub fn error(&self) -> String {
        match (&self.status, self.result()) {
            (Some(s), _) => format!("{:?}: {}", s.code(), s.message()),
            (None, Some(r)) if !r.ok => r.message.clone(),
            _ => String::new(),
        }
    }
}

/// One object of an honest in-memory source tree.
#[derive(Clone, Debug)]
pub struct FakeEntry {
    pub entry: v1::Entry,
    /// The file's data, for regular files (one chunk).
    pub data: Vec<u8>,
}

/// Wraps a message.
pub fn up(msg: v1::transfer_up::Msg) -> v1::TransferUp {
    v1::TransferUp { msg: Some(msg) }
}

fn meta(path: &[u8], kind: v1::EntryKind, mode: u32) -> v1::Entry {
    v1::Entry { path: path.to_vec(), kind: kind as i32, mode, mtime_sec: 1_700_000_000, ..Default::default() }
}

/// A directory entry.
pub fn dir(path: &[u8], mode: u32) -> v1::Entry {
    meta(path, v1::EntryKind::Directory, mode)
}

/// A symlink entry.
pub fn symlink(path: &[u8], target: &[u8]) -> v1::Entry {
    let mut e = meta(path, v1::EntryKind::Symlink, 0o777);
    e.target = target.to_vec();
    e
}

/// A hard link to an earlier entry.
pub fn hardlink(path: &[u8], target: &[u8]) -> v1::Entry {
    let mut e = meta(path, v1::EntryKind::Hardlink, 0);
    e.target = target.to_vec();
    e
}

/// A character device node.
pub fn char_device(path: &[u8], mode: u32, major: u32, minor: u32) -> v1::Entry {
    let mut e = meta(path, v1::EntryKind::CharDevice, mode);
    e.rdev_major = major;
    e.rdev_minor = minor;
    e
}

/// A regular file of one chunk holding `data`, with a correct chunk list and digest.
pub fn file(path: &[u8], mode: u32, data: &[u8]) -> v1::Entry {
    let mut e = meta(path, v1::EntryKind::Regular, mode);
    e.size = data.len() as u64;
    let chunks: Vec<ChunkRef> = if data.is_empty() {
        Vec::new()
    } else {
        vec![ChunkRef { hash: Hash32::of(data), offset: 0, len: data.len() as u32 }]
    };
    e.content_digest = ContentHasher::digest(e.size, &chunks).0.to_vec();
    e.chunks = chunks
        .iter()
        .map(|c| v1::ChunkRef { hash: c.hash.0.to_vec(), offset: c.offset, len: c.len })
        .collect();
    e
}

/// Data no other file on the node holds (so the controller cannot copy it locally and must
/// ask for it).
pub fn unique_data(label: &str) -> Vec<u8> {
    format!("{label} {}\n", p2c_common::token::random_hex(16)).into_bytes()
}

/// An `EntryBatch` message.
pub fn batch(seq: u64, entries: Vec<v1::Entry>) -> v1::TransferUp {
    up(v1::transfer_up::Msg::Batch(v1::EntryBatch { seq, entries }))
}

/// A `ChunkData` message, zstd-compressed or plain.
pub fn chunk(seq: u64, index: u32, data: &[u8], compressed: bool) -> v1::TransferUp {
    let data = if compressed { zstd::bulk::compress(data, 3).unwrap_or_default() } else { data.to_vec() };
    up(v1::transfer_up::Msg::Chunk(v1::ChunkData {
        seq,
        index,
        data: data.into(),
        compressed,
        ..Default::default()
    }))
}

/// A `PassDone` message.
pub fn done() -> v1::TransferUp {
    up(v1::transfer_up::Msg::Done(v1::PassDone::default()))
}

/// A minimal inventory the controller accepts.
pub fn minimal_inventory(hostname: &str) -> Inventory {
    Inventory {
        schema: INVENTORY_SCHEMA,
        facts_from: "tree".into(),
        root: "/".into(),
        hostname: hostname.into(),
        cpus: 1,
        memory_bytes: 512 << 20,
        ..Default::default()
    }
}

/// An enrolled agent whose copy passes the test scripts.
pub struct FakeAgent {
    pub name: String,
    pub state: tempfile::TempDir,
    client: AgentSessionClient<Channel>,
    /// Keeps the session's request stream open.
    _events: mpsc::Sender<v1::AgentEvent>,
    session_events: mpsc::Sender<v1::AgentEvent>,
    passes: Mutex<mpsc::UnboundedReceiver<Pass>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    /// Enrols `name` with a fresh token of `node` and opens its session.
    pub async fn enroll(node: &Node, name: &str) -> anyhow::Result<FakeAgent> {
        let state = tempfile::Builder::new().prefix("p2c-fake-agent").tempdir()?;
        p2c_agent::enroll::enroll(p2c_agent::enroll::EnrollOptions {
            token: &node.token(name, 600),
            state_dir: state.path(),
            controller: Vec::new(),
            proxy: None,
        })
        .await
        .with_context(|| format!("enrolling fake agent {name}"))?;
        let agent = Self::connect(state, name).await?;
        node.wait_connected(name, Duration::from_secs(20)).await?;
        Ok(agent)
    }

    /// A channel with the agent's real identity (state dir written by enrolment).
    pub async fn channel(state: &Path) -> anyhow::Result<Channel> {
        let s = p2c_agent::config::AgentSettings::load(state)?;
        let tls = Arc::new(p2c_common::pki::agent_config(&s.ca_pem, &s.cert_pem, &s.key_pem)?);
        Ok(p2c_agent::connect::channel(&s.config.controller, tls, None).await?)
    }

    async fn connect(state: tempfile::TempDir, name: &str) -> anyhow::Result<FakeAgent> {
        let ch = Self::channel(state.path()).await?;
        // No size limit on what this agent sends: the controller must enforce its own.
        let mut client = AgentSessionClient::new(ch)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(p2c_common::manifest::limits::MAX_MESSAGE);
        let (tx, rx) = mpsc::channel::<v1::AgentEvent>(64);
        let hello = v1::Hello {
            agent_version: p2c_common::VERSION.into(),
            protocol_version: p2c_proto::PROTOCOL_VERSION,
            hostname: format!("{name}.fake"),
            root: b"/".to_vec(),
        };
        tx.send(v1::AgentEvent { event: Some(v1::agent_event::Event::Hello(hello)) }).await?;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("session refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let (pass_tx, pass_rx) = mpsc::unbounded_channel();
        let events = tx.clone();
        let hostname = format!("{name}.fake");
        let task = tokio::spawn(async move {
            while let Some(Ok(cmd)) = inbound.next().await {
                let id = cmd.request_id;
                let reply = match cmd.command {
                    Some(v1::controller_command::Command::Inventory(_)) => {
                        let json = serde_json::to_vec(&minimal_inventory(&hostname)).unwrap_or_default();
                        v1::agent_event::Event::Inventory(v1::InventoryReport {
                            request_id: id,
                            inventory_json: json,
                        })
                    }
                    Some(v1::controller_command::Command::StartPass(start)) => {
                        let _ = pass_tx.send(Pass { request_id: id, start });
                        continue;
                    }
                    Some(v1::controller_command::Command::Scan(_)) => {
                        result(id, false, "the fake agent does not scan")
                    }
                    Some(v1::controller_command::Command::Ping(_))
                    | Some(v1::controller_command::Command::CancelPass(_))
                    | Some(v1::controller_command::Command::StopServices(_)) => result(id, true, "ok"),
                    _ => result(id, false, "not supported by the fake agent"),
                };
                if events.send(v1::AgentEvent { event: Some(reply) }).await.is_err() {
                    return;
                }
            }
        });
        Ok(FakeAgent {
            name: name.into(),
            state,
            client,
            session_events: tx.clone(),
            _events: tx,
            passes: Mutex::new(pass_rx),
            task,
        })
    }

    /// The session client on the agent's own connection (for raw RPCs).
    pub fn client(&self) -> AgentSessionClient<Channel> {
        self.client.clone()
    }

    /// Waits for the controller's next `StartPass`.
    pub async fn next_pass(&self, timeout: Duration) -> anyhow::Result<Pass> {
        let mut rx = self.passes.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => bail!("fake agent {}: the session ended before a pass was started", self.name),
            Err(_) => bail!("fake agent {}: no StartPass within {timeout:?}", self.name),
        }
    }

    /// A `StartPass` that arrived already, if any (the controller asked again).
    pub async fn pending_pass(&self) -> Option<Pass> {
        self.passes.lock().await.try_recv().ok()
    }

    /// Answers a pass's command on the session (as the real agent does after its transfer).
    pub async fn report(&self, pass: &Pass, ok: bool, message: &str) {
        let _ = self
            .session_events
            .send(v1::AgentEvent { event: Some(result(pass.request_id, ok, message)) })
            .await;
    }

    /// Opens a transfer by hand: the sender for what the agent says next, and the stream of
    /// what the controller answers.
    pub async fn open(
        &self,
        pass: &Pass,
    ) -> anyhow::Result<(mpsc::Sender<v1::TransferUp>, tonic::Streaming<v1::TransferDown>)> {
        let (tx, rx) = mpsc::channel::<v1::TransferUp>(16);
        tx.send(pass.open()).await?;
        let mut client = self.client.clone();
        let inbound = client
            .transfer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("transfer refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok((tx, inbound))
    }

    /// Opens a transfer and sends `msgs` in order without waiting for answers; see
    /// [`FakeAgent::transfer_steps`].
    pub async fn transfer(&self, msgs: Vec<v1::TransferUp>) -> TransferOutcome {
        self.transfer_steps(msgs.into_iter().map(Step::Send).collect()).await
    }

    /// Opens a transfer and runs `steps`, then reads what comes back until the controller
    /// ends the stream (or [`TRANSFER_TIMEOUT`]). The request stream stays open until then,
    /// so the controller never sees the agent close it early.
    pub async fn transfer_steps(&self, steps: Vec<Step>) -> TransferOutcome {
        let (tx, rx) = mpsc::channel(steps.len().max(1));
        let mut steps = steps.into_iter().peekable();
        // Queue what precedes the first wait: the controller answers only once Open is in.
        while let Some(Step::Send(_)) = steps.peek() {
            if let Some(Step::Send(m)) = steps.next() {
                let _ = tx.try_send(m);
            }
        }
        let mut out = TransferOutcome::default();
        let mut client = self.client.clone();
        let call = tokio::time::timeout(
            TRANSFER_TIMEOUT,
            client.transfer(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut inbound = match call {
            Err(_) => {
                out.status = Some(tonic::Status::deadline_exceeded("the controller did not answer Open"));
                return out;
            }
            Ok(Err(s)) => {
                out.status = Some(s);
                return out;
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
        let mut waiting = false;
        loop {
            // Run the steps up to the next wait.
            while !waiting {
                match steps.next() {
                    Some(Step::Send(m)) => {
                        let _ = tx.try_send(m);
                    }
                    Some(Step::AwaitNeed) => waiting = true,
                    None => break,
                }
            }
            match tokio::time::timeout_at(deadline, inbound.next()).await {
                Err(_) => {
                    out.status = Some(tonic::Status::deadline_exceeded(format!(
                        "the transfer did not end within {TRANSFER_TIMEOUT:?} (controller hangs?)"
                    )));
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(s))) => {
                    out.status = Some(s);
                    break;
                }
                Ok(Some(Ok(m))) => {
                    if matches!(m.msg, Some(v1::transfer_down::Msg::Need(_))) {
                        waiting = false;
                    }
                    out.downs.push(m);
                }
            }
        }
        drop(tx);
        out
    }

    /// Runs an honest pass of `tree` (in walk order): one batch, the chunks the controller
    /// asks for, then Done; reports the outcome on the session like the real agent.
    pub async fn serve(&self, pass: &Pass, tree: &[FakeEntry]) -> anyhow::Result<v1::PassResult> {
        let (tx, mut inbound) = self.open(pass).await?;
        tx.send(batch(0, tree.iter().map(|e| e.entry.clone()).collect())).await?;
        // Chunk index → data, in batch order.
        let datas: Vec<&[u8]> =
            tree.iter().filter(|e| !e.entry.chunks.is_empty()).map(|e| &e.data[..]).collect();
        let mut done_sent = false;
        let mut written = false;
        let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
        let result = loop {
            if written && !done_sent {
                tx.send(done()).await?;
                done_sent = true;
            }
            let msg = tokio::time::timeout_at(deadline, inbound.next())
                .await
                .context("honest pass did not finish in time")?;
            match msg {
                None => bail!("the controller ended the transfer without a result"),
                Some(Err(s)) => bail!("honest pass failed: {:?}: {}", s.code(), s.message()),
                Some(Ok(m)) => match m.msg {
                    Some(v1::transfer_down::Msg::Need(n)) => {
                        for i in n.indexes {
                            let data = datas
                                .get(i as usize)
                                .context("controller asked for a chunk index out of range")?;
                            tx.send(chunk(n.seq, i, data, true)).await?;
                        }
                    }
                    Some(v1::transfer_down::Msg::Written(_)) => written = true,
                    Some(v1::transfer_down::Msg::Result(r)) => break r,
                    None => {}
                },
            }
        };
        // Let the stream end before answering, as the controller expects the transfer first.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), inbound.next()).await {}
        self.report(pass, result.ok, &result.message).await;
        Ok(result)
    }
}

fn result(id: u64, ok: bool, message: &str) -> v1::agent_event::Event {
    v1::agent_event::Event::Result(v1::CommandResult {
        request_id: id,
        ok,
        message: message.into(),
        payload_json: Vec::new(),
    })
}

/// An honest tree: `entries` with the data of their regular files.
pub fn tree(entries: Vec<(v1::Entry, Vec<u8>)>) -> Vec<FakeEntry> {
    entries.into_iter().map(|(entry, data)| FakeEntry { entry, data }).collect()
}
