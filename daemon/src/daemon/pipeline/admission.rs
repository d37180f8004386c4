//! How many queue entries the pipeline has handed to the engine without hearing back: a
//! backlog (thousands of entries due at once after an outage) enters the engine in batches, so
//! the engine holds at most [`IN_ENGINE`] submitted paths, with their closures, at a time. The
//! rest waits in the queue, on disk, and is taken as outcomes come back.

/// Submitted paths the engine holds at most.
pub const IN_ENGINE: usize = 1000;

#[derive(Debug, Default)]
pub struct Admission {
    in_flight: usize,
    /// Whether entries were left in the queue for lack of room.
    held_back: bool,
}

impl Admission {
    /// How many entries may be handed over now; 0 means none until an outcome arrives (then
    /// [`Admission::finished`] says so).
    pub fn room(&mut self) -> usize {
        let room = IN_ENGINE.saturating_sub(self.in_flight);
        self.held_back = room == 0;
        room
    }

    /// `count` entries were handed over.
    pub fn submitted(&mut self, count: usize) {
        self.in_flight += count;
    }

    /// An entry's outcome arrived; returns whether entries held back may be taken now.
    pub fn finished(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        std::mem::take(&mut self.held_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_enters_the_engine_as_room_is_made() {
        let mut admission = Admission::default();
        // 3000 entries due: one batch fits.
        let first = admission.room();
        assert_eq!(first, IN_ENGINE);
        admission.submitted(first);
        assert_eq!(admission.room(), 0, "the rest waits in the queue");
        assert!(
            admission.finished(),
            "one outcome makes room for the held back"
        );
        assert_eq!(admission.room(), 1);
        admission.submitted(1);
        assert_eq!(admission.room(), 0);
        for _ in 0..IN_ENGINE {
            admission.finished();
        }
        assert_eq!(admission.room(), IN_ENGINE);
        assert!(
            !admission.finished(),
            "nothing held back: no wake-up needed"
        );
    }
}
