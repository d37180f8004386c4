//! `narpush wait`: the barrier before a CI job ends. Exit 0 once nothing is pending or
//! uploading; exit 1 when paths failed (listed), or when the timeout passes first (with what
//! is still waiting and why).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Outcome;
use narpush::control;

/// Wait until the daemon's queue is empty (nothing pending or uploading).
///
/// Exit status: 0 all uploaded; 1 some paths failed, or the timeout passed (the reasons are
/// printed); 2 the daemon cannot be reached.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Give up after this many seconds (default: wait as long as it takes).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,

    /// The daemon's socket. Default: $NARPUSH_SOCKET, else `socket` from the config file,
    /// else /run/narpush/narpush.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

const POLL: Duration = Duration::from_millis(200);

pub fn run(args: &WaitArgs, config: Option<&Path>) -> anyhow::Result<Outcome> {
    wait_idle(
        &control::socket_path(args.socket.as_deref(), config),
        args.timeout,
    )
}

pub fn wait_idle(socket: &Path, timeout: Option<u64>) -> anyhow::Result<Outcome> {
    let deadline = timeout.map(|secs| Instant::now() + Duration::from_secs(secs));
    loop {
        let status = control::status(socket)?;
        if !status.failed.is_empty() {
            eprintln!("narpush: {} path(s) failed:", status.failed.len());
            for failed in &status.failed {
                eprintln!("  {}: {}", failed.path, failed.error);
            }
            eprintln!("(`narpush retry --all` puts them back in the queue)");
            return Ok(Outcome::PartialFailure);
        }
        if status.spool.rejected_total > 0 {
            eprintln!(
                "narpush: {} spooled request(s) were rejected (their paths are not queued):",
                status.spool.rejected_total
            );
            for rejected in &status.spool.rejected {
                eprintln!("  {}: {}", rejected.file, rejected.reason);
            }
            eprintln!("(push the paths again if they should be uploaded, then remove the files)");
            return Ok(Outcome::PartialFailure);
        }
        if status.idle() {
            eprintln!(
                "narpush: queue empty ({} path(s) uploaded since the queue was created)",
                status.uploaded.paths
            );
            return Ok(Outcome::Success);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "narpush: timed out with {} pending, {} uploading and {} spooled request(s) \
                 not read yet",
                status.counts.pending, status.counts.uploading, status.spool.waiting
            );
            for retrying in &status.retrying {
                eprintln!(
                    "  {} (attempt {}): {}",
                    retrying.path, retrying.attempts, retrying.last_error
                );
            }
            return Ok(Outcome::PartialFailure);
        }
        std::thread::sleep(POLL);
    }
}
