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
//!   not in `allowed_uids`) is moved to `rejected/` beside a `.reason` file and logged: never
//!   retried forever, never silently dropped.
//! - Names starting with `.` are the hook's temporary files and are left alone
//!   ([`spool::is_request_file_name`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use narpush_protocol::{spool, Request, Source, MAX_REQUEST};

use super::enqueue;
use super::shared::Shared;
use crate::error_chain;

const RESCAN_EVERY: Duration = Duration::from_secs(30);

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
    loop {
        ingest_all(&shared, &dir).await;
        tokio::select! {
            _ = events.recv() => {
                // Coalesce a burst of events into one scan.
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(RESCAN_EVERY) => {}
            () = shared.rescan_spool.notified() => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// Takes every finished request file in `dir`, oldest name first.
pub async fn ingest_all(shared: &Shared, dir: &Path) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_request_file(p))
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot read the spool directory: {e}");
            return;
        }
    };
    files.sort();
    for file in files {
        ingest(shared, dir, &file).await;
    }
}

fn is_request_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(spool::is_request_file_name)
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

async fn ingest(shared: &Shared, dir: &Path, file: &Path) {
    let request = match read(shared, file) {
        Ok(request) => request,
        Err(reason) => return reject(dir, file, &reason),
    };
    let Request::Enqueue { drv, outs, .. } = request else {
        return reject(dir, file, "a spool file must hold an enqueue request");
    };
    match enqueue::enqueue(shared, Source::Spool, drv.as_deref(), &outs).await {
        Ok(count) => {
            if let Err(e) = std::fs::remove_file(file) {
                tracing::warn!(file = %file.display(), "queued but cannot remove: {e}");
            } else {
                tracing::info!(file = %file.display(), paths = count, "queued a spooled request");
            }
        }
        Err(e) if e.is_bad_request() => reject(dir, file, &error_chain(&e)),
        // The daemon's own trouble (disk, queue): keep the file for the next scan.
        Err(e) => tracing::error!(file = %file.display(), "cannot queue yet: {}", error_chain(&e)),
    }
}

fn read(shared: &Shared, file: &Path) -> Result<Request, String> {
    let meta = std::fs::symlink_metadata(file).map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let uid = meta.uid();
    if uid != shared.own_uid && !shared.settings().config.allowed_uids.contains(&uid) {
        return Err(format!(
            "written by uid {uid}, which is not in allowed_uids"
        ));
    }
    if meta.len() > MAX_REQUEST as u64 {
        return Err(format!("larger than {MAX_REQUEST} bytes"));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    Request::parse(&bytes).map_err(|e| format!("malformed request: {e}"))
}

/// Moves a file that can never be queued out of the way, with the reason beside it.
fn reject(dir: &Path, file: &Path, reason: &str) {
    tracing::error!(file = %file.display(), "rejected spool file: {reason}");
    let rejected = dir.join("rejected");
    let Some(name) = file.file_name() else {
        return;
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
}
