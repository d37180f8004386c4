//! The journal's [`Mark`]: how far its records were moved into the queue, as the queue's
//! `intake` tree stores it (generation, then end offset, each u64 big-endian).

/// How far the journal has been moved into the queue: every record of an earlier generation,
/// and those of `generation` that end at or before `end`. Ordered by generation, then end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub generation: u64,
    pub end: u64,
}

impl Mark {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.generation.to_be_bytes());
        bytes[8..].copy_from_slice(&self.end.to_be_bytes());
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Mark> {
        Some(Mark {
            generation: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            end: u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}
