//! How entries move between states: enqueue, take, finish, retry, requeue and prune, each
//! written so that a concurrent change of the same record is never overwritten with an older
//! copy, and a transition that no longer applies leaves the record as it is (see the queue's
//! module doc). The read-modify-write transitions are pure functions from the record as it is
//! now to a [`Change`], so each "does not apply" case is stated (and tested) once.

use super::journal::Mark;
use super::storage::Handle;
use super::{
    lock, now_ms, quarantine, record, Entry, Interrupted, NewPath, Outcome, Queue, QueueError, Raw,
    State, TakeDue, DONE_RETENTION, JOURNAL_MARK, MAX_DONE,
};
use crate::format::store_path::StorePath;
use narpush_protocol::Source;

/// A record as [`Queue::update`] finds it.
#[derive(Debug)]
pub(super) enum Current {
    Absent,
    /// Bytes that do not decode (see [`super::CorruptRecord`]).
    Corrupt,
    Entry(Entry),
}

/// What [`Queue::update`] does to a record: a transition either applies or leaves the record
/// exactly as it is (it never removes one).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// The transition does not apply to the record as it is now.
    Keep,
    Put(Entry),
}

impl Queue {
    /// Atomically replaces the record of `path` by what `change` makes of it, reading again
    /// and asking `change` again whenever another writer changed the record in between;
    /// returns whether the record was changed ([`Change::Keep`] writes nothing).
    pub(super) fn update(
        &self,
        handle: &Handle,
        path: &str,
        change: impl Fn(Current) -> Change,
    ) -> Result<bool, QueueError> {
        loop {
            let old = handle.paths.get(path.as_bytes())?;
            let current = match &old {
                None => Current::Absent,
                Some(bytes) => record::decode(path, bytes).map_or(Current::Corrupt, Current::Entry),
            };
            let was_corrupt = matches!(current, Current::Corrupt);
            let Change::Put(entry) = change(current) else {
                return Ok(false);
            };
            let new = record::encode(&entry)?;
            if handle
                .paths
                .compare_and_swap(path.as_bytes(), old.as_ref(), Some(new))?
                .is_ok()
            {
                handle.wrote();
                if was_corrupt {
                    // History was lost with the corrupt record; say so.
                    tracing::warn!(key = path, "replaced a corrupt queue record");
                }
                return Ok(true);
            }
        }
    }

