//! The upload pipeline: batches of due queue entries, their closures, presence checks, the
//! uploads themselves (through [`crate::upload::schedule`], which keeps the closure
//! invariant), and what each outcome does to the queue.
//!
//! Loop: wait for work (a wake-up, or the next retry coming due) → wait `batch_window` so that
//! requests arriving together are resolved together → take every due entry → upload the
//! missing part of their closures → record the outcome of each entry.
//!
//! Outcomes:
//! - uploaded, or already in the cache: `done`, its GC root released, its build log uploaded
//!   (best effort) when `upload_build_logs` is on;
//! - transient failure (network, 5xx, throttling, a reference that failed): back to `pending`
//!   after an exponential backoff with jitter, capped at `retry_max_delay_ms`, never sooner
//!   than a `Retry-After` the server sent; after `max_attempts` attempts: `failed`;
//! - permanent failure (path gone from the store, NarHash mismatch, access denied): `failed`
//!   at once, with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

use crate::format::store_path::StorePath;
use crate::queue::{now_ms, Entry, Outcome};
use crate::store::{self, PathInfo};
use crate::target::ErrorClass;
use crate::upload::progress::Progress;
use crate::upload::schedule::{upload_all, Uploader};
use crate::upload::stream::{StreamSettings, DEFAULT_PART_SIZE};
use crate::upload::{present_in_target, UploadError};

use super::settings::Settings;
use super::{Activity, Shared, DRAIN_TIMEOUT};
use crate::error_chain;

/// Entries taken into one batch at most.
const BATCH_LIMIT: usize = 1000;
/// How often `done` entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last_prune = Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match shared.queue.next_due_ms() {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())),
            Ok(None) => Duration::from_secs(3600),
            Err(e) => {
                tracing::error!("cannot read the queue: {e}");
                Duration::from_secs(5)
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.settings().config.batch_window) => {}
            _ = stop.changed() => return,
        }
        let due = match shared.queue.take_due(now_ms(), BATCH_LIMIT) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("cannot read the queue: {e}");
                continue;
            }
        };
        if !due.is_empty() {
            let batch = run_batch(&shared, due);
            tokio::pin!(batch);
            tokio::select! {
                () = &mut batch => {}
                _ = stop.changed() => {
                    if tokio::time::timeout(DRAIN_TIMEOUT, batch).await.is_err() {
                        tracing::warn!("uploads still running after {DRAIN_TIMEOUT:?}; they resume at the next start");
                    }
                    return;
                }
            }
        }
        if last_prune.elapsed() > PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(e) = shared.queue.prune(now_ms()) {
                tracing::warn!("cannot prune the queue: {e}");
            }
        }
    }
}

async fn run_batch(shared: &Shared, due: Vec<Entry>) {
    let settings = shared.settings();
    tracing::info!(paths = due.len(), "uploading a batch");
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    let mut tops = Vec::new();
    for entry in &due {
        match StorePath::from_absolute_path(&entry.path) {
            Ok(path) => tops.push(path),
            Err(e) => {
                outcomes.insert(entry.path.clone(), failed(format!("not a store path: {e}")));
            }
        }
    }
    match upload_batch(shared, &settings, &tops).await {
        Ok(results) => {
            for (path, result) in results {
                let entry = due.iter().find(|e| e.path == path);
                let attempts = entry.map_or(0, |e| e.attempts);
                let outcome = match result {
                    Ok(()) => Outcome::Done,
                    Err(error) => outcome_of_failure(&settings, attempts, &error),
                };
                outcomes.insert(path, outcome);
            }
        }
        Err(error) => {
            // The whole batch failed before any upload (target unreachable, store query).
            for entry in &due {
                outcomes
                    .entry(entry.path.clone())
                    .or_insert_with(|| outcome_of_failure(&settings, entry.attempts, &error));
            }
        }
    }
    for entry in &due {
        let outcome = outcomes
            .remove(&entry.path)
            .unwrap_or_else(|| failed("no outcome was recorded (internal error)".to_owned()));
        record(shared, &settings, entry, &outcome).await;
    }
    if let Err(e) = shared.queue.flush().await {
        tracing::error!("cannot flush the queue: {e}");
    }
}

