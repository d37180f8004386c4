//! Where a validated enqueue request goes on its way to the queue: first the intake journal
//! (one small write and one `fdatasync` — what the hook's acknowledgement waits for), then,
//! right after the ack, the mover writes it into the queue (sled) and flushes that.
//!
//! Invariants:
//! - **Ack after durability.** [`Intake::accept`] returns only once the request is on disk,
//!   in the journal or, when the journal cannot take it (no room, failed, absent), in the
//!   queue by its own durable flush. A queue that failed refuses requests, as before.
//! - **Moved exactly once.** The mover writes what the journal holds into the queue together
//!   with the journal's mark, and lets the journal reuse its space only after that flush (see
//!   [`crate::queue::journal`]), so a crash at any point neither loses nor repeats a request.
//!   Moves run one at a time, in the order the records were written.
//! - **Seen at once.** The mover runs when woken by an accepted request (no polling: an idle
//!   daemon stays asleep), and [`Intake::caught_up`] lets `status` (and so `wait`) wait for
//!   the moves of everything acknowledged before it asked.
//!
//! For tests only, `NARPUSH_TEST_HOLD_INTAKE=1` stops the mover from moving anything (and
//! `status` from waiting for it), so that a test can kill the daemon while acknowledged
//! requests are in the journal alone.

use std::path::Path;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::shared::Shared;
use crate::error_chain;
use crate::queue::journal::{self, Appended, Journal};
use crate::queue::{NewPath, Queue, QueueError};

/// The test-only switch that holds the mover (see the module doc).
pub const HOLD_ENV: &str = "NARPUSH_TEST_HOLD_INTAKE";
/// How long `status` waits for the mover before answering from the queue as it is.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(2);

pub struct Intake {
    /// `None` when the journal could not be opened: every request goes to the queue directly.
    journal: Option<Journal>,
    /// Wakes the mover.
    wake: Notify,
    /// The sequence number of the last journal record moved into the queue.
    moved: watch::Sender<u64>,
    /// One move at a time, so the queue's mark only grows.
    moving: tokio::sync::Mutex<()>,
    hold: bool,
}

impl Intake {
    /// Opens the journal in `state_dir`. Records it holds that the queue does not yet have
    /// are moved by the mover as soon as it runs; a journal that cannot be opened is logged,
    /// and requests are then queued directly (slower acknowledgements, same guarantees).
    pub fn open(state_dir: &Path, queue: &Queue) -> Result<Intake, QueueError> {
        let moved = queue.journal_mark()?;
        let path = state_dir.join(journal::FILE_NAME);
        let journal = match Journal::open(&path, moved) {
            Ok((journal, recovered)) => {
                if recovered.records > 0 {
                    tracing::warn!(
                        journal = %path.display(),
                        "the intake journal holds {} acknowledged request(s) not yet in the \
                         queue; moving them into it",
                        recovered.records
                    );
                }
                Some(journal)
            }
            Err(e) => {
                tracing::error!(
                    "{}; requests are queued directly, which makes each acknowledgement slower",
                    error_chain(&e)
                );
                None
            }
        };
        let hold = std::env::var_os(HOLD_ENV).is_some_and(|value| value == "1");
        if hold {
            tracing::warn!(
                "{HOLD_ENV}=1: the intake journal is not moved into the queue (tests only)"
            );
        }
        Ok(Intake {
            journal,
            wake: Notify::new(),
            moved: watch::Sender::new(0),
            moving: tokio::sync::Mutex::new(()),
            hold,
        })
    }

    /// Makes `new` durable; once this returns, the request may be acknowledged.
    pub async fn accept(&self, shared: &Shared, new: &[NewPath]) -> Result<(), QueueError> {
        if let Some(reason) = shared.queue.failure() {
            // The pipeline is what reopens a failed queue.
            shared.wake.notify_one();
            return Err(QueueError::Closed { reason });
        }
        if let Some(journal) = self.journal.as_ref().filter(|j| !j.has_failed()) {
            let appended = journal.append(new).await;
            // Also after a failed write: what the journal took before is still to be moved.
            self.wake.notify_one();
            match appended {
                Ok(Appended::Durable(_)) => return Ok(()),
                Ok(Appended::NoRoom) => {}
                Err(e) => tracing::error!(
                    "{}; requests are queued directly from now on",
                    error_chain(&e)
                ),
            }
        }
        // On failure too: the pipeline is what reopens a failed queue.
        let queued = shared.queue.enqueue(new).await;
        shared.wake.notify_one();
        queued
    }

    /// Wakes the mover (after the queue was opened again, for what it could not move).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Moves what the journal holds into the queue and flushes it; returns how many paths.
    /// What cannot be moved stays for the next move.
    pub async fn move_now(&self, queue: &Queue, pipeline: &Notify) -> Result<usize, QueueError> {
        let Some(journal) = self.journal.as_ref().filter(|_| !self.hold) else {
            return Ok(0);
        };
        let _turn = self.moving.lock().await;
        let Some(taken) = journal.take() else {
            return Ok(0);
        };
        match queue.enqueue_journaled(&taken.paths, taken.mark).await {
            Ok(()) => {
                journal.moved(taken.mark);
                self.moved.send_replace(taken.seq);
                pipeline.notify_one();
                Ok(taken.paths.len())
            }
            Err(e) => {
                journal.put_back(taken);
                Err(e)
            }
        }
    }

    /// Waits (at most [`CATCH_UP_PATIENCE`]) until every request acknowledged so far is in
    /// the queue; not at all while the queue has failed (nothing can be moved then).
    pub async fn caught_up(&self, queue: &Queue) {
        let Some(journal) = self.journal.as_ref().filter(|_| !self.hold) else {
            return;
        };
        if queue.is_broken() {
            return;
        }
        let target = journal.appended();
        let mut moved = self.moved.subscribe();
        let _ = tokio::time::timeout(CATCH_UP_PATIENCE, moved.wait_for(|&seq| seq >= target)).await;
    }
}

/// The mover: moves the journal into the queue whenever woken, until the stop signal.
pub async fn run(shared: std::sync::Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.intake.wake.notified() => {}
            () = shared.stop.cancelled() => return,
        }
        if let Err(e) = shared.intake.move_now(&shared.queue, &shared.wake).await {
            // The pipeline is what reopens a failed queue; it wakes the mover once it did.
            shared.wake.notify_one();
            tracing::error!(
                "cannot move acknowledged requests from the intake journal into the queue \
                 yet (they stay in the journal; moved once the queue works again): {}",
                error_chain(&e)
            );
        }
    }
}
