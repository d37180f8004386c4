//! One journal record on disk, and reading a journal file's bytes back into records.
//!
//! ```text
//! record  = length:u32 LE   payload bytes, 1 ..= MAX_PAYLOAD (0 here means: no more records)
//!           crc:u32 LE      CRC-32 (IEEE) of generation ‖ payload
//!           generation:u64 LE
//!           payload         JSON array of the request's paths, as the queue stores them:
//!                           [{"path":…,"source":…,"drv":…|null,"realisations":[…]?}, …]
//! ```
//!
//! A write is the record followed by a zero `length` (the terminator), so the records of the
//! current generation always end at a zero length even where an older generation's records
//! are still in the file behind them.
//!
//! [`scan`] reads records from the start until that end. What it cannot read is reported as a
//! [`Problem`], never skipped in silence: a record whose checksum fails with no readable
//! record of the same generation after it is a torn tail (a crash during a write that was
//! never acknowledged); one followed by a readable record, or one whose checksum holds but
//! whose payload does not decode, is corruption in the middle.

use serde::{Deserialize, Serialize};

use super::super::record::text;
use super::super::NewPath;
use crate::format::realisation::Realisation;
use crate::format::store_path::StorePath;
use narpush_protocol::Source;

/// Bytes before the payload: length, checksum, generation.
pub const HEADER: usize = 16;
/// The zero length written after every record.
pub const TERMINATOR: usize = 4;
/// The largest payload a record holds (a request is at most 1 MiB of text; with its
/// realisations as escaped JSON a payload stays well under this).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// A path as the journal stores it (the queue's [`NewPath`] in the queue's text forms).
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(with = "text::store_path")]
    path: StorePath,
    #[serde(with = "text::source")]
    source: Source,
    #[serde(with = "text::optional_store_path")]
    drv: Option<StorePath>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "text::realisations"
    )]
    realisations: Vec<Realisation>,
}

/// The bytes of one write: the record of `paths` in `generation`, then the terminator.
pub fn encode(generation: u64, paths: &[NewPath]) -> Vec<u8> {
    let stored: Vec<Stored> = paths
        .iter()
        .map(|p| Stored {
            path: p.path.clone(),
            source: p.source,
            drv: p.drv.clone(),
            realisations: p.realisations.clone(),
        })
        .collect();
    let payload = serde_json::to_vec(&stored).unwrap_or_default();
    let mut bytes = Vec::with_capacity(HEADER + payload.len() + TERMINATOR);
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&checksum(generation, &payload).to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes.extend_from_slice(&[0; TERMINATOR]);
    bytes
}

fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn decode_payload(payload: &[u8]) -> Result<Vec<NewPath>, String> {
    let stored: Vec<Stored> = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if stored.is_empty() {
        return Err("the record names no path".to_owned());
    }
    Ok(stored
        .into_iter()
        .map(|s| NewPath {
            path: s.path,
            source: s.source,
            drv: s.drv,
            realisations: s.realisations,
        })
        .collect())
}

/// A readable record: where it is and what it holds.
#[derive(Debug)]
pub struct Found {
    /// Where the next record starts.
    pub end: u64,
    pub generation: u64,
    pub paths: Vec<NewPath>,
}

/// What [`scan`] could not read.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// The last record was cut short or garbled: it was being written when the daemon died,
    /// so it was never acknowledged. Nothing after it is read.
    TornTail { offset: u64, reason: String },
    /// A record that cannot be read, with records after it that can: they are read on.
    Corrupt { offset: u64, reason: String },
}

/// Everything [`scan`] read from a journal.
#[derive(Debug, Default)]
pub struct Scanned {
    pub records: Vec<Found>,
    pub problems: Vec<Problem>,
    /// The generation of the journal's current records (of its first record), if any.
    pub generation: Option<u64>,
    /// Where the readable part ends: the next write goes here.
    pub end: u64,
}

/// The frame at `offset`, if one is there: its payload length, generation and whether its
/// checksum holds; `Err` when its length runs past the file.
fn frame_at(bytes: &[u8], offset: usize) -> Option<Result<(usize, u64, bool), String>> {
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
    Some(Ok((
        length,
        generation,
        checksum(generation, payload) == crc,
    )))
}

/// Reads the records of the journal's current generation from its bytes.
pub fn scan(bytes: &[u8]) -> Scanned {
    let mut scanned = Scanned::default();
    let mut offset = 0usize;
    while let Some(frame) = frame_at(bytes, offset) {
        let (length, generation, intact) = match frame {
            Ok(frame) => frame,
            Err(reason) => {
                scanned.problems.push(Problem::TornTail {
                    offset: offset as u64,
                    reason,
                });
                break;
            }
        };
        let end = offset + HEADER + length;
        // A garbled record's generation is not trusted: the first intact record's counts.
        let current = scanned.generation.unwrap_or(generation);
        if !intact {
            // Readable records of this generation after it mean it is not the last one.
            let next_is_ours = matches!(
                frame_at(bytes, end),
                Some(Ok((_, next, true))) if next == current
            );
            let reason = "its checksum does not match".to_owned();
            if !next_is_ours {
                scanned.problems.push(Problem::TornTail {
                    offset: offset as u64,
                    reason,
                });
                break;
            }
            scanned.problems.push(Problem::Corrupt {
                offset: offset as u64,
                reason,
            });
            offset = end;
            scanned.end = end as u64;
            continue;
        }
        if generation != current {
            // An older generation's record whose terminator was overwritten: the end.
            break;
        }
        scanned.generation = Some(current);
        match decode_payload(&bytes[offset + HEADER..end]) {
            Ok(paths) => scanned.records.push(Found {
                end: end as u64,
                generation,
                paths,
            }),
            Err(reason) => scanned.problems.push(Problem::Corrupt {
                offset: offset as u64,
                reason: format!("its paths do not decode: {reason}"),
            }),
        }
        offset = end;
        scanned.end = end as u64;
    }
    scanned
}