/// An error with its retry class: why a path (or a whole batch) did not make it.
struct Failure {
    class: ErrorClass,
    message: String,
    retry_after: Option<Duration>,
}

impl Failure {
    fn from_upload(error: &UploadError) -> Failure {
        Failure {
            class: error.class(),
            message: error_chain(error),
            retry_after: error.retry_after(),
        }
    }
}

/// Uploads the closures of `tops`; returns per top path whether it is now in the cache.
async fn upload_batch(
    shared: &Shared,
    settings: &Settings,
    tops: &[StorePath],
) -> Result<Vec<(String, Result<(), Failure>)>, Failure> {
    settings
        .ensure_cache_info()
        .await
        .map_err(|e| Failure::from_upload(&UploadError::from(e)))?;
    let (infos, gone) = resolve(tops).await?;
    let config = &settings.config;
    let present = present_in_target(
        &settings.target,
        infos.iter().map(|i| i.path.clone()).collect(),
        config.jobs * 8,
    )
    .await
    .map_err(|e| Failure::from_upload(&UploadError::from(e)))?;
    let missing: Vec<PathInfo> = infos
        .iter()
        .filter(|i| !present.contains(&i.path))
        .cloned()
        .collect();
    let nar_bytes_total = missing.iter().map(|i| i.nar_size).sum();
    let progress = Arc::new(Progress::new(missing.len() as u64, nar_bytes_total, true));
    set_activity(
        shared,
        Some(Activity {
            paths: missing.iter().map(|i| i.path.to_absolute()).collect(),
            nar_bytes_total,
            progress: progress.clone(),
            started: Instant::now(),
        }),
    );
    let uploader = Uploader {
        target: settings.target.clone(),
        keys: settings.keys.clone(),
        settings: StreamSettings {
            compression: config.compression,
            level: config.compression_level,
            base_part_size: DEFAULT_PART_SIZE,
        },
        jobs: config.jobs,
    };
    let report = upload_all(&uploader, missing, &present, progress).await;
    set_activity(shared, None);

    let uploaded_bytes = report.uploaded.iter().map(|u| u.nar_size).sum();
    if let Err(e) = shared
        .queue
        .add_uploaded(report.uploaded.len() as u64, uploaded_bytes)
    {
        tracing::warn!("cannot count uploads: {e}");
    }
    let failures: HashMap<&StorePath, &UploadError> = report
        .failed
        .iter()
        .map(|(path, error)| (path, error))
        .collect();
    Ok(tops
        .iter()
        .map(|top| {
            let result = if let Some(reason) = gone.get(top) {
                Err(Failure {
                    class: ErrorClass::Permanent,
                    message: reason.clone(),
                    retry_after: None,
                })
            } else if let Some(error) = failures.get(top) {
                Err(root_cause(top, error, &failures))
            } else {
                Ok(())
            };
            (top.to_absolute(), result)
        })
        .collect())
}

/// A path failed because a reference failed (perhaps because its own reference failed, and
/// so on): report the error at the bottom of that chain. The path itself stays retryable,
/// which [`UploadError::class`] already says of `ReferenceMissing`.
fn root_cause(
    top: &StorePath,
    error: &UploadError,
    all: &HashMap<&StorePath, &UploadError>,
) -> Failure {
    let mut failure = Failure::from_upload(error);
    let by_path: HashMap<String, &UploadError> = all
        .iter()
        .map(|(path, e)| (path.to_absolute(), *e))
        .collect();
    let mut cause = (top.to_absolute(), error);
    // Bounded by the number of failures: references never form a cycle, but a guard is cheap.
    for _ in 0..by_path.len() {
        let UploadError::ReferenceMissing { reference, .. } = cause.1 else {
            break;
        };
        match by_path.get(reference) {
            Some(next) => cause = (reference.clone(), *next),
            None => break,
        }
    }
    let (failed_path, root) = cause;
    if failed_path != top.to_absolute() && !matches!(root, UploadError::ReferenceMissing { .. }) {
        failure.message = format!("{failed_path} (needed by {top}): {}", error_chain(root));
        failure.retry_after = root.retry_after();
    }
    failure
}

