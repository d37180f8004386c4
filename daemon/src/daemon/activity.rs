//! What the daemon did since it started that the queue does not keep: paths found already in
//! the cache, paths skipped by the push filters (by the kind of reason), failed attempts by
//! class with the last error of each, retries scheduled, and enqueue requests taken from the
//! socket and the spool.
//!
//! Invariant: this is the one tally of these events. `narpush status` reads it, and the
//! metrics endpoint renders the status document, so the two never disagree. Every counter only
//! grows (until the process ends), which is what a Prometheus counter must do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::filter::{SkipReason, SKIP_KINDS};
use crate::queue::now_ms;
use crate::sink::ErrorClass;
use crate::sync::lock;

#[derive(Debug, Default)]
pub struct Activity {
    present: AtomicU64,
    /// By kind, in the order of [`SKIP_KINDS`].
    skipped: [AtomicU64; SKIP_KINDS.len()],
    retries: AtomicU64,
    acknowledged: AtomicU64,
    spool_ingested: AtomicU64,
    transient: ClassTally,
    permanent: ClassTally,
}

#[derive(Debug, Default)]
struct ClassTally {
    count: AtomicU64,
    /// The last error and when it happened (Unix ms).
    last: Mutex<Option<(String, u64)>>,
}

/// The failed attempts of one class, as `status` shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClassFailures {
    /// Failed upload attempts of queued paths since the daemon started.
    pub attempts: u64,
    pub last_error: Option<String>,
    pub last_error_secs_ago: Option<f64>,
}

/// Failed attempts by class: `transient` ones are retried, `permanent` ones fail the path.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Failures {
    pub transient: ClassFailures,
    pub permanent: ClassFailures,
}

/// Enqueue requests taken since the daemon started (`enqueue_requests` in `status --json`;
/// `requests` there counts the requests sent to the target).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnqueueRequests {
    /// Enqueue requests acknowledged on the socket (durably queued).
    pub acknowledged: u64,
    /// Requests the hook spooled that were read and queued.
    pub spool_ingested: u64,
}

impl Activity {
    /// A path of a closure was found in the cache, so it was not uploaded.
    pub fn present(&self) {
        self.present.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to upload a queued path failed; `retried` when it will be tried again.
    pub fn failed(&self, class: ErrorClass, message: &str, retried: bool) {
        let tally = match class {
            ErrorClass::Transient => &self.transient,
            ErrorClass::Permanent => &self.permanent,
        };
        tally.count.fetch_add(1, Ordering::Relaxed);
        *lock(&tally.last) = Some((message.to_owned(), now_ms()));
        if retried {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn acknowledged(&self) {
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    pub fn spool_ingested(&self) {
        self.spool_ingested.fetch_add(1, Ordering::Relaxed);
    }

    /// A path of a closure was skipped by the push filters.
    pub fn skipped(&self, reason: &SkipReason) {
        if let Some(index) = SKIP_KINDS.iter().position(|k| *k == reason.kind()) {
            self.skipped[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Paths skipped since the start, for every kind of reason (0 included).
    pub fn skipped_by_reason(&self) -> BTreeMap<String, u64> {
        SKIP_KINDS
            .iter()
            .zip(&self.skipped)
            .map(|(kind, count)| ((*kind).to_owned(), count.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn present_paths(&self) -> u64 {
        self.present.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn enqueue_requests(&self) -> EnqueueRequests {
        EnqueueRequests {
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            spool_ingested: self.spool_ingested.load(Ordering::Relaxed),
        }
    }

    pub fn failures(&self, now_ms: u64) -> Failures {
        Failures {
            transient: self.transient.snapshot(now_ms),
            permanent: self.permanent.snapshot(now_ms),
        }
    }
}

impl ClassTally {
    fn snapshot(&self, now_ms: u64) -> ClassFailures {
        let last = lock(&self.last).clone();
        ClassFailures {
            attempts: self.count.load(Ordering::Relaxed),
            last_error_secs_ago: last
                .as_ref()
                .map(|(_, at)| now_ms.saturating_sub(*at) as f64 / 1000.0),
            last_error: last.map(|(message, _)| message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_class_with_the_last_error_of_each() {
        let activity = Activity::default();
        activity.failed(ErrorClass::Transient, "timeout", true);
        activity.failed(ErrorClass::Transient, "503 Slow Down", true);
        activity.failed(ErrorClass::Permanent, "access denied", false);
        let failures = activity.failures(now_ms());
        assert_eq!(failures.transient.attempts, 2);
        assert_eq!(
            failures.transient.last_error.as_deref(),
            Some("503 Slow Down")
        );
        assert_eq!(failures.permanent.attempts, 1);
        assert_eq!(
            failures.permanent.last_error.as_deref(),
            Some("access denied")
        );
        assert_eq!(activity.retries(), 2);
    }
}
