//! The connected agents, in domain terms: who is connected, the commands the controller
//! sends them and their answers. The gRPC session (`crate::session`) turns these into wire
//! messages and back; nothing here knows about prost or tonic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2c_common::chunking::ChunkParams;
use p2c_common::paths::RelPath;
use p2c_common::scan::ScanOptions;
use p2c_common::sync::Locked;
use tokio::sync::{mpsc, oneshot, watch};

/// What the controller asks an agent to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Inventory,
    Scan(ScanOptions),
    StartPass(StartPass),
    CancelPass {
        migration_id: String,
    },
    /// Stop these services (or start them again).
    Services {
        services: Vec<String>,
        start: bool,
    },
    RunHook {
        command: String,
        timeout_secs: u32,
    },
}

/// A copy pass the agent is asked to open a transfer for.
#[derive(Clone, Debug, PartialEq)]
pub struct StartPass {
    /// What the agent echoes when it opens the transfer.
    pub migration_id: String,
    pub pass: u32,
    pub excludes: Vec<RelPath>,
    /// Bytes per second the agent may send, 0 for no limit.
    pub bwlimit: u64,
    pub chunking: ChunkParams,
    /// zstd level for chunk data, 0 for none.
    pub zstd_level: i32,
    /// The complete earlier pass the agent may list changes against.
    pub changes_since: Option<u32>,
    /// Keep watching the source for changes after this pass.
    pub track_changes: bool,
}

/// How an agent answered a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResult {
    pub ok: bool,
    pub message: String,
    /// Structured data (a scan, a services report), as JSON.
    pub payload_json: Vec<u8>,
}

/// What an agent answered.
#[derive(Debug)]
pub enum AgentReply {
    /// The inventory as JSON, unparsed (the caller checks it).
    Inventory(Vec<u8>),
    Result(CommandResult),
}

/// What an agent said about itself when it connected (already bounded in size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub agent_version: String,
    pub hostname: String,
    pub root: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("agent {0} is not connected; start `p2c-agent run` on the source (see `p2c agents`)")]
    NotConnected(String),
    #[error("agent {0} disconnected before answering")]
    Disconnected(String),
    #[error("agent {0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

/// A command on its way to an agent, with its request id.
pub type Outgoing = (u64, Command);

/// One connected agent.
pub struct AgentConn {
    pub name: String,
    pub id: u64,
    pub peer: String,
    pub hello: Hello,
    pub connected_unix: u64,
    tx: mpsc::Sender<Outgoing>,
    pending: Mutex<HashMap<u64, oneshot::Sender<AgentReply>>>,
    next: AtomicU64,
    close: watch::Sender<bool>,
}

impl AgentConn {
    /// A session for agent `name`; what is sent to it comes out of the returned receiver.
    pub fn new(
        name: String,
        id: u64,
        peer: String,
        hello: Hello,
    ) -> (Arc<AgentConn>, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(64);
        let (close, _) = watch::channel(false);
        let conn = AgentConn {
            name,
            id,
            peer,
            hello,
            connected_unix: crate::state::now(),
            tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            close,
        };
        (Arc::new(conn), rx)
    }

    /// Sends a command and returns the request id and a receiver for its answer.
    pub async fn send(&self, cmd: Command) -> Result<(u64, oneshot::Receiver<AgentReply>), CallError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.locked().insert(id, tx);
        if self.tx.send((id, cmd)).await.is_err() {
            self.pending.locked().remove(&id);
            return Err(CallError::Disconnected(self.name.clone()));
        }
        Ok((id, rx))
    }

    /// Sends a command and waits for the answer.
    pub async fn call(&self, cmd: Command, timeout: Duration) -> Result<AgentReply, CallError> {
        let (id, rx) = self.send(cmd).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Disconnected(self.name.clone())),
            Err(_) => {
                self.pending.locked().remove(&id);
                Err(CallError::Timeout(self.name.clone(), timeout))
            }
        }
    }

    /// Hands an answer to whoever waits for request `id`.
    pub fn resolve(&self, id: u64, reply: AgentReply) {
        if let Some(tx) = self.pending.locked().remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// A receiver that turns true when this session ends.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.close.subscribe()
    }

    /// True when the agent is on loopback (chunks then travel uncompressed by default).
    pub fn is_local(&self) -> bool {
        self.peer.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
    }

    /// Ends the session: waiters get `Disconnected`.
    pub fn close(&self) {
        // Kept even when nobody watches yet: a later `closed()` must see it.
        self.close.send_replace(true);
        self.pending.locked().clear();
    }
}

