//! What the fuzz targets under `fuzz/` reach that is not public otherwise (see
//! docs/fuzzing.md). Not an API: nothing but the fuzz targets uses it, and it follows the code
//! behind it. Everything a target can reach through the ordinary public modules stays there.

/// The intake journal's record format: its writer and the reader of a journal's bytes.
pub mod journal {
    pub use crate::queue::journal::record::{
        encode, frame, scan, Found, Problem, Scanned, HEADER, TERMINATOR,
    };
}
