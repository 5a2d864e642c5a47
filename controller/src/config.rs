//! The controller's configuration file (`<state-dir>/controller.toml`) and the validated
//! runtime settings made from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use p2c_common::chunking::ChunkParams;
use p2c_common::migration::Target;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}; run `p2c-controller init --state-dir {state}` first")]
    Read { path: PathBuf, state: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// The file format. Every key is documented in `deploy/examples/controller.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address the agent endpoint (enrolment and sessions, TLS) listens on, `host:port`.
    pub listen: String,
    /// Addresses agents dial, written into enrolment tokens; defaults to `listen`.
    #[serde(default)]
    pub advertise: Vec<String>,
    /// Node storage root: private areas in `<vz_root>/private/<CTID>`, mount points in
    /// `<vz_root>/root/<CTID>`.
    #[serde(default = "default_vz_root")]
    pub vz_root: PathBuf,
    /// Directory of container configs, `<conf_dir>/<CTID>.conf`.
    #[serde(default = "default_conf_dir")]
    pub conf_dir: PathBuf,
    /// What the node is and how its containers are made.
    #[serde(default)]
    pub node: NodeConfig,
    /// Transfer tuning.
    #[serde(default)]
    pub transfer: TransferConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The platform containers are made for: `openvz`, `vz7`, `vz9`, or `auto` (detected from
    /// the node's release files and tools; a node with none of them is taken as `vz7`).
    pub target: String,
    /// Boot every container before its cutover and after it, as `p2c migrate --boot-check`.
    pub boot_check: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { target: "auto".into(), boot_check: false }
    }
}

fn default_vz_root() -> PathBuf {
    PathBuf::from("/vz")
}

fn default_conf_dir() -> PathBuf {
    PathBuf::from("/etc/vz/conf")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Migrations that copy at the same time; more wait their turn.
    pub max_concurrent: usize,
    /// Node-wide bandwidth cap for all transfers together (`0` for none; e.g. `200M`).
    pub node_bwlimit: String,
    /// Content-defined chunk sizes in bytes (all agents use the controller's values).
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    /// Live passes before a migration stops iterating without converging.
    pub max_passes: u32,
    /// A pass that changes fewer bytes than this counts as converged (e.g. `64M`).
    pub converge_bytes: String,
    /// Share chunks between containers of the node (`node`) or only within one (`container`).
    /// Node-wide dedup saves the most, but lets an agent learn whether some container on
    /// the node holds content it already knows.
    pub dedup_scope: DedupScope,
    /// Chunk data on the wire: `zstd`, `none`, or `auto` (zstd, except for agents on this
    /// machine's loopback, where compressing only costs CPU).
    pub compression: Compression,
    /// zstd level when compressing (1 is fast; negative levels are faster still).
    pub zstd_level: i32,
    /// Live passes after the first list only what the agent's change tracking (fanotify)
    /// saw change, instead of walking the whole tree. The final pass of a cutover always
    /// walks everything.
    pub change_tracking: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Auto,
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupScope {
    Node,
    Container,
}

impl Default for TransferConfig {
    fn default() -> Self {
        let p = ChunkParams::default();
        Self {
            max_concurrent: 4,
            node_bwlimit: "0".into(),
            chunk_min: p.min_size,
            chunk_avg: p.avg_size,
            chunk_max: p.max_size,
            max_passes: 5,
            converge_bytes: "64M".into(),
            dedup_scope: DedupScope::Node,
            compression: Compression::Auto,
            zstd_level: 1,
            change_tracking: true,
        }
    }
}

/// Validated settings the daemon runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: Vec<String>,
    pub vz_root: PathBuf,
    pub conf_dir: PathBuf,
    /// The configured platform; `None` for `auto` (detected).
    pub target: Option<Target>,
    /// `node.boot_check`: every migration runs the boot check.
    pub boot_check: bool,
    pub max_concurrent: usize,
    pub node_bwlimit: u64,
    pub chunking: ChunkParams,
    pub max_passes: u32,
    pub converge_bytes: u64,
    pub dedup_scope: DedupScope,
    pub compression: Compression,
    pub zstd_level: i32,
    pub change_tracking: bool,
}

pub const CONFIG_FILE: &str = "controller.toml";

