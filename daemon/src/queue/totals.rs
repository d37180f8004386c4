//! The upload totals kept in the queue's `stats` tree: paths published, their NAR and stored
//! bytes, and when the last one was, since the queue was created.
//!
//! Invariant: the counters only grow (saturating), and the last upload time only moves
//! forward; a value that does not decode reads as 0.

use super::{now_ms, Queue, QueueError};

/// Counter names in the `stats` tree.
const STAT_PATHS: &str = "uploaded_paths";
const STAT_NAR_BYTES: &str = "uploaded_bytes";
const STAT_STORED_BYTES: &str = "uploaded_stored_bytes";
const STAT_LAST_MS: &str = "last_upload_ms";

/// Paths published since the queue was created (counters kept in the `stats` tree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadTotals {
    pub paths: u64,
    /// Uncompressed NAR bytes.
    pub nar_bytes: u64,
    /// Bytes written to the cache (compressed NARs); 0 for uploads before it was counted.
    pub stored_bytes: u64,
    /// When the last path was published (Unix ms), if one ever was.
    pub last_ms: Option<u64>,
}

/// A `stats` value: u64 big-endian; absent or malformed reads as 0.
fn decode_stat(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Queue {
    /// Counts one published path: its NAR bytes, its stored (compressed) bytes, and now as
    /// the time of the last successful upload.
    pub fn add_uploaded(&self, nar_bytes: u64, stored_bytes: u64) -> Result<(), QueueError> {
        let now = now_ms();
        self.with(|h| {
            for (name, amount) in [
                (STAT_PATHS, 1),
                (STAT_NAR_BYTES, nar_bytes),
                (STAT_STORED_BYTES, stored_bytes),
            ] {
                h.stats.fetch_and_update(name, |old| {
                    Some(
                        decode_stat(old)
                            .saturating_add(amount)
                            .to_be_bytes()
                            .to_vec(),
                    )
                })?;
            }
            h.stats.fetch_and_update(STAT_LAST_MS, |old| {
                Some(decode_stat(old).max(now).to_be_bytes().to_vec())
            })?;
            Ok(())
        })
    }

    /// What was published since the queue was created.
    pub fn uploaded(&self) -> Result<UploadTotals, QueueError> {
        self.with(|h| {
            let read = |name: &str| -> Result<u64, QueueError> {
                Ok(decode_stat(h.stats.get(name)?.as_deref()))
            };
            Ok(UploadTotals {
                paths: read(STAT_PATHS)?,
                nar_bytes: read(STAT_NAR_BYTES)?,
                stored_bytes: read(STAT_STORED_BYTES)?,
                last_ms: Some(read(STAT_LAST_MS)?).filter(|&ms| ms > 0),
            })
        })
    }
}
