//! Where a validated enqueue request goes on its way to the queue: first the intake journal
//! (one small write and one `fdatasync` — all the hook's acknowledgement waits for), then,
//! right after the ack, the mover writes it into the queue (sled), and a checkpoint later
//! flushes the queue so that the journal may reuse its space.
//!
//! Invariants:
//! - **Ack after durability.** [`Intake::accept`] returns only once the request is on disk,
//!   in the journal or, when the journal cannot take it (no room, failed, absent), in the
//!   queue by its own durable flush. A queue that failed refuses requests, as before.
//! - **Moved exactly once.** The mover writes what the journal holds into the queue together
//!   with the journal's mark, and the journal frees it only after a durable flush of the
//!   queue in the same epoch (see [`crate::queue::journal`]); if the queue fails first, the
//!   records are moved again. So a crash at any point neither loses nor repeats a request.
//!   Moves and checkpoints run one at a time, in the order the records were written.
//! - **One sync per acknowledgement.** The mover does not flush: the queue's flush (sled's
//!   and an `fdatasync` of its log) happens at the checkpoint, [`CHECKPOINT_AFTER`] after a
//!   move, when the journal is half full, or at shutdown — not once per request.
//! - **Seen at once.** The mover runs when woken by an accepted request (no polling: an idle
//!   daemon stays asleep), and [`Intake::caught_up`] lets `status` (and so `wait`) wait for
//!   the moves of everything acknowledged before it asked.
//!
//! - **Never half made.** The journal is created only with room to spare (twice its size
//!   free), and a creation that fails anyway removes what it wrote; a file shorter than a
//!   journal (a creation cut off, which never held a record) is removed at the next attempt.
//!   Without a journal, requests go to the queue directly, and [`super::state_files`] tries
//!   again with a backoff until the journal exists.
//!
//! For tests only, `NARPUSH_TEST_HOLD_INTAKE=1` stops the mover from moving anything (and
//! `status` from waiting for it), so that a test can kill the daemon while acknowledged
//! requests are in the journal alone.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::error_chain;
use crate::format::store_path::StorePath;
use crate::gcroots::GcRoots;
use crate::queue::journal::{self, Appended, Journal, JournalError, JOURNAL_SIZE};
use crate::queue::{NewPath, Queue, QueueError};

/// The test-only switch that holds the mover (see the module doc).
pub const HOLD_ENV: &str = "NARPUSH_TEST_HOLD_INTAKE";
/// How long after a move the queue is flushed, so that the journal may reuse its space (the
/// pipeline's own flushes usually cover the moved records before, and this one is free).
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);
/// How long `status` waits for the mover before answering from the queue as it is.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(2);

/// The queue epoch of the records moved since the last checkpoint.
#[derive(Default)]
struct Mover {
    epoch: Option<u64>,
    /// Records of different epochs were written (the queue was opened again in between).
    mixed: bool,
}

impl Mover {
    fn written_in(&mut self, epoch: u64) {
        if *self.epoch.get_or_insert(epoch) != epoch {
            self.mixed = true;
        }
    }
}

