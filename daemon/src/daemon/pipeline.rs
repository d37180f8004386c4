//! The daemon's side of the upload engine: due queue entries go in, and the engine's reports
//! come back as queue outcomes. The engine does the uploading; this module only keeps books.
//!
//! Loop: whenever work is queued (a wake-up) or a retry comes due, wait `batch_window` so that
//! requests arriving together are resolved together, mark every due entry `uploading`, and
//! submit it. Entries already with the engine keep uploading meanwhile: a big upload never
//! holds back what arrives after it.
//!
//! Outcomes of an entry:
//! - in the cache (uploaded now, or found there): `done`, its GC root released, its build log
//!   uploaded (best effort) when `upload_build_logs` is on;
//! - transient failure (network, 5xx, throttling, the store not answering, a reference that
//!   failed): back to `pending` after an exponential backoff with jitter, capped at
//!   `retry_max_delay_ms`, never sooner than a `Retry-After` the server sent (itself capped at
//!   `retry_max_delay_ms`); after
//!   `max_attempts` attempts: `failed`;
//! - permanent failure (path gone from the store, NarHash mismatch, access denied): `failed`
//!   at once, with the reason.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::settings::Settings;
use super::shared::Shared;
use crate::engine::{Failure, Report, Reports};
use crate::format::store_path::StorePath;
use crate::queue::{now_ms, Outcome};
use crate::sink::ErrorClass;
use crate::sleep_until;

/// Entries taken at once at most.
const BATCH_LIMIT: usize = 1000;
/// How often `done` entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long to wait before reading the queue again after it failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(5);

pub async fn run(shared: Arc<Shared>, mut reports: Reports) {
    let mut last_prune = Instant::now();
    // When to take due entries next: `None` while nothing is pending.
    let mut take_at = Some(Instant::now());
    loop {
        tokio::select! {
            report = reports.recv() => match report {
                Some(report) => {
                    if let Some(retry_at) = record(&shared, report) {
                        take_at = Some(take_at.map_or(retry_at, |at| at.min(retry_at)));
                    }
                }
                None => return,
            },
            () = shared.wake.notified() => {
                let gather = Instant::now() + shared.settings().config.batch_window;
                take_at = Some(take_at.map_or(gather, |at| at.min(gather)));
            }
            () = sleep_until(take_at) => {
                take_at = take_due(&shared);
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
        record(&shared, report);
    }
}

/// Submits every due entry; returns when to look again.
fn take_due(shared: &Shared) -> Option<Instant> {
    let now = now_ms();
    let due = match shared.queue.take_due(now, BATCH_LIMIT) {
        Ok(due) => due,
        Err(e) => {
            tracing::error!("cannot read the queue: {e}");
            return Some(Instant::now() + QUEUE_ERROR_PAUSE);
        }
    };
    if !due.is_empty() {
        tracing::info!(paths = due.len(), "uploading");
        shared
            .engine
            .submit(due.into_iter().map(|entry| entry.path).collect());
    }
    match shared.queue.next_due_ms() {
        Ok(Some(at)) => Some(Instant::now() + Duration::from_millis(at.saturating_sub(now))),
        Ok(None) => None,
        Err(e) => {
            tracing::error!("cannot read the queue: {e}");
            Some(Instant::now() + QUEUE_ERROR_PAUSE)
        }
    }
}

/// Books one report; returns when an entry that goes back to pending comes due.
fn record(shared: &Shared, report: Report) -> Option<Instant> {
    match report {
        Report::TopDone(path) => finish(shared, &path, None),
        Report::TopFailed { top, failure } => finish(shared, &top, Some(&failure)),
        Report::Uploaded { path, nar_size, .. } => {
            tracing::debug!(%path, nar_size, "published");
            if let Err(e) = shared.queue.add_uploaded(1, nar_size) {
                tracing::warn!("cannot count uploads: {e}");
            }
            None
        }
        Report::Present(path) => {
            tracing::debug!(%path, "already in the cache");
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
    }
}

/// Records the outcome of an entry: done (`failure` is `None`), retry later (returns when), or
/// failed.
fn finish(shared: &Shared, path: &StorePath, failure: Option<&Failure>) -> Option<Instant> {
    let settings = shared.settings();
    let entry = match shared.queue.get(path) {
        Ok(Some(entry)) => entry,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(%path, "cannot read the queue entry: {e}");
            return None;
        }
    };
    let outcome = match failure {
        None => Outcome::Done,
        Some(failure) => outcome_of_failure(&settings, entry.attempts, failure),
    };
    let mut retry_at = None;
    match &outcome {
        Outcome::Done => {
            if let Err(e) = shared.roots.remove(path) {
                tracing::warn!("{e}");
            }
            if let (true, Some(drv)) = (settings.config.upload_build_logs, entry.drv) {
                let sink = settings.engine.sink.clone();
                shared
                    .tasks
                    .spawn(async move { super::logs::upload(&sink, &drv).await });
            }
            tracing::info!(%path, "uploaded");
        }
        Outcome::RetryAt { at_ms, error } => {
            tracing::warn!(%path, attempts = entry.attempts + 1, "will retry: {error}");
            let delay = Duration::from_millis(at_ms.saturating_sub(now_ms()));
            retry_at = Some(Instant::now() + delay);
        }
        Outcome::Failed { error } => tracing::error!(%path, "failed: {error}"),
    }
    if let Err(e) = shared.queue.finish(path, &outcome) {
        tracing::error!(%path, "cannot record the outcome: {e}");
    }
    retry_at
}

/// Retry or give up, by class and attempts so far.
fn outcome_of_failure(settings: &Settings, attempts_before: u32, failure: &Failure) -> Outcome {
    let attempts = attempts_before + 1;
    match failure.class {
        ErrorClass::Permanent => Outcome::Failed {
            error: failure.message.clone(),
        },
        ErrorClass::Transient if attempts >= settings.config.max_attempts => Outcome::Failed {
            error: format!("gave up after {attempts} attempts: {}", failure.message),
        },
        ErrorClass::Transient => {
            let delay = backoff(
                attempts,
                settings.config.retry_initial_delay,
                settings.config.retry_max_delay,
            )
            .max(
                failure
                    .retry_after
                    .unwrap_or_default()
                    .min(settings.config.retry_max_delay),
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
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 1..=10 {
            let full = Duration::from_secs(1 << (attempt - 1)).min(max);
            for _ in 0..50 {
                let delay = backoff(attempt, initial, max);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
        assert!(backoff(1000, initial, max) <= max);
    }
}
