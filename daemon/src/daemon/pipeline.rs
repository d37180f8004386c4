//! The daemon's side of the upload engine: due queue entries go in, and the engine's reports
//! come back as queue outcomes. The engine does the uploading; this module only keeps books.
//!
//! Loop: whenever work is queued (a wake-up) or a retry comes due, wait `batch_window` so that
//! requests arriving together are resolved together, mark every due entry `uploading`, and
//! submit it. Entries already with the engine keep uploading meanwhile: a big upload never
//! holds back what arrives after it. After a fatal stop (a panic), the entries that were in
//! flight are submitted one at a time, each alone in the engine (`queue::quarantine`). The engine holds at most [`admission::IN_ENGINE`]
//! submitted entries; a larger backlog stays `pending` in the queue until outcomes make room.
//!
//! Outcomes of an entry:
//! - in the cache (uploaded now, or found there): `done`, its build log uploaded (best
//!   effort) when `upload_build_logs` is on;
//! - transient failure (network, 5xx, throttling, the store not answering, a reference that
//!   failed): back to `pending` after an exponential backoff with jitter, capped at
//!   `retry_max_delay_ms`, never sooner than a `Retry-After` the server sent (itself capped at
//!   `retry_max_delay_ms`); after
//!   `max_attempts` attempts: `failed`;
//! - permanent failure (path gone from the store, NarHash mismatch, access denied): `failed`
//!   at once, with the reason;
//! - skipped by the push filters (excluded, or needs an excluded path nobody serves):
//!   `skipped`, with the reason; finished like `done`, not a failure, never retried.
//!
//! A GC root is released only once the queue, read after the outcome was recorded, says the
//! entry is `done`, `skipped` or gone; never because the queue could not be read.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::shared::Shared;
use crate::config::Config;
use crate::engine::{Failure, Report, Reports};
use crate::format::store_path::StorePath;
use crate::gcroots::GcRoots;
use crate::queue::{now_ms, Outcome, Queue, SkipRecord};
use crate::sink::ErrorClass;
use crate::sleep_until;
use admission::Admission;

mod admission;

/// Entries taken at once at most.
const BATCH_LIMIT: usize = 1000;
/// How often `done` entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long to wait before using the queue again after it failed.
pub const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(5);
/// The furthest ahead a wake-up is scheduled (a later time is looked at again then).
const LONGEST_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// The pipeline's own books: outcomes the queue could not record yet (they are recorded
/// again before anything new is taken, so an entry never stays `uploading` for good).
#[derive(Default)]
struct Books {
    unrecorded: Vec<(StorePath, Outcome)>,
}

impl Books {
    /// Records `outcome` for `path`, or keeps it to record again; returns whether the queue
    /// took it.
    fn record(&mut self, queue: &Queue, path: &StorePath, outcome: Outcome) -> bool {
        match queue.finish(path, &outcome) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(%path, "cannot record the outcome now, will again: {e}");
                self.unrecorded.push((path.clone(), outcome));
                false
            }
        }
    }

    /// Records the outcomes the queue refused before, calling `recorded` for each path the
    /// queue took; returns whether none is left.
    fn record_again(&mut self, queue: &Queue, mut recorded: impl FnMut(&StorePath)) -> bool {
        let mut left = Vec::new();
        for (path, outcome) in self.unrecorded.drain(..) {
            match queue.finish(&path, &outcome) {
                Ok(()) => recorded(&path),
                Err(e) => {
                    tracing::error!(%path, "still cannot record the outcome: {e}");
                    left.push((path, outcome));
                }
            }
        }
        self.unrecorded = left;
        self.unrecorded.is_empty()
    }
}

