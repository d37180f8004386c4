//! The durable upload queue: every path handed to the daemon, with its state, in a sled
//! database under `<state_dir>/queue`.
//!
//! # Records
//!
//! Tree `paths`, key = absolute store path (UTF-8), value = JSON [`Entry`] (see [`record`]):
//! `state` (pending | uploading | done | failed | skipped), `attempts`, `next_attempt_ms` (Unix ms),
//! `last_error`, `arrived_ms`, `source` (hook | spool | push), `drv`, `updated_ms`, and
//! `realisations` (omitted when empty, so older records decode): the realisations to publish
//! once the path is in the cache, each as its `.doi` JSON. A request for a path already
//! pending or uploading adds its realisations to the entry. A `skipped` entry (the push
//! filters keep the path out, see `crate::filter`) has `skipped`: `{kind, reason}`; it is
//! finished like a `done` one, and queued afresh when the path is requested again.
//! Tree `stats`, key = counter name, value = u64 big-endian: `uploaded_paths`,
//! `uploaded_bytes` (NAR bytes), `uploaded_stored_bytes` (compressed bytes written),
//! `last_upload_ms` (Unix ms of the last published path). They only ever grow, so the
//! metrics built on them are true Prometheus counters across restarts.
//!
//! Tree `intake`, key `moved`, value = the intake journal's [`journal::Mark`] (generation
//! and end offset, each u64 big-endian): how far the journal was moved into this queue.
//!
//! A record that does not decode is skipped by every reader and reported
//! ([`Scan::corrupt`], shown by `status` as a failure); it never stops the rest of the queue.
//! `retry` replaces it with a fresh entry when its key is a store path, else removes it.
//!
//! # Durability and the ack rule
//!
//! The daemon acknowledges a request once it is durable in the intake [`journal`] (one small
//! write and one `fdatasync`), and moves it into this queue right after (see
//! `daemon::intake`). [`Queue::record_journaled`] writes the moved records with the journal's
//! mark; the journal keeps them until a later [`Queue::flush`] made both durable (in the same
//! [`Queue::epoch`]). [`Queue::enqueue`], used when the journal cannot take a request,
//! returns only after the new records are durable. Durable means sled's
//! flush followed by `fdatasync` of its log file (see [`storage`]), so that it survives a
//! crash or a power loss. Flushes are group-committed: concurrent enqueues
//! wait on one flush instead of one each. A failed sync fails every flush that waited on it
//! and every later one ([`QueueError::Unsynced`]) until [`Queue::reopen`]: a second sync that
//! succeeds does not bring back writes the first lost. State changes made by the pipeline
//! (pending → uploading → done) are not flushed one by one; losing them in a crash only means
//! a path is uploaded again, which is harmless, never that one is lost.
//!
//! # Attempts
//!
//! An attempt is counted when it starts ([`Queue::take_due`]), so a path whose upload crashes
//! the daemon uses up its attempts too; [`Queue::take_due`] fails an entry that has none left
//! instead of starting it. An upload cut off by a clean shutdown gives its attempt back; after
//! a fatal stop (a panic), the entries in flight are tried alone ([`quarantine`]).
//!
//! # Recovery
//!
//! [`Queue::open`] turns every `uploading` entry back into `pending` (the previous process
//! died during the upload; the attempt stays counted). After sled fails (a full disk),
//! [`Queue::is_broken`] says so and [`Queue::reopen`] opens the database again; until then
//! every call returns the error and nothing is acknowledged. A database that a full disk keeps
//! from opening at all gives the same state from the start ([`Queue::open_or_closed`]).
//!
//! # Concurrency
//!
//! Every change of one record is a compare-and-swap on the bytes read: a record changed by
//! someone else in between (an entry re-queued and acknowledged while `prune` or `take_due`
//! looked at an older copy) is left as the other writer made it. A transition that no longer
//! applies to the record as it now is ([`transitions::Change::Keep`]: `retry` of an entry
//! that another `retry` or an enqueue already made pending, `finish` of a record that does
//! not decode) leaves it exactly as it is; only `prune` (and `retry` of a corrupt record
//! whose key is no store path) ever removes a record.
//!
//! # Bounds
//!
//! `done` and `skipped` entries are kept for a day (they answer "already uploaded" without
//! asking the target, and show in `status`) and at most [`MAX_DONE`] of them;
//! [`Queue::prune`] drops the rest.

