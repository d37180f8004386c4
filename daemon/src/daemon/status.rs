//! What `narpush status` reports, as one JSON document (`status --json` prints it verbatim).
//!
//! The document is a stable interface, documented in `docs/protocol.md`: fields are only ever
//! added, and `version` changes if one ever changes meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::queue::{now_ms, QueueError, SkipRecord, State};

use super::activity::{EnqueueRequests, Failures};
use super::shared::Shared;
use crate::sink::requests::RequestCounts;

/// Version 2: every NAR upload in flight (`uploads`) and the closure members by stage
/// (`closure`) replace version 1's single `uploading` batch.
/// Version 3 adds each upload's rate and ETA, `uploaded.stored_bytes`, `last_upload_*`,
/// `skipped_present`, `failures` by class, `retries` and `requests`; nothing changed meaning.
/// Version 4: `requests` counts the requests sent to the target (an object with `total`,
/// `class_a`, `class_b`, `free`, `by_op`, `by_object` and `estimated_cost_usd`); version 3's
/// `requests` (enqueue requests taken) is `enqueue_requests`; it also adds
/// `counts.skipped` and `skipped` (the push filters).
pub const STATUS_VERSION: u32 = 4;
/// Rejected spool files listed at most (all are counted).
const MAX_REJECTED_LISTED: usize = 100;
/// Skipped paths listed at most, newest first (all are counted).
const MAX_SKIPPED_LISTED: usize = 100;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub version: u32,
    pub target: String,
    pub public_keys: Vec<String>,
    pub counts: Counts,
    /// Age of the oldest path still waiting (pending or uploading), in seconds.
    pub oldest_waiting_secs: Option<f64>,
    /// Every NAR being uploaded, largest first.
    pub uploads: Vec<Upload>,
    /// Paths of the closures being uploaded, by what they wait for.
    pub closure: ClosureStages,
    /// Paths waiting for another attempt after a transient failure.
    pub retrying: Vec<Retrying>,
    pub failed: Vec<Failed>,
    /// Paths published since the queue was created.
    pub uploaded: Uploaded,
    /// When the last path was published (Unix seconds), and how long ago.
    #[serde(default)]
    pub last_upload_unix_secs: Option<f64>,
    #[serde(default)]
    pub last_upload_secs_ago: Option<f64>,
    /// Paths not uploaded because an upstream cache serves them, since the daemon started.
    #[serde(default)]
    pub skipped_upstream: Skipped,
    /// Paths not uploaded because the cache already had them, since the daemon started.
    #[serde(default)]
    pub skipped_present: u64,
    /// Paths not uploaded because of the push filters (added in version 4).
    #[serde(default)]
    pub skipped: SkippedByFilters,
    /// Failed upload attempts by class since the daemon started, each with its last error.
    #[serde(default)]
    pub failures: Failures,
    /// Failed attempts followed by another (after a backoff), since the daemon started.
    #[serde(default)]
    pub retries: u64,
    /// Requests sent to the target since the daemon started, by class, operation and object
    /// kind, with their estimated cost (added in version 4; see [`crate::sink::requests`]).
    #[serde(default)]
    pub requests: RequestCounts,
    /// Enqueue requests taken on the socket and from the spool since the daemon started
    /// (`requests` until version 3).
    #[serde(default)]
    pub enqueue_requests: EnqueueRequests,
    /// Requests the hook left in the spool directory (added in version 2; absent from older
    /// daemons).
    #[serde(default)]
    pub spool: Spool,
}

/// The spool directory: files not read yet, and files rejected for good (each with its
/// reason; they stay until someone removes them, and `wait` fails while there are any).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spool {
    pub waiting: u64,
    pub rejected_total: u64,
    pub rejected: Vec<RejectedFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RejectedFile {
    pub file: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub uploading: u64,
    pub done: u64,
    pub failed: u64,
    /// Queued paths the push filters kept out (added in version 4).
    #[serde(default)]
    pub skipped: u64,
}

