//! The agent's state directory: its identity (key and certificate, the pinned node CA) and
//! settings, written at enrolment.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}; enrol first with `p2c-agent enroll --token TOKEN --state-dir {state}`")]
    NotEnrolled { path: PathBuf, state: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// `agent.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The name the controller knows this agent by (it is also in the certificate).
    pub name: String,
    /// Controller addresses (`host:port`), tried in order.
    pub controller: Vec<String>,
    /// HTTP CONNECT proxy for the one outbound connection (`http://host:port`); when unset
    /// the `https_proxy` / `HTTPS_PROXY` environment variables are used.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Seconds between heartbeats on the session.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

fn default_heartbeat() -> u64 {
    10
}

/// Paths inside an agent state dir.
#[derive(Clone, Debug)]
pub struct StatePaths {
    pub dir: PathBuf,
}

impl StatePaths {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("agent.key")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }
}

/// Everything the running agent needs, loaded and checked.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub paths: StatePaths,
    pub config: AgentConfig,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl AgentSettings {
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let paths = StatePaths::new(dir);
        let cfg_path = paths.config();
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ConfigError::NotEnrolled {
            path: cfg_path.clone(),
            state: dir.display().to_string(),
            source: e,
        })?;
        let config: AgentConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: cfg_path.clone(), source: e })?;
        if config.controller.is_empty() {
            return Err(ConfigError::Invalid {
                path: cfg_path,
                what: "controller = [] names no address".into(),
            });
        }
        let read =
            |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| ConfigError::Io { path: p, source: e });
        Ok(Self {
            ca_pem: read(paths.ca())?,
            cert_pem: read(paths.cert())?,
            key_pem: read(paths.key())?,
            paths,
            config,
        })
    }

    /// The proxy to use: the configured one, else `https_proxy`/`HTTPS_PROXY`.
    pub fn proxy(&self) -> Option<String> {
        self.config
            .proxy
            .clone()
            .or_else(|| std::env::var("https_proxy").ok())
            .or_else(|| std::env::var("HTTPS_PROXY").ok())
            .filter(|p| !p.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_example_parses() {
        let cfg: AgentConfig = toml::from_str(include_str!("../../deploy/examples/agent.toml")).unwrap();
        assert_eq!(cfg.name, "web01");
        assert_eq!(cfg.controller.len(), 2);
        assert!(cfg.proxy.is_some());
        p2c_common::pki::validate_agent_name(&cfg.name).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<AgentConfig>("name = \"a\"\ncontroller = [\"x:1\"]\nbogus = 1").is_err());
    }
}
