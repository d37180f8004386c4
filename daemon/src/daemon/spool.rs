//! Ingestion of the spool directory: requests the hook wrote to disk because the daemon did
//! not answer (see [`narpush_protocol::spool`]). Files already there at start are taken first,
//! then new ones as `notify` reports them, with a periodic rescan as a safety net for lost
//! events.
//!
//! Only events that name a finished request file start a scan. Reading the directory makes
//! events of its own (inotify reports the open and close of the directory), so reacting to
//! every event would make each scan start the next and keep a core busy forever.
//!
//! Invariants:
//! - A spool file is removed only after its paths are durably queued, so a crash in between
//!   leaves the file, and it is taken again (queueing twice is harmless).
//! - A file that can never be queued (malformed, a path outside the store, written by a uid
//!   not in `allowed_uids`, a symlink or anything but a regular file) is moved to `rejected/`
//!   beside a `.reason` file and logged: never retried forever, never silently dropped, and
//!   listed by `status` (so `wait` fails) until someone removes it. A file that cannot be read
//!   or queued *now* (an I/O error, too many open files, the queue's disk full) stays where it
//!   is for the next scan.
//! - A request the store cannot answer now (`nix realisation info` failing while the
//!   nix-daemon restarts) stays too, and is tried again after a backoff like an upload's
//!   (`retry_initial_delay_ms` doubling up to `retry_max_delay_ms`); after `max_attempts` such
//!   failures it is rejected with the last one. A request naming a path that vanished from
//!   the store meanwhile queues its other paths (see [`enqueue`]).
//! - A file is opened with `O_NOFOLLOW | O_NONBLOCK` and checked through the opened
//!   descriptor (`fstat`), so a symlink or FIFO swapped in after the directory was listed is
//!   neither followed nor waited on, and at most [`MAX_REQUEST`] + 1 bytes are read.
//! - Names starting with `.` are the hook's temporary files and are left alone
//!   ([`spool::is_request_file_name`]), until they are older than [`spool::STALE_AFTER`]:
//!   then their writer was killed before its rename, and every scan (the first at start)
//!   removes them.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use narpush_protocol::{spool, Request, Source, MAX_REQUEST};

use super::enqueue;
use super::pipeline::backoff;
use super::shared::Shared;
use crate::error_chain;
use crate::sleep_until;

const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// Where rejected files go, inside the spool directory.
pub const REJECTED_DIR: &str = "rejected";

pub async fn run(shared: Arc<Shared>, dir: PathBuf) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Watch before the first scan, so a file written in between is not missed.
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if names_a_request(&event) {
                let _ = events_tx.send(());
            }
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    if let Err(e) = &watcher {
        tracing::warn!(dir = %dir.display(), "cannot watch the spool directory ({e}); rescanning every {RESCAN_EVERY:?}");
    }
    let mut retries = Retries::default();
    loop {
        ingest_all(&shared, &dir, &mut retries).await;
        tokio::select! {
            _ = events.recv() => {
                // Coalesce a burst of events into one scan.
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(RESCAN_EVERY) => {}
            () = sleep_until(retries.next_due()) => {}
            () = shared.rescan_spool.notified() => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// Spool files whose request the store could not answer, with their failures so far and when
/// to try each again.
#[derive(Default)]
struct Retries {
    files: HashMap<PathBuf, (u32, Instant)>,
}

impl Retries {
    fn due(&self, file: &Path) -> bool {
        self.files
            .get(file)
            .is_none_or(|(_, at)| *at <= Instant::now())
    }

    fn next_due(&self) -> Option<Instant> {
        self.files.values().map(|(_, at)| *at).min()
    }

    /// Counts a failure of `file`; returns how many it had, and schedules the next try.
    fn failed(&mut self, file: &Path, initial: Duration, max: Duration) -> u32 {
        let failures = self.files.get(file).map_or(0, |(n, _)| *n) + 1;
        let at = Instant::now() + backoff(failures, initial, max);
        self.files.insert(file.to_owned(), (failures, at));
        failures
    }

    /// Forgets the files no longer waiting.
    fn keep_only(&mut self, files: &[PathBuf]) {
        self.files.retain(|file, _| files.contains(file));
    }
}

/// Takes every finished request file in `dir`, oldest name first, except those waiting for a
/// retry, and removes stale temporary files.
async fn ingest_all(shared: &Shared, dir: &Path, retries: &mut Retries) {
    let (mut files, temporaries): (Vec<PathBuf>, Vec<PathBuf>) = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_request_file(p) || is_temporary_file(p))
            .partition(|p| is_request_file(p)),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot read the spool directory: {e}");
            return;
        }
    };
    remove_stale(&temporaries, spool::STALE_AFTER);
    files.sort();
    retries.keep_only(&files);
    for file in &files {
        if !retries.due(file) {
            continue;
        }
        match ingest(shared, dir, file).await {
            // The daemon's own trouble (the queue's disk): the rest would fail the same way.
            Ingested::Later => return,
            Ingested::Retry(reason) => {
                let config = &shared.settings().config;
                let (initial, max, attempts) = (
                    config.retry_initial_delay,
                    config.retry_max_delay,
                    config.max_attempts,
                );
                let failures = retries.failed(file, initial, max);
                if failures >= attempts {
                    reject(
                        dir,
                        file,
                        &format!("gave up after {failures} attempts: {reason}"),
                    );
                } else {
                    tracing::warn!(
                        file = %file.display(),
                        failures,
                        "cannot queue the spooled request now, will try again: {reason}"
                    );
                }
            }
            Ingested::Queued | Ingested::Rejected | Ingested::Kept => {}
        }
    }
}

