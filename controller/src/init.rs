//! `p2c-controller init`: the node's CA, server certificate, config and state database.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p2c_common::pki::{self, CertKey};

use crate::config::{CONFIG_FILE, ControllerConfig, Settings, TransferConfig};
use crate::state::Store;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} is already initialised (it has {CONFIG_FILE}); use another --state-dir or remove it")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
}

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub state_dir: PathBuf,
    pub listen: String,
    pub advertise: Vec<String>,
    pub vz_root: Option<PathBuf>,
    pub conf_dir: Option<PathBuf>,
}

/// What `init` made, for the operator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InitReport {
    pub state_dir: String,
    pub config: String,
    pub ca_fingerprint: String,
    pub listen: String,
    pub advertise: Vec<String>,
    pub vz_root: String,
    pub conf_dir: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |e| InitError::Io { path: path.to_path_buf(), source: e }
}

/// Writes `data` to a new file with `mode`, failing if it exists.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), InitError> {
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

pub fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    let state = &opts.state_dir;
    let cfg_path = state.join(CONFIG_FILE);
    if cfg_path.exists() {
        return Err(InitError::Exists(state.clone()));
    }
    let cfg = ControllerConfig {
        listen: opts.listen.clone(),
        advertise: opts.advertise.clone(),
        vz_root: opts.vz_root.clone().unwrap_or_else(|| PathBuf::from("/vz")),
        conf_dir: opts.conf_dir.clone().unwrap_or_else(|| PathBuf::from("/etc/vz/conf")),
        node: crate::config::NodeConfig::default(),
        transfer: TransferConfig::default(),
    };
    // Validate before writing anything.
    let settings = Settings::from_config(state, cfg.clone()).map_err(InitError::Invalid)?;

    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state).map_err(io(state))?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).map_err(io(state))?;
    let pki_dir = settings.pki_dir();
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&pki_dir).map_err(io(&pki_dir))?;

    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let ca = pki::create_ca(&format!("p2c node CA {host}"))?;
    let mut extra: Vec<String> = Vec::new();
    for a in &settings.advertise {
        if let Some((h, _)) = a.rsplit_once(':') {
            extra.push(h.trim_matches(|c| c == '[' || c == ']').to_string());
        }
    }
    let server = pki::issue_server_cert(&ca, &extra)?;
    write_new(&pki_dir.join("ca.pem"), ca.cert_pem.as_bytes(), 0o644)?;
    write_new(&pki_dir.join("ca.key"), ca.key_pem.as_bytes(), 0o600)?;
    write_new(&pki_dir.join("server.pem"), server.cert_pem.as_bytes(), 0o644)?;
    write_new(&pki_dir.join("server.key"), server.key_pem.as_bytes(), 0o600)?;
    Store::open(&settings.db_path())?;
    let text = format!(
        "# p2c controller configuration (see deploy/examples/controller.toml for every key)\n{}",
        toml::to_string_pretty(&cfg).map_err(|e| InitError::Invalid(e.to_string()))?
    );
    // Written last: its presence means "initialised".
    write_new(&cfg_path, text.as_bytes(), 0o600)?;
    let ca_der = pki::cert_der_from_pem(&ca.cert_pem, "CA certificate")?;
    Ok(InitReport {
        state_dir: state.display().to_string(),
        config: cfg_path.display().to_string(),
        ca_fingerprint: pki::fingerprint(&ca_der),
        listen: settings.listen.to_string(),
        advertise: settings.advertise.clone(),
        vz_root: settings.vz_root.display().to_string(),
        conf_dir: settings.conf_dir.display().to_string(),
    })
}

/// The node's CA and server certificate, read from the state dir.
#[derive(Clone, Debug)]
pub struct NodePki {
    pub ca: CertKey,
    pub server: CertKey,
    pub ca_fingerprint: String,
}

impl NodePki {
    pub fn load(settings: &Settings) -> Result<NodePki, InitError> {
        let dir = settings.pki_dir();
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(|e| InitError::Io { path: p, source: e })
        };
        let ca = CertKey { cert_pem: read("ca.pem")?, key_pem: read("ca.key")? };
        let server = CertKey { cert_pem: read("server.pem")?, key_pem: read("server.key")? };
        let ca_fingerprint = pki::fingerprint(&pki::cert_der_from_pem(&ca.cert_pem, "CA certificate")?);
        Ok(NodePki { ca, server, ca_fingerprint })
    }
}
