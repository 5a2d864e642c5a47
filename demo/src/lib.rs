//! `p2c demo`: the whole product on one machine with no setup. A throw-away CA, a real
//! controller and a real agent talking gRPC over mutual TLS on loopback, a source
//! directory (or a small sample server made on the spot), the pre-flight report and a full
//! migration with cutover, driven through the admin socket like `p2c migrate`.

#![forbid(unsafe_code)]

mod sample;

use std::time::Duration;

use anyhow::Context;
use p2c_common::migration::MigrateOptions;
use p2c_controller::cli::DemoArgs;

pub use sample::build_sample;

/// The demo source's agent name.
const AGENT: &str = "demo-source";

/// Runs `p2c demo`: the migration's exit code (0, or what `p2c migrate` would return).
pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let w = &args.workdir;
    std::fs::create_dir_all(w).with_context(|| format!("cannot create {}", w.display()))?;
    let w = w.canonicalize()?;
    if w.join("state").exists() {
        anyhow::bail!("{} already holds a demo; remove it or choose another --workdir", w.display());
    }
    let source = match &args.source {
        Some(s) => s.canonicalize().with_context(|| format!("--source {}", s.display()))?,
        None => {
            let s = w.join("source");
            build_sample(&s).with_context(|| format!("cannot build the sample server in {}", s.display()))?;
            s
        }
    };
    if !args.json.json {
        eprintln!("demo: source server root {}", source.display());
    }
    p2c_controller::init::init(&p2c_controller::init::InitOptions {
        state_dir: w.join("state"),
        listen: "127.0.0.1:0".into(),
        advertise: Vec::new(),
        vz_root: Some(w.join("vz")),
        conf_dir: Some(w.join("etc/vz/conf")),
    })?;
    let settings = p2c_controller::config::Settings::load(&w.join("state"))?;
    let running = p2c_controller::server::start(settings).await?;
    let token =
        p2c_controller::admin::issue_token(&running.controller, AGENT, 600, vec![running.addr.to_string()])?;
    p2c_agent::enroll::enroll(p2c_agent::enroll::EnrollOptions {
        token: &token.encode(),
        state_dir: &w.join("agent"),
        controller: Vec::new(),
        proxy: None,
    })
    .await?;
    let agent_settings = p2c_agent::config::AgentSettings::load(&w.join("agent"))?;
    let (stop_agent, stop_rx) = tokio::sync::watch::channel(false);
    let mut opts = p2c_agent::session::RunOptions::new(&source);
    opts.facts = p2c_agent::inventory::FactsFrom::Tree;
    let agent = tokio::spawn(p2c_agent::session::run(agent_settings, opts, stop_rx));
    running
        .controller
        .sessions
        .wait_for(AGENT, Duration::from_secs(30))
        .await
        .context("the demo agent did not connect to the demo controller")?;
    if !args.json.json {
        eprintln!("demo: controller on {} (mTLS), agent {AGENT} enrolled and connected", running.addr);
    }
    let mut client = p2c_controller::cli::client::Admin::connect(&w.join("state")).await?;
    let opts = MigrateOptions {
        agent: AGENT.into(),
        ctid: args.ctid,
        cutover: true,
        target: args.target,
        ..Default::default()
    };
    let code = p2c_controller::cli::follow(client.migrate(&opts).await?, args.json.json).await?;
    let _ = stop_agent.send(true);
    let _ = agent.await;
    running.shutdown().await;
    if !args.json.json && code == 0 {
        eprintln!(
            "demo: container private area {}/vz/private/{}\ndemo: container config {}/etc/vz/conf/{}.conf",
            w.display(),
            args.ctid,
            w.display(),
            args.ctid
        );
    }
    Ok(code)
}
