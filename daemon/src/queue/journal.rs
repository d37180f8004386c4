//! The intake journal: where an enqueue request becomes durable before it is acknowledged,
//! at the cost of one small write and one `fdatasync`, instead of sled's flush and a sync of
//! sled's log. The daemon moves its records into the queue (sled) right after the ack.
//!
//! # The file
//!
//! `<state_dir>/intake.journal`, [`JOURNAL_SIZE`] bytes, created zero-filled and synced (file
//! and directory) once. Every later write overwrites bytes that are already allocated and
//! written, so the `fdatasync` after it flushes data only: no extent conversion, no size
//! change, no filesystem journal commit. Records (see [`record`]) are appended from the
//! start; each carries the journal's current *generation*.
//!
//! # Writing, and the ack rule
//!
//! [`Journal::append`] writes the record and its terminator with one `pwrite` under a lock
//! (so records lie in the order they were written, and the mover takes them in that order),
//! then waits for a group-committed `fdatasync` (see [`super::group_commit`]): concurrent
//! appends share one. It returns only when the record is on disk; only then may the daemon
//! acknowledge. A record that does not fit in the space left is refused
//! ([`Appended::NoRoom`]): the caller then queues the request directly (sled and its
//! durable flush), which is slower but just as safe.
//!
//! # Moving into the queue, and reuse of the space
//!
//! Appended records wait in memory until the mover takes them ([`Journal::take`]). The mover
//! writes them into the queue together with the [`Mark`] of the last one (its generation and
//! end offset, kept in the queue's `intake` tree), without waiting for the queue's flush: the
//! journal still holds them. Later (a checkpoint: after a quiet second, when the journal is
//! half full, or at shutdown) the queue is flushed durably; then [`Journal::checkpointed`]
//! frees what was written before. When the mark is the journal's head (nothing was appended
//! meanwhile), the journal starts over: the next record goes to offset 0 with the next
//! generation. Nothing is synced for that: the mark in the queue already says that every
//! record of the old generation is moved, and the terminator behind each new record keeps
//! the old ones from being read as current. (A terminator is written at offset 0 at once,
//! unsynced, only so that the next start does not read the old records again.) If the queue
//! fails before the checkpoint, [`Journal::rewind`] gives the records back to be moved again.
//!
//! The queue's flush keeps sled's order: a mark that reached the disk comes with every entry
//! written before it, so the mark never claims more than the queue holds.
//!
//! # Recovery
//!
//! [`Journal::open`] reads the file and keeps, as appended and not yet moved, every readable
//! record of the current generation that lies after the queue's mark: exactly the requests
//! that were acknowledged (or at least written) but not yet moved. Moving them again on
//! start is therefore never a repetition. A torn last record (a crash during its write: it
//! was never acknowledged) is skipped with a warning naming the file and the offset; a
//! corrupt record with readable ones after it is logged as an error with its offset, and the
//! records after it are kept. If a write or a sync fails, the journal is not used again
//! until the daemon restarts (after a failed `fdatasync` the file's contents are unknown);
//! requests then go to the queue directly. That includes every append waiting on the failed
//! sync or written before it: none of them is acknowledged from the journal
//! ([`JournalError::Unsynced`]; see [`super::group_commit`]).

mod legacy;
mod mark;
pub(crate) mod record;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::group_commit::{GroupCommit, SyncData};
use super::NewPath;
use crate::sync::lock;
pub use mark::Mark;
pub use record::Problem;

/// The journal's size: room for thousands of requests between two moves.
pub const JOURNAL_SIZE: u64 = 4 << 20;
/// The largest payload a record holds, in either record layout (a request is at most 1 MiB
/// of text; with its realisations as escaped JSON a payload stays well under this).
pub const MAX_PAYLOAD: usize = 4 << 20;
/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "intake.journal";

/// Records appended and not yet moved, in the order they were written.
#[derive(Debug)]
pub struct Journaled {
    /// The paths of every record taken, in order.
    pub paths: Vec<NewPath>,
    /// The mark of the last record taken.
    pub mark: Mark,
    /// The sequence number of the last record taken (see [`Journal::appended`]).
    pub seq: u64,
}

