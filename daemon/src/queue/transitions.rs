//! How entries move between states: enqueue, take, finish, retry, requeue and prune, each
//! written so that a concurrent change of the same record is never overwritten with an older
//! copy (see the queue's module doc).

use super::journal::Mark;
use super::storage::Handle;
use super::{
    lock, now_ms, record, Entry, Interrupted, NewPath, Outcome, Queue, QueueError, Raw, State,
    TakeDue, DONE_RETENTION, JOURNAL_MARK, MAX_DONE,
};
use crate::format::store_path::StorePath;
use narpush_protocol::Source;

impl Queue {
    /// Puts every `uploading` entry back to `pending`.
    pub fn requeue_uploading(&self, why: Interrupted) -> Result<(), QueueError> {
        let now = now_ms();
        for raw in self.raw_entries()? {
            if raw.entry.state != State::Uploading {
                continue;
            }
            let entry = Entry {
                state: State::Pending,
                attempts: match &why {
                    Interrupted::Shutdown => raw.entry.attempts.saturating_sub(1),
                    Interrupted::Crash | Interrupted::Fatal(_) => raw.entry.attempts,
                },
                last_error: match &why {
                    Interrupted::Shutdown => raw.entry.last_error.clone(),
                    Interrupted::Crash => {
                        Some("interrupted: the daemon stopped (crash or kill) or its queue database failed during the upload".to_owned())
                    }
                    Interrupted::Fatal(reason) => {
                        Some(format!("interrupted: the daemon stopped during the upload: {reason}"))
                    }
                },
                updated_ms: now,
                ..raw.entry.clone()
            };
            self.swap(&raw, Some(&entry))?;
        }
        Ok(())
    }

    /// Adds paths (a path already pending or uploading stays as it is; a done or failed one is
    /// queued again) and returns once the records are durable.
    pub async fn enqueue(&self, new: &[NewPath]) -> Result<(), QueueError> {
        let handle = self.handle()?;
        self.add(&handle, new)?;
        handle
            .flush(&self.inner.dir)
            .await
            .map_err(|e| self.failed(e))
    }

    /// The entries of [`Queue::enqueue`] for requests the intake journal holds, up to and
    /// including the record that ends at `mark`, and the mark after them; not flushed (the
    /// journal keeps them until a flush: see [`super::journal`]).
    pub fn record_journaled(&self, new: &[NewPath], mark: Mark) -> Result<(), QueueError> {
        let handle = self.handle()?;
        self.add(&handle, new)?;
        handle
            .intake
            .insert(JOURNAL_MARK, &mark.to_bytes())
            .map_err(|e| self.failed(e.into()))?;
        handle.wrote();
        Ok(())
    }

    /// How far the intake journal was moved into the queue, if it ever was.
    pub fn journal_mark(&self) -> Result<Option<Mark>, QueueError> {
        let bytes = self.with(|h| Ok(h.intake.get(JOURNAL_MARK)?))?;
        match bytes {
            None => Ok(None),
            Some(bytes) => Mark::from_bytes(&bytes)
                .map(Some)
                .ok_or_else(|| QueueError::Corrupt {
                    key: JOURNAL_MARK.to_owned(),
                    reason: format!("the intake journal's mark is {} bytes, not 16", bytes.len()),
                }),
        }
    }