    /// Puts every `uploading` entry back to `pending` (see [`interrupted`]).
    pub fn requeue_uploading(&self, why: Interrupted) -> Result<(), QueueError> {
        let now = now_ms();
        let uploading: Vec<Raw> = self
            .raw_entries()?
            .into_iter()
            .filter(|raw| raw.entry.state == State::Uploading)
            .collect();
        let others = uploading.len().saturating_sub(1);
        for raw in uploading {
            let entry = interrupted(raw.entry.clone(), &why, others, now);
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
            self.update(handle, &item.path.to_absolute(), |current| {
                added(current, item, now)
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
    /// the attempt counted; while suspects of a fatal stop are due, only the oldest of them,
    /// alone, and only when the engine holds nothing (`engine_idle`; see [`quarantine`]). Due
    /// entries that already used `max_attempts` are failed instead. If writing fails part way,
    /// the entries marked so far are returned with the error, so that none is left `uploading`
    /// without being started.
    pub fn take_due(
        &self,
        now: u64,
        limit: usize,
        max_attempts: u32,
        engine_idle: bool,
    ) -> TakeDue {
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
        let mut startable = Vec::with_capacity(due.len());
        for raw in due {
            if raw.entry.attempts < max_attempts {
                startable.push(raw);
                continue;
            }
            let mut entry = raw.entry.clone();
            entry.updated_ms = now;
            entry.state = State::Failed;
            entry.last_error = Some(format!(
                "gave up after {} attempts: {}",
                entry.attempts,
                entry.last_error.as_deref().unwrap_or("no error recorded")
            ));
            if let Err(e) = self.swap(&raw, Some(&entry)) {
                taken.error = Some(e);
                return taken;
            }
        }
        let entries: Vec<&Entry> = startable.iter().map(|raw| &raw.entry).collect();
        let chosen = match quarantine::select(&entries, limit, engine_idle) {
            quarantine::Selection::Batch(n) => 0..n,
            quarantine::Selection::Alone(index) => index..index + 1,
            quarantine::Selection::Wait => 0..0,
        };
        taken.suspects = entries.iter().filter(|e| quarantine::is_suspect(e)).count();
        for raw in &startable[chosen] {
            let mut entry = raw.entry.clone();
            entry.updated_ms = now;
            entry.state = State::Uploading;
            entry.attempts += 1;
            match self.swap(raw, Some(&entry)) {
                Ok(true) => taken.entries.push(entry),
                Ok(false) => {}
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

    /// Records the end of an attempt (counted when it started). A record that is gone or does
    /// not decode is left as it is.
    pub fn finish(&self, path: &StorePath, outcome: &Outcome) -> Result<(), QueueError> {
        let now = now_ms();
        let handle = self.handle()?;
        self.update(&handle, &path.to_absolute(), |current| {
            finished(current, outcome, now)
        })
        .map(drop)
        .map_err(|e| self.failed(e))
    }

    /// Puts failed entries (all of them, or those named) back in the queue; returns how many
    /// this call changed (an entry made pending meanwhile by another retry or an enqueue is
    /// left as it is, and not counted). With `all`, corrupt records are replaced by fresh
    /// entries (or removed when their key is not a store path).
    pub async fn retry(&self, all: bool, paths: &[StorePath]) -> Result<usize, QueueError> {
        let now = now_ms();
        let handle = self.handle()?;
        let scan = self.scan()?;
        let mut count = 0;
        for entry in scan.entries {
            if entry.state == State::Failed && (all || paths.contains(&entry.path)) {
                let key = entry.path.to_absolute();
                let changed = self
                    .update(&handle, &key, |current| retried(current, now))
                    .map_err(|e| self.failed(e))?;
                count += usize::from(changed);
            }
        }
        for corrupt in scan.corrupt {
            let path = StorePath::from_absolute_path(&corrupt.key).ok();
            if !(all || path.as_ref().is_some_and(|p| paths.contains(p))) {
                continue;
            }
            let changed = match path {
                Some(path) => self.update(&handle, &corrupt.key, |current| {
                    renewed(current, &path, now)
                }),
                // No request writes such a key: nobody else changes it meanwhile.
                None => handle
                    .paths
                    .remove(corrupt.key.as_bytes())
                    .map(|removed| {
                        handle.wrote();
                        removed.is_some()
                    })
                    .map_err(QueueError::from),
            }
            .map_err(|e| self.failed(e))?;
            lock(&self.inner.reported).remove(&corrupt.key);
            count += usize::from(changed);
        }
        handle
            .flush(&self.inner.dir)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(count)
    }

    /// Drops `done` and `skipped` entries older than [`DONE_RETENTION`] and beyond
    /// [`MAX_DONE`] (the newest are kept). An entry changed since it was read is left alone.
    pub fn prune(&self, now: u64) -> Result<usize, QueueError> {
        let expired = self.expired(now)?;
        self.remove_unchanged(&expired)
    }

    /// Phase one of [`Queue::prune`]: the `done` and `skipped` records to drop, as read now.
    pub(super) fn expired(&self, now: u64) -> Result<Vec<Raw>, QueueError> {
        let retention = u64::try_from(DONE_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let mut done: Vec<Raw> = self
            .raw_entries()?
            .into_iter()
            .filter(|r| r.entry.state.is_finished())
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

/// [`Queue::enqueue`] of `item`: a path already pending or uploading stays as it is and gains
/// the request's realisations; any other record (none, done, failed, corrupt) becomes a fresh
/// pending entry.
pub(super) fn added(current: Current, item: &NewPath, now: u64) -> Change {
    match current {
        Current::Entry(mut entry) if matches!(entry.state, State::Pending | State::Uploading) => {
            let before = entry.realisations.len();
            for realisation in &item.realisations {
                if !entry.realisations.iter().any(|r| r.id == realisation.id) {
                    entry.realisations.push(realisation.clone());
                }
            }
            if entry.realisations.len() == before {
                Change::Keep
            } else {
                Change::Put(entry)
            }
        }
        _ => Change::Put(Entry::fresh(item, now)),
    }
}

/// [`Queue::requeue_uploading`] of an `uploading` entry, interrupted with `others` other
/// entries uploading. A clean shutdown gives the attempt back; a crash keeps it counted; a
/// fatal stop makes the entry a suspect of the [`quarantine`], its attempt counted only when
/// it was uploading alone.
pub(super) fn interrupted(entry: Entry, why: &Interrupted, others: usize, now: u64) -> Entry {
    let (attempts, last_error) = match why {
        Interrupted::Shutdown => (entry.attempts.saturating_sub(1), entry.last_error.clone()),
        Interrupted::Crash => (
            entry.attempts,
            Some(
                "interrupted: the daemon stopped (crash or kill) or its queue database failed \
                 during the upload"
                    .to_owned(),
            ),
        ),
        Interrupted::Fatal(reason) => (
            if others == 0 {
                entry.attempts
            } else {
                entry.attempts.saturating_sub(1)
            },
            Some(quarantine::interruption(reason, others)),
        ),
    };
    Entry {
        state: State::Pending,
        attempts,
        last_error,
        updated_ms: now,
        ..entry
    }
}

/// [`Queue::finish`]: the outcome applies to a readable entry only.
pub(super) fn finished(current: Current, outcome: &Outcome, now: u64) -> Change {
    let Current::Entry(mut entry) = current else {
        return Change::Keep;
    };
    entry.updated_ms = now;
    entry.skipped = None;
    match outcome {
        Outcome::Done => {
            entry.state = State::Done;
            entry.last_error = None;
        }
        Outcome::Skipped(record) => {
            entry.state = State::Skipped;
            entry.last_error = None;
            entry.skipped = Some(Box::new(record.clone()));
            return Change::Put(entry);
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
    Change::Put(entry)
}

/// [`Queue::retry`] of a readable entry: applies only while it is `failed`.
pub(super) fn retried(current: Current, now: u64) -> Change {
    match current {
        Current::Entry(entry) if entry.state == State::Failed => Change::Put(Entry {
            state: State::Pending,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
            updated_ms: now,
            ..entry
        }),
        _ => Change::Keep,
    }
}

/// [`Queue::retry`] of a record that did not decode: a fresh pending entry for `path`, only
/// while the record is still corrupt (an enqueue may have replaced it meanwhile).
pub(super) fn renewed(current: Current, path: &StorePath, now: u64) -> Change {
    match current {
        Current::Corrupt => Change::Put(Entry::fresh(
            &NewPath {
                path: path.clone(),
                source: Source::Push,
                drv: None,
                realisations: Vec::new(),
            },
            now,
        )),
        _ => Change::Keep,
    }
}

#[cfg(test)]
mod tests;
