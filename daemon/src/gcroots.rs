//! GC roots for queued paths: from the moment a path is acknowledged until it is uploaded, a
//! symlink `<gc_roots_dir>/<basename> -> /nix/store/<basename>` keeps Nix's garbage collector
//! from deleting it (and, with it, its closure). Nix scans every symlink under
//! `/nix/var/nix/gcroots/` that points into the store, so the directory must live there.
//!
//! Invariants:
//! - **Durable before the ack.** [`GcRoots::protect`] makes the links and returns only after
//!   an `fsync` of the directory that began after they were made, so a root outlives a power
//!   loss right after the acknowledgement. Concurrent calls share one sync (group commit: a
//!   burst of requests costs about two syncs, not one each).
//! - **A failed sync poisons the directory until the daemon restarts.** After a failed
//!   `fsync` Linux reports the writeback error once and success to the next one, though the
//!   entries may never have reached the disk, and a request asked again finds its link there
//!   already. So the failure fails every call it covered, every call waiting for a sync, and
//!   every later [`GcRoots::protect`], [`GcRoots::ensure`] and [`GcRoots::reconcile`] that
//!   needs one, with [`GcRootError::Poisoned`] naming the directory: requests are refused
//!   with that reason and the hook spools them. The next start makes the roots whole again
//!   (reconcile below) before any request is taken.
//! - **Whole again at start.** [`GcRoots::reconcile`] re-creates the root of every path the
//!   daemon still owes an upload (a root lost with the disk's cache, or deleted by hand) and
//!   removes the roots of paths it no longer owes. The directory belongs to one daemon.
//! - **Removed only after the upload.** The caller removes a root once the queue says the
//!   entry is done or gone (see `daemon::pipeline`), never because the queue could not be
//!   read, and decides under a lock ([`GcRoots::release_if`]) that orders it against
//!   [`GcRoots::ensure`], which the daemon calls after writing requests into the queue: a
//!   request for a path whose root is being released keeps it or makes it again. Removals are
//!   not synced: a root that comes back after a power loss is removed by the next start's
//!   reconcile.
//!
//! Making and removing links is idempotent. Every file-system call goes through [`RootFs`],
//! so tests can see the order of operations.

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::format::store_path::StorePath;
use crate::sync::lock;

/// The file-system calls roots are made of (the real ones in production).
pub trait RootFs: Send + Sync {
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    fn remove(&self, link: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The real file system.
pub struct RealFs;

impl RootFs for RealFs {
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn remove(&self, link: &Path) -> io::Result<()> {
        std::fs::remove_file(link)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
}

#[derive(Clone)]
pub struct GcRoots {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    fs: Box<dyn RootFs>,
    /// Link batches made so far (a sequence number).
    written: AtomicU64,
    /// Every batch up to this number is durable.
    synced: AtomicU64,
    /// The first failed sync, once one failed: no root is durable any more (module doc).
    poisoned: Mutex<Option<String>>,
    /// One directory sync at a time.
    sync_turn: tokio::sync::Mutex<()>,
    /// Orders releases against roots made again for paths just queued (see
    /// [`GcRoots::release_if`]).
    gate: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum GcRootError {
    #[error("cannot {action} GC root {link}")]
    Io {
        action: &'static str,
        link: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "a sync of the GC roots directory {dir} failed ({first}); roots made there may not \
         survive a power loss, so none is made until the daemon restarts"
    )]
    Poisoned { dir: PathBuf, first: String },
}

/// What [`GcRoots::reconcile`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Roots of owed paths that were missing and are made again.
    pub created: usize,
    /// Roots of paths no longer owed, removed.
    pub removed: usize,
}

impl GcRoots {
    pub fn open(dir: &Path) -> Result<GcRoots, GcRootError> {
        GcRoots::open_with(dir, Box::new(RealFs))
    }

    /// [`GcRoots::open`] over another file system (tests).
    pub fn open_with(dir: &Path, fs: Box<dyn RootFs>) -> Result<GcRoots, GcRootError> {
        std::fs::create_dir_all(dir).map_err(|source| GcRootError::Io {
            action: "create the directory for",
            link: dir.to_owned(),
            source,
        })?;
        Ok(GcRoots {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                fs,
                written: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                poisoned: Mutex::new(None),
                sync_turn: tokio::sync::Mutex::new(()),
                gate: Mutex::new(()),
            }),
        })
    }

    fn link(&self, path: &StorePath) -> PathBuf {
        self.inner.dir.join(path.basename())
    }