/// What the push filters (`exclude`, `exclude_outputs`, `max_nar_bytes`) kept out.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SkippedByFilters {
    /// Paths of closures skipped since the daemon started, by kind of reason: `excluded`,
    /// `excluded_output`, `too_big`, `needs_skipped` (every kind present, 0 included).
    pub by_reason: BTreeMap<String, u64>,
    /// Queued paths recorded as skipped (kept like `done` ones, so across restarts), newest
    /// first, at most 100 (`counts.skipped` counts them all).
    pub paths: Vec<SkippedPath>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SkippedPath {
    pub path: String,
    /// One of the kinds of `by_reason`.
    pub kind: String,
    pub reason: String,
    pub skipped_secs_ago: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Upload {
    pub path: String,
    pub nar_bytes_done: u64,
    pub nar_bytes_total: u64,
    pub elapsed_secs: f64,
    /// NAR bytes per second since the upload started (absent before the first byte).
    #[serde(default)]
    pub bytes_per_sec: Option<f64>,
    /// Seconds left at that rate.
    #[serde(default)]
    pub eta_secs: Option<f64>,
}

impl Upload {
    fn new(path: String, done: u64, total: u64, elapsed_secs: f64) -> Upload {
        let rate = (done > 0 && elapsed_secs > 0.0).then(|| done as f64 / elapsed_secs);
        Upload {
            path,
            nar_bytes_done: done,
            nar_bytes_total: total,
            elapsed_secs,
            bytes_per_sec: rate,
            eta_secs: rate.map(|rate| total.saturating_sub(done) as f64 / rate),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosureStages {
    pub resolving: u64,
    pub checking: u64,
    pub storing: u64,
    pub waiting_for_references: u64,
    pub publishing: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Retrying {
    pub path: String,
    pub attempts: u32,
    pub next_attempt_in_secs: f64,
    pub last_error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Failed {
    pub path: String,
    pub attempts: u32,
    pub error: String,
    pub failed_secs_ago: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Uploaded {
    pub paths: u64,
    pub nar_bytes: u64,
    /// Bytes written to the cache (compressed NARs); counted since version 3.
    #[serde(default)]
    pub stored_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    pub paths: u64,
    pub nar_bytes: u64,
}

impl StatusReport {
    /// Nothing pending, uploading or waiting in the spool.
    pub fn idle(&self) -> bool {
        self.counts.pending == 0 && self.counts.uploading == 0 && self.spool.waiting == 0
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

pub fn collect(shared: &Shared) -> Result<StatusReport, QueueError> {
    let settings = shared.settings();
    let now = now_ms();
    let mut report = StatusReport {
        version: STATUS_VERSION,
        target: settings.target_url.to_string(),
        public_keys: settings.public_keys.clone(),
        ..StatusReport::default()
    };
    let mut oldest_waiting = None::<u64>;
    let mut skipped = Vec::new();
    let scan = shared.queue.scan()?;
    for corrupt in scan.corrupt {
        report.counts.failed += 1;
        report.failed.push(Failed {
            path: corrupt.key,
            attempts: 0,
            error: format!(
                "its queue record cannot be read ({}); `narpush retry --all` queues it afresh",
                corrupt.reason
            ),
            failed_secs_ago: 0.0,
        });
    }
    for entry in scan.entries {
        match entry.state {
            State::Pending => report.counts.pending += 1,
            State::Uploading => report.counts.uploading += 1,
            State::Done => report.counts.done += 1,
            State::Failed => report.counts.failed += 1,
            State::Skipped => report.counts.skipped += 1,
        }
        if matches!(entry.state, State::Pending | State::Uploading) {
            oldest_waiting =
                Some(oldest_waiting.map_or(entry.arrived_ms, |o| o.min(entry.arrived_ms)));
        }
        match (entry.state, entry.last_error) {
            (State::Pending, Some(error)) => report.retrying.push(Retrying {
                path: entry.path.to_absolute(),
                attempts: entry.attempts,
                next_attempt_in_secs: secs(entry.next_attempt_ms.saturating_sub(now)),
                last_error: error,
            }),
            (State::Failed, error) => report.failed.push(Failed {
                path: entry.path.to_absolute(),
                attempts: entry.attempts,
                error: error.unwrap_or_default(),
                failed_secs_ago: secs(now.saturating_sub(entry.updated_ms)),
            }),
            (State::Skipped, _) => {
                let record = entry.skipped.map_or_else(
                    || SkipRecord {
                        kind: "unknown".to_owned(),
                        reason: "no reason recorded".to_owned(),
                    },
                    |record| *record,
                );
                skipped.push((entry.updated_ms, entry.path.to_absolute(), record));
            }
            _ => {}
        }
    }
    skipped.sort_by_key(|(at, _, _)| std::cmp::Reverse(*at));
    report.skipped.paths = skipped
        .into_iter()
        .take(MAX_SKIPPED_LISTED)
        .map(|(at, path, record)| SkippedPath {
            path,
            kind: record.kind,
            reason: record.reason,
            skipped_secs_ago: secs(now.saturating_sub(at)),
        })
        .collect();
    report.skipped.by_reason = shared.activity.skipped_by_reason();
    report.oldest_waiting_secs = oldest_waiting.map(|arrived| secs(now.saturating_sub(arrived)));
    let view = shared.engine.view();
    let mut streams = view.streams();
    streams.sort_by_key(|s| std::cmp::Reverse(s.nar_size));
    report.uploads = streams
        .iter()
        .map(|s| {
            Upload::new(
                s.path.to_absolute(),
                s.nar_bytes_done(),
                s.nar_size,
                s.started.elapsed().as_secs_f64(),
            )
        })
        .collect();
    let stages = view.stages();
    report.closure = ClosureStages {
        resolving: stages.resolving,
        checking: stages.checking,
        storing: stages.storing,
        waiting_for_references: stages.waiting_for_references,
        publishing: stages.publishing,
    };
    let survey = super::spool::survey(&settings.config.spool_dir, MAX_REJECTED_LISTED);
    report.spool = Spool {
        waiting: survey.waiting,
        rejected_total: survey.rejected_total,
        rejected: survey
            .rejected
            .into_iter()
            .map(|(file, reason)| RejectedFile { file, reason })
            .collect(),
    };
    let totals = shared.queue.uploaded()?;
    report.uploaded = Uploaded {
        paths: totals.paths,
        nar_bytes: totals.nar_bytes,
        stored_bytes: totals.stored_bytes,
    };
    report.last_upload_unix_secs = totals.last_ms.map(secs);
    report.last_upload_secs_ago = totals.last_ms.map(|at| secs(now.saturating_sub(at)));
    let (paths, nar_bytes) = view.upstream();
    report.skipped_upstream = Skipped { paths, nar_bytes };
    report.skipped_present = shared.activity.present_paths();
    report.failures = shared.activity.failures(now);
    report.retries = shared.activity.retries();
    report.enqueue_requests = shared.activity.enqueue_requests();
    report.requests = crate::sink::requests::tally().counts(&settings.config.request_prices);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_has_a_rate_and_eta_once_bytes_flowed() {
        let upload = Upload::new("/nix/store/x".to_owned(), 40, 100, 2.0);
        assert_eq!(upload.bytes_per_sec, Some(20.0));
        assert_eq!(upload.eta_secs, Some(3.0));
        let starting = Upload::new("/nix/store/x".to_owned(), 0, 100, 0.5);
        assert_eq!((starting.bytes_per_sec, starting.eta_secs), (None, None));
        let instant = Upload::new("/nix/store/x".to_owned(), 10, 100, 0.0);
        assert_eq!((instant.bytes_per_sec, instant.eta_secs), (None, None));
    }

    #[test]
    fn a_version_2_document_reads_with_the_new_fields_absent() {
        let old = r#"{"version":2,"target":"file:///c","public_keys":[],
            "counts":{"pending":0,"uploading":0,"done":1,"failed":0},"oldest_waiting_secs":null,
            "uploads":[{"path":"/nix/store/x","nar_bytes_done":1,"nar_bytes_total":2,
            "elapsed_secs":1.0}],
            "closure":{"resolving":0,"checking":0,"storing":0,"waiting_for_references":0,
            "publishing":0},"retrying":[],"failed":[],"uploaded":{"paths":1,"nar_bytes":2}}"#;
        let report: StatusReport = serde_json::from_str(old).unwrap();
        assert_eq!(report.uploaded.stored_bytes, 0);
        assert_eq!(report.uploads[0].bytes_per_sec, None);
        assert_eq!(report.failures, Failures::default());
        assert_eq!(report.last_upload_unix_secs, None);
    }

    /// A new CLI reading a running version 3 daemon: its `requests` was the enqueue requests
    /// taken, an object without `total`; it reads as zero requests sent.
    #[test]
    fn a_version_3_document_reads_with_its_requests_as_zero() {
        let v3 = r#"{"version":3,"target":"file:///c","public_keys":["k:AAAA"],
            "counts":{"pending":0,"uploading":0,"done":2,"failed":0},"oldest_waiting_secs":null,
            "uploads":[],
            "closure":{"resolving":0,"checking":0,"storing":0,"waiting_for_references":0,
            "publishing":0},"retrying":[],"failed":[],
            "uploaded":{"paths":2,"nar_bytes":8504,"stored_bytes":3310},
            "last_upload_unix_secs":1764083520.117,"last_upload_secs_ago":12.402,
            "skipped_upstream":{"paths":0,"nar_bytes":0},"skipped_present":1,
            "failures":{"transient":{"attempts":0,"last_error":null,"last_error_secs_ago":null},
            "permanent":{"attempts":0,"last_error":null,"last_error_secs_ago":null}},
            "retries":0,
            "requests":{"acknowledged":3,"spool_ingested":1},
            "spool":{"waiting":0,"rejected_total":0,"rejected":[]}}"#;
        let report: StatusReport = serde_json::from_str(v3).unwrap();
        assert_eq!(report.version, 3);
        assert_eq!(report.requests, RequestCounts::default());
        assert_eq!(report.uploaded.paths, 2);
        assert_eq!(report.skipped_present, 1);
    }
}
