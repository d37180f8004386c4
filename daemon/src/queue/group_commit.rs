//! Group commit: one disk sync covers every write made before it started, so N concurrent
//! writers waiting for durability cost about two syncs, not N. Used for sled's log (see
//! [`super::storage`]) and for the intake journal (see [`super::journal`]).
//!
//! Protocol: a writer makes its write, then calls [`GroupCommit::wrote`] (the write must be
//! complete when the count goes up), then [`GroupCommit::commit`]. A committer waits for the
//! sync lock; if a sync that started after its write has ended meanwhile, it is done,
//! otherwise it syncs itself, covering everyone who wrote so far. A lone writer syncs on its
//! own task instead of waking another thread.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(super) struct GroupCommit {
    /// Sync on the calling worker when another worker can take its tasks meanwhile (see
    /// [`GroupCommit::short`]).
    short: bool,
    /// Writes made so far (a sequence number).
    written: AtomicU64,
    /// Every write up to this number is on disk.
    synced: AtomicU64,
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
    /// other committer's sync covers it.
    pub async fn commit<E>(&self, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mine = self.written.load(Ordering::SeqCst);
        let _turn = self.lock.lock().await;
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
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
        if hand_over {
            tokio::task::block_in_place(sync)
        } else {
            sync()
        }?;
        self.synced.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// [`GroupCommit::commit`] on the calling thread, outside any runtime (shutdown).
    pub fn commit_blocking<E>(&self, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let covers = self.written.load(Ordering::SeqCst);
        sync()?;
        self.synced.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}
