//! A real controller and real agents for tests: the node's state in a temp dir, the
//! agent endpoint on 127.0.0.1 with mTLS, the admin API on its Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use p2c_common::migration::{MigrateOptions, MigrationSummary, StatusEntry};
use p2c_controller::config::Settings;
use p2c_controller::server::{Running, start};
use p2c_proto::v1;
use p2c_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// What [`Node::start_with`] changes from the defaults.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Listen address (default `127.0.0.1:0`); with port 0 the kernel picks one.
    pub listen: Option<String>,
    /// Addresses written into tokens (needed when `listen` is a wildcard).
    pub advertise: Vec<String>,
    /// Copy slots (`transfer.max_concurrent`).
    pub max_concurrent: Option<usize>,
    /// Node-wide bandwidth cap in bytes per second (`transfer.node_bwlimit`).
    pub node_bwlimit: Option<u64>,
    /// Live passes before giving up on convergence (`transfer.max_passes`).
    pub max_passes: Option<u32>,
    /// The node's container root (`--vz-root`, e.g. a loop-mounted btrfs); `<dir>/vz` when
    /// `None`. [`Node::private`] follows it.
    pub vz_root: Option<PathBuf>,
}

/// A controller running in this process.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub addr: std::net::SocketAddr,
    /// The container root: `private/<CTID>` trees are below it.
    pub vz_root: PathBuf,
}

impl Node {
    /// `p2c-controller init` into a temp dir, then serve on an ephemeral port.
    pub async fn start() -> anyhow::Result<Node> {
        Self::start_with(NodeOptions::default()).await
    }

