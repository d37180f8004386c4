//! The durable upload queue: every path handed to the daemon, with its state, in a sled
//! database under `<state_dir>/queue`.
//!
//! # Records
//!
//! Tree `paths`, key = absolute store path (UTF-8), value = JSON [`Entry`] (paths are stored as
//! absolute path strings and parsed back into [`StorePath`]s when read):
//! `state` (pending | uploading | done | failed), `attempts`, `next_attempt_ms` (Unix ms),
//! `last_error`, `arrived_ms`, `source` (hook | spool | push), `drv`, `updated_ms`.
//! Tree `stats`, key = counter name, value = u64 big-endian: `uploaded_paths`,
//! `uploaded_bytes` (NAR bytes).
//!
//! # Durability and the ack rule
//!
//! [`Queue::enqueue`] returns only after sled has flushed the new records to disk, so the
//! daemon acknowledges a request only once it survives a crash. Flushes are group-committed:
//! concurrent enqueues wait on one flush instead of one each (see [`GroupCommit`]), and a lone
//! enqueue flushes on its own task, without handing over to another thread. State changes
//! made by the pipeline (pending → uploading → done) are not flushed one by one; losing them in
//! a crash only means a path is uploaded again, which is harmless, never that one is lost.
//!
//! # Recovery
//!
//! [`Queue::open`] turns every `uploading` entry back into `pending`: an upload the previous
//! process did not finish is started again. Nothing else changes on open.
//!
//! # Bounds
//!
//! `done` entries are kept for a day (they answer "already uploaded" without asking the
//! target) and at most [`MAX_DONE`] of them; [`Queue::prune`] drops the rest.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::format::store_path::StorePath;
use narpush_protocol::Source;

/// `done` entries kept at most.
pub const MAX_DONE: usize = 10_000;
/// How long a `done` entry is kept.
pub const DONE_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Uploading,
    Done,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "text::store_path")]
    pub path: StorePath,
    pub state: State,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub arrived_ms: u64,
    #[serde(with = "text::source")]
    pub source: Source,
    #[serde(with = "text::optional_store_path")]
    pub drv: Option<StorePath>,
    pub updated_ms: u64,
}

/// A path to add, as a request names it.
#[derive(Clone, Debug)]
pub struct NewPath {
    pub path: StorePath,
    pub source: Source,
    pub drv: Option<StorePath>,
}

/// How an upload attempt of one path ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Done,
    RetryAt { at_ms: u64, error: String },
    Failed { error: String },
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
    #[error("queue record for {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Clone)]
pub struct Queue {
    db: sled::Db,
    paths: sled::Tree,
    stats: sled::Tree,
    commit: Arc<GroupCommit>,
}