pub async fn run(shared: Arc<Shared>, mut reports: Reports) {
    let mut last_prune = Instant::now();
    let mut books = Books::default();
    let mut admission = Admission::default();
    // When to take due entries next: `None` while nothing is pending.
    let mut take_at = Some(Instant::now());
    loop {
        tokio::select! {
            report = reports.recv() => match report {
                Some(report) => {
                    if let Some(at) = on_report(&shared, &mut books, &mut admission, report) {
                        take_at = Some(take_at.map_or(at, |taken| taken.min(at)));
                    }
                }
                None => {
                    // The engine ended (a panic): its supervisor stops the daemon and records
                    // why, which decides what becomes of the entries in flight.
                    shared.stop.cancelled().await;
                    return;
                }
            },
            () = shared.wake.notified() => {
                let gather = Instant::now() + shared.settings().config.batch_window;
                take_at = Some(take_at.map_or(gather, |at| at.min(gather)));
            }
            () = sleep_until(take_at) => {
                take_at = take_due(&shared, &mut books, &mut admission).await;
                if last_prune.elapsed() > PRUNE_EVERY {
                    last_prune = Instant::now();
                    if let Err(e) = shared.queue.prune(now_ms()) {
                        tracing::warn!("cannot prune the queue: {e}");
                    }
                }
            }
            () = shared.stop.cancelled() => break,
        }
    }
    // The engine drains after the stop: record what it still finishes.
    while let Some(report) = reports.recv().await {
        record(&shared, &mut books, report);
    }
    books.record_again(&shared.queue, |path| {
        release_root(&shared.queue, &shared.roots, path);
    });
}

/// Books one report and the room it makes in the engine; returns when to take entries next.
fn on_report(
    shared: &Shared,
    books: &mut Books,
    admission: &mut Admission,
    report: Report,
) -> Option<Instant> {
    let ended = match &report {
        Report::TopDone(path)
        | Report::TopFailed { top: path, .. }
        | Report::TopSkipped { top: path, .. } => Some(path.clone()),
        _ => None,
    };
    let next = record(shared, books, report);
    match ended {
        Some(path) if admission.finished(&path) => Some(Instant::now()),
        _ => next,
    }
}

/// Reopens a failed queue, records what could not be recorded, submits every due entry;
/// returns when to look again.
async fn take_due(
    shared: &Arc<Shared>,
    books: &mut Books,
    admission: &mut Admission,
) -> Option<Instant> {
    let pause = Some(Instant::now() + QUEUE_ERROR_PAUSE);
    if shared.queue.is_broken() && !reopen(shared).await {
        return pause;
    }
    let recorded_again = books.record_again(&shared.queue, |path| {
        release_root(&shared.queue, &shared.roots, path);
    });
    if !recorded_again {
        return pause;
    }
    let room = admission.room().min(BATCH_LIMIT);
    if room == 0 {
        // Taken again once the engine reports on what it holds.
        return None;
    }
    let now = now_ms();
    let max_attempts = shared.settings().config.max_attempts;
    let taken = shared
        .queue
        .take_due(now, room, max_attempts, admission.is_idle());
    if taken.suspects > 0 && !taken.entries.is_empty() {
        tracing::warn!(
            suspects = taken.suspects,
            "the daemon stopped on a fatal error during these uploads: each is tried alone, \
             nothing else meanwhile"
        );
    }
    if !taken.entries.is_empty() {
        // The attempts just counted must survive a crash the upload may cause, or a path
        // that kills the daemon would be retried forever.
        if let Err(e) = shared.queue.flush().await {
            tracing::error!("cannot save the attempts: {}", crate::error_chain(&e));
            return pause;
        }
        tracing::info!(paths = taken.entries.len(), "uploading");
        let mut tops = Vec::with_capacity(taken.entries.len());
        let mut realisations = Vec::new();
        // One the engine still holds (a queue reopen put it back to pending) is answered by
        // the report it is owed already.
        for entry in taken.entries {
            if admission.admit(&entry.path) {
                // With the paths: each is reported done only after its realisations.
                realisations.extend(entry.realisations);
                tops.push(entry.path);
            }
        }
        if !tops.is_empty() {
            shared.engine.submit_with_realisations(tops, realisations);
        }
    }
    if let Some(e) = taken.error {
        tracing::error!("cannot read the queue: {}", crate::error_chain(&e));
        return pause;
    }
    if taken.suspects > 0 {
        // Quarantine: taken again once the engine reports on what it holds (at once if it
        // holds nothing: the suspect changed as it was taken).
        if admission.is_idle() {
            return Some(Instant::now());
        }
        admission.hold_back();
        return None;
    }
    match shared.queue.next_due_ms() {
        Ok(Some(at)) => Some(instant_in(at.saturating_sub(now))),
        Ok(None) => None,
        Err(e) => {
            tracing::error!("cannot read the queue: {}", crate::error_chain(&e));
            pause
        }
    }
}

