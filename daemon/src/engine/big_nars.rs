//! The NARs over [`super::SMALL_NAR`] and their `jobs` slots: which waits, which starts next
//! (the largest), and when a slot is free again.
//!
//! A NAR holds a slot while it is compressed. One kept whole for a single PUT gives its slot
//! back as soon as it is compressed, so the next NAR is compressed while this one is on the
//! wire; before that it takes one of `jobs` PUT slots, which bounds the NARs that wait
//! compressed (in memory, or in temporary files) at `jobs` besides the `jobs` being compressed.
//! A NAR streamed in parts keeps its slot to the end, since it compresses until its last part.
//!
//! Invariant: a path is in `compressing` from its start until it gives its slot back or its
//! task ends, whichever comes first, and `compressing.len()` never exceeds `jobs` when a NAR
//! starts.

use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::stream::SlotRelease;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;

/// The longest big NARs wait for lookups still running before they start.
const GATE: Duration = Duration::from_millis(200);

/// A big NAR waiting for a `jobs` slot; the largest goes first.
pub(super) struct Queued {
    pub info: PathInfo,
    pub kept: Option<Box<NarInfo>>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.info.nar_size, &self.info.path).cmp(&(other.info.nar_size, &other.info.path))
    }
}

/// A NAR to start now; `alone` when no other one is being compressed.
pub(super) struct Start {
    pub queued: Queued,
    pub alone: bool,
    pub slot: SlotRelease,
}

pub(super) struct BigNars {
    waiting: BinaryHeap<Queued>,
    compressing: HashSet<StorePath>,
    /// While lookups run, big NARs wait until this moment at most.
    gate: Option<Instant>,
    put_slots: Arc<Semaphore>,
    released: mpsc::UnboundedSender<StorePath>,
    releases: mpsc::UnboundedReceiver<StorePath>,
}

impl BigNars {
    pub fn new(jobs: usize) -> BigNars {
        let (released, releases) = mpsc::unbounded_channel();
        BigNars {
            waiting: BinaryHeap::new(),
            compressing: HashSet::new(),
            gate: None,
            put_slots: Arc::new(Semaphore::new(jobs)),
            released,
            releases,
        }
    }

    /// A new `jobs`: PUTs already waiting or running keep their old slots.
    pub fn set_jobs(&mut self, jobs: usize) {
        self.put_slots = Arc::new(Semaphore::new(jobs));
    }

    pub fn push(&mut self, info: PathInfo, kept: Option<Box<NarInfo>>) {
        self.waiting.push(Queued { info, kept });
    }

    /// The next NAR to start under `jobs`, if a slot is free. While `lookups_running`, a
    /// bigger NAR may still turn up: the waiting ones then hold back for up to [`GATE`], so
    /// that the largest starts first, alone, instead of whichever lookup answered first.
    pub fn next(&mut self, jobs: usize, lookups_running: bool) -> Option<Start> {
        if self.waiting.is_empty() || self.compressing.len() >= jobs {
            return None;
        }
        if lookups_running {
            let opened = *self.gate.get_or_insert_with(|| Instant::now() + GATE);
            if Instant::now() < opened {
                return None;
            }
        }
        self.gate = None;
        let queued = self.waiting.pop()?;
        let alone = self.compressing.is_empty();
        self.compressing.insert(queued.info.path.clone());
        let released = self.released.clone();
        let path = queued.info.path.clone();
        let slot = SlotRelease {
            put_slots: self.put_slots.clone(),
            release: Box::new(move || {
                let _ = released.send(path);
            }),
        };
        Some(Start {
            queued,
            alone,
            slot,
        })
    }

    /// When the waiting NARs may start although lookups still run.
    pub fn gate(&self) -> Option<Instant> {
        self.gate
    }

    /// A NAR gave its slot back before its task ended.
    pub async fn released(&mut self) -> StorePath {
        match self.releases.recv().await {
            Some(path) => path,
            // `self` holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// `path` is compressed (or its task ended): its slot is free.
    pub fn free(&mut self, path: &StorePath) {
        self.compressing.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::Sha256;

    fn info(name: &str, nar_size: u64) -> PathInfo {
        PathInfo {
            path: StorePath::from_absolute_path(&format!("/nix/store/{}-{name}", "0".repeat(32)))
                .unwrap(),
            nar_hash: Sha256::digest(name.as_bytes()),
            nar_size,
            references: Vec::new(),
            deriver: None,
            signatures: Vec::new(),
            ca: None,
        }
    }

    #[tokio::test]
    async fn the_largest_starts_first_and_a_released_slot_starts_the_next() {
        let mut big = BigNars::new(1);
        big.push(info("small", 2 << 20), None);
        big.push(info("large", 9 << 20), None);
        big.push(info("medium", 5 << 20), None);
        let first = big.next(1, false).expect("a free slot");
        assert_eq!(first.queued.info.path.name(), "large");
        assert!(first.alone);
        assert!(big.next(1, false).is_none(), "jobs = 1 is taken");

        (first.slot.release)();
        let released = big.released().await;
        big.free(&released);
        let second = big.next(1, false).expect("the slot was given back");
        assert_eq!(second.queued.info.path.name(), "medium");
        assert_eq!(
            first.slot.put_slots.available_permits(),
            1,
            "the PUT slot is taken by the NAR, not by the queue"
        );
    }

    #[tokio::test]
    async fn a_nar_that_starts_beside_another_is_not_alone() {
        let mut big = BigNars::new(2);
        big.push(info("a", 9 << 20), None);
        big.push(info("b", 5 << 20), None);
        assert!(big.next(2, false).unwrap().alone);
        assert!(!big.next(2, false).unwrap().alone);
    }

    #[tokio::test]
    async fn while_lookups_run_big_nars_wait_for_the_gate_only() {
        let mut big = BigNars::new(2);
        big.push(info("a", 9 << 20), None);
        assert!(big.next(2, true).is_none(), "held back while lookups run");
        let gate = big.gate().expect("a gate");
        tokio::time::sleep_until(gate).await;
        assert!(big.next(2, true).is_some(), "started once the gate opened");
    }
}