mod group_commit;
pub mod journal;
pub mod quarantine;
mod record;
mod storage;
mod totals;
pub use totals::UploadTotals;
mod transitions;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use crate::format::realisation::Realisation;
use crate::format::store_path::StorePath;
use crate::sync::{lock, write as write_lock};
use narpush_protocol::Source;
pub use record::{CorruptRecord, Entry, SkipRecord, State};
use storage::Handle;

/// `done` entries kept at most.
pub const MAX_DONE: usize = 10_000;
/// How long a `done` entry is kept.
pub const DONE_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long [`Queue::reopen`] waits for the failed handle to let go of sled's file lock.
const REOPEN_PATIENCE: Duration = Duration::from_secs(2);

/// The key of the intake journal's mark in the `intake` tree.
const JOURNAL_MARK: &str = "moved";

/// A path to add, as a request names it.
#[derive(Clone, Debug)]
pub struct NewPath {
    pub path: StorePath,
    pub source: Source,
    pub drv: Option<StorePath>,
    pub realisations: Vec<Realisation>,
}

/// How an upload attempt of one path ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Done,
    RetryAt {
        at_ms: u64,
        error: String,
    },
    Failed {
        error: String,
    },
    /// Not uploaded, by the push filters (not a failure: nothing to retry).
    Skipped(SkipRecord),
}

/// Why `uploading` entries go back to `pending`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interrupted {
    /// A clean shutdown cut the upload off: the attempt is given back.
    Shutdown,
    /// The previous process died during the upload: the attempt stays counted.
    Crash,
    /// The daemon stopped because one of its tasks failed (a panic), with this reason: the
    /// entries in flight are tried alone next, and an attempt counts only for an entry that
    /// was alone (see [`quarantine`]), so a path that makes it panic ends `failed` after
    /// `max_attempts` instead of crash-looping the service, and only that path.
    Fatal(String),
}

/// Every readable entry, and the records that are not.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<Entry>,
    pub corrupt: Vec<CorruptRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database {path}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("queue database")]
    Sled(#[from] sled::Error),
    #[error("cannot sync the queue database's file {file} to disk")]
    Sync {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the queue database failed and is not open again yet: {reason}")]
    Closed { reason: String },
    #[error("queue record for {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot encode the queue record for {key}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "an earlier sync of the queue database's file {file} failed, so this write is not known \
         to be on disk (nothing is acknowledged until the database is opened again)"
    )]
    Unsynced { file: String },
}

pub fn now_ms() -> u64 {
    crate::clock::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// `None` after a failed reopen, until the next succeeds.
    handle: RwLock<Option<Arc<Handle>>>,
    /// Set by any failed sled call or sync; cleared by a successful reopen.
    broken: AtomicBool,
    /// Why the queue last failed, for `Closed` errors and `status`.
    failure: Mutex<Option<String>>,
    /// Corrupt keys already logged (each is logged once, not at every scan).
    reported: Mutex<HashSet<String>>,
    /// How many times the database was opened again (see [`Queue::epoch`]).
    epoch: AtomicU64,
}

/// One record as read: its raw bytes (for compare-and-swap) and what they decode to.
struct Raw {
    key: String,
    bytes: sled::IVec,
    entry: Entry,
}

