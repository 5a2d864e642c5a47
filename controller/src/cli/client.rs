//! The admin-socket client used by `p2c`.

use std::path::Path;

use hyper_util::rt::TokioIo;
use p2c_proto::v1;
use p2c_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// Connects to the controller whose state dir is `state_dir`.
pub async fn connect(state_dir: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let sock = crate::config::admin_socket(state_dir);
    if !sock.exists() {
        anyhow::bail!(
            "no controller is running with state dir {} (no socket at {}); start it with `p2c-controller serve --state-dir {}` or pass --state-dir",
            state_dir.display(),
            sock.display(),
            state_dir.display()
        );
    }
    let path = sock.clone();
    let ch = Endpoint::from_static("http://p2c-admin")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the controller at {}: {}; is `p2c-controller serve` running (and are you root)?",
                sock.display(),
                p2c_common::errors::error_chain(&e)
            )
        })?;
    let max = p2c_common::manifest::limits::MAX_MESSAGE;
    Ok(AdminClient::new(ch).max_decoding_message_size(max).max_encoding_message_size(max))
}

/// A gRPC error as an operator-facing error (the message already says what to do).
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// The controller's admin API in domain terms: what the rest of the CLI uses. Errors are
/// operator-facing (the controller's message says what to do).
#[derive(Clone)]
pub struct Admin(AdminClient<Channel>);

/// How far a migration's current pass is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub ctid: u32,
    pub pass: u32,
    pub phase: String,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_sent: u64,
}

/// One thing a followed migration says.
#[derive(Debug)]
pub enum Update {
    Progress(Progress),
    Log(String),
    /// The pre-flight report (`None`: the controller sent one this CLI cannot read).
    Report(Option<Box<p2c_common::findings::Report>>),
    /// The end: the migration's summary (`None`: unreadable).
    Summary(Option<Box<p2c_common::migration::MigrationSummary>>),
}

/// A followed migration's updates.
pub struct Updates(tonic::Streaming<v1::MigrateEvent>);

impl Updates {
    /// The next update; `Ok(None)` when the controller ended the stream; `Err` with the
    /// controller's reason when the stream broke.
    pub async fn next(&mut self) -> Result<Option<Update>, String> {
        use v1::migrate_event::Event;
        loop {
            let Some(ev) = self.0.message().await.map_err(|s| s.message().to_string())? else {
                return Ok(None);
            };
            return Ok(Some(match ev.event {
                Some(Event::Progress(p)) => Update::Progress(Progress {
                    ctid: p.ctid,
                    pass: p.pass,
                    phase: p.phase,
                    files_done: p.files_done,
                    files_total: p.files_total,
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                    bytes_sent: p.bytes_sent,
                }),
                Some(Event::Log(l)) => Update::Log(l),
                Some(Event::ReportJson(r)) => Update::Report(serde_json::from_slice(&r).ok().map(Box::new)),
                Some(Event::SummaryJson(s)) => Update::Summary(serde_json::from_slice(&s).ok().map(Box::new)),
                None => continue,
            }));
        }
    }
}

impl Admin {
    pub async fn connect(state_dir: &Path) -> anyhow::Result<Admin> {
        Ok(Admin(connect(state_dir).await?))
    }

    /// A one-time enrolment token for `name`: the token and when it expires (unix seconds).
    pub async fn create_token(&mut self, name: &str, ttl_secs: u64) -> anyhow::Result<(String, u64)> {
        let req = v1::CreateTokenRequest { agent_name: name.to_string(), ttl_secs };
        let r = self.0.create_token(req).await.map_err(status)?.into_inner();
        Ok((r.token, r.expires_unix))
    }

    /// `p2c agents` as JSON of `Vec<AgentStatus>`.
    pub async fn agents(&mut self) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.list_agents(v1::ListAgentsRequest {}).await.map_err(status)?.into_inner().json)
    }

    pub async fn revoke(&mut self, name: &str) -> anyhow::Result<()> {
        self.0.revoke_agent(v1::AgentRef { name: name.to_string() }).await.map_err(status)?;
        Ok(())
    }

    /// An agent's inventory as JSON.
    pub async fn inventory(&mut self, name: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self
            .0
            .get_inventory(v1::AgentRef { name: name.to_string() })
            .await
            .map_err(status)?
            .into_inner()
            .json)
    }

    /// The pre-flight report as JSON.
    pub async fn assess(
        &mut self,
        name: &str,
        opts: &p2c_common::migration::AssessOptions,
    ) -> anyhow::Result<Vec<u8>> {
        let req = v1::AssessRequest { agent_name: name.to_string(), options_json: serde_json::to_vec(opts)? };
        Ok(self.0.assess(req).await.map_err(status)?.into_inner().json)
    }

    pub async fn migrate(&mut self, opts: &p2c_common::migration::MigrateOptions) -> anyhow::Result<Updates> {
        let req = v1::JsonRequest { json: serde_json::to_vec(opts)? };
        Ok(Updates(self.0.migrate(req).await.map_err(status)?.into_inner()))
    }

    pub async fn import(&mut self, req: &p2c_common::bundle::ImportRequest) -> anyhow::Result<Updates> {
        let req = v1::JsonRequest { json: serde_json::to_vec(req)? };
        Ok(Updates(self.0.import(req).await.map_err(status)?.into_inner()))
    }

    pub async fn cutover(&mut self, ctid: u32) -> anyhow::Result<Updates> {
        Ok(Updates(self.0.cutover(v1::CtidRef { ctid }).await.map_err(status)?.into_inner()))
    }

    /// `p2c status` (one CTID, or all with `None`) as JSON of `Vec<StatusEntry>`.
    pub async fn status(&mut self, ctid: Option<u32>) -> anyhow::Result<Vec<u8>> {
        let req = v1::StatusRequest { ctid: ctid.unwrap_or(0) };
        Ok(self.0.status(req).await.map_err(status)?.into_inner().json)
    }

    pub async fn discard(&mut self, ctid: u32) -> anyhow::Result<()> {
        self.0.discard(v1::CtidRef { ctid }).await.map_err(status)?;
        Ok(())
    }

    /// `p2c verify` as JSON of `VerifySummary`.
    pub async fn boot_check(
        &mut self,
        req: &p2c_common::migration::BootCheckRequest,
    ) -> anyhow::Result<Vec<u8>> {
        let json = serde_json::to_vec(req)?;
        Ok(self.0.boot_check(v1::JsonRequest { json }).await.map_err(status)?.into_inner().json)
    }

    pub async fn verify(&mut self, ctid: u32) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.verify(v1::CtidRef { ctid }).await.map_err(status)?.into_inner().json)
    }
}
