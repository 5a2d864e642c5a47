//! `p2c`, the operator's CLI. It talks to the controller over the admin socket.

pub mod client;
mod follow;
pub mod plan;
mod render;
mod wave_view;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2c_common::cli::{JsonArg, LogArgs};
use p2c_common::migration::{AssessOptions, Layout, MigrateOptions, Target};

pub use follow::follow;

#[derive(Debug, Parser)]
#[command(name = "p2c", version, about = "Move physical Linux servers into containers on this node")]
pub struct Cli {
    /// Controller state directory (where its admin socket is).
    #[arg(long, global = true, env = "P2C_STATE_DIR", default_value = "/var/lib/p2c")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrolment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Enrolled agents: who is connected, last seen, what they are doing.
    Agents(JsonArg),
    /// Manage one agent.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// The inventory an agent reports (fresh if it is connected).
    Inventory {
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The pre-flight report: what the move will change or break.
    Assess {
        name: String,
        #[command(flatten)]
        assess: AssessArgs,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Migrate a source server into container CTID.
    Migrate(Box<MigrateArgs>),
    /// Build container CTID from a bundle written by `p2c-agent export` on a source this
    /// node cannot reach: the same report, copy and finalisation as `p2c migrate`.
    Import(Box<ImportArgs>),
    /// Bundles from `p2c-agent export`.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Wave plans: many servers migrated together from one TOML file.
    #[command(subcommand)]
    Plan(plan::PlanCmd),
    /// Every migration's state, pass, bytes, rate and ETA.
    Status {
        /// Only this container.
        #[arg(value_parser = ctid_parser())]
        ctid: Option<u32>,
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Stop the source's services, copy the last changes and finalise a synced container.
    Cutover {
        #[arg(value_parser = ctid_parser())]
        ctid: u32,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove a migration's container tree, config and records (after a failed or unwanted move).
    Discard {
        #[arg(value_parser = ctid_parser())]
        ctid: u32,
    },
    /// Prove a container tree matches the last source manifest.
    Verify {
        #[arg(value_parser = ctid_parser())]
        ctid: u32,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Boot a throw-away view of container CTID with its own init on an isolated network and
    /// report what came up: failed units, listeners against the source's, every former
    /// address probed from the node side. Nothing in the container changes.
    BootCheck {
        #[arg(value_parser = ctid_parser())]
        ctid: u32,
        /// How long the guest's init may take to settle.
        #[arg(long, default_value = "120s", value_parser = parse_boot_timeout)]
        timeout: std::time::Duration,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run a whole migration on this machine with no setup: a throw-away controller and agent.
    Demo(DemoArgs),
}

/// `p2c demo`'s arguments. The command itself runs in the `p2c` binary (crate `p2c-demo`),
/// which starts a controller and an agent in one process.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory treated as the source server's root (default: a sample server made in WORKDIR/source).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Where everything goes: WORKDIR/vz/private/<CTID>, WORKDIR/etc/vz/conf/<CTID>.conf, state.
    #[arg(long)]
    pub workdir: PathBuf,
    /// Container ID.
    #[arg(long, default_value_t = 101)]
    pub ctid: u32,
    /// The platform the container is made for (default: this machine's, else vz7).
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Print a one-time enrolment token for agent NAME on stdout.
    Create {
        name: String,
        /// How long the token stays valid (e.g. 15m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Revoke an agent's certificate: it is refused at once and cannot reconnect.
    Revoke { name: String },
}

#[derive(Debug, Clone, clap::Args)]
pub struct AssessArgs {
    /// Mount point of the source partition whose quotas the container keeps.
    #[arg(long)]
    pub quota_partition: Option<String>,
    /// Keep extended attributes where the node's file system can (default: drop, as VZFS does).
    #[arg(long)]
    pub keep_xattrs: bool,
    /// Source path not to copy (repeatable).
    #[arg(long = "exclude", value_name = "PATH")]
    pub excludes: Vec<String>,
    /// The platform the container is for: openvz (legacy OpenVZ, vzctl 4), vz7 (OpenVZ 7 /
    /// Virtuozzo 7) or vz9 (Virtuozzo 9). Default: the node's (`node.target` in
    /// controller.toml, else detected; `p2c assess` shows it).
    #[arg(long, value_enum)]
    pub target: Option<Target>,
}

impl AssessArgs {
    fn options(&self, ctid: Option<u32>) -> AssessOptions {
        AssessOptions {
            quota_partition: self.quota_partition.clone(),
            keep_xattrs: self.keep_xattrs,
            excludes: self.excludes.clone(),
            ctid,
            quick: false,
            target: self.target,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The agent (source server) to migrate.
    pub name: String,
    /// Container ID on this node.
    #[arg(long, value_parser = ctid_parser())]
    pub ctid: u32,
    #[command(flatten)]
    pub assess: AssessArgs,
    /// Bandwidth cap for this migration (e.g. 50M = 50 MiB/s).
    #[arg(long)]
    pub bwlimit: Option<String>,
    /// Services to stop on the source before the final pass (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub stop_services: Vec<String>,
    /// Cut over in this run: stop services, final pass, finalise the container.
    #[arg(long)]
    pub cutover: bool,
    /// Migrate even if the pre-flight report has blockers.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Most live passes before giving up on convergence.
    #[arg(long, default_value_t = 0)]
    pub max_passes: u32,
    /// Command run on the source before the services are stopped (e.g. to flush a database).
    #[arg(long)]
    pub pre_hook: Option<String>,
    /// Command run on the source after the container is ready.
    #[arg(long)]
    pub post_hook: Option<String>,
    /// Boot the container with its own init before the cutover (a failed boot stops it,
    /// unless --force) and after it; `node.boot_check` in controller.toml does it for all.
    #[arg(long)]
    pub boot_check: bool,
    /// How long each boot check lets the guest's init settle.
    #[arg(long, default_value = "120s", value_parser = parse_boot_timeout)]
    pub boot_check_timeout: std::time::Duration,
    /// Start the migration and return without following it.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

/// How the container is stored and its first-level quota (shared by migrate and import).
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// How the container is stored.
    #[arg(long, value_enum, default_value_t = Layout::Simfs)]
    pub layout: Layout,
    /// First-level quota, SOFT[:HARD] in bytes with K/M/G/T (default: from the source's usage).
    #[arg(long)]
    pub diskspace: Option<String>,
    /// Inode limits, SOFT[:HARD] (default: from the source's usage).
    #[arg(long)]
    pub diskinodes: Option<String>,
    /// Extra room above the source's usage for computed quotas, in percent.
    #[arg(long)]
    pub headroom: Option<u32>,
}

impl StorageArgs {
    /// Fills the storage and quota fields of `o`.
    fn apply(&self, o: &mut MigrateOptions) -> anyhow::Result<()> {
        let size = |s: &str| Ok(p2c_common::units::parse_size(s)?);
        let count =
            |s: &str| s.trim().parse::<u64>().with_context(|| format!("{s:?} is not a number of inodes"));
        o.layout = self.layout;
        o.diskspace =
            self.diskspace.as_deref().map(|s| pair(s, size)).transpose()?.map(|(a, b)| (a / 1024, b / 1024));
        o.diskinodes = self.diskinodes.as_deref().map(|s| pair(s, count)).transpose()?;
        o.headroom_percent = self.headroom;
        Ok(())
    }
}

/// `p2c import`: a bundle from `p2c-agent export` into container CTID.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The bundle file (`p2c-agent export --out FILE` on the source).
    pub file: PathBuf,
    /// Container ID on this node.
    #[arg(long, value_parser = ctid_parser())]
    pub ctid: u32,
    #[command(flatten)]
    pub assess: AssessArgs,
    /// Import even if the pre-flight report has blockers.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Start the import and return without following it.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

impl ImportArgs {
    /// The request for the daemon: the bundle's absolute path (the daemon reads it) and the
    /// migration options (the source's name comes from the bundle).
    pub fn request(&self) -> anyhow::Result<p2c_common::bundle::ImportRequest> {
        let file = self.file.canonicalize().with_context(|| format!("bundle {}", self.file.display()))?;
        let mut options = MigrateOptions {
            ctid: self.ctid,
            assess: self.assess.options(Some(self.ctid)),
            force: self.force,
            cutover: true,
            ..Default::default()
        };
        self.storage.apply(&mut options)?;
        options.target = self.assess.target;
        Ok(p2c_common::bundle::ImportRequest { bundle: file.to_string_lossy().into_owned(), options })
    }
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Check a bundle on this machine (no controller needed): every record, chunk and entry,
    /// and its trailer.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
}

fn pair(s: &str, parse: impl Fn(&str) -> anyhow::Result<u64>) -> anyhow::Result<(u64, u64)> {
    match s.split_once(':') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

impl MigrateArgs {
    pub fn options(&self) -> anyhow::Result<MigrateOptions> {
        let mut o = MigrateOptions {
            agent: self.name.clone(),
            ctid: self.ctid,
            assess: self.assess.options(Some(self.ctid)),
            bwlimit: self.bwlimit.as_deref().map(p2c_common::units::parse_size).transpose()?.unwrap_or(0),
            stop_services: self.stop_services.iter().filter(|s| !s.is_empty()).cloned().collect(),
            cutover: self.cutover,
            force: self.force,
            max_passes: self.max_passes,
            converge_bytes: None,
            pre_cutover_hook: self.pre_hook.clone(),
            post_cutover_hook: self.post_hook.clone(),
            boot_check: self.boot_check,
            boot_check_timeout_secs: self.boot_check_timeout.as_secs(),
            ..Default::default()
        };
        self.storage.apply(&mut o)?;
        o.target = self.assess.target;
        Ok(o)
    }
}

fn print_json(bytes: &[u8]) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Container IDs: positive 32-bit numbers (0 is not a container).
fn ctid_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(u32::MAX))
}

/// A token's lifetime: a duration of at least one second.
fn parse_boot_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = p2c_common::units::parse_duration(s).map_err(|e| e.to_string())?;
    if !(1..=3600).contains(&d.as_secs()) {
        return Err("the boot check's timeout must be between 1s and 1h".into());
    }
    Ok(d)
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = p2c_common::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("a token must live at least 1s (one that expires at once enrols nothing)".into());
    }
    Ok(d)
}

/// Runs one CLI command; the error says what went wrong and what to do.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Demo(_) = cli.command {
        anyhow::bail!(
            "`p2c demo` is run by the p2c binary (crate p2c-demo), not by p2c_controller::cli::run"
        );
    }
    if let Command::Bundle(BundleCmd::Verify { file, json }) = &cli.command {
        return verify_bundle(file, json.json);
    }
    let mut c = client::Admin::connect(&cli.state_dir).await?;
    match cli.command {
        Command::Token(TokenCmd::Create { name, ttl, json }) => {
            let (token, expires_unix) = c.create_token(&name, ttl.as_secs().max(1)).await?;
            if json.json {
                println!(
                    "{}",
                    serde_json::json!({ "agent": name, "token": token, "expires_unix": expires_unix })
                );
            } else {
                println!("{token}");
                eprintln!(
                    "one-time token for agent {name}, valid for {}; on the source run:\n  p2c-agent enroll --token <token> --state-dir /var/lib/p2c-agent",
                    p2c_common::units::human_duration(ttl)
                );
            }
        }
        Command::Agents(json) => {
            let r = c.agents().await?;
            if json.json {
                print_json(&r)?;
            } else {
                print!("{}", render::agents(&serde_json::from_slice::<Vec<_>>(&r)?));
            }
        }
        Command::Agent(AgentCmd::Revoke { name }) => {
            c.revoke(&name).await?;
            eprintln!("agent {name} revoked: its certificate is refused from now on");
        }
        Command::Inventory { name, json } => {
            let r = c.inventory(&name).await?;
            if json.json {
                print_json(&r)?;
            } else {
                print!("{}", render::inventory(&serde_json::from_slice(&r)?));
            }
        }
        Command::Assess { name, assess, json } => {
            let r = c.assess(&name, &assess.options(None)).await?;
            let report: p2c_common::findings::Report = serde_json::from_slice(&r)?;
            if json.json {
                print_json(&r)?;
            } else {
                print!("{}", report.render());
            }
            return Ok(if report.has_blockers() { 3 } else { 0 });
        }
        Command::Migrate(args) => {
            let opts = args.options()?;
            let updates = c.migrate(&opts).await?;
            if args.detach {
                eprintln!(
                    "migration of {} into CT {} started; follow it with `p2c status --watch`",
                    opts.agent, opts.ctid
                );
                return Ok(0);
            }
            return follow(updates, args.json.json).await;
        }
        Command::Import(args) => {
            let req = args.request()?;
            let updates = c.import(&req).await?;
            if args.detach {
                eprintln!(
                    "import of {} into CT {} started; follow it with `p2c status --watch`",
                    req.bundle, req.options.ctid
                );
                return Ok(0);
            }
            return follow(updates, args.json.json).await;
        }
        Command::Bundle(_) => unreachable!("handled above"),
        Command::Plan(cmd) => return plan::run(c, cmd).await,
        Command::Cutover { ctid, json } => {
            return follow(c.cutover(ctid).await?, json.json).await;
        }
        Command::Status { ctid, watch, json } => loop {
            let r = c.status(ctid).await?;
            if json.json {
                print_json(&r)?;
            } else {
                if watch {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render::status(&serde_json::from_slice::<Vec<_>>(&r)?));
            }
            if !watch {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        },
        Command::Discard { ctid } => {
            c.discard(ctid).await?;
            eprintln!("CT {ctid} discarded: its private area, config and records are gone");
        }
        Command::Verify { ctid, json } => {
            let r = c.verify(ctid).await?;
            let v: p2c_common::migration::VerifySummary = serde_json::from_slice(&r)?;
            if json.json {
                print_json(&r)?;
            } else {
                print!("{}", render::verify(ctid, &v));
            }
            return Ok(if v.ok { 0 } else { 1 });
        }
        Command::BootCheck { ctid, timeout, json } => {
            if !json.json {
                eprintln!(
                    "booting a view of CT {ctid} (up to {}s for its init to settle)...",
                    timeout.as_secs()
                );
            }
            let req = p2c_common::migration::BootCheckRequest { ctid, timeout_secs: timeout.as_secs() };
            let r = c.boot_check(&req).await?;
            let report: crate::boot::BootReport = serde_json::from_slice(&r)?;
            if json.json {
                print_json(&r)?;
            } else {
                print!("{}", report.render());
            }
            return Ok(if report.passed() { 0 } else { 1 });
        }
        Command::Demo(_) => unreachable!("handled above"),
    }
    Ok(0)
}

/// `p2c bundle verify`: checked here, without the controller (the operator may check the
/// media before the node's daemon is involved, or on another machine).
fn verify_bundle(file: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    let v = p2c_proto::bundle::verify(file, true, &mut |_| {})?;
    if json {
        let out = serde_json::json!({
            "bundle": file.display().to_string(),
            "header": v.header,
            "trailer": v.trailer,
            "size": v.size,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let (h, t) = (&v.header, &v.trailer);
        println!(
            "{}: a complete bundle of {} (root {}, facts {}): {} objects, {} of files, {} chunks, {} changed while read, {} not carried; every record, chunk and entry checked",
            file.display(),
            h.name,
            h.root,
            h.facts,
            t.objects,
            p2c_common::units::human_bytes(t.file_bytes),
            t.chunks,
            t.changed,
            t.skipped
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("p2c").chain(args.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn a_ctid_is_between_1_and_u32_max() {
        let e = parse(&["migrate", "web01", "--ctid", "0"]).err().unwrap();
        assert!(e.contains("0 is not in 1..=4294967295"), "{e}");
        let e = parse(&["cutover", "4294967296"]).err().unwrap();
        assert!(e.contains("4294967296 is not in 1..=4294967295"), "{e}");
        assert!(parse(&["cutover", "4294967295"]).is_ok());
        assert!(parse(&["discard", "0"]).is_err() && parse(&["verify", "0"]).is_err());
    }

    #[test]
    fn a_token_lives_at_least_a_second() {
        let e = parse(&["token", "create", "web01", "--ttl", "0s"]).err().unwrap();
        assert!(e.contains("a token must live at least 1s"), "{e}");
        let ok = parse(&["token", "create", "web01", "--ttl", "15m"]).unwrap();
        assert!(matches!(
            ok.command,
            Command::Token(TokenCmd::Create { ttl, .. }) if ttl == std::time::Duration::from_secs(900)
        ));
    }
}
