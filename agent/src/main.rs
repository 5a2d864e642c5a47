//! `p2c-agent`: the source-side daemon.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use p2c_agent::inventory::{CollectOptions, FactsFrom};
use p2c_common::cli::{JsonArg, LogArgs};

#[derive(Debug, Parser)]
#[command(name = "p2c-agent", version, about = "The p2c agent on a source server")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Facts {
    /// From the running kernel (network, mounts, memory) and the files below the root.
    Live,
    /// From the files below the root only (an offline tree or a copy).
    Tree,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exchange a one-time token for this agent's certificate.
    Enroll {
        /// The token printed by `p2c token create NAME` on the node.
        #[arg(long, env = "P2C_TOKEN")]
        token: String,
        #[arg(long, env = "P2C_AGENT_STATE_DIR", default_value = "/var/lib/p2c-agent")]
        state_dir: PathBuf,
        /// Controller address to use instead of the token's (repeatable).
        #[arg(long)]
        controller: Vec<String>,
        /// HTTP CONNECT proxy for the outbound connection (default: $https_proxy).
        #[arg(long)]
        proxy: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Dial out to the controller and serve it until stopped (systemd runs this).
    Run {
        #[arg(long, env = "P2C_AGENT_STATE_DIR", default_value = "/var/lib/p2c-agent")]
        state_dir: PathBuf,
        /// The directory to treat as the server's root.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Where facts come from (default: live for /, tree otherwise).
        #[arg(long, value_enum)]
        facts: Option<Facts>,
        /// With --root DIR: stop and start services and run cutover hooks anyway, using only
        /// the tree's own init scripts (DIR/etc/init.d); for tests and staged trees.
        #[arg(long)]
        allow_service_control: bool,
        /// Longest wait between reconnection attempts, in seconds.
        #[arg(long, default_value_t = 30)]
        max_backoff: u64,
    },
    /// Write this server (inventory, scan, data) to a bundle for a node it cannot reach;
    /// import it there with `p2c import FILE --ctid N`. Run again with the same --out to
    /// continue an interrupted export.
    Export {
        /// The bundle file to write (on removable media).
        #[arg(long, value_name = "FILE", required_unless_present = "verify", conflicts_with = "verify")]
        out: Option<PathBuf>,
        /// Check a bundle instead: every record, chunk and entry, and its trailer.
        #[arg(long, value_name = "FILE")]
        verify: Option<PathBuf>,
        /// The directory to treat as the server's root.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Where facts come from (default: live for /, tree otherwise).
        #[arg(long, value_enum)]
        facts: Option<Facts>,
        /// Source path not to export (repeatable).
        #[arg(long = "exclude", value_name = "PATH")]
        excludes: Vec<String>,
        /// The name the node will know this server by (default: its host name).
        #[arg(long)]
        name: Option<String>,
        /// Read the source at most this fast (e.g. 50M = 50 MiB/s), to spare a busy server.
        #[arg(long)]
        bwlimit: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Print this server's inventory (what the controller will see).
    Inventory {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, value_enum)]
        facts: Option<Facts>,
        #[command(flatten)]
        json: JsonArg,
    },
}

fn facts(f: Option<Facts>, root: &std::path::Path) -> FactsFrom {
    match f {
        Some(Facts::Live) => FactsFrom::Live,
        Some(Facts::Tree) => FactsFrom::Tree,
        None if root == std::path::Path::new("/") => FactsFrom::Live,
        None => FactsFrom::Tree,
    }
}

fn main() {
    let cli = Cli::parse();
    p2c_common::telemetry::init(cli.log.log_format, "info");
    let code = match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
        Command::Enroll { token, state_dir, controller, proxy, json } => {
            let e = rt.block_on(p2c_agent::enroll::enroll(p2c_agent::enroll::EnrollOptions {
                token: &token,
                state_dir: &state_dir,
                controller,
                proxy,
            }))?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "enrolled as {} with controller {} (CA {})\nstart it with: p2c-agent run --state-dir {}",
                    e.name,
                    e.controller.join(", "),
                    &e.ca_fingerprint[..16],
                    e.state_dir
                );
            }
            Ok(())
        }
        Command::Run { state_dir, root, facts: f, allow_service_control, max_backoff } => {
            let settings = p2c_agent::config::AgentSettings::load(&state_dir)?;
            let root = root.canonicalize().map_err(|e| anyhow::anyhow!("--root {}: {e}", root.display()))?;
            let mut opts = p2c_agent::session::RunOptions::new(&root);
            opts.facts = facts(f, &root);
            opts.allow_service_control = allow_service_control;
            opts.max_backoff = std::time::Duration::from_secs(max_backoff.max(1));
            rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                    }
                    let _ = tx.send(true);
                });
                p2c_agent::session::run(settings, opts, rx).await;
            });
            Ok(())
        }
        Command::Export { out, verify, root, facts: f, excludes, name, bwlimit, json } => {
            if let Some(path) = verify {
                let v = p2c_agent::export::verify(&path)?;
                if json.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "bundle": path.display().to_string(),
                            "header": v.header,
                            "trailer": v.trailer,
                            "size": v.size,
                        }))?
                    );
                } else {
                    let t = &v.trailer;
                    println!(
                        "{}: a complete bundle of {} ({} objects, {} of files, {} chunks in {}); every record, chunk and entry checked",
                        path.display(),
                        v.header.name,
                        t.objects,
                        p2c_common::units::human_bytes(t.file_bytes),
                        t.chunks,
                        p2c_common::units::human_bytes(v.size)
                    );
                }
                return Ok(());
            }
            let out = out.ok_or_else(|| anyhow::anyhow!("--out FILE is required"))?;
            let mut opts = p2c_agent::export::ExportOptions::new(&out, &root);
            opts.facts = facts(f, &root);
            opts.excludes = excludes;
            opts.name = name;
            opts.bwlimit = bwlimit.as_deref().map(p2c_common::units::parse_size).transpose()?.unwrap_or(0);
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = cancel.clone();
            rt.spawn(async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let r = p2c_agent::export::export(&opts, &cancel)?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.already_complete {
                println!("{} is a complete bundle of {} already; nothing to do", r.bundle, r.name);
            } else {
                let t = &r.trailer;
                if let Some(at) = r.resumed_at {
                    println!(
                        "continued an interrupted export: kept its first {}",
                        p2c_common::units::human_bytes(at)
                    );
                }
                println!(
                    "bundle {} of {}: {} objects, {} of files, {} distinct chunks stored in {}",
                    r.bundle,
                    r.name,
                    t.objects,
                    p2c_common::units::human_bytes(t.file_bytes),
                    t.chunks,
                    p2c_common::units::human_bytes(r.size)
                );
                if t.changed > 0 || t.skipped > 0 {
                    println!(
                        "{} file(s) changed while being read and {} entr(y/ies) were not carried (sockets, unreadable): see --json",
                        t.changed, t.skipped
                    );
                }
                println!(
                    "check it with `p2c-agent export --verify {}`; on the node: `p2c import FILE --ctid N`",
                    r.bundle
                );
            }
            Ok(())
        }
        // The inventory has no text form: JSON either way (`--json` is accepted for symmetry
        // with the other commands).
        Command::Inventory { root, facts: f, json: _ } => {
            let inv = p2c_agent::inventory::collect(&CollectOptions { facts: facts(f, &root), root });
            println!("{}", serde_json::to_string_pretty(&inv)?);
            Ok(())
        }
    }
}
