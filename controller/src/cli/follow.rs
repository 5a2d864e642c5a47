//! Following a migration: the report, a progress bar with bytes, rate and ETA, the summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2c_common::migration::{MigrationState, MigrationSummary};

use super::client::{Update, Updates};

/// Prints a migration's events until it ends; returns the exit code (0 done or synced).
pub async fn follow(mut updates: Updates, json: bool) -> anyhow::Result<i32> {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut summary: Option<MigrationSummary> = None;
    let mut last_pass = u32::MAX;
    loop {
        let update = match updates.next().await {
            Ok(Some(u)) => u,
            Ok(None) => break,
            Err(why) => {
                bar.abandon();
                anyhow::bail!("lost the controller while following the migration: {why}");
            }
        };
        match update {
            Update::Progress(p) => {
                if p.pass != last_pass {
                    last_pass = p.pass;
                    bar.reset();
                }
                bar.set_prefix(format!("CT {} pass {} {}", p.ctid, p.pass, p.phase));
                bar.set_length(p.bytes_total.max(p.bytes_done));
                bar.set_position(p.bytes_done);
                bar.set_message(format!(
                    "{}/{} files, {} sent",
                    p.files_done,
                    p.files_total,
                    p2c_common::units::human_bytes(p.bytes_sent)
                ));
            }
            Update::Log(l) if !json => {
                bar.suspend(|| eprintln!("{l}"));
            }
            Update::Report(Some(r)) if !json => {
                bar.suspend(|| println!("{}", r.render()));
            }
            Update::Summary(s) => {
                summary = s.map(|s| *s);
                break;
            }
            // Logs and the report are for a terminal, not for --json.
            Update::Log(_) | Update::Report(_) => {}
        }
    }
    bar.finish_and_clear();
    let Some(s) = summary else {
        anyhow::bail!("the controller ended the stream without a summary; see `p2c status`");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", super::render::summary(&s));
    }
    match s.state {
        // A synced migration with an error is a cutover that was aborted and rolled back.
        MigrationState::Done => Ok(0),
        MigrationState::Synced if s.error.is_none() => Ok(0),
        _ => {
            if let Some(e) = &s.error {
                eprintln!("error: {e}");
            }
            Ok(1)
        }
    }
}