/// What became of a spool file.
#[derive(Debug, PartialEq, Eq)]
enum Ingested {
    Queued,
    Rejected,
    /// This file is left for a later scan (it could not be read now, or it is gone).
    Kept,
    /// Left for a later scan, like every file after it (the queue cannot take requests).
    Later,
    /// Left for a retry after a backoff: the store could not answer for it now.
    Retry(String),
}

/// Why a spool file was not read.
enum Unread {
    /// For good: the file is rejected with this reason.
    Reject(String),
    /// For now: it stays for the next scan.
    Later(String),
    /// It was removed meanwhile.
    Gone,
}

fn is_request_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(spool::is_request_file_name)
}

fn is_temporary_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(spool::is_temporary_file_name)
}

/// Removes those of `files` not modified for `age` (a hook killed before its rename).
fn remove_stale(files: &[PathBuf], age: Duration) {
    let now = std::time::SystemTime::now();
    for file in files {
        let stale = std::fs::symlink_metadata(file)
            .and_then(|m| m.modified())
            .is_ok_and(|t| crate::clock::age(now, t) > age);
        if stale {
            match std::fs::remove_file(file) {
                Ok(()) => {
                    tracing::info!(file = %file.display(), "removed a stale temporary spool file")
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), "cannot remove a stale temporary spool file: {e}")
                }
            }
        }
    }
}

/// Whether an event may mean a new request file: one was created or renamed into place.
/// Access events (our own scans open and close the directory) and removals never do.
fn names_a_request(event: &notify::Event) -> bool {
    use notify::event::{EventKind, ModifyKind};
    if event.need_rescan() {
        return true;
    }
    let may_add = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Any
    );
    may_add && event.paths.iter().any(|p| is_request_file(p))
}

async fn ingest(shared: &Shared, dir: &Path, file: &Path) -> Ingested {
    let request = match read(shared, file) {
        Ok(request) => request,
        Err(Unread::Reject(reason)) => return reject(dir, file, &reason),
        Err(Unread::Later(reason)) => {
            tracing::warn!(file = %file.display(), "cannot read now, will again: {reason}");
            return Ingested::Kept;
        }
        Err(Unread::Gone) => return Ingested::Kept,
    };
    let Request::Enqueue { drv, outs, .. } = request else {
        return reject(dir, file, "a spool file must hold an enqueue request");
    };
    match enqueue::enqueue(shared, Source::Spool, drv.as_deref(), &outs).await {
        Ok(count) => {
            shared.activity.spool_ingested();
            if let Err(e) = std::fs::remove_file(file) {
                tracing::warn!(file = %file.display(), "queued but cannot remove: {e}");
            } else {
                tracing::info!(file = %file.display(), paths = count, "queued a spooled request");
            }
            Ingested::Queued
        }
        Err(e) if e.is_bad_request() => reject(dir, file, &error_chain(&e)),
        Err(e) if !e.is_own_trouble() => Ingested::Retry(error_chain(&e)),
        Err(e) => {
            tracing::error!(file = %file.display(), "cannot queue yet: {}", error_chain(&e));
            Ingested::Later
        }
    }
}

