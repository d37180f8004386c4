//! The journal's first record layout, whose checksum did not cover the length. Nothing writes
//! it any more; [`super::record::scan`] reads it so that records an older narpush wrote (and
//! acknowledged) before an upgrade are still moved into the queue.
//!
//! ```text
//! record  = length:u32 LE   payload bytes, 1 ..= MAX_PAYLOAD (0: no more records)
//!           crc:u32 LE      CRC-32 (IEEE) of generation ‖ payload
//!           generation:u64 LE
//!           payload         as in the current layout
//! ```
//!
//! A legacy file is told from a current one by its first bytes: a current record starts with
//! [`super::record::MAGIC`], which read as a legacy length is larger than any payload.

use super::MAX_PAYLOAD;

/// Bytes before the payload: length, checksum, generation.
pub const HEADER: usize = 16;

/// A legacy record's frame: where its payload lies, and whether its checksum holds.
#[derive(Debug)]
pub struct Frame {
    pub length: usize,
    pub generation: u64,
    pub intact: bool,
}

/// The legacy frame at `offset`, if one is there (a zero length is the end); `Err` when its
/// length runs past the file or past [`MAX_PAYLOAD`].
pub fn frame_at(bytes: &[u8], offset: usize) -> Option<Result<Frame, String>> {
    let length = u32::from_le_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?) as usize;
    if length == 0 {
        return None;
    }
    if length > MAX_PAYLOAD || offset + HEADER + length > bytes.len() {
        return Some(Err(format!(
            "its length ({length} bytes) runs past the end of the journal"
        )));
    }
    let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().ok()?);
    let generation = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().ok()?);
    let payload = &bytes[offset + HEADER..offset + HEADER + length];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(payload);
    Some(Ok(Frame {
        length,
        generation,
        intact: hasher.finalize() == crc,
    }))
}
