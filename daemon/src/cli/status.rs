//! `narpush status`: the queue at a glance, for a person (text) or a script (`--json`, the
//! document described in docs/protocol.md).

use std::path::{Path, PathBuf};

use indicatif::{HumanBytes, HumanDuration};

use super::Outcome;
use narpush::control;
use narpush::daemon::status::{ClosureStages, StatusReport};

/// Uploads listed by the text output (largest first); `--json` has them all.
const SHOWN_UPLOADS: usize = 10;

/// Show the queue: counts per state, every upload in progress, retries and failures with their
/// reasons, totals, and the public key(s) clients must trust.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status document as JSON (stable; see docs/protocol.md).
    #[arg(long)]
    json: bool,

    /// The daemon's socket. Default: $NARPUSH_SOCKET, else `socket` from the config file,
    /// else /run/narpush/narpush.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

pub fn run(args: &StatusArgs, config: Option<&Path>) -> anyhow::Result<Outcome> {
    let report = control::status(&control::socket_path(args.socket.as_deref(), config))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(Outcome::Success)
}

fn ago(secs: f64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs_f64(secs.max(0.0)))
}

pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("target:      {}", report.target));
    for key in &report.public_keys {
        line(format!("public key:  {key}"));
    }
    let c = &report.counts;
    line(format!(
        "queue:       {} pending, {} uploading, {} failed, {} done",
        c.pending, c.uploading, c.failed, c.done
    ));
    if let Some(age) = report.oldest_waiting_secs {
        line(format!("oldest:      waiting for {}", ago(age)));
    }
    let stages = &report.closure;
    if *stages != ClosureStages::default() {
        line(format!(
            "closure:     {} resolving, {} checking, {} storing, {} waiting for references, {} publishing",
            stages.resolving,
            stages.checking,
            stages.storing,
            stages.waiting_for_references,
            stages.publishing
        ));
    }
    for upload in report.uploads.iter().take(SHOWN_UPLOADS) {
        line(format!(
            "uploading:   {} ({} of {} NAR, for {})",
            upload.path,
            HumanBytes(upload.nar_bytes_done),
            HumanBytes(upload.nar_bytes_total),
            ago(upload.elapsed_secs)
        ));
    }
    if report.uploads.len() > SHOWN_UPLOADS {
        line(format!(
            "             … and {} smaller upload(s) (--json lists them all)",
            report.uploads.len() - SHOWN_UPLOADS
        ));
    }
    line(format!(
        "uploaded:    {} path(s), {} NAR in total",
        report.uploaded.paths,
        HumanBytes(report.uploaded.nar_bytes)
    ));
    if report.skipped_upstream.paths > 0 {
        line(format!(
            "upstream:    {} path(s), {} NAR not uploaded since start: served upstream",
            report.skipped_upstream.paths,
            HumanBytes(report.skipped_upstream.nar_bytes)
        ));
    }
    for r in &report.retrying {
        line(format!(
            "retrying:    {} (attempt {}, next in {}): {}",
            r.path,
            r.attempts,
            ago(r.next_attempt_in_secs),
            r.last_error
        ));
    }
    for f in &report.failed {
        line(format!(
            "FAILED:      {} (after {} attempt(s), {} ago): {}",
            f.path,
            f.attempts,
            ago(f.failed_secs_ago),
            f.error
        ));
    }
    if report.spool.waiting > 0 {
        line(format!(
            "spool:       {} request(s) not read yet",
            report.spool.waiting
        ));
    }
    for r in &report.spool.rejected {
        line(format!("REJECTED:    {}: {}", r.file, r.reason));
    }
    if report.spool.rejected_total > report.spool.rejected.len() as u64 {
        line(format!(
            "             … {} rejected spool file(s) in all",
            report.spool.rejected_total
        ));
    }
    out
}
