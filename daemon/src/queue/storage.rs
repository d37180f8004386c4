//! The sled database under the queue, and the two things sled alone does not give: writes
//! that are durable when a flush returns, and a way back after sled fails.
//!
//! - **Durable flush.** sled 0.34's `flush` writes its log with `sync_file_range`, which
//!   persists neither file metadata nor the disk's write cache (its real `fsync` runs from a
//!   background thread every 500 ms). [`Handle::flush`] therefore follows sled's flush with
//!   `fdatasync` of sled's log file (`<dir>/db`, where every record lives; values this small
//!   never go to `blobs/`), and [`Handle::open`] syncs the directory once, so the file itself
//!   survives a power loss.
//! - **A failed sync.** After a failed `fdatasync` of the log, nothing written to this handle
//!   and not synced before counts as durable: every later flush fails
//!   ([`QueueError::Unsynced`]; see [`super::group_commit`]) until the database is reopened.
//! - **Recovery.** After an I/O error (a full disk) sled stays failed: every later call returns
//!   the error. [`Queue::reopen`](super::Queue::reopen) drops the failed handle and opens the
//!   database again, as a restart would (sled recovers its log up to the last complete write).
//! - **Unfinished snapshots.** sled writes a snapshot to `snap.<lsn>.generating` and renames it
//!   once complete; a full disk can leave that file empty, and sled 0.34 then refuses to open
//!   the database at all ("Read corrupted data"), at every start. Such a file is never
//!   complete, so when sled reports corruption [`Handle::open`] deletes it and opens again:
//!   sled then recovers from its previous snapshot and its log, which hold every flushed
//!   write. (Only then: while sled runs, a `.generating` file may be one being written.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::group_commit::{GroupCommit, SyncData};
use super::QueueError;

/// An open database: sled, its three trees, and its log file for syncing.
pub(super) struct Handle {
    pub db: sled::Db,
    pub paths: sled::Tree,
    pub stats: sled::Tree,
    pub intake: sled::Tree,
    log: File,
    /// Per handle: a write made to a failed handle is never covered by a flush of its successor.
    commit: GroupCommit,
    /// `fdatasync` of the log (a failing one in tests).
    pub sync_data: SyncData,
}

impl Handle {
    pub fn open(dir: &Path) -> Result<Handle, QueueError> {
        let open_error = |source| QueueError::Open {
            path: dir.display().to_string(),
            source,
        };
        let db = match sled::Config::new().path(dir).open() {
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(dir)? > 0 => {
                sled::Config::new().path(dir).open()
            }
            opened => opened,
        }
        .map_err(open_error)?;
        let paths = db.open_tree("paths")?;
        let stats = db.open_tree("stats")?;
        let intake = db.open_tree("intake")?;
        let sync_error = |file: PathBuf| {
            move |source| QueueError::Sync {
                file: file.display().to_string(),
                source,
            }
        };
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(sync_error(log_path.clone()))?;
        log.sync_all().map_err(sync_error(log_path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(sync_error(dir.to_owned()))?;
        Ok(Handle {
            db,
            paths,
            stats,
            intake,
            log,
            commit: GroupCommit::default(),
            sync_data: File::sync_data,
        })
    }

    /// Opens the database at `dir`, giving a handle just dropped up to `patience` to release
    /// sled's file lock (its flusher thread lets go a moment after the last handle); a full disk
    /// is reported at once.
    pub fn open_patiently(dir: &Path, patience: Duration) -> Result<Handle, QueueError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match Handle::open(dir) {
                Ok(handle) => return Ok(handle),
                // Waiting does not make room on a full disk.
                Err(e) if std::time::Instant::now() >= deadline || super::is_out_of_space(&e) => {
                    return Err(e)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Waits until every write made to this handle so far is durable.
    pub async fn flush(&self, dir: &Path) -> Result<(), QueueError> {
        self.commit
            .commit(|| self.flush_durably(dir), || unsynced(dir))
            .await
    }

    /// [`Handle::flush`] on the calling thread, outside any runtime (shutdown).
    pub fn flush_blocking(&self, dir: &Path) -> Result<(), QueueError> {
        self.commit
            .commit_blocking(|| self.flush_durably(dir), || unsynced(dir))
    }

    /// Counts a write for the group commit.
    pub fn wrote(&self) {
        self.commit.wrote();
    }

    /// sled's flush, then fdatasync of its log: on return, every write made before is durable.
    fn flush_durably(&self, dir: &Path) -> Result<(), QueueError> {
        self.db.flush()?;
        (self.sync_data)(&self.log).map_err(|source| QueueError::Sync {
            file: dir.join("db").display().to_string(),
            source,
        })
    }
}

/// The error of a flush after a failed sync (see [`GroupCommit`]).
fn unsynced(dir: &Path) -> QueueError {
    QueueError::Unsynced {
        file: dir.join("db").display().to_string(),
    }
}

/// Deletes the snapshots sled began and never finished (see the module doc); returns how many.
fn remove_unfinished_snapshots(dir: &Path) -> Result<usize, QueueError> {
    let failed = |source: std::io::Error| QueueError::Open {
        path: dir.display().to_string(),
        source: source.into(),
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let name = entry.map_err(failed)?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "deleting an unfinished sled snapshot (left by a full disk?)");
            std::fs::remove_file(dir.join(name.as_ref())).map_err(failed)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