/// The closure of `tops`, and the tops that are no longer valid in the store (with why).
async fn resolve(
    tops: &[StorePath],
) -> Result<(Vec<PathInfo>, HashMap<StorePath, String>), Failure> {
    let store_failure = |e: store::StoreError| Failure {
        class: ErrorClass::Transient,
        message: error_chain(&e),
        retry_after: None,
    };
    if let Ok(infos) = store::query_path_infos(tops, true).await {
        return Ok((infos, HashMap::new()));
    }
    // Some path is invalid: find which, one process per path (rare: a path deleted by hand).
    let mut valid = Vec::new();
    let mut gone = HashMap::new();
    for top in tops {
        match store::query_path_infos(std::slice::from_ref(top), false).await {
            Ok(_) => valid.push(top.clone()),
            Err(e) => {
                gone.insert(
                    top.clone(),
                    format!("no longer valid in the store: {}", error_chain(&e)),
                );
            }
        }
    }
    let infos = if valid.is_empty() {
        Vec::new()
    } else {
        store::query_path_infos(&valid, true)
            .await
            .map_err(store_failure)?
    };
    Ok((infos, gone))
}

fn set_activity(shared: &Shared, activity: Option<Activity>) {
    if let Ok(mut slot) = shared.activity.lock() {
        *slot = activity;
    }
}

fn failed(error: String) -> Outcome {
    Outcome::Failed { error }
}

/// Retry or give up, by class and attempts so far.
fn outcome_of_failure(settings: &Settings, attempts_before: u32, failure: &Failure) -> Outcome {
    let attempts = attempts_before + 1;
    match failure.class {
        ErrorClass::Permanent => failed(failure.message.clone()),
        ErrorClass::Transient if attempts >= settings.config.max_attempts => failed(format!(
            "gave up after {attempts} attempts: {}",
            failure.message
        )),
        ErrorClass::Transient => {
            let delay = backoff(
                attempts,
                settings.config.retry_initial_delay,
                settings.config.retry_max_delay,
            )
            .max(failure.retry_after.unwrap_or_default());
            Outcome::RetryAt {
                at_ms: now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
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

async fn record(shared: &Shared, settings: &Settings, entry: &Entry, outcome: &Outcome) {
    match outcome {
        Outcome::Done => {
            if let Ok(path) = StorePath::from_absolute_path(&entry.path) {
                if let Err(e) = shared.roots.remove(&path) {
                    tracing::warn!("{e}");
                }
            }
            if settings.config.upload_build_logs {
                if let Some(drv) = &entry.drv {
                    super::logs::upload(settings, drv).await;
                }
            }
            tracing::info!(path = %entry.path, "uploaded");
        }
        Outcome::RetryAt { error, .. } => {
            tracing::warn!(path = %entry.path, attempts = entry.attempts + 1, "will retry: {error}");
        }
        Outcome::Failed { error } => {
            tracing::error!(path = %entry.path, "failed: {error}");
        }
    }
    if let Err(e) = shared.queue.finish(&entry.path, outcome) {
        tracing::error!(path = %entry.path, "cannot record the outcome: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_blocked_by_a_chain_of_failures_reports_the_failure_at_its_bottom() {
        let path = |name: &str| {
            StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap()
        };
        let (top, mid, leaf) = (path("top"), path("mid"), path("leaf"));
        let blocked = |path: &StorePath, by: &StorePath| UploadError::ReferenceMissing {
            path: path.to_absolute(),
            reference: by.to_absolute(),
            why: "failed to upload",
        };
        let top_error = blocked(&top, &mid);
        let mid_error = blocked(&mid, &leaf);
        let leaf_error = UploadError::Internal {
            path: leaf.to_absolute(),
            detail: "disk on fire".to_owned(),
        };
        let all: HashMap<&StorePath, &UploadError> =
            [(&top, &top_error), (&mid, &mid_error), (&leaf, &leaf_error)].into();
        let failure = root_cause(&top, &top_error, &all);
        assert!(
            failure.message.starts_with(&leaf.to_absolute()),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("disk on fire"),
            "{}",
            failure.message
        );
        assert_eq!(failure.class, ErrorClass::Transient);
    }

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
