//! Wave plans: one TOML file listing the servers to migrate together (`p2c plan apply FILE`).
//!
//! The file is validated as a whole before anything starts: unknown keys, duplicate agents
//! or CTIDs, agents this node has not enrolled and bad values are all reported in one error.
//! Each `[[server]]` takes the `[defaults]` for every key it does not set; its `excludes`
//! add to the defaults' excludes. See `deploy/examples/wave.toml`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use p2c_common::migration::{AssessOptions, Layout, MigrateOptions, Target};
use p2c_common::paths::{RelPath, unescape_bytes};
use p2c_common::services::validate_service_name;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the plan {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("plan {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("plan {path} has {} problem(s); nothing was started:\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
}

/// The file format.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// How many of the plan's migrations run at once (default: all of them). The node's own
    /// copy slots (`transfer.max_concurrent`) and bandwidth cap apply on top.
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Settings every server takes unless it sets its own.
    #[serde(default)]
    pub defaults: ServerSettings,
    /// The servers, one `[[server]]` table each.
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerEntry>,
}

/// What `[defaults]` may set (everything a server may, except who and where).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Mount point of the source partition whose quotas the container keeps.
    pub quota_partition: Option<String>,
    /// Source paths not to copy.
    pub excludes: Option<Vec<String>>,
    /// Services stopped on the source before the final pass.
    pub stop_services: Option<Vec<String>>,
    /// Bandwidth cap of the migration, e.g. `50M` (bytes per second, K/M/G suffixes).
    pub bwlimit: Option<String>,
    /// Cut over in this run (stop services, final pass, finalise); else stop when synced.
    pub cutover: Option<bool>,
    /// Migrate even if the pre-flight report has blockers.
    pub force: Option<bool>,
    /// Keep extended attributes where the node's file system can.
    pub keep_xattrs: Option<bool>,
    /// How the container is stored: `simfs` or `ploop`.
    pub layout: Option<Layout>,
    /// The platform the container is for: `openvz`, `vz7` or `vz9` (default: the node's).
    pub target: Option<Target>,
    /// Most live passes before giving up on convergence.
    pub max_passes: Option<u32>,
    /// Command run on the source before its services are stopped.
    pub pre_hook: Option<String>,
    /// Command run on the source once the container is ready.
    pub post_hook: Option<String>,
}

/// One `[[server]]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// The enrolled agent of the source server.
    pub agent: String,
    /// Container ID on this node.
    pub ctid: u32,
    /// As in [`ServerSettings`]; unset keys come from `[defaults]`.
    pub quota_partition: Option<String>,
    /// Added to the defaults' excludes.
    pub excludes: Option<Vec<String>>,
    pub stop_services: Option<Vec<String>>,
    pub bwlimit: Option<String>,
    pub cutover: Option<bool>,
    pub force: Option<bool>,
    pub keep_xattrs: Option<bool>,
    pub layout: Option<Layout>,
    pub target: Option<Target>,
    pub max_passes: Option<u32>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
}

/// A validated plan: the migrations to run and how many at once.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub max_parallel: usize,
    pub migrations: Vec<MigrateOptions>,
}

impl Plan {
    /// Reads and validates the plan at `path`. With `enrolled`, every agent must be in it.
    pub fn load(path: &Path, enrolled: Option<&HashSet<String>>) -> Result<Plan, PlanError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| PlanError::Read { path: shown.clone(), source: e })?;
        Self::parse(&text, &shown, enrolled)
    }

    /// Parses and validates plan text (`path` names it in errors).
    pub fn parse(text: &str, path: &str, enrolled: Option<&HashSet<String>>) -> Result<Plan, PlanError> {
        let file: PlanFile =
            toml::from_str(text).map_err(|e| PlanError::Parse { path: path.into(), source: Box::new(e) })?;
        file.validate(enrolled).map_err(|problems| PlanError::Invalid { path: path.into(), problems })
    }
}