/// Opens the failed queue database again; returns whether it is open. Spooled requests that
/// could not be queued meanwhile, and journaled ones that could not be moved, are looked at
/// again at once.
async fn reopen(shared: &Arc<Shared>) -> bool {
    let queue = shared.queue.clone();
    let reopened = tokio::task::spawn_blocking(move || queue.reopen()).await;
    match reopened {
        Ok(Ok(())) => {
            tracing::warn!("queue database open again; taking requests");
            super::remake_roots(&shared.queue, &shared.roots).await;
            shared.rescan_spool.notify_one();
            shared.intake.wake();
            true
        }
        Ok(Err(e)) => {
            tracing::error!(
                "the queue database failed and cannot be opened again yet (retrying every \
                 {QUEUE_ERROR_PAUSE:?}; requests are refused and the hook spools them): {}",
                crate::error_chain(&e)
            );
            false
        }
        Err(e) => {
            tracing::error!("reopening the queue database stopped: {e}");
            false
        }
    }
}

/// The instant `ms` milliseconds from now, at most [`LONGEST_SLEEP`] ahead.
fn instant_in(ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_millis(ms).min(LONGEST_SLEEP))
        .unwrap_or(now)
}

/// Books one report; returns when an entry that goes back to pending comes due.
fn record(shared: &Shared, books: &mut Books, report: Report) -> Option<Instant> {
    match report {
        Report::TopDone(path) => finish(shared, books, &path, None),
        Report::TopFailed { top, failure } => finish(shared, books, &top, Some(&failure)),
        Report::Uploaded {
            path,
            nar_size,
            file_size,
        } => {
            tracing::debug!(%path, nar_size, "published");
            if let Err(e) = shared.queue.add_uploaded(nar_size, file_size) {
                tracing::warn!("cannot count uploads: {e}");
            }
            None
        }
        Report::Present(path) => {
            tracing::debug!(%path, "already in the cache");
            shared.activity.present();
            None
        }
        Report::Upstream { path, .. } => {
            tracing::debug!(%path, "served upstream, not uploaded");
            None
        }
        Report::Failed { path, error } => {
            tracing::debug!(%path, "failed: {}", crate::error_chain(error.as_ref()));
            None
        }
        Report::Skipped { path, reason } => {
            tracing::debug!(%path, "skipped: {reason}");
            shared.activity.skipped(&reason);
            None
        }
        Report::TopSkipped { top, reason } => {
            tracing::info!(path = %top, "skipped, not uploaded: {reason}");
            let outcome = Outcome::Skipped(SkipRecord {
                kind: reason.kind().to_owned(),
                reason: reason.to_string(),
            });
            if books.record(&shared.queue, &top, outcome) {
                release_root(&shared.queue, &shared.roots, &top);
                None
            } else {
                Some(Instant::now() + QUEUE_ERROR_PAUSE)
            }
        }
    }
}

