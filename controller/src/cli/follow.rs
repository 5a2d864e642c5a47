//! Following a migration: the report, a progress bar with bytes, rate and ETA, the summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2c_common::findings::Report;
use p2c_common::migration::{MigrationState, MigrationSummary};
use p2c_proto::v1;
use tonic::Streaming;

/// Prints a migration's events until it ends; returns the exit code (0 done or synced).
pub async fn follow(mut stream: Streaming<v1::MigrateEvent>, json: bool) -> anyhow::Result<i32> {
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
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(s) => {
                bar.abandon();
                anyhow::bail!("lost the controller while following the migration: {}", s.message());
            }
        };
        match ev.event {
            Some(v1::migrate_event::Event::Progress(p)) => {
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
            Some(v1::migrate_event::Event::Log(l)) if !json => {
                bar.suspend(|| eprintln!("{l}"));
            }
            Some(v1::migrate_event::Event::ReportJson(r)) if !json => {
                if let Ok(r) = serde_json::from_slice::<Report>(&r) {
                    bar.suspend(|| println!("{}", r.render()));
                }
            }
            Some(v1::migrate_event::Event::SummaryJson(s)) => {
                summary = serde_json::from_slice(&s).ok();
                break;
            }
            // Logs and the report are for a terminal, not for --json.
            Some(v1::migrate_event::Event::Log(_) | v1::migrate_event::Event::ReportJson(_)) | None => {}
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