/// Connected agents by name.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<AgentConn>>>,
    next_id: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Sessions {
    pub fn get(&self, name: &str) -> Option<Arc<AgentConn>> {
        self.map.locked().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.map.locked().keys().cloned().collect()
    }

    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `conn` the agent's session, closing the one it replaces.
    pub fn insert(&self, conn: Arc<AgentConn>) {
        if let Some(old) = self.map.locked().insert(conn.name.clone(), conn) {
            old.close();
        }
        self.changed.notify_waiters();
    }

    /// Removes `conn` if it is still the agent's session, and closes it.
    pub fn remove(&self, conn: &AgentConn) {
        {
            let mut map = self.map.locked();
            if map.get(&conn.name).is_some_and(|c| c.id == conn.id) {
                map.remove(&conn.name);
            }
        }
        conn.close();
        self.changed.notify_waiters();
    }

    pub fn close(&self, name: &str) {
        if let Some(c) = self.map.locked().remove(name) {
            c.close();
        }
        self.changed.notify_waiters();
    }

    pub fn close_all(&self) {
        for (_, c) in self.map.locked().drain() {
            c.close();
        }
    }

    /// Waits until `name` is connected, up to `timeout`.
    pub async fn wait_for(&self, name: &str, timeout: Duration) -> Option<Arc<AgentConn>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(c) = self.get(name) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_is_answered_by_its_request_id() {
        let (conn, mut rx) = AgentConn::new("web01".into(), 1, "127.0.0.1:5".into(), Hello::default());
        let c = conn.clone();
        let call = tokio::spawn(async move { c.call(Command::Inventory, Duration::from_secs(5)).await });
        let (id, cmd) = rx.recv().await.unwrap();
        assert_eq!(cmd, Command::Inventory);
        conn.resolve(id + 1, AgentReply::Inventory(b"wrong id".to_vec()));
        conn.resolve(id, AgentReply::Inventory(b"{}".to_vec()));
        assert!(matches!(call.await.unwrap(), Ok(AgentReply::Inventory(j)) if j == b"{}"));
        assert!(conn.is_local());
    }

    #[tokio::test]
    async fn a_closed_session_fails_its_waiting_calls_and_a_new_one_replaces_the_old() {
        let sessions = Sessions::default();
        let (old, _rx1) =
            AgentConn::new("web01".into(), sessions.next_id(), "[::1]:1".into(), Hello::default());
        sessions.insert(old.clone());
        let o = old.clone();
        let call = tokio::spawn(async move { o.call(Command::Inventory, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        let (new, _rx2) =
            AgentConn::new("web01".into(), sessions.next_id(), "10.0.0.1:1".into(), Hello::default());
        sessions.insert(new.clone());
        assert!(*old.closed().borrow());
        assert!(matches!(call.await.unwrap(), Err(CallError::Disconnected(_))));
        // The old session ending later does not remove the new one.
        sessions.remove(&old);
        assert_eq!(sessions.get("web01").map(|c| c.id), Some(new.id));
        assert!(!new.is_local());
    }

    #[tokio::test]
    async fn waiting_for_an_agent_ends_when_it_connects() {
        let sessions = Arc::new(Sessions::default());
        let s = sessions.clone();
        let wait =
            tokio::spawn(async move { s.wait_for("db01", Duration::from_secs(5)).await.map(|c| c.id) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (c, _rx) = AgentConn::new("db01".into(), 42, String::new(), Hello::default());
        sessions.insert(c);
        assert_eq!(wait.await.unwrap(), Some(42));
        assert!(sessions.wait_for("nobody", Duration::from_millis(10)).await.is_none());
    }
}