fn read(shared: &Shared, file: &Path) -> Result<Request, Unread> {
    use nix::errno::Errno;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file);
    let handle = match opened {
        Ok(handle) => handle,
        Err(e) => {
            return Err(match e.raw_os_error().map(Errno::from_raw) {
                Some(Errno::ENOENT) => Unread::Gone,
                Some(Errno::ELOOP) => Unread::Reject("a symbolic link".to_owned()),
                Some(Errno::EACCES | Errno::EPERM) => {
                    Unread::Reject(format!("cannot be opened: {e}"))
                }
                _ => Unread::Later(format!("cannot open: {e}")),
            })
        }
    };
    let meta = handle
        .metadata()
        .map_err(|e| Unread::Later(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(Unread::Reject("not a regular file".to_owned()));
    }
    let uid = meta.uid();
    if uid != shared.own_uid && !shared.settings().config.allowed_uids.contains(&uid) {
        return Err(Unread::Reject(format!(
            "written by uid {uid}, which is not in allowed_uids"
        )));
    }
    let mut bytes = Vec::new();
    handle
        .take(MAX_REQUEST as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Unread::Later(format!("cannot read: {e}")))?;
    if bytes.len() > MAX_REQUEST {
        return Err(Unread::Reject(format!("larger than {MAX_REQUEST} bytes")));
    }
    Request::parse(&bytes).map_err(|e| Unread::Reject(format!("malformed request: {e}")))
}

/// Moves a file that can never be queued out of the way, with the reason beside it.
fn reject(dir: &Path, file: &Path, reason: &str) -> Ingested {
    tracing::error!(file = %file.display(), "rejected spool file: {reason}");
    let rejected = dir.join(REJECTED_DIR);
    let Some(name) = file.file_name() else {
        return Ingested::Rejected;
    };
    let moved = std::fs::create_dir_all(&rejected)
        .and_then(|()| std::fs::rename(file, rejected.join(name)))
        .and_then(|()| {
            let mut reason_file = rejected.join(name).into_os_string();
            reason_file.push(".reason");
            std::fs::write(reason_file, format!("{reason}\n"))
        });
    if let Err(e) = moved {
        tracing::error!(file = %file.display(), "cannot move the rejected file aside: {e}");
    }
    Ingested::Rejected
}

/// Request files waiting in `dir`, and the files rejected so far with their reasons, for
/// `status` (at most `limit` rejected files are listed; `rejected_total` counts them all).
pub fn survey(dir: &Path, limit: usize) -> SpoolSurvey {
    let names = |dir: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| is_request_file(p));
        files.sort();
        files
    };
    let rejected = names(&dir.join(REJECTED_DIR));
    SpoolSurvey {
        waiting: names(dir).len() as u64,
        rejected_total: rejected.len() as u64,
        rejected: rejected
            .into_iter()
            .take(limit)
            .map(|file| {
                let mut reason_file = file.clone().into_os_string();
                reason_file.push(".reason");
                let reason = std::fs::File::open(reason_file)
                    .and_then(|f| {
                        let mut text = String::new();
                        f.take(4096).read_to_string(&mut text)?;
                        Ok(text.trim_end().to_owned())
                    })
                    .unwrap_or_else(|e| format!("(no reason recorded: {e})"));
                (file.display().to_string(), reason)
            })
            .collect(),
    }
}

/// See [`survey`].
pub struct SpoolSurvey {
    pub waiting: u64,
    pub rejected_total: u64,
    pub rejected: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporary_files_are_removed_and_fresh_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".1-2.request.tmp");
        let fresh = dir.path().join(".3-4.request.tmp");
        for file in [&stale, &fresh] {
            std::fs::write(file, "narpush 1").unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        let found: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_temporary_file(p))
            .collect();
        assert_eq!(found.len(), 2);
        remove_stale(&found, spool::STALE_AFTER);
        assert!(!stale.exists(), "the stale temporary file is still there");
        assert!(
            fresh.exists(),
            "a fresh temporary file (a hook writing) was removed"
        );
    }
}