    /// Writes the entries of [`Queue::enqueue`], without waiting for the flush.
    fn add(&self, handle: &Handle, new: &[NewPath]) -> Result<(), QueueError> {
        let now = now_ms();
        for item in new {
            self.update(handle, &item.path.to_absolute(), |old| match old {
                Some(mut entry) if matches!(entry.state, State::Pending | State::Uploading) => {
                    for realisation in &item.realisations {
                        if !entry.realisations.iter().any(|r| r.id == realisation.id) {
                            entry.realisations.push(realisation.clone());
                        }
                    }
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
                    realisations: item.realisations.clone(),
                }),
            })
            .map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    /// Waits until everything written so far is durable.
    pub async fn flush(&self) -> Result<(), QueueError> {
        let handle = self.handle()?;
        handle
            .flush(&self.inner.dir)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Pending entries whose time has come, at most `limit`, oldest first, now `uploading` with
    /// the attempt counted. An entry that already used `max_attempts` is failed instead. If
    /// writing fails part way, the entries marked so far are returned with the error, so that
    /// none is left `uploading` without being started.
    pub fn take_due(&self, now: u64, limit: usize, max_attempts: u32) -> TakeDue {
        let mut taken = TakeDue::default();
        let mut due: Vec<Raw> = match self.raw_entries() {
            Ok(raws) => raws
                .into_iter()
                .filter(|r| r.entry.state == State::Pending && r.entry.next_attempt_ms <= now)
                .collect(),
            Err(e) => {
                taken.error = Some(e);
                return taken;
            }
        };
        due.sort_by_key(|r| r.entry.arrived_ms);
        for raw in due {
            if taken.entries.len() >= limit {
                break;
            }
            let mut entry = raw.entry.clone();
            entry.updated_ms = now;
            if entry.attempts >= max_attempts {
                entry.state = State::Failed;
                entry.last_error = Some(format!(
                    "gave up after {} attempts: {}",
                    entry.attempts,
                    entry.last_error.as_deref().unwrap_or("no error recorded")
                ));
            } else {
                entry.state = State::Uploading;
                entry.attempts += 1;
            }
            match self.swap(&raw, Some(&entry)) {
                Ok(true) if entry.state == State::Uploading => taken.entries.push(entry),
                Ok(_) => {}
                Err(e) => {
                    taken.error = Some(e);
                    break;
                }
            }
        }
        taken
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

    /// Records the end of an attempt (counted when it started).
    pub fn finish(&self, path: &StorePath, outcome: &Outcome) -> Result<(), QueueError> {
        let now = now_ms();
        let handle = self.handle()?;
        self.update(&handle, &path.to_absolute(), |old| {
            let mut entry = old?;
            entry.updated_ms = now;
            match outcome {
                Outcome::Done => {
                    entry.state = State::Done;
                    entry.last_error = None;
                }
                Outcome::RetryAt { at_ms, error } => {
                    entry.state = State::Pending;
                    entry.next_attempt_ms = *at_ms;
                    entry.last_error = Some(error.clone());
                }
                Outcome::Failed { error } => {
                    entry.state = State::Failed;
                    entry.last_error = Some(error.clone());
                }
            }
            Some(entry)
        })
        .map_err(|e| self.failed(e))
    }

    /// Puts failed entries (all of them, or those named) back in the queue; returns how many.
    /// With `all`, corrupt records are replaced by fresh entries (or removed when their key is
    /// not a store path).
    pub async fn retry(&self, all: bool, paths: &[StorePath]) -> Result<usize, QueueError> {
        let now = now_ms();
        let handle = self.handle()?;
        let fresh = |path: StorePath| Entry {
            path,
            state: State::Pending,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
            arrived_ms: now,
            source: Source::Push,
            drv: None,
            updated_ms: now,
            realisations: Vec::new(),
        };
        let scan = self.scan()?;
        let mut count = 0;
        for entry in scan.entries {
            if entry.state == State::Failed && (all || paths.contains(&entry.path)) {
                let key = entry.path.to_absolute();
                self.update(&handle, &key, |old| {
                    old.filter(|e| e.state == State::Failed).map(|e| Entry {
                        state: State::Pending,
                        attempts: 0,
                        next_attempt_ms: now,
                        last_error: None,
                        updated_ms: now,
                        ..e
                    })
                })
                .map_err(|e| self.failed(e))?;
                count += 1;
            }
        }
        for corrupt in scan.corrupt {
            let path = StorePath::from_absolute_path(&corrupt.key).ok();
            if !(all || path.as_ref().is_some_and(|p| paths.contains(p))) {
                continue;
            }
            let written = match path {
                Some(path) => handle
                    .paths
                    .insert(corrupt.key.as_bytes(), record::encode(&fresh(path))),
                None => handle.paths.remove(corrupt.key.as_bytes()),
            };
            written.map_err(|e| self.failed(e.into()))?;
            handle.wrote();
            lock(&self.inner.reported).remove(&corrupt.key);
            count += 1;
        }
        handle
            .flush(&self.inner.dir)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(count)
    }

    /// Drops `done` entries older than [`DONE_RETENTION`] and beyond [`MAX_DONE`] (the
    /// newest are kept). An entry changed since it was read is left alone.
    pub fn prune(&self, now: u64) -> Result<usize, QueueError> {
        let expired = self.expired(now)?;
        self.remove_unchanged(&expired)
    }

    /// Phase one of [`Queue::prune`]: the `done` records to drop, as read now.
    pub(super) fn expired(&self, now: u64) -> Result<Vec<Raw>, QueueError> {
        let retention = u64::try_from(DONE_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let mut done: Vec<Raw> = self
            .raw_entries()?
            .into_iter()
            .filter(|r| r.entry.state == State::Done)
            .collect();
        done.sort_by_key(|r| std::cmp::Reverse(r.entry.updated_ms));
        Ok(done
            .into_iter()
            .enumerate()
            .filter(|(index, raw)| {
                *index >= MAX_DONE || now.saturating_sub(raw.entry.updated_ms) > retention
            })
            .map(|(_, raw)| raw)
            .collect())
    }

    /// Phase two of [`Queue::prune`]: removes each record that is still as it was read;
    /// returns how many were.
    pub(super) fn remove_unchanged(&self, records: &[Raw]) -> Result<usize, QueueError> {
        let mut removed = 0;
        for raw in records {
            if self.swap(raw, None)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