/// Records the outcome of an entry: done (`failure` is `None`), retry later (returns when), or
/// failed. An outcome the queue cannot take now is kept in `books` and recorded later.
fn finish(
    shared: &Shared,
    books: &mut Books,
    path: &StorePath,
    failure: Option<&Failure>,
) -> Option<Instant> {
    let settings = shared.settings();
    let entry = match shared.queue.get(path) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::error!(%path, "cannot read the queue entry: {e}");
            None
        }
    };
    // The attempt was counted when it started.
    let attempts = entry.as_ref().map_or(1, |e| e.attempts.max(1));
    let outcome = match failure {
        None => Outcome::Done,
        Some(failure) => {
            let outcome = outcome_of_failure(&settings.config, attempts, failure);
            let retried = matches!(outcome, Outcome::RetryAt { .. });
            shared
                .activity
                .failed(failure.class, &failure.message, retried);
            outcome
        }
    };
    let mut retry_at = None;
    match &outcome {
        Outcome::Done => {
            if let (true, Some(drv)) =
                (settings.config.upload_build_logs, entry.and_then(|e| e.drv))
            {
                let sink = settings.engine.sink.clone();
                let slot = shared.log_upload.clone();
                let limit = settings.config.max_build_log_bytes;
                shared.tasks.spawn(async move {
                    // One log in memory at a time (see `logs`).
                    let Ok(_permit) = slot.acquire_owned().await else {
                        return;
                    };
                    super::logs::upload(&sink, &drv, limit).await;
                });
            }
            tracing::info!(%path, "uploaded");
        }
        Outcome::RetryAt { at_ms, error } => {
            tracing::warn!(%path, attempts, "will retry: {error}");
            retry_at = Some(instant_in(at_ms.saturating_sub(now_ms())));
        }
        Outcome::Failed { error } => tracing::error!(%path, "failed: {error}"),
        Outcome::Skipped(_) => {}
    }
    if books.record(&shared.queue, path, outcome) {
        release_root(&shared.queue, &shared.roots, path);
    } else {
        retry_at = Some(Instant::now() + QUEUE_ERROR_PAUSE);
    }
    retry_at
}

/// Removes the GC root of `path` once the queue positively says that nothing is owed for it
/// any more: its entry is `done`, or gone (pruned, or never queued). Any other entry keeps
/// its root, and so does a queue that cannot be read now: a root kept too long is removed by
/// the next start (see [`GcRoots::reconcile`]), a root removed too early loses the path to
/// the next garbage collection.
fn release_root(queue: &Queue, roots: &GcRoots, path: &StorePath) {
    let unowed = || match queue.get(path) {
        Ok(None) => true,
        Ok(Some(entry)) => entry.state.is_finished(),
        Err(e) => {
            tracing::warn!(%path, "keeping the GC root: cannot read the queue entry: {e}");
            false
        }
    };
    if let Err(e) = roots.release_if(path, unowed) {
        tracing::warn!("{e}");
    }
}

/// Retry or give up, by class and attempts so far.
fn outcome_of_failure(config: &Config, attempts: u32, failure: &Failure) -> Outcome {
    match failure.class {
        ErrorClass::Permanent => Outcome::Failed {
            error: failure.message.clone(),
        },
        ErrorClass::Transient if attempts >= config.max_attempts => Outcome::Failed {
            error: format!("gave up after {attempts} attempts: {}", failure.message),
        },
        ErrorClass::Transient => {
            let delay = backoff(attempts, config.retry_initial_delay, config.retry_max_delay).max(
                failure
                    .retry_after
                    .unwrap_or_default()
                    .min(config.retry_max_delay),
            );
            Outcome::RetryAt {
                at_ms: now_ms()
                    .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                error: failure.message.clone(),
            }
        }
    }
}

/// Exponential backoff with jitter: attempt n waits between half and all of
/// `initial * 2^(n-1)`, capped at `max`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1 << exponent).min(max);
    let half = full / 2;
    half + full
        .saturating_sub(half)
        .mul_f64(rand::thread_rng().gen::<f64>())
}

#[cfg(test)]
mod reopen_tests;
#[cfg(test)]
mod root_tests;

#[cfg(test)]
mod tests;
