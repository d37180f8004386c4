//! The files the daemon makes in its state directory when it starts — the intake journal
//! (see [`super::intake`]) and `writer-id` (see [`super::settings`]) — may be refused by a
//! full disk. The daemon runs without them meanwhile: requests go to the queue directly (and
//! when the queue cannot write either, they are refused with the reason, so hooks spool
//! them), and the writer id lives in memory. This task makes them again, first after
//! [`FIRST_RETRY`], then doubling up to [`LAST_RETRY`], until both exist; then it ends, so an
//! idle daemon sleeps.

use std::sync::Arc;
use std::time::Duration;

use super::settings::{save_writer_id, WRITER_ID_FILE};
use super::shared::Shared;
use crate::error_chain;

/// The first wait before making a missing file again.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const LAST_RETRY: Duration = Duration::from_secs(30);

/// Makes the missing state files with a backoff until they all exist (see the module doc).
pub async fn run(shared: Arc<Shared>) {
    let mut wait = FIRST_RETRY;
    loop {
        let writer_file = shared.settings().config.state_dir.join(WRITER_ID_FILE);
        let writer_saved = writer_file.exists();
        if shared.intake.has_journal() && writer_saved {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.cancelled() => return,
        }
        wait = (wait * 2).min(LAST_RETRY);
        if !writer_saved {
            let id = shared.settings().engine.stream.writer;
            match save_writer_id(&writer_file, id) {
                Ok(()) => tracing::warn!(file = %writer_file.display(), "saved the writer id {id}"),
                Err(e) => tracing::debug!("{e:#}"),
            }
        }
        if !shared.intake.has_journal() {
            match shared.intake.open_journal(&shared.queue) {
                Ok(()) => {
                    tracing::warn!(
                        "the intake journal is open: acknowledgements take the fast path again"
                    );
                    // What it held from before is moved now.
                    shared.intake.wake();
                }
                Err(e) => tracing::debug!("intake journal not open yet: {}", error_chain(&e)),
            }
        }
    }
}
