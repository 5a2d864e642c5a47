//! What every part of the controller shares: the settings, the store, the node's PKI, the
//! connected agents, the migration registry, the copy slots and the node-wide throttle.
//!
//! This module is the bottom of the service layer: the drivers (`migrate`, `cutover`,
//! `import`, `preflight`) and the adapters (`session`, `admin`, `enroll`, `server`) depend on
//! it, and it depends on none of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use p2c_common::pki::{self, RevocationCheck};
use p2c_common::sync::{Locked, RwLocked};
use tokio::sync::Semaphore;
use tracing::info;

use crate::config::Settings;
use crate::init::{InitError, NodePki};
use crate::link::Sessions;
use crate::migration::{Claim, Registry};
use crate::platform::{Marks, NodeTarget};
use crate::receive::{PassJob, PassOutcome};
use crate::state::{Store, StoreError};
use crate::throttle::NodeThrottle;

/// Why the controller's shared state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// Fingerprints of revoked agent certificates, checked at every TLS handshake.
#[derive(Debug, Default)]
pub struct Revoked(RwLock<HashSet<String>>);

impl Revoked {
    pub fn add(&self, fps: impl IntoIterator<Item = String>) {
        self.0.write_locked().extend(fps);
    }
}

impl RevocationCheck for Revoked {
    fn is_revoked(&self, fingerprint: &str) -> bool {
        self.0.read_locked().contains(fingerprint)
    }
}

/// A pass the controller waits for an agent to open.
pub struct TransferSlot {
    pub agent: String,
    pub pass: u32,
    pub job: PassJob,
    pub done: tokio::sync::oneshot::Sender<PassOutcome>,
}

pub struct Inner {
    pub settings: Settings,
    /// The platform containers are made for unless a migration names another.
    pub node_target: NodeTarget,
    pub store: Store,
    pub pki: NodePki,
    pub revoked: Arc<Revoked>,
    pub sessions: Sessions,
    /// Passes waiting for their agent to open the transfer, by migration id.
    pub transfers: Mutex<HashMap<String, TransferSlot>>,
    pub migrations: Registry,
    /// Copy slots: at most `max_concurrent` migrations transfer at once.
    pub copy_slots: Arc<Semaphore>,
    /// The node-wide bandwidth cap every transfer shares.
    pub throttle: Arc<NodeThrottle>,
    /// Background work (migration drivers), stopped with the controller.
    background: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The controller's shared state; cheap to clone.
#[derive(Clone)]
pub struct Controller(pub Arc<Inner>);

impl std::ops::Deref for Controller {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Controller {
    pub fn new(settings: Settings) -> Result<Controller, OpenError> {
        let store = Store::open(&settings.db_path())?;
        let pki = NodePki::load(&settings)?;
        let revoked = Arc::new(Revoked::default());
        revoked.add(store.revoked_fingerprints()?);
        let copy_slots = Arc::new(Semaphore::new(settings.max_concurrent));
        let throttle = Arc::new(NodeThrottle::new(settings.node_bwlimit));
        let node_target = crate::platform::resolve(settings.target, &Marks::read(std::path::Path::new("/")));
        info!(target = %node_target.target, evidence = %node_target.evidence, "containers are made for this platform");
        Ok(Controller(Arc::new(Inner {
            node_target,
            settings,
            store,
            pki,
            revoked,
            sessions: Sessions::default(),
            transfers: Mutex::new(HashMap::new()),
            migrations: Registry::default(),
            copy_slots,
            throttle,
            background: Mutex::new(Vec::new()),
        })))
    }

    /// Revokes an agent: its certificates, its live session, its running transfers.
    pub fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        if !self.store.revoke_agent(name)? {
            return Ok(false);
        }
        self.revoked.add(self.store.revoked_fingerprints()?);
        self.sessions.close(name);
        self.transfers.locked().retain(|_, s| s.agent != name);
        info!(agent = name, "agent revoked");
        Ok(true)
    }

    /// What a new migration of `ctid` must not find on the node.
    pub fn claim(&self, ctid: u32) -> Claim<'_> {
        Claim {
            store: &self.store,
            private_dir: self.settings.private_dir(ctid),
            conf_path: self.settings.conf_path(ctid),
        }
    }

    /// Runs `task` in the background until it ends or the controller stops.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let t = tokio::spawn(task);
        let mut bg = self.background.locked();
        bg.retain(|h| !h.is_finished());
        bg.push(t.abort_handle());
    }

    /// Stops every background task at once (as a crash would, for tests) and ends every
    /// session and waiting transfer.
    pub fn abort_all(&self) {
        for t in self.background.locked().drain(..) {
            t.abort();
        }
        self.transfers.locked().clear();
        self.sessions.close_all();
    }
}