impl Queue {
    /// Opens (or creates) the queue in `dir` and recovers interrupted uploads.
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| QueueError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let paths = db.open_tree("paths")?;
        let stats = db.open_tree("stats")?;
        let queue = Queue {
            db,
            paths,
            stats,
            commit: Arc::new(GroupCommit::default()),
        };
        queue.requeue_uploading()?;
        Ok(queue)
    }

    /// Puts every `uploading` entry back to `pending`, attempts unchanged: an interrupted
    /// upload (crash, shutdown) is not the path's fault.
    pub fn requeue_uploading(&self) -> Result<(), QueueError> {
        for entry in self.entries()? {
            if entry.state == State::Uploading {
                self.put(&Entry {
                    state: State::Pending,
                    updated_ms: now_ms(),
                    ..entry
                })?;
            }
        }
        Ok(())
    }

    /// Adds paths (a path already pending or uploading stays as it is; a done or failed one is
    /// queued again) and returns once the records are on disk.
    pub async fn enqueue(&self, new: &[NewPath]) -> Result<(), QueueError> {
        let now = now_ms();
        for item in new {
            self.update(&item.path.to_absolute(), |old| match old {
                Some(entry) if matches!(entry.state, State::Pending | State::Uploading) => {
                    Some(entry)
                }
                _ => Some(Entry {
                    path: item.path.clone(),
                    state: State::Pending,
                    attempts: 0,
                    next_attempt_ms: now,
                    last_error: None,
                    arrived_ms: now,
                    source: item.source,
                    drv: item.drv.clone(),
                    updated_ms: now,
                }),
            })?;
        }
        self.flush().await
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.commit.flush(&self.db).await
    }

    /// Pending entries whose time has come, at most `limit`, oldest first, now `uploading`.
    pub fn take_due(&self, now: u64, limit: usize) -> Result<Vec<Entry>, QueueError> {
        let mut due: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.state == State::Pending && e.next_attempt_ms <= now)
            .collect();
        due.sort_by_key(|e| e.arrived_ms);
        due.truncate(limit);
        for entry in &mut due {
            entry.state = State::Uploading;
            entry.updated_ms = now;
            self.put(entry)?;
        }
        Ok(due)
    }

    /// When the next pending entry becomes due, if any is pending.
    pub fn next_due_ms(&self) -> Result<Option<u64>, QueueError> {
        Ok(self
            .entries()?
            .iter()
            .filter(|e| e.state == State::Pending)
            .map(|e| e.next_attempt_ms)
            .min())
    }

    /// Records the end of an attempt.
    pub fn finish(&self, path: &StorePath, outcome: &Outcome) -> Result<(), QueueError> {
        let now = now_ms();
        self.update(&path.to_absolute(), |old| {
            let mut entry = old?;
            entry.updated_ms = now;
            match outcome {
                Outcome::Done => {
                    entry.state = State::Done;
                    entry.last_error = None;
                }
                Outcome::RetryAt { at_ms, error } => {
                    entry.state = State::Pending;
                    entry.attempts += 1;
                    entry.next_attempt_ms = *at_ms;
                    entry.last_error = Some(error.clone());
                }
                Outcome::Failed { error } => {
                    entry.state = State::Failed;
                    entry.attempts += 1;
                    entry.last_error = Some(error.clone());
                }
            }
            Some(entry)
        })
    }

    /// Puts failed entries (all of them, or those named) back in the queue; returns how many.
    pub async fn retry(&self, all: bool, paths: &[StorePath]) -> Result<usize, QueueError> {
        let now = now_ms();
        let mut count = 0;
        for entry in self.entries()? {
            if entry.state == State::Failed && (all || paths.contains(&entry.path)) {
                self.put(&Entry {
                    state: State::Pending,
                    attempts: 0,
                    next_attempt_ms: now,
                    last_error: None,
                    updated_ms: now,
                    ..entry
                })?;
                count += 1;
            }
        }
        self.flush().await?;
        Ok(count)
    }

    pub fn get(&self, path: &StorePath) -> Result<Option<Entry>, QueueError> {
        let key = path.to_absolute();
        self.paths
            .get(key.as_bytes())?
            .map(|bytes| decode(&key, &bytes))
            .transpose()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, QueueError> {
        self.paths
            .iter()
            .map(|item| {
                let (key, value) = item?;
                decode(&String::from_utf8_lossy(&key), &value)
            })
            .collect()
    }

    /// Drops `done` entries older than [`DONE_RETENTION`] and beyond [`MAX_DONE`].
    pub fn prune(&self, now: u64) -> Result<usize, QueueError> {
        let retention = u64::try_from(DONE_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let mut done: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.state == State::Done)
            .collect();
        done.sort_by_key(|e| std::cmp::Reverse(e.updated_ms));
        let mut removed = 0;
        for (index, entry) in done.iter().enumerate() {
            if index >= MAX_DONE || now.saturating_sub(entry.updated_ms) > retention {
                self.paths.remove(entry.path.to_absolute().as_bytes())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn add_uploaded(&self, paths: u64, bytes: u64) -> Result<(), QueueError> {
        for (name, amount) in [("uploaded_paths", paths), ("uploaded_bytes", bytes)] {
            self.stats.fetch_and_update(name, |old| {
                let current = old
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                Some((current + amount).to_be_bytes().to_vec())
            })?;
        }
        Ok(())
    }

    /// (`uploaded_paths`, `uploaded_bytes`) since the queue was created.
    pub fn uploaded(&self) -> Result<(u64, u64), QueueError> {
        let read = |name: &str| -> Result<u64, QueueError> {
            Ok(self
                .stats
                .get(name)?
                .and_then(|b| b.as_ref().try_into().ok())
                .map_or(0, u64::from_be_bytes))
        };
        Ok((read("uploaded_paths")?, read("uploaded_bytes")?))
    }

    fn put(&self, entry: &Entry) -> Result<(), QueueError> {
        self.paths
            .insert(entry.path.to_absolute().as_bytes(), encode(entry))?;
        self.commit.wrote();
        Ok(())
    }

    /// Atomically replaces the entry of `path` by `change(old)`.
    fn update(
        &self,
        path: &str,
        change: impl Fn(Option<Entry>) -> Option<Entry>,
    ) -> Result<(), QueueError> {
        let mut corrupt = None;
        self.paths.fetch_and_update(path.as_bytes(), |old| {
            let old = match old.map(|bytes| decode(path, bytes)).transpose() {
                Ok(old) => old,
                Err(e) => {
                    corrupt = Some(e);
                    None
                }
            };
            change(old).map(|entry| encode(&entry))
        })?;
        self.commit.wrote();
        if let Some(e) = corrupt {
            // The corrupt record was replaced by the new one; say so, since history was lost.
            tracing::warn!(error = %e, "replaced a corrupt queue record");
        }
        Ok(())
    }

    /// Flushes everything now (used at shutdown).
    pub fn flush_blocking(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        Ok(())
    }
}

fn encode(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).unwrap_or_default()
}

fn decode(key: &str, bytes: &[u8]) -> Result<Entry, QueueError> {
    serde_json::from_slice(bytes).map_err(|e| QueueError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Typed fields as the text they are stored as: store paths as absolute paths, sources by name.
mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub mod store_path {
        use super::*;
        use crate::format::store_path::StorePath;

        pub fn serialize<S: Serializer>(path: &StorePath, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&path.to_absolute())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StorePath, D::Error> {
            let text = String::deserialize(d)?;
            StorePath::from_absolute_path(&text).map_err(serde::de::Error::custom)
        }
    }

    pub mod optional_store_path {
        use super::*;
        use crate::format::store_path::StorePath;

        pub fn serialize<S: Serializer>(path: &Option<StorePath>, s: S) -> Result<S::Ok, S::Error> {
            match path {
                Some(path) => s.serialize_some(&path.to_absolute()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StorePath>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| StorePath::from_absolute_path(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    pub mod source {
        use super::*;
        use narpush_protocol::Source;

        pub fn serialize<S: Serializer>(source: &Source, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(source.as_str())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
            let text = String::deserialize(d)?;
            Source::parse(&text)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown source '{text}'")))
        }
    }
}

/// Group commit. Every write bumps `written`; a flush covers every write made before it
/// started. A caller waits for the flush lock; if a flush that started after its write has
/// ended meanwhile, it is done, otherwise it flushes itself, covering everyone who wrote so
/// far. N concurrent enqueues thus cost about two flushes, not N, and a lone one flushes on its
/// own task instead of waking another thread.
#[derive(Default)]
struct GroupCommit {
    /// Writes made so far (a sequence number).
    written: AtomicU64,
    /// Every write up to this number is on disk.
    flushed: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    fn wrote(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn flush(&self, db: &sled::Db) -> Result<(), QueueError> {
        let mine = self.written.load(Ordering::SeqCst);
        let _turn = self.lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let covers = self.written.load(Ordering::SeqCst);
        // sled's flush writes and syncs on the calling thread (a fraction of a millisecond);
        // on a multi-threaded runtime the worker hands its other tasks away meanwhile.
        let flushed = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| db.flush())
            }
            _ => db.flush(),
        };
        flushed?;
        self.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
