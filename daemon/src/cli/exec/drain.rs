//! After COMMAND: wait until the private daemon has nothing left to do, showing progress, and
//! stop waiting at a signal. What is left then is reported by the caller, not lost silently.

use std::time::{Duration, Instant};

use super::private_daemon::PrivateDaemon;
use super::signals::StopSignals;
use narpush::daemon::status::StatusReport;

const POLL: Duration = Duration::from_millis(200);
/// A progress line at most this often, and only when something changed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

pub enum Drained {
    /// Nothing pending, uploading or spooled.
    Idle(StatusReport),
    /// A signal came first; the last status seen.
    Interrupted(StatusReport),
}

pub async fn wait_until_idle(
    daemon: &PrivateDaemon,
    signals: &mut StopSignals,
) -> anyhow::Result<Drained> {
    let mut last_line = String::new();
    let mut last_shown = Instant::now();
    loop {
        let status = daemon.status()?;
        let spooled = daemon.spooled_requests();
        if status.idle() && spooled == 0 {
            return Ok(Drained::Idle(status));
        }
        let line = progress_line(&status, spooled);
        if line != last_line && last_shown.elapsed() >= PROGRESS_EVERY {
            say!("narpush: {line}");
            last_line = line;
            last_shown = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = signals.recv() => return Ok(Drained::Interrupted(status)),
        }
    }
}

fn progress_line(status: &StatusReport, spooled: usize) -> String {
    let c = &status.counts;
    let mut line = format!(
        "uploading to {}: {} pending, {} uploading, {} done, {} failed",
        status.target, c.pending, c.uploading, c.done, c.failed
    );
    if c.skipped > 0 {
        line.push_str(&format!(", {} skipped", c.skipped));
    }
    if spooled > 0 {
        line.push_str(&format!(", {spooled} request(s) in the spool"));
    }
    if let Some(retry) = status.retrying.first() {
        line.push_str(&format!(
            "; retrying {} (attempt {}): {}",
            retry.path, retry.attempts, retry.last_error
        ));
    }
    line
}