impl Queue {
    /// Opens (or creates) the queue in `dir` and recovers uploads a crash interrupted.
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        let handle = Handle::open(dir)?;
        let queue = Queue::with_handle(dir, Some(Arc::new(handle)));
        queue.requeue_uploading(Interrupted::Crash)?;
        Ok(queue)
    }

    /// [`Queue::open`], except when the disk has no room to open the database (full, or over
    /// quota): then the queue comes back closed, refusing every call with that reason (so
    /// requests are refused and hooks spool them) until [`Queue::reopen`] succeeds, which the
    /// daemon's pipeline tries every few seconds. Any other failure is an error, as before.
    pub fn open_or_closed(dir: &Path) -> Result<Queue, QueueError> {
        match Queue::open(dir) {
            Err(error) if is_out_of_space(&error) => {
                let queue = Queue::with_handle(dir, None);
                queue.failed(error);
                Ok(queue)
            }
            opened => opened,
        }
    }

    fn with_handle(dir: &Path, handle: Option<Arc<Handle>>) -> Queue {
        Queue {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                handle: RwLock::new(handle),
                broken: AtomicBool::new(false),
                failure: Mutex::new(None),
                reported: Mutex::new(HashSet::new()),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Changes whenever the database is opened again: writes made in an earlier epoch and not
    /// flushed then are lost, and a flush in a later one does not cover them.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// Whether sled failed and the queue needs [`Queue::reopen`].
    pub fn is_broken(&self) -> bool {
        self.inner.broken.load(Ordering::SeqCst)
    }

    /// Why the queue is broken, if it is.
    pub fn failure(&self) -> Option<String> {
        if !self.is_broken() {
            return None;
        }
        lock(&self.inner.failure).clone()
    }

    /// Drops the failed database handle and opens the database again (blocking: run it off the
    /// async workers). Uploads the failure interrupted go back to `pending`.
    pub fn reopen(&self) -> Result<(), QueueError> {
        let old = write_lock(&self.inner.handle).take();
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        drop(old);
        let handle =
            Handle::open_patiently(&self.inner.dir, REOPEN_PATIENCE).map_err(|e| self.failed(e))?;
        *write_lock(&self.inner.handle) = Some(Arc::new(handle));
        self.inner.broken.store(false, Ordering::SeqCst);
        // Writes the failed handle took in but never flushed are gone, so an entry may read
        // `uploading` though its outcome was recorded: take them all again. One still in the
        // engine is taken again but not handed over twice (the pipeline's admission knows
        // it); one stuck would not be harmless.
        self.requeue_uploading(Interrupted::Crash)
    }

    /// Closes the database as a failed sled call followed by a failed reopen leaves it, so
    /// that tests of the queue's users see every call refused until [`Queue::reopen`].
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self, reason: &str) {
        *write_lock(&self.inner.handle) = None;
        *lock(&self.inner.failure) = Some(reason.to_owned());
        self.inner.broken.store(true, Ordering::SeqCst);
    }

    /// Replaces the `fdatasync` of the open database's log (the queue must be just opened).
    #[cfg(test)]
    pub(crate) fn set_sync_for_test(&self, sync_data: group_commit::SyncData) {
        let mut handle = write_lock(&self.inner.handle);
        let handle = handle.as_mut().and_then(Arc::get_mut);
        handle.expect("no other user of the handle yet").sync_data = sync_data;
    }

    fn handle(&self) -> Result<Arc<Handle>, QueueError> {
        let current = match self.inner.handle.read() {
            Ok(handle) => handle.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        current.ok_or_else(|| QueueError::Closed {
            reason: lock(&self.inner.failure)
                .clone()
                .unwrap_or_else(|| "reopening".to_owned()),
        })
    }

    /// Marks the queue broken when `error` comes from the database or the disk.
    fn failed(&self, error: QueueError) -> QueueError {
        if matches!(
            error,
            QueueError::Open { .. }
                | QueueError::Sled(_)
                | QueueError::Sync { .. }
                | QueueError::Unsynced { .. }
        ) {
            *lock(&self.inner.failure) = Some(crate::error_chain(&error));
            self.inner.broken.store(true, Ordering::SeqCst);
        }
        error
    }

    /// Runs `f` on the open database, marking the queue broken if it fails.
    fn with<T>(&self, f: impl FnOnce(&Handle) -> Result<T, QueueError>) -> Result<T, QueueError> {
        let handle = self.handle()?;
        f(&handle).map_err(|e| self.failed(e))
    }

    pub fn get(&self, path: &StorePath) -> Result<Option<Entry>, QueueError> {
        let key = path.to_absolute();
        self.with(|h| Ok(h.paths.get(key.as_bytes())?))?
            .map(|bytes| record::decode(&key, &bytes))
            .transpose()
    }

    /// Every readable entry, in key order (corrupt records are skipped; see [`Queue::scan`]).
    pub fn entries(&self) -> Result<Vec<Entry>, QueueError> {
        Ok(self.scan()?.entries)
    }

    /// Every entry, and the records that do not decode (each logged once).
    pub fn scan(&self) -> Result<Scan, QueueError> {
        let mut scan = Scan::default();
        self.walk(|key, bytes| match record::decode(&key, &bytes) {
            Ok(entry) => scan.entries.push(entry),
            Err(e) => scan.corrupt.push(self.corrupt(key, e)),
        })?;
        Ok(scan)
    }

    /// Flushes everything now, durably (used at shutdown).
    pub fn flush_blocking(&self) -> Result<(), QueueError> {
        self.with(|h| h.flush_blocking(&self.inner.dir))
    }

    /// Calls `each(key, value)` for every record.
    fn walk(&self, mut each: impl FnMut(String, sled::IVec)) -> Result<(), QueueError> {
        self.with(|h| {
            for item in h.paths.iter() {
                let (key, value) = item?;
                each(String::from_utf8_lossy(&key).into_owned(), value);
            }
            Ok(())
        })
    }

    /// Readable records with their raw bytes, for compare-and-swap.
    fn raw_entries(&self) -> Result<Vec<Raw>, QueueError> {
        let mut raws = Vec::new();
        self.walk(|key, bytes| match record::decode(&key, &bytes) {
            Ok(entry) => raws.push(Raw { key, bytes, entry }),
            Err(e) => {
                self.corrupt(key, e);
            }
        })?;
        Ok(raws)
    }

    fn corrupt(&self, key: String, error: QueueError) -> CorruptRecord {
        let reason = match error {
            QueueError::Corrupt { reason, .. } => reason,
            other => other.to_string(),
        };
        if lock(&self.inner.reported).insert(key.clone()) {
            tracing::error!(key, "skipping a queue record that cannot be read: {reason}");
        }
        CorruptRecord { key, reason }
    }

    /// Replaces (or with `None` removes) the record `raw` was read from, if it is still what
    /// was read; returns whether it was.
    fn swap(&self, raw: &Raw, new: Option<&Entry>) -> Result<bool, QueueError> {
        self.with(|h| {
            let new = new.map(record::encode).transpose()?;
            let swapped = h
                .paths
                .compare_and_swap(raw.key.as_bytes(), Some(&raw.bytes), new)?;
            h.wrote();
            Ok(swapped.is_ok())
        })
    }
}

/// What [`Queue::take_due`] marked `uploading`, and the error that stopped it early, if any.
#[derive(Debug, Default)]
pub struct TakeDue {
    pub entries: Vec<Entry>,
    /// Due suspects of a fatal stop (see [`quarantine`]): while any is, nothing else is taken.
    pub suspects: usize,
    pub error: Option<QueueError>,
}

/// Whether `error` says the disk has no room (sled keeps only the kind of the I/O errors it
/// reports, not their number).
fn is_out_of_space(error: &QueueError) -> bool {
    let io = match error {
        QueueError::Open {
            source: sled::Error::Io(io),
            ..
        }
        | QueueError::Sled(sled::Error::Io(io))
        | QueueError::Sync { source: io, .. } => io,
        _ => return false,
    };
    matches!(
        io.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests;