    /// Makes the root of `path` unless it exists; returns whether it made one.
    fn create(&self, path: &StorePath) -> Result<bool, GcRootError> {
        let link = self.link(path);
        match self.inner.fs.symlink(Path::new(&path.to_absolute()), &link) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(GcRootError::Io {
                action: "create",
                link,
                source,
            }),
        }
    }

    /// Makes the roots of `paths` and returns once they are durable (see the module doc).
    /// A root that exists already is synced too: it may be one whose sync failed.
    pub async fn protect(&self, paths: &[StorePath]) -> Result<(), GcRootError> {
        self.check_poison()?;
        for path in paths {
            self.create(path)?;
        }
        let mine = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
        self.sync_through(mine).await
    }

    /// Fails once a sync of the directory has failed (see the module doc).
    fn check_poison(&self) -> Result<(), GcRootError> {
        match &*lock(&self.inner.poisoned) {
            Some(first) => Err(GcRootError::Poisoned {
                dir: self.inner.dir.clone(),
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Waits until batch `mine` is durable, syncing the directory unless a sync that began
    /// after it has succeeded meanwhile; fails once any sync has failed.
    async fn sync_through(&self, mine: u64) -> Result<(), GcRootError> {
        let inner = &self.inner;
        let _turn = inner.sync_turn.lock().await;
        if inner.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        self.check_poison()?;
        let covers = inner.written.load(Ordering::SeqCst);
        match blocking(|| inner.fs.sync_dir(&inner.dir)) {
            Ok(()) => {
                inner.synced.fetch_max(covers, Ordering::SeqCst);
                Ok(())
            }
            Err(source) => {
                lock(&inner.poisoned).get_or_insert_with(|| source.to_string());
                Err(GcRootError::Io {
                    action: "sync the directory of",
                    link: inner.dir.clone(),
                    source,
                })
            }
        }
    }

    pub fn remove(&self, path: &StorePath) -> Result<(), GcRootError> {
        self.remove_link(self.link(path))
    }

    /// Removes the root of `path` if `unowed()` says that nothing is owed for it any more;
    /// returns whether it did. The decision and the removal happen under the lock that
    /// [`GcRoots::ensure`] takes, so a request for the path written into the queue meanwhile
    /// either makes `unowed` keep the root, or finds it removed and makes it again.
    pub fn release_if(
        &self,
        path: &StorePath,
        unowed: impl FnOnce() -> bool,
    ) -> Result<bool, GcRootError> {
        let _gate = lock(&self.inner.gate);
        if !unowed() {
            return Ok(false);
        }
        self.remove(path)?;
        Ok(true)
    }

    /// Makes again the roots of `paths`, just written into the queue, that a
    /// [`GcRoots::release_if`] removed after their request took them; returns once those it
    /// made are durable, with how many.
    pub async fn ensure(&self, paths: &[StorePath]) -> Result<usize, GcRootError> {
        let mut made = 0;
        {
            let _gate = lock(&self.inner.gate);
            for path in paths {
                if self.create(path)? {
                    made += 1;
                }
            }
        }
        if made > 0 {
            let mine = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
            self.sync_through(mine).await?;
        }
        Ok(made)
    }

    fn remove_link(&self, link: PathBuf) -> Result<(), GcRootError> {
        match self.inner.fs.remove(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(GcRootError::Io {
                action: "remove",
                link,
                source,
            }),
        }
    }

    /// Makes the directory hold exactly the roots of `owed` (the paths whose upload is still
    /// owed): missing ones are made (and synced), and with `remove_others`, roots of other
    /// store paths removed. Entries not named like a store path are left alone. Call only
    /// while no request is being taken, or a root just made for one could be removed.
    pub async fn reconcile(
        &self,
        owed: &HashSet<StorePath>,
        remove_others: bool,
    ) -> Result<Reconciled, GcRootError> {
        let mut done = Reconciled::default();
        for path in owed {
            if self.create(path)? {
                done.created += 1;
            }
        }
        if done.created > 0 {
            let mine = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
            self.sync_through(mine).await?;
        }
        if !remove_others {
            return Ok(done);
        }
        let names = self
            .inner
            .fs
            .list(&self.inner.dir)
            .map_err(|source| GcRootError::Io {
                action: "list the directory of",
                link: self.inner.dir.clone(),
                source,
            })?;
        for name in names {
            let Ok(path) = StorePath::from_basename(&name) else {
                continue;
            };
            if !owed.contains(&path) {
                self.remove_link(self.inner.dir.join(&name))?;
                done.removed += 1;
            }
        }
        Ok(done)
    }
}

/// Runs a blocking file-system call from async code: on a multi-threaded runtime the worker
/// hands its other tasks away meanwhile.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}