    /// [`Node::start`] with another listen address, the addresses tokens name, and transfer
    /// settings.
    pub async fn start_with(o: NodeOptions) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new().prefix("p2c-node").tempdir()?;
        let listen = o.listen.as_deref().unwrap_or("127.0.0.1:0");
        let vz_root = o.vz_root.clone().unwrap_or_else(|| dir.path().join("vz"));
        Self::init_opts(dir.path(), listen, o.advertise.clone(), &vz_root)?;
        let mut settings = Settings::load(&dir.path().join("state"))?;
        if let Some(n) = o.max_concurrent {
            settings.max_concurrent = n;
        }
        if let Some(b) = o.node_bwlimit {
            settings.node_bwlimit = b;
        }
        if let Some(p) = o.max_passes {
            settings.max_passes = p;
        }
        let running = start(settings).await?;
        let addr = running.addr;
        Ok(Node { dir, running: Some(running), addr, vz_root })
    }

    pub fn init_in(dir: &Path, listen: &str) -> anyhow::Result<()> {
        Self::init_with(dir, listen, Vec::new())
    }

    /// `p2c-controller init` with the addresses agents dial (required with a wildcard listen).
    pub fn init_with(dir: &Path, listen: &str, advertise: Vec<String>) -> anyhow::Result<()> {
        Self::init_opts(dir, listen, advertise, &dir.join("vz"))
    }

    fn init_opts(dir: &Path, listen: &str, advertise: Vec<String>, vz_root: &Path) -> anyhow::Result<()> {
        p2c_controller::init::init(&p2c_controller::init::InitOptions {
            state_dir: dir.join("state"),
            listen: listen.into(),
            advertise,
            vz_root: Some(vz_root.to_path_buf()),
            conf_dir: Some(dir.join("etc/vz/conf")),
        })?;
        Ok(())
    }

    /// The running controller. Calling it between `crash()` and `restart()` is a bug in the
    /// test, which this panic reports.
    #[allow(clippy::expect_used, reason = "a harness invariant: only a test's own misuse breaks it")]
    pub fn controller(&self) -> &p2c_controller::server::Controller {
        &self.running.as_ref().expect("controller running").controller
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn private(&self, ctid: u32) -> PathBuf {
        self.vz_root.join("private").join(ctid.to_string())
    }

    /// Where container `ctid`'s directory tree is: the private area's `fs/` on Virtuozzo 7
    /// and 9 (this machine's default target), the area itself on legacy OpenVZ.
    pub fn tree(&self, ctid: u32) -> PathBuf {
        p2c_controller::private_area::tree_of(&self.private(ctid))
    }

    pub fn conf(&self, ctid: u32) -> PathBuf {
        self.dir.path().join("etc/vz/conf").join(format!("{ctid}.conf"))
    }

    /// A one-time token for `name` naming this node's real address. A store that cannot
    /// record it fails the test here, with the store's error.
    #[allow(
        clippy::expect_used,
        reason = "a failing test's message; every caller wants the token or a failure"
    )]
    pub fn token(&self, name: &str, ttl_secs: u64) -> String {
        p2c_controller::admin::issue_token(self.controller(), name, ttl_secs, vec![self.addr.to_string()])
            .expect("token")
            .encode()
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        p2c_controller::cli::client::connect(&self.state_dir()).await
    }

    /// Kills the controller as a crash would.
    pub fn crash(&mut self) {
        if let Some(r) = self.running.take() {
            r.abort();
        }
    }

    /// Starts the controller again from the same state dir on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut settings = Settings::load(&self.state_dir())?;
        settings.listen = self.addr;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match start(settings.clone()).await {
                Ok(r) => {
                    self.running = Some(r);
                    return Ok(());
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!("restart: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until agent `name` has a session.
    pub async fn wait_connected(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        self.controller()
            .sessions
            .wait_for(name, timeout)
            .await
            .map(|_| ())
            .with_context(|| format!("agent {name} did not connect within {timeout:?}"))
    }

    /// Runs `p2c migrate` through the admin socket and returns the final summary.
    pub async fn migrate(&self, opts: &MigrateOptions) -> anyhow::Result<MigrationSummary> {
        let mut c = self.admin().await?;
        let mut s = c
            .migrate(v1::JsonRequest { json: serde_json::to_vec(opts)? })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        summary_of(&mut s).await
    }
}

impl Node {
    /// `p2c status --json`: every migration's state, pass, bytes, rate and ETA.
    pub async fn status(&self) -> anyhow::Result<Vec<StatusEntry>> {
        let r = self
            .admin()
            .await?
            .status(v1::StatusRequest { ctid: 0 })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(serde_json::from_slice(&r.into_inner().json)?)
    }

    /// The status line of CT `ctid`.
    pub async fn status_of(&self, ctid: u32) -> anyhow::Result<StatusEntry> {
        self.status()
            .await?
            .into_iter()
            .find(|s| s.ctid == ctid)
            .with_context(|| format!("`p2c status` does not list CT {ctid}"))
    }

    /// Starts `p2c migrate` through the admin socket and follows it in the background; the
    /// task yields the final summary.
    pub async fn spawn_migrate(
        &self,
        opts: &MigrateOptions,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<MigrationSummary>>> {
        let mut c = self.admin().await?;
        let mut s = c
            .migrate(v1::JsonRequest { json: serde_json::to_vec(opts)? })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        Ok(tokio::spawn(async move { summary_of(&mut s).await }))
    }

    /// Runs `p2c import` of a bundle through the admin socket and returns the final summary.
    pub async fn import(&self, req: &p2c_common::bundle::ImportRequest) -> anyhow::Result<MigrationSummary> {
        let mut c = self.admin().await?;
        let mut s = c
            .import(v1::JsonRequest { json: serde_json::to_vec(req)? })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        summary_of(&mut s).await
    }

    /// Runs `p2c cutover CTID` and returns the final summary.
    pub async fn cutover(&self, ctid: u32) -> anyhow::Result<MigrationSummary> {
        let mut c = self.admin().await?;
        let mut s = c
            .cutover(v1::CtidRef { ctid })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        summary_of(&mut s).await
    }
}

/// Reads a migration event stream to its summary.
pub async fn summary_of(s: &mut tonic::Streaming<v1::MigrateEvent>) -> anyhow::Result<MigrationSummary> {
    while let Some(ev) = s.message().await? {
        if let Some(v1::migrate_event::Event::SummaryJson(j)) = ev.event {
            return Ok(serde_json::from_slice(&j)?);
        }
    }
    anyhow::bail!("the migration stream ended without a summary")
}

/// An agent running in this process.
pub struct Agent {
    pub state: tempfile::TempDir,
    pub name: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Enrols with a fresh token and starts the session, treating `root` as the server.
    pub async fn start(node: &Node, name: &str, root: &Path) -> anyhow::Result<Agent> {
        Self::start_via(node, name, root, &node.addr.to_string()).await
    }

    /// Like [`Agent::start`], dialling the controller at `addr` (e.g. through a proxy).
    pub async fn start_via(node: &Node, name: &str, root: &Path, addr: &str) -> anyhow::Result<Agent> {
        let state = tempfile::Builder::new().prefix("p2c-agent").tempdir()?;
        let token = p2c_controller::admin::issue_token(node.controller(), name, 600, vec![addr.to_string()])?
            .encode();
        p2c_agent::enroll::enroll(p2c_agent::enroll::EnrollOptions {
            token: &token,
            state_dir: state.path(),
            controller: Vec::new(),
            proxy: None,
        })
        .await?;
        let agent = Self::run(state, name, root, p2c_agent::inventory::FactsFrom::Tree)?;
        node.wait_connected(name, Duration::from_secs(20)).await?;
        Ok(agent)
    }

    /// [`Agent::start`] for an agent that stops and starts the tree's own init scripts
    /// (`ROOT/etc/init.d`) and runs hooks in it (`--allow-service-control`).
    pub async fn start_with_services(node: &Node, name: &str, root: &Path) -> anyhow::Result<Agent> {
        let state = tempfile::Builder::new().prefix("p2c-agent").tempdir()?;
        let token = node.token(name, 600);
        p2c_agent::enroll::enroll(p2c_agent::enroll::EnrollOptions {
            token: &token,
            state_dir: state.path(),
            controller: Vec::new(),
            proxy: None,
        })
        .await?;
        let mut opts = Self::options(root, p2c_agent::inventory::FactsFrom::Tree);
        opts.allow_service_control = true;
        let agent = Self::run_with(state, name, opts)?;
        node.wait_connected(name, Duration::from_secs(20)).await?;
        Ok(agent)
    }

    /// Starts the session of an already enrolled agent.
    pub fn run(
        state: tempfile::TempDir,
        name: &str,
        root: &Path,
        facts: p2c_agent::inventory::FactsFrom,
    ) -> anyhow::Result<Agent> {
        Self::run_with(state, name, Self::options(root, facts))
    }

    /// The run options tests use: facts as given, reconnecting within a second.
    pub fn options(root: &Path, facts: p2c_agent::inventory::FactsFrom) -> p2c_agent::session::RunOptions {
        let mut opts = p2c_agent::session::RunOptions::new(root);
        opts.facts = facts;
        opts.max_backoff = Duration::from_secs(1);
        opts
    }

    /// Starts the session of an already enrolled agent with `opts`.
    pub fn run_with(
        state: tempfile::TempDir,
        name: &str,
        opts: p2c_agent::session::RunOptions,
    ) -> anyhow::Result<Agent> {
        let settings = p2c_agent::config::AgentSettings::load(state.path())?;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(p2c_agent::session::run(settings, opts, rx));
        Ok(Agent { state, name: name.to_string(), stop, task })
    }

    pub async fn stop(self) -> tempfile::TempDir {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.state
    }
}

/// Options for a one-shot migration with cutover of `agent` into `ctid`.
pub fn migrate_opts(agent: &str, ctid: u32) -> MigrateOptions {
    MigrateOptions { agent: agent.into(), ctid, cutover: true, ..Default::default() }
}

/// Paths (relative to the container root) the guest rewrite changed or created.
pub fn rewritten(s: &MigrationSummary) -> Vec<PathBuf> {
    s.guest_changes.iter().map(|c| PathBuf::from(c.path.trim_start_matches('/'))).collect()
}
