//! Which queue entries the pipeline has handed to the engine without hearing back: a backlog
//! (thousands of entries due at once after an outage) enters the engine in batches, so the
//! engine holds at most [`IN_ENGINE`] submitted paths, with their closures, at a time. The
//! rest waits in the queue, on disk, and is taken as outcomes come back.
//!
//! Invariant: a path is counted once however often it is taken. The engine reports once per
//! path it holds (a path submitted again while there is only marked a top again), and a queue
//! reopen puts entries still in the engine back to `pending`, so they are taken again: those
//! are not handed over a second time, and not counted twice (the count would never come back
//! down, and the pipeline would take nothing until a restart).

use std::collections::HashSet;

use crate::format::store_path::StorePath;

/// Submitted paths the engine holds at most.
pub const IN_ENGINE: usize = 1000;

#[derive(Debug, Default)]
pub struct Admission {
    in_engine: HashSet<StorePath>,
    /// Whether entries were left in the queue for lack of room.
    held_back: bool,
}

impl Admission {
    /// How many entries may be handed over now; 0 means none until an outcome arrives (then
    /// [`Admission::finished`] says so).
    pub fn room(&mut self) -> usize {
        let room = IN_ENGINE.saturating_sub(self.in_engine.len());
        self.held_back = room == 0;
        room
    }

    /// `path` is to be handed over; returns whether it should be: `false` when the engine
    /// holds it already (its one report answers this taking too).
    pub fn admit(&mut self, path: &StorePath) -> bool {
        self.in_engine.insert(path.clone())
    }

    /// Whether the engine holds no submitted path.
    pub fn is_idle(&self) -> bool {
        self.in_engine.is_empty()
    }

    /// Entries are left in the queue until an outcome arrives (then [`Admission::finished`]
    /// says so), though there is room.
    pub fn hold_back(&mut self) {
        self.held_back = true;
    }

    /// The outcome of `path` arrived; returns whether entries held back may be taken now.
    pub fn finished(&mut self, path: &StorePath) -> bool {
        self.in_engine.remove(path);
        std::mem::take(&mut self.held_back)
    }

    /// How many submitted paths the engine has not reported on yet.
    #[cfg(test)]
    pub fn in_engine(&self) -> usize {
        self.in_engine.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: usize) -> StorePath {
        StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-p{n}")).unwrap()
    }

    #[test]
    fn a_backlog_enters_the_engine_as_room_is_made() {
        let mut admission = Admission::default();
        // 3000 entries due: one batch fits.
        let first = admission.room();
        assert_eq!(first, IN_ENGINE);
        for n in 0..first {
            assert!(admission.admit(&path(n)));
        }
        assert_eq!(admission.room(), 0, "the rest waits in the queue");
        assert!(
            admission.finished(&path(0)),
            "one outcome makes room for the held back"
        );
        assert_eq!(admission.room(), 1);
        assert!(admission.admit(&path(IN_ENGINE)));
        assert_eq!(admission.room(), 0);
        for n in 1..=IN_ENGINE {
            admission.finished(&path(n));
        }
        assert_eq!(admission.room(), IN_ENGINE);
        assert!(
            !admission.finished(&path(0)),
            "nothing held back: no wake-up needed"
        );
    }

    #[test]
    fn a_path_taken_again_while_in_the_engine_is_neither_handed_over_nor_counted_twice() {
        let mut admission = Admission::default();
        assert!(admission.admit(&path(1)));
        assert!(!admission.admit(&path(1)));
        assert_eq!(admission.room(), IN_ENGINE - 1);
        admission.finished(&path(1));
        assert_eq!(admission.room(), IN_ENGINE);
    }
}