/// What [`Journal::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// The record is on disk; its sequence number.
    Durable(u64),
    /// Not enough room before the records written so far are moved: nothing was written.
    NoRoom,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the intake journal {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the intake journal {path} at offset {offset}")]
    Write {
        path: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync the intake journal {path} to disk")]
    Sync {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "an earlier sync of the intake journal {path} failed, so this record is not known to \
         be on disk"
    )]
    Unsynced { path: String },
    #[error("the intake journal {path} failed earlier; it is not used until the daemon restarts")]
    Failed { path: String },
    #[error("cannot encode a journal record of {count} path(s), the first {first}")]
    Encode {
        count: usize,
        first: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One record waiting for the mover.
struct Pending {
    paths: Vec<NewPath>,
    mark: Mark,
    seq: u64,
}

struct Writer {
    generation: u64,
    /// Where the next record goes.
    head: u64,
    /// Sequence number of the last record appended (replayed ones count too).
    seq: u64,
    pending: Vec<Pending>,
    /// Taken and written into the queue, not yet flushed there (oldest first).
    unchecked: Vec<Journaled>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    writer: Mutex<Writer>,
    commit: GroupCommit,
    /// `fdatasync` of the file (a failing one in tests).
    sync_data: SyncData,
    failed: AtomicBool,
}

/// What [`Journal::open`] found in the file.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records acknowledged before the last stop and not moved into the queue then.
    pub records: usize,
    /// What could not be read (each already logged).
    pub problems: Vec<Problem>,
}

impl Journal {
    /// Opens (creating it if needed) the journal at `path`; `moved` is the queue's mark.
    /// Records after the mark are kept for the mover (see the module doc).
    pub fn open(path: &Path, moved: Option<Mark>) -> Result<(Journal, Recovered), JournalError> {
        let open_error = |source| JournalError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_error)?;
        let size = preallocate(&file, path).map_err(open_error)?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(open_error)?;
        let scanned = record::scan(&bytes);
        let problems = report(path, scanned.problems, scanned.generation, moved);
        let mut writer = Writer {
            generation: scanned.generation.unwrap_or(0),
            head: scanned.end,
            seq: 0,
            pending: Vec::new(),
            unchecked: Vec::new(),
        };
        for found in scanned.records {
            let mark = Mark {
                generation: found.generation,
                end: found.end,
            };
            if moved.is_some_and(|moved| mark <= moved) {
                continue;
            }
            writer.seq += 1;
            writer.pending.push(Pending {
                paths: found.paths,
                mark,
                seq: writer.seq,
            });
        }
        if writer.pending.is_empty() {
            let newest = writer
                .generation
                .max(moved.map_or(0, |mark| mark.generation));
            writer.generation = newest.saturating_add(1);
            writer.head = 0;
        }
        let recovered = Recovered {
            records: writer.pending.len(),
            problems,
        };
        let journal = Journal {
            path: path.to_owned(),
            file,
            size,
            writer: Mutex::new(writer),
            commit: GroupCommit::short(),
            sync_data: File::sync_data,
            failed: AtomicBool::new(false),
        };
        Ok((journal, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a record of `paths` and waits until it is on disk (see the module doc).
    pub async fn append(&self, paths: &[NewPath]) -> Result<Appended, JournalError> {
        let seq = match self.write(paths)? {
            Some(seq) => seq,
            None => return Ok(Appended::NoRoom),
        };
        self.sync().await?;
        Ok(Appended::Durable(seq))
    }

    /// Waits until every record written so far is on disk; once a sync failed, never again.
    async fn sync(&self) -> Result<(), JournalError> {
        let path = || self.path.display().to_string();
        let synced = self.commit.commit(
            || {
                (self.sync_data)(&self.file).map_err(|source| JournalError::Sync {
                    path: path(),
                    source,
                })
            },
            || JournalError::Unsynced { path: path() },
        );
        synced
            .await
            .inspect_err(|_| self.failed.store(true, Ordering::SeqCst))
    }

    /// The write half of [`Journal::append`]: the record's sequence number, or `None` when it
    /// does not fit.
    fn write(&self, paths: &[NewPath]) -> Result<Option<u64>, JournalError> {
        let failed = || JournalError::Failed {
            path: self.path.display().to_string(),
        };
        if self.failed.load(Ordering::SeqCst) {
            return Err(failed());
        }
        let mut writer = lock(&self.writer);
        // Checked again under the lock: a failed write leaves a hole no record may follow.
        if self.failed.load(Ordering::SeqCst) {
            return Err(failed());
        }
        let bytes =
            record::encode(writer.generation, paths).map_err(|source| JournalError::Encode {
                count: paths.len(),
                first: paths
                    .first()
                    .map(|p| p.path.to_absolute())
                    .unwrap_or_default(),
                source,
            })?;
        let record_len = (bytes.len() - record::TERMINATOR) as u64;
        if bytes.len() - record::HEADER - record::TERMINATOR > MAX_PAYLOAD
            || writer.head + bytes.len() as u64 > self.size
        {
            return Ok(None);
        }
        if let Err(source) = self.file.write_all_at(&bytes, writer.head) {
            self.failed.store(true, Ordering::SeqCst);
            return Err(JournalError::Write {
                path: self.path.display().to_string(),
                offset: writer.head,
                source,
            });
        }
        writer.head += record_len;
        writer.seq += 1;
        let (mark, seq) = (
            Mark {
                generation: writer.generation,
                end: writer.head,
            },
            writer.seq,
        );
        writer.pending.push(Pending {
            paths: paths.to_vec(),
            mark,
            seq,
        });
        self.commit.wrote();
        Ok(Some(seq))
    }

    /// Every record appended and not taken yet, for the mover.
    pub fn take(&self) -> Option<Journaled> {
        let mut writer = lock(&self.writer);
        let last = writer.pending.last()?;
        let (mark, seq) = (last.mark, last.seq);
        let paths = writer
            .pending
            .drain(..)
            .flat_map(|pending| pending.paths)
            .collect();
        Some(Journaled { paths, mark, seq })
    }

    /// Gives back what [`Journal::take`] returned, when it could not be moved, ahead of what
    /// was appended since.
    pub fn put_back(&self, taken: Journaled) {
        let mut writer = lock(&self.writer);
        writer.pending.insert(
            0,
            Pending {
                paths: taken.paths,
                mark: taken.mark,
                seq: taken.seq,
            },
        );
    }

    /// Notes that `taken` is written into the queue, not yet durably: it is kept until
    /// [`Journal::checkpointed`], to be moved again ([`Journal::rewind`]) if the queue loses
    /// it first.
    pub fn written(&self, taken: Journaled) {
        lock(&self.writer).unchecked.push(taken);
    }

    /// Whether records written into the queue wait for a durable flush of it.
    pub fn has_unchecked(&self) -> bool {
        !lock(&self.writer).unchecked.is_empty()
    }

    /// Whether more than half of the journal is in use (time for a checkpoint).
    pub fn past_half(&self) -> bool {
        lock(&self.writer).head > self.size / 2
    }

    /// Call after a durable flush of the queue that began after every [`Journal::written`]
    /// so far: those records are safe in the queue. When nothing was appended since, the
    /// journal starts over at offset 0 with the next generation.
    pub fn checkpointed(&self) {
        let mut writer = lock(&self.writer);
        let Some(mark) = writer.unchecked.last().map(|taken| taken.mark) else {
            return;
        };
        writer.unchecked.clear();
        if writer.pending.is_empty()
            && writer.generation == mark.generation
            && writer.head == mark.end
        {
            writer.generation = writer.generation.saturating_add(1);
            writer.head = 0;
            // Not synced, and not needed for correctness (the mark is): it only spares the
            // next start from reading, and reporting again, records dealt with already.
            if let Err(e) = self.file.write_all_at(&[0; record::TERMINATOR], 0) {
                tracing::debug!("cannot clear the start of the intake journal: {e}");
            }
        }
    }

    /// The queue lost what was written into it since the last checkpoint (it failed before
    /// flushing): those records are moved again, ahead of newer ones.
    pub fn rewind(&self) {
        let mut writer = lock(&self.writer);
        let unchecked = std::mem::take(&mut writer.unchecked);
        let again: Vec<Pending> = unchecked
            .into_iter()
            .map(|taken| Pending {
                paths: taken.paths,
                mark: taken.mark,
                seq: taken.seq,
            })
            .collect();
        writer.pending.splice(0..0, again);
    }

    /// The sequence number of the last record appended.
    pub fn appended(&self) -> u64 {
        lock(&self.writer).seq
    }

    /// Whether a write or sync failed (the journal is not used again).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Where the next record goes, and its generation (for tests).
    #[cfg(test)]
    fn head(&self) -> Mark {
        let writer = lock(&self.writer);
        Mark {
            generation: writer.generation,
            end: writer.head,
        }
    }
}

/// Extends the file with zeros to [`JOURNAL_SIZE`] (written, not merely allocated) and syncs
/// it and its directory, unless it is that large already; returns its size.
fn preallocate(file: &File, path: &Path) -> io::Result<u64> {
    let size = file.metadata()?.len();
    if size >= JOURNAL_SIZE {
        return Ok(size);
    }
    let zeros = vec![0u8; 64 << 10];
    let mut at = size;
    while at < JOURNAL_SIZE {
        let chunk = usize::try_from(JOURNAL_SIZE - at).map_or(zeros.len(), |n| n.min(zeros.len()));
        file.write_all_at(&zeros[..chunk], at)?;
        at += chunk as u64;
    }
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(JOURNAL_SIZE)
}

/// Logs what the scan could not read, and returns it, leaving out damage to records the queue
/// already holds (before `moved`): losing those loses nothing.
fn report(
    path: &Path,
    problems: Vec<Problem>,
    generation: Option<u64>,
    moved: Option<Mark>,
) -> Vec<Problem> {
    let already_moved = |offset: u64| {
        generation.zip(moved).is_some_and(|(generation, moved)| {
            moved.generation > generation || (moved.generation == generation && moved.end > offset)
        })
    };
    let mut left = Vec::new();
    for problem in problems {
        let (Problem::TornTail { offset, reason } | Problem::Corrupt { offset, reason }) = &problem;
        if already_moved(*offset) {
            tracing::warn!(
                journal = %path.display(), offset,
                "an intake journal record before the queue's mark cannot be read ({reason}); \
                 an earlier start dealt with it (moved it into the queue, or reported it)"
            );
            continue;
        }
        match &problem {
            Problem::TornTail { .. } => tracing::warn!(
                journal = %path.display(), offset,
                "ignoring the intake journal's last record ({reason}): it was being written \
                 when the daemon stopped, so it was never acknowledged"
            ),
            Problem::Corrupt { .. } => tracing::error!(
                journal = %path.display(), offset,
                "an intake journal record cannot be read ({reason}); the paths it holds may \
                 have been acknowledged and are not queued: push them again (`narpush push`)"
            ),
        }
        left.push(problem);
    }
    left
}