impl PlanFile {
    /// The plan's migrations, or every problem found.
    pub fn validate(&self, enrolled: Option<&HashSet<String>>) -> Result<Plan, Vec<String>> {
        let mut problems = Vec::new();
        if self.servers.is_empty() {
            problems.push("the plan lists no [[server]]".to_string());
        }
        if self.max_parallel == Some(0) {
            problems.push("max_parallel must be at least 1".to_string());
        }
        let d = &self.defaults;
        check_settings(
            "[defaults]",
            &d.bwlimit,
            &d.quota_partition,
            &d.excludes,
            &d.stop_services,
            &mut problems,
        );
        let mut agents: HashMap<&str, usize> = HashMap::new();
        let mut ctids: HashMap<u32, usize> = HashMap::new();
        let mut migrations = Vec::with_capacity(self.servers.len());
        for (i, s) in self.servers.iter().enumerate() {
            let n = i + 1;
            let label = format!("server {n} (agent {:?}, CT {})", s.agent, s.ctid);
            if let Err(e) = p2c_common::pki::validate_agent_name(&s.agent) {
                problems.push(format!("{label}: {e}"));
            } else if enrolled.is_some_and(|known| !known.contains(&s.agent)) {
                problems.push(format!(
                    "{label}: agent {} is not enrolled on this node (see `p2c agents`; enrol it with `p2c token create {}`)",
                    s.agent, s.agent
                ));
            }
            if s.ctid == 0 {
                problems.push(format!("{label}: ctid must be a positive number"));
            }
            if let Some(first) = agents.insert(&s.agent, n) {
                problems.push(format!("{label}: agent {} is already server {first}", s.agent));
            }
            if let Some(first) = ctids.insert(s.ctid, n) {
                problems.push(format!("{label}: CT {} is already server {first}", s.ctid));
            }
            check_settings(
                &label,
                &s.bwlimit,
                &s.quota_partition,
                &s.excludes,
                &s.stop_services,
                &mut problems,
            );
            migrations.push(s.options(d));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let max_parallel = self.max_parallel.unwrap_or(self.servers.len()).max(1);
        Ok(Plan { max_parallel, migrations })
    }
}

impl ServerEntry {
    /// The migration this server asks for, with `d` for what it leaves unset. Values must
    /// have been checked (an unparsable bwlimit counts as none).
    fn options(&self, d: &ServerSettings) -> MigrateOptions {
        let pick = |own: &Option<String>, def: &Option<String>| own.clone().or_else(|| def.clone());
        let mut excludes = d.excludes.clone().unwrap_or_default();
        excludes.extend(self.excludes.clone().unwrap_or_default());
        let bwlimit =
            pick(&self.bwlimit, &d.bwlimit).and_then(|b| p2c_common::units::parse_size(&b).ok()).unwrap_or(0);
        MigrateOptions {
            agent: self.agent.clone(),
            ctid: self.ctid,
            assess: AssessOptions {
                quota_partition: pick(&self.quota_partition, &d.quota_partition),
                keep_xattrs: self.keep_xattrs.or(d.keep_xattrs).unwrap_or(false),
                excludes,
                ctid: Some(self.ctid),
                quick: false,
                target: self.target.or(d.target),
            },
            bwlimit,
            stop_services: self.stop_services.clone().or_else(|| d.stop_services.clone()).unwrap_or_default(),
            cutover: self.cutover.or(d.cutover).unwrap_or(false),
            force: self.force.or(d.force).unwrap_or(false),
            layout: self.layout.or(d.layout).unwrap_or_default(),
            target: self.target.or(d.target),
            max_passes: self.max_passes.or(d.max_passes).unwrap_or(0),
            pre_cutover_hook: pick(&self.pre_hook, &d.pre_hook),
            post_cutover_hook: pick(&self.post_hook, &d.post_hook),
            ..Default::default()
        }
    }
}

fn check_settings(
    label: &str,
    bwlimit: &Option<String>,
    quota_partition: &Option<String>,
    excludes: &Option<Vec<String>>,
    stop_services: &Option<Vec<String>>,
    problems: &mut Vec<String>,
) {
    if let Some(Err(e)) = bwlimit.as_deref().map(p2c_common::units::parse_size) {
        problems.push(format!("{label}: bwlimit {e}"));
    }
    if let Some(q) = quota_partition.as_deref().filter(|q| !q.starts_with('/')) {
        problems.push(format!("{label}: quota_partition {q:?} must be an absolute mount point"));
    }
    for x in excludes.iter().flatten() {
        if let Err(e) = RelPath::from_user(&unescape_bytes(x)) {
            problems.push(format!("{label}: exclude {x:?}: {e}"));
        }
    }
    for s in stop_services.iter().flatten() {
        if let Err(e) = validate_service_name(s) {
            problems.push(format!("{label}: stop_services: {e}"));
        }
    }
}

#[cfg(test)]
mod tests;
