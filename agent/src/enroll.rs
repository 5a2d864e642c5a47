//! `p2c-agent enroll`: exchange a one-time token for a certificate bound to the agent name.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use p2c_common::pki;
use p2c_common::token::Token;
use p2c_proto::v1;

use crate::config::{AgentConfig, StatePaths};
use crate::connect;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] p2c_common::token::TokenError),
    #[error("{0} already holds an enrolled agent; use another --state-dir or remove it to enrol again")]
    AlreadyEnrolled(String),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error("the controller refused enrolment: {0}")]
    Refused(String),
    #[error("the controller answered with a certificate that does not match the token: {0}")]
    Mismatch(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What enrolment produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Enrolled {
    pub name: String,
    pub controller: Vec<String>,
    pub ca_fingerprint: String,
    pub state_dir: String,
}

pub struct EnrollOptions<'a> {
    pub token: &'a str,
    pub state_dir: &'a Path,
    /// Controller addresses to use instead of the token's.
    pub controller: Vec<String>,
    pub proxy: Option<String>,
}

pub async fn enroll(opts: EnrollOptions<'_>) -> Result<Enrolled, EnrollError> {
    let token = Token::decode(opts.token)?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    token.check_expiry(now)?;
    let paths = StatePaths::new(opts.state_dir);
    if paths.config().exists() {
        return Err(EnrollError::AlreadyEnrolled(opts.state_dir.display().to_string()));
    }
    let (csr, key_pem) = pki::make_csr(&token.name)?;
    let tls = Arc::new(pki::enroll_config(&token.ca)?);
    let addrs = if opts.controller.is_empty() { token.addrs.clone() } else { opts.controller.clone() };
    let proxy = opts.proxy.clone().or_else(|| std::env::var("https_proxy").ok()).filter(|p| !p.is_empty());
    let ch = connect::channel(&addrs, tls, proxy.clone()).await?;
    let mut client = v1::enrollment_client::EnrollmentClient::new(ch);
    let resp = client
        .enroll(v1::EnrollRequest {
            token_secret: token.secret.clone(),
            token_id: token.id.clone(),
            csr_der: csr,
        })
        .await
        .map_err(|s| EnrollError::Refused(s.message().to_string()))?
        .into_inner();
    if pki::fingerprint(&resp.ca_certificate_der) != token.ca {
        return Err(EnrollError::Mismatch("CA fingerprint differs from the token's".into()));
    }
    let cn = pki::common_name(&resp.certificate_der)?;
    if cn != token.name || resp.agent_name != token.name {
        return Err(EnrollError::Mismatch(format!("certificate names {cn:?}, token names {:?}", token.name)));
    }
    let io = |p: &Path| {
        let s = p.display().to_string();
        move |e| EnrollError::Io { path: s, source: e }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(opts.state_dir)
        .map_err(io(opts.state_dir))?;
    let write = |p: std::path::PathBuf, data: &[u8], mode: u32| -> Result<(), EnrollError> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&p)
            .map_err(io(&p))?;
        f.write_all(data).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))
    };
    write(paths.key(), key_pem.as_bytes(), 0o600)?;
    write(paths.cert(), pki::der_to_pem(&resp.certificate_der).as_bytes(), 0o644)?;
    write(paths.ca(), pki::der_to_pem(&resp.ca_certificate_der).as_bytes(), 0o644)?;
    let cfg = AgentConfig {
        name: token.name.clone(),
        controller: addrs.clone(),
        proxy: opts.proxy,
        heartbeat_secs: 10,
    };
    let text = toml::to_string_pretty(&cfg).map_err(|e| EnrollError::Mismatch(e.to_string()))?;
    // Written last: its presence means "enrolled".
    write(
        paths.config(),
        format!("# p2c agent identity, written by `p2c-agent enroll`\n{text}").as_bytes(),
        0o600,
    )?;
    Ok(Enrolled {
        name: token.name,
        controller: addrs,
        ca_fingerprint: token.ca,
        state_dir: opts.state_dir.display().to_string(),
    })
}
