//! Group commit: one disk sync covers every write made before it started, so N concurrent
//! writers waiting for durability cost about two syncs, not N. Used for sled's log (see
//! [`super::storage`]) and for the intake journal (see [`super::journal`]).
//!
//! Protocol: a writer makes its write, then calls [`GroupCommit::wrote`] (the write must be
//! complete when the count goes up), then [`GroupCommit::commit`]. A committer waits for the
//! sync lock; if a sync that started after its write has ended meanwhile, it is done,
//! otherwise it syncs itself, covering everyone who wrote so far. A lone writer syncs on its
//! own task instead of waking another thread.
//!
//! Invariant: a commit succeeds only if a sync that *succeeded* began after its write. A
//! failed sync poisons the group for good: Linux reports a writeback error to one `fsync`
//! only and may have dropped the dirty pages, so a second sync returning 0 proves nothing.
//! Every write not covered by an earlier successful sync (those the failed sync covered, and
//! every later one) then fails with the caller's "unsynced" error, until the caller replaces
//! the file and its group commit (the queue reopens its database; the journal is not used
//! again until the daemon restarts).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How a group-committed file reaches the disk: [`File::sync_data`] (`fdatasync`), or in
/// tests a sync that fails.
pub(super) type SyncData = fn(&File) -> io::Result<()>;

#[derive(Default)]
pub(super) struct GroupCommit {
    /// Sync on the calling worker when another worker can take its tasks meanwhile (see
    /// [`GroupCommit::short`]).
    short: bool,
    /// Writes made so far (a sequence number).
    written: AtomicU64,
    /// Every write up to this number is on disk.
    synced: AtomicU64,
    /// A sync failed: no later commit succeeds (see the module doc).
    poisoned: AtomicBool,
    lock: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// For syncs of one small write (the intake journal's): on a multi-threaded runtime with
    /// more than one worker they run on the calling worker, as handing its core to another
    /// thread for the duration costs more than the sync (measured with `scripts/bench-hook`:
    /// about 0.03 ms at the median and half the p99). Only one sync runs at a time, so at
    /// most one worker waits on the disk.
    pub fn short() -> GroupCommit {
        GroupCommit {
            short: true,
            ..GroupCommit::default()
        }
    }

    /// Counts a completed write; returns its sequence number.
    pub fn wrote(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until every write counted before this call is durable, calling `sync` if no
    /// other committer's sync covers it. After a failed sync (this committer's or an
    /// earlier one), returns `unsynced()` without syncing, unless a successful sync already
    /// covered this committer's writes.
    pub async fn commit<E>(
        &self,
        sync: impl FnOnce() -> Result<(), E>,
        unsynced: impl FnOnce() -> E,
    ) -> Result<(), E> {
        let mine = self.written.load(Ordering::SeqCst);
        let _turn = self.lock.lock().await;
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(unsynced());
        }
        let covers = self.written.load(Ordering::SeqCst);
        // A sync blocks the calling thread (a fraction of a millisecond to a few on an SSD);
        // on a multi-threaded runtime the worker hands its other tasks away meanwhile, unless
        // the sync is short and another worker is there to take them.
        let runtime = tokio::runtime::Handle::current();
        let hand_over = match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                !(self.short && runtime.metrics().num_workers() > 1)
            }
            _ => false,
        };
        let synced = if hand_over {
            tokio::task::block_in_place(sync)
        } else {
            sync()
        };
        self.settle(synced, covers)
    }

    /// [`GroupCommit::commit`] on the calling thread, outside any runtime (shutdown).
    pub fn commit_blocking<E>(
        &self,
        sync: impl FnOnce() -> Result<(), E>,
        unsynced: impl FnOnce() -> E,
    ) -> Result<(), E> {
        let mine = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(unsynced());
        }
        self.settle(sync(), mine)
    }

    /// Records how a sync covering writes up to `covers` ended.
    fn settle<E>(&self, synced: Result<(), E>, covers: u64) -> Result<(), E> {
        match synced {
            Ok(()) => {
                self.synced.fetch_max(covers, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.poisoned.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A sync that fails with EIO the first time and succeeds after, counting its calls.
    #[derive(Default)]
    struct FailsOnce {
        calls: AtomicUsize,
    }

    impl FailsOnce {
        fn sync(&self) -> Result<(), io::Error> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(io::Error::from_raw_os_error(5)),
                _ => Ok(()),
            }
        }
    }

    fn unsynced() -> io::Error {
        io::Error::other("unsynced")
    }

    fn is_unsynced(result: Result<(), io::Error>) -> bool {
        result.is_err_and(|e| e.to_string() == "unsynced")
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_write_it_covered_and_every_later_one() {
        let commit = GroupCommit::default();
        let disk = FailsOnce::default();
        // Two writers wrote; the first to commit syncs for both, and the sync fails.
        commit.wrote();
        commit.wrote();
        let first = commit.commit(|| disk.sync(), unsynced).await;
        assert_eq!(first.unwrap_err().raw_os_error(), Some(5));
        // The second waiter's write was covered by that failed sync: a second sync would
        // succeed (Linux reports a writeback error once), but its write is not on disk.
        assert!(is_unsynced(commit.commit(|| disk.sync(), unsynced).await));
        // Nor is a later write: the file's contents are unknown from then on.
        commit.wrote();
        assert!(is_unsynced(commit.commit(|| disk.sync(), unsynced).await));
        assert!(is_unsynced(
            commit.commit_blocking(|| disk.sync(), unsynced)
        ));
        assert_eq!(
            disk.calls.load(Ordering::SeqCst),
            1,
            "no sync after the failure"
        );
    }

    #[tokio::test]
    async fn a_commit_whose_writes_a_successful_sync_covered_does_not_sync_again() {
        let commit = GroupCommit::default();
        commit.wrote();
        commit
            .commit(|| Ok::<(), io::Error>(()), unsynced)
            .await
            .unwrap();
        let eio = || Err(io::Error::from_raw_os_error(5));
        commit.commit(eio, unsynced).await.unwrap();
    }
}