/// Why the intake journal is not open.
#[derive(Debug, thiserror::Error)]
pub enum JournalStartError {
    #[error("cannot read how far the intake journal was moved into the queue")]
    Mark(#[source] QueueError),
    #[error(
        "not creating the intake journal {path}: {free} bytes free on its disk, fewer than the \
         {needed} that leave room to spare"
    )]
    NoRoom {
        path: String,
        free: u64,
        needed: u64,
    },
    #[error("cannot remove the unfinished intake journal {path}")]
    RemoveUnfinished {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

pub struct Intake {
    /// Where the journal lives (or will, once it can be made).
    path: PathBuf,
    /// Unset while the journal cannot be opened: every request goes to the queue directly.
    journal: OnceLock<Journal>,
    /// Wakes the mover.
    wake: Notify,
    /// The sequence number of the last journal record moved into the queue.
    moved: watch::Sender<u64>,
    /// One move or checkpoint at a time, so the queue's mark only grows.
    mover: tokio::sync::Mutex<Mover>,
    hold: bool,
}

impl Intake {
    /// Opens the journal in `state_dir`. Records it holds that the queue does not yet have
    /// are moved by the mover as soon as it runs; a journal that cannot be opened is logged,
    /// and requests are then queued directly (slower acknowledgements, same guarantees) until
    /// [`Intake::open_journal`] succeeds.
    pub fn open(state_dir: &Path, queue: &Queue) -> Intake {
        let hold = std::env::var_os(HOLD_ENV).is_some_and(|value| value == "1");
        if hold {
            tracing::warn!(
                "{HOLD_ENV}=1: the intake journal is not moved into the queue (tests only)"
            );
        }
        let intake = Intake {
            path: state_dir.join(journal::FILE_NAME),
            journal: OnceLock::new(),
            wake: Notify::new(),
            moved: watch::Sender::new(0),
            mover: tokio::sync::Mutex::new(Mover::default()),
            hold,
        };
        if let Err(e) = intake.open_journal(queue) {
            tracing::error!(
                "{}; requests are queued directly, which makes each acknowledgement slower, \
                 until it can be opened (tried again in a while)",
                error_chain(&e)
            );
        }
        intake
    }

    /// Whether the journal is open (requests take the fast path).
    pub fn has_journal(&self) -> bool {
        self.journal.get().is_some()
    }

    /// Opens the journal, creating it if needed (see the module doc on what a failed creation
    /// leaves); does nothing when it is open already. Records it holds are left to the mover.
    pub fn open_journal(&self, queue: &Queue) -> Result<(), JournalStartError> {
        if self.has_journal() {
            return Ok(());
        }
        let path = &self.path;
        let shown = || path.display().to_string();
        let creating = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.len() >= JOURNAL_SIZE => false,
            Ok(meta) => {
                // A record is written only into a whole journal: this one never held any.
                std::fs::remove_file(path).map_err(|source| {
                    JournalStartError::RemoveUnfinished {
                        path: shown(),
                        source,
                    }
                })?;
                tracing::warn!(
                    journal = %path.display(),
                    "removed an unfinished intake journal ({} bytes) that a failed creation left",
                    meta.len()
                );
                true
            }
            Err(_) => true,
        };
        let moved = queue.journal_mark().map_err(JournalStartError::Mark)?;
        if creating {
            let needed = 2 * JOURNAL_SIZE;
            if let Some(free) = free_space(path).filter(|&free| free < needed) {
                return Err(JournalStartError::NoRoom {
                    path: shown(),
                    free,
                    needed,
                });
            }
        }
        let (journal, recovered) = match Journal::open(path, moved) {
            Ok(opened) => opened,
            Err(e) => {
                if creating {
                    // Whatever the failed creation wrote is ours: give the space back.
                    let _ = std::fs::remove_file(path);
                }
                return Err(e.into());
            }
        };
        if recovered.records > 0 {
            tracing::warn!(
                journal = %path.display(),
                "the intake journal holds {} acknowledged request(s) not yet in the \
                 queue; moving them into it",
                recovered.records
            );
        }
        let _ = self.journal.set(journal);
        Ok(())
    }

    /// The paths of the requests the journal holds and the queue may not (yet); for the start,
    /// before the mover runs.
    pub async fn journaled_paths(&self) -> Vec<StorePath> {
        let Some(journal) = self.journal.get() else {
            return Vec::new();
        };
        let _mover = self.mover.lock().await;
        let Some(taken) = journal.take() else {
            return Vec::new();
        };
        let paths = taken.paths.iter().map(|new| new.path.clone()).collect();
        journal.put_back(taken);
        paths
    }

    /// Makes `new` durable; once this returns, the request may be acknowledged.
    /// `pipeline` is woken for what reaches the queue (and to reopen a failed queue).
    pub async fn accept(
        &self,
        queue: &Queue,
        roots: &GcRoots,
        pipeline: &Notify,
        new: &[NewPath],
    ) -> Result<(), QueueError> {
        if let Some(reason) = queue.failure() {
            // The pipeline is what reopens a failed queue.
            pipeline.notify_one();
            return Err(QueueError::Closed { reason });
        }
        if let Some(journal) = self.journal.get().filter(|j| !j.has_failed()) {
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
        let queued = queue.enqueue(new).await;
        pipeline.notify_one();
        queued?;
        ensure_roots(roots, new).await;
        Ok(())
    }

    /// Wakes the mover (after the queue was opened again, for what it could not move).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Returns once the mover was woken (by an accepted request or [`Intake::wake`]).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Moves what the journal holds into the queue (a checkpoint too when the journal is
    /// half full); returns how many paths. What cannot be moved stays for the next move.
    pub async fn move_now(
        &self,
        queue: &Queue,
        roots: &GcRoots,
        pipeline: &Notify,
    ) -> Result<usize, QueueError> {
        let Some(journal) = self.journal.get().filter(|_| !self.hold) else {
            return Ok(0);
        };
        let mut mover = self.mover.lock().await;
        let Some(taken) = journal.take() else {
            return Ok(0);
        };
        let epoch = queue.epoch();
        if let Err(e) = queue.record_journaled(&taken.paths, taken.mark) {
            journal.put_back(taken);
            return Err(e);
        }
        let count = taken.paths.len();
        ensure_roots(roots, &taken.paths).await;
        self.moved.send_replace(taken.seq);
        journal.written(taken);
        mover.written_in(epoch);
        pipeline.notify_one();
        if journal.past_half() {
            self.checkpoint_locked(journal, &mut mover, queue).await?;
        }
        Ok(count)
    }

    /// Flushes the queue durably, so that the journal may reuse the space of what was moved.
    pub async fn checkpoint(&self, queue: &Queue) -> Result<(), QueueError> {
        let Some(journal) = self.journal.get() else {
            return Ok(());
        };
        let mut mover = self.mover.lock().await;
        self.checkpoint_locked(journal, &mut mover, queue).await
    }

    async fn checkpoint_locked(
        &self,
        journal: &Journal,
        mover: &mut Mover,
        queue: &Queue,
    ) -> Result<(), QueueError> {
        if !journal.has_unchecked() {
            return Ok(());
        }
        let flushed = queue.flush().await;
        // A flush of a database opened again since the writes does not cover them.
        let same_epoch = mover.epoch.take() == Some(queue.epoch()) && !mover.mixed;
        mover.mixed = false;
        match flushed {
            Ok(()) if same_epoch => journal.checkpointed(),
            _ => journal.rewind(),
        }
        flushed
    }

    /// Whether moved records wait for a checkpoint.
    pub fn has_unchecked(&self) -> bool {
        self.journal.get().is_some_and(Journal::has_unchecked)
    }

    /// Waits (at most [`CATCH_UP_PATIENCE`]) until every request acknowledged so far is in
    /// the queue; not at all while the queue has failed (nothing can be moved then).
    pub async fn caught_up(&self, queue: &Queue) {
        let Some(journal) = self.journal.get().filter(|_| !self.hold) else {
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

/// Makes again the GC roots of paths just written into the queue that the pipeline released
/// meanwhile (see [`GcRoots::release_if`]). A root that cannot be made is logged: the
/// request is durable already, and the next start makes the root again.
async fn ensure_roots(roots: &GcRoots, new: &[NewPath]) {
    let paths: Vec<StorePath> = new.iter().map(|n| n.path.clone()).collect();
    match roots.ensure(&paths).await {
        Ok(0) => {}
        Ok(made) => tracing::info!("made {made} GC root(s) again that an upload just released"),
        Err(e) => tracing::error!("{}", error_chain(&e)),
    }
}

/// The bytes free for an unprivileged writer on the disk of `path`'s directory, if known.
fn free_space(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path.parent()?).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}