impl Settings {
    pub fn load(state_dir: &Path) -> Result<Settings, ConfigError> {
        let path = state_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            state: state_dir.display().to_string(),
            source: e,
        })?;
        let cfg: ControllerConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.clone(), source: e })?;
        Settings::from_config(state_dir, cfg).map_err(|what| ConfigError::Invalid { path, what })
    }

    pub fn from_config(state_dir: &Path, cfg: ControllerConfig) -> Result<Settings, String> {
        let listen: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|_| format!("listen = {:?} is not an address:port (e.g. 0.0.0.0:7443)", cfg.listen))?;
        let mut advertise = cfg.advertise.clone();
        if advertise.is_empty() {
            if listen.ip().is_unspecified() {
                return Err(format!(
                    "listen = {:?} is a wildcard; set advertise = [\"<address agents dial>:{}\"]",
                    cfg.listen,
                    listen.port()
                ));
            }
            advertise.push(listen.to_string());
        }
        for a in &advertise {
            if !a.contains(':') || a.len() > 255 {
                return Err(format!("advertise entry {a:?} must be host:port"));
            }
        }
        let t = &cfg.transfer;
        let chunking = ChunkParams { min_size: t.chunk_min, avg_size: t.chunk_avg, max_size: t.chunk_max }
            .validate()
            .map_err(|e| e.to_string())?;
        if !(-7..=19).contains(&t.zstd_level) || t.zstd_level == 0 {
            return Err(format!("transfer.zstd_level = {} must be in -7..=19 and not 0", t.zstd_level));
        }
        if t.max_concurrent == 0 {
            return Err("transfer.max_concurrent must be at least 1".into());
        }
        let node_bwlimit = p2c_common::units::parse_size(&t.node_bwlimit).map_err(|e| e.to_string())?;
        let converge_bytes = p2c_common::units::parse_size(&t.converge_bytes).map_err(|e| e.to_string())?;
        if !cfg.vz_root.is_absolute() || !cfg.conf_dir.is_absolute() {
            return Err("vz_root and conf_dir must be absolute paths".into());
        }
        let target = match cfg.node.target.as_str() {
            "auto" => None,
            t => Some(Target::parse(t).ok_or_else(|| {
                format!("node.target = {t:?} is not a platform; use \"auto\", \"openvz\", \"vz7\" or \"vz9\"")
            })?),
        };
        Ok(Settings {
            state_dir: state_dir.to_path_buf(),
            listen,
            advertise,
            vz_root: cfg.vz_root,
            conf_dir: cfg.conf_dir,
            target,
            boot_check: cfg.node.boot_check,
            max_concurrent: t.max_concurrent,
            node_bwlimit,
            chunking,
            max_passes: t.max_passes.max(1),
            converge_bytes,
            dedup_scope: t.dedup_scope,
            compression: t.compression,
            zstd_level: t.zstd_level,
            change_tracking: t.change_tracking,
        })
    }

    pub fn private_dir(&self, ctid: u32) -> PathBuf {
        self.vz_root.join("private").join(ctid.to_string())
    }
    /// The private area of container `ctid` as `opts` makes it (its platform and layout).
    pub fn private_area(
        &self,
        ctid: u32,
        opts: &p2c_common::migration::MigrateOptions,
    ) -> crate::private_area::PrivateArea {
        crate::private_area::PrivateArea::new(
            self.private_dir(ctid),
            self.conf_path(ctid),
            opts.made_for(),
            opts.layout,
        )
    }
    pub fn root_dir(&self, ctid: u32) -> PathBuf {
        self.vz_root.join("root").join(ctid.to_string())
    }
    pub fn conf_path(&self, ctid: u32) -> PathBuf {
        self.conf_dir.join(format!("{ctid}.conf"))
    }
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }
    pub fn admin_socket(&self) -> PathBuf {
        admin_socket(&self.state_dir)
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
    pub fn manifest_dir(&self, ctid: u32) -> PathBuf {
        self.state_dir.join("manifests").join(ctid.to_string())
    }
}

/// Where the admin socket of a state dir is.
pub fn admin_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Settings, String> {
        let cfg: ControllerConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        Settings::from_config(Path::new("/s"), cfg)
    }

    #[test]
    fn minimal_config() {
        let s = parse("listen = \"127.0.0.1:7443\"").unwrap();
        assert_eq!(s.advertise, ["127.0.0.1:7443"]);
        assert_eq!(s.private_dir(101), PathBuf::from("/vz/private/101"));
        assert_eq!(s.conf_path(101), PathBuf::from("/etc/vz/conf/101.conf"));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        assert!(parse("listen = \"nowhere\"").unwrap_err().contains("not an address"));
        assert!(parse("listen = \"0.0.0.0:7443\"").unwrap_err().contains("advertise"));
        assert!(parse("listen = \"127.0.0.1:1\"\nvz_root = \"rel\"").unwrap_err().contains("absolute"));
        assert!(parse("listen = \"127.0.0.1:1\"\nbogus = 1").is_err());
        assert!(parse("listen = \"127.0.0.1:1\"\n[transfer]\nchunk_min = 1").unwrap_err().contains("chunk"));
        let bad = parse("listen = \"127.0.0.1:1\"\n[node]\ntarget = \"vz8\"").unwrap_err();
        assert!(bad.contains("node.target") && bad.contains("vz9"), "{bad}");
    }

    #[test]
    fn node_target_is_auto_unless_named() {
        assert_eq!(parse("listen = \"127.0.0.1:1\"").unwrap().target, None);
        let s = parse("listen = \"127.0.0.1:1\"\n[node]\ntarget = \"openvz\"").unwrap();
        assert_eq!(s.target, Some(Target::Openvz));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_deployed_example_parses_and_validates() {
        let text = include_str!("../../deploy/examples/controller.toml");
        let cfg: ControllerConfig = toml::from_str(text).unwrap();
        let s = Settings::from_config(Path::new("/var/lib/p2c"), cfg).unwrap();
        assert_eq!(s.advertise.len(), 2);
        assert_eq!(s.max_concurrent, 4);
        assert_eq!(s.converge_bytes, 64 << 20);
        assert_eq!(s.chunking, ChunkParams::default());
    }
}
