//! `narpush status`: the queue at a glance, for a person (text) or a script (`--json`, the
//! document described in docs/protocol.md); `--watch` redraws it until Ctrl-C ([`watch`]).

mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{HumanBytes, HumanDuration};

use super::Outcome;
use narpush::control;
use narpush::daemon::activity::ClassFailures;
use narpush::daemon::status::{ClosureStages, StatusReport, Upload};

/// Uploads listed by the text output (largest first); `--json` has them all.
const SHOWN_UPLOADS: usize = 10;
/// Skipped paths listed at most (`--json` lists more).
const SHOWN_SKIPPED: usize = 10;

/// Show the queue: counts per state, every upload in progress with its rate and ETA, retries
/// and failures with their reasons, totals, and the public key(s) clients must trust.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status document as JSON (stable; see docs/protocol.md).
    #[arg(long, conflicts_with = "watch")]
    json: bool,

    /// Refresh until Ctrl-C (which exits 0): redrawn in place on a terminal, printed again
    /// after a blank line otherwise.
    #[arg(long)]
    watch: bool,

    /// How often --watch refreshes, e.g. "500ms", "2s" (at least 100ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "2s", requires = "watch")]
    interval: Duration,

    /// The daemon's socket. Default: $NARPUSH_SOCKET, else `socket` from the config file,
    /// else /run/narpush/narpush.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// The shortest `--interval`: each refresh scans the daemon's queue.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration like \"2s\" or \"500ms\": {e}"))?;
    if interval < MIN_INTERVAL {
        return Err(format!("'{text}' is below the shortest interval, 100ms"));
    }
    Ok(interval)
}

pub fn run(args: &StatusArgs, config: Option<&Path>) -> anyhow::Result<Outcome> {
    let socket = control::socket_path(args.socket.as_deref(), config);
    if args.watch {
        return watch::run(socket, args.interval);
    }
    let report = control::status(&socket)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(Outcome::Success)
}

/// "40.0 MiB of 150.0 MiB NAR, 26%, 12.5 MiB/s, about 8 seconds left, for 3 seconds".
fn progress(upload: &Upload) -> String {
    let mut text = format!(
        "{} of {} NAR",
        HumanBytes(upload.nar_bytes_done),
        HumanBytes(upload.nar_bytes_total)
    );
    if let Some(percent) = upload
        .nar_bytes_done
        .saturating_mul(100)
        .checked_div(upload.nar_bytes_total)
    {
        text += &format!(", {percent}%");
    }
    if let Some(rate) = upload.bytes_per_sec {
        // Whole bytes per second are precise enough to show.
        text += &format!(", {}/s", HumanBytes(rate as u64));
    }
    if let Some(eta) = upload.eta_secs {
        text += &format!(", about {} left", ago(eta));
    }
    text + &format!(", for {}", ago(upload.elapsed_secs))
}

/// "last transient: ERROR (5 seconds ago)", if that class failed since the start.
fn last_error(class: &str, tally: &ClassFailures) -> Option<String> {
    let error = tally.last_error.as_ref()?;
    let when = tally
        .last_error_secs_ago
        .map(|secs| format!(" ({} ago)", ago(secs)))
        .unwrap_or_default();
    Some(format!("last {class}: {error}{when}"))
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
    let skipped = if c.skipped > 0 {
        format!(", {} skipped", c.skipped)
    } else {
        String::new()
    };
    line(format!(
        "queue:       {} pending, {} uploading, {} failed, {} done{skipped}",
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
            "uploading:   {} ({})",
            upload.path,
            progress(upload)
        ));
    }
    if report.uploads.len() > SHOWN_UPLOADS {
        line(format!(
            "             … and {} smaller upload(s) (--json lists them all)",
            report.uploads.len() - SHOWN_UPLOADS
        ));
    }
    let last = report
        .last_upload_secs_ago
        .map(|secs| format!("; the last {} ago", ago(secs)))
        .unwrap_or_default();
    line(format!(
        "uploaded:    {} path(s), {} NAR, {} stored in total{last}",
        report.uploaded.paths,
        HumanBytes(report.uploaded.nar_bytes),
        HumanBytes(report.uploaded.stored_bytes),
    ));
    if report.skipped_present > 0 {
        line(format!(
            "present:     {} path(s) not uploaded since start: already in the cache",
            report.skipped_present
        ));
    }
    if report.skipped_upstream.paths > 0 {
        line(format!(
            "upstream:    {} path(s), {} NAR not uploaded since start: served upstream",
            report.skipped_upstream.paths,
            HumanBytes(report.skipped_upstream.nar_bytes)
        ));
    }
    if report.requests.total > 0 {
        line(format!(
            "requests:    {} sent since start",
            report.requests.breakdown()
        ));
    }
    let by_reason: Vec<String> = report
        .skipped
        .by_reason
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    if !by_reason.is_empty() {
        line(format!(
            "filtered:    {} path(s) not uploaded since start, by the push filters",
            by_reason.join(", ")
        ));
    }
    for s in report.skipped.paths.iter().take(SHOWN_SKIPPED) {
        line(format!("skipped:     {} ({})", s.path, s.reason));
    }
    if report.skipped.paths.len() > SHOWN_SKIPPED {
        line(format!(
            "             … and {} more skipped (--json lists up to 100)",
            report.skipped.paths.len() - SHOWN_SKIPPED
        ));
    }
    let failures = &report.failures;
    if failures.transient.attempts > 0 || failures.permanent.attempts > 0 {
        line(format!(
            "failures:    {} transient ({} retried), {} permanent attempt(s) since start",
            failures.transient.attempts, report.retries, failures.permanent.attempts
        ));
    }
    for (class, tally) in [
        ("transient", &failures.transient),
        ("permanent", &failures.permanent),
    ] {
        if let Some(text) = last_error(class, tally) {
            line(text);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use narpush::daemon::activity::Failures;

    #[test]
    fn the_text_shows_rate_eta_skips_and_the_last_error_of_each_class() {
        let report = StatusReport {
            uploads: vec![Upload {
                path: "/nix/store/aaaa-big".to_owned(),
                nar_bytes_done: 50 << 20,
                nar_bytes_total: 200 << 20,
                elapsed_secs: 5.0,
                bytes_per_sec: Some(10.0 * 1024.0 * 1024.0),
                eta_secs: Some(15.0),
            }],
            skipped_present: 3,
            failures: Failures {
                transient: ClassFailures {
                    attempts: 2,
                    last_error: Some("PUT nar/x: 503 SlowDown".to_owned()),
                    last_error_secs_ago: Some(4.0),
                },
                permanent: ClassFailures::default(),
            },
            retries: 2,
            requests: narpush::sink::requests::RequestCounts {
                total: 12,
                class_a: 10,
                class_b: 2,
                estimated_cost_usd: 0.0000457,
                ..Default::default()
            },
            ..StatusReport::default()
        };
        let text = render(&report);
        for expected in [
            "uploading:   /nix/store/aaaa-big (50.00 MiB of 200.00 MiB NAR, 25%, 10.00 MiB/s, about 15 seconds left, for 5 seconds)",
            "present:     3 path(s) not uploaded since start: already in the cache",
            "failures:    2 transient (2 retried), 0 permanent attempt(s) since start",
            "last transient: PUT nar/x: 503 SlowDown (4 seconds ago)",
            "requests:    12 (class A 10, class B 2, free 0), estimated cost $0.000046 sent since start",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\nnot in\n{text}");
        }
        assert!(!text.contains("last permanent"), "{text}");
    }
}
