//! One journal record on disk, and reading a journal file's bytes back into records.
//!
//! ```text
//! record = magic:[u8; 4]     MAGIC, "NPJ\x01" (four zero bytes here: no more records)
//!          header_crc:u32 LE CRC-32 (IEEE) of length ‖ generation ‖ body_crc
//!          length:u32 LE     payload bytes, 1 ..= MAX_PAYLOAD
//!          generation:u64 LE
//!          body_crc:u32 LE   CRC-32 (IEEE) of payload
//!          payload           JSON array of the request's paths, as the queue stores them:
//!                            [{"path":…,"source":…,"drv":…|null,"realisations":[…]?}, …]
//! ```
//!
//! A write is the record followed by four zero bytes (the terminator), so the records of the
//! current generation always end at a terminator even where an older generation's records
//! are still in the file behind them. A payload that cannot be serialised is an error for the
//! caller ([`encode`]); nothing is written for it.
//!
//! [`scan`] reads records from the start until that end. What it cannot read is reported as a
//! [`Problem`], never skipped in silence:
//! - The header checksum covers the length, so a garbled length (or generation, or magic) is
//!   damage to that record alone: the reader searches forward for the next magic whose header
//!   checksum holds and reads on from there. (JSON never contains the magic's `0x01` byte.)
//! - A record whose header holds but whose body checksum fails has a trustworthy length.
//! - Four zero bytes with a readable record of the current generation behind them are a
//!   zeroed marker (damage), not the end.
//! - Only a header that holds vouches for a generation: when the first record's header is
//!   garbled, the first readable record after it sets the current generation (records the
//!   queue already holds are then skipped by their mark, as at every start).
//! - A damaged record with no readable record of the same generation after it is a torn tail
//!   (a crash during a write that was never acknowledged); one followed by a readable record,
//!   or one whose checksums hold but whose payload does not decode, is corruption in the
//!   middle.
//!
//! Records of the first layout (see [`super::legacy`]), which a journal written before this
//! one holds, are read where a record does not start with the magic, until the first record in
//! this layout: a daemon upgraded with records not yet moved appends behind them.

use serde::{Deserialize, Serialize};

use super::super::record::text;
use super::super::NewPath;
use super::{legacy, MAX_PAYLOAD};
use crate::format::realisation::Realisation;
use crate::format::store_path::StorePath;
use narpush_protocol::Source;

/// What every record starts with.
pub const MAGIC: [u8; 4] = *b"NPJ\x01";
/// Bytes before the payload: magic, header checksum, length, generation, body checksum.
pub const HEADER: usize = 24;
/// The zero bytes written after every record.
pub const TERMINATOR: usize = 4;

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

/// The bytes of one write: the record of `paths` in `generation`, then the terminator; an
/// error (and nothing to write) when the paths cannot be serialised.
pub fn encode(generation: u64, paths: &[NewPath]) -> Result<Vec<u8>, serde_json::Error> {
    let stored: Vec<Stored> = paths
        .iter()
        .map(|p| Stored {
            path: p.path.clone(),
            source: p.source,
            drv: p.drv.clone(),
            realisations: p.realisations.clone(),
        })
        .collect();
    encode_body(generation, &stored)
}

/// [`encode`] of any serialisable body.
fn encode_body<T: Serialize + ?Sized>(
    generation: u64,
    body: &T,
) -> Result<Vec<u8>, serde_json::Error> {
    Ok(frame(generation, &serde_json::to_vec(body)?))
}

/// The record of `payload` in `generation`, then the terminator.
pub fn frame(generation: u64, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let body_crc = crc32fast::hash(payload);
    let mut bytes = Vec::with_capacity(HEADER + payload.len() + TERMINATOR);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&header_crc(length, generation, body_crc).to_le_bytes());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&body_crc.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&[0; TERMINATOR]);
    bytes
}

fn header_crc(length: u32, generation: u64, body_crc: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length.to_le_bytes());
    hasher.update(&generation.to_le_bytes());
    hasher.update(&body_crc.to_le_bytes());
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

/// A record's frame as its header gives it.
struct Frame {
    length: usize,
    generation: u64,
    /// Whether the payload's checksum holds (the header's always does).
    intact: bool,
    /// Bytes before the payload (the layouts differ).
    header: usize,
}

impl Frame {
    fn end(&self, offset: usize) -> usize {
        offset + self.header + self.length
    }
}

/// What starts at an offset.
enum At {
    /// A terminator (or the end of the file): no more records.
    End,
    Frame(Frame),
    /// No record whose header holds: why.
    Damaged(String),
}

/// The record of the current layout at `offset`.
fn frame_at(bytes: &[u8], offset: usize) -> At {
    let Some(magic) = bytes.get(offset..offset + 4) else {
        return At::End;
    };
    if magic == [0; 4] {
        return At::End;
    }
    if magic != MAGIC {
        return At::Damaged("it does not start with the record marker".to_owned());
    }
    let Some(header) = bytes.get(offset..offset + HEADER) else {
        return At::Damaged("its header is cut short by the end of the journal".to_owned());
    };
    let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let (crc, length, body_crc) = (field(4), field(8), field(20));
    let generation = u64::from_le_bytes(header[12..20].try_into().unwrap_or([0; 8]));
    if header_crc(length, generation, body_crc) != crc {
        return At::Damaged("its header checksum does not match".to_owned());
    }
    let length = length as usize;
    if length == 0 || length > MAX_PAYLOAD || offset + HEADER + length > bytes.len() {
        return At::Damaged(format!(
            "its length ({length} bytes) runs past the end of the journal"
        ));
    }
    let payload = &bytes[offset + HEADER..offset + HEADER + length];
    At::Frame(Frame {
        length,
        generation,
        intact: crc32fast::hash(payload) == body_crc,
        header: HEADER,
    })
}

/// The record of the first layout at `offset` (see [`legacy`]).
fn legacy_at(bytes: &[u8], offset: usize) -> At {
    match legacy::frame_at(bytes, offset) {
        None => At::End,
        Some(Err(reason)) => At::Damaged(reason),
        Some(Ok(frame)) => At::Frame(Frame {
            length: frame.length,
            generation: frame.generation,
            intact: frame.intact,
            header: legacy::HEADER,
        }),
    }
}

/// Where the next record of the current layout whose header holds starts, searching from
/// `from`, if it belongs to `generation` (any, when not known yet); `None` if there is none,
/// or the first is of another (older) generation: what follows is not current.
fn resync(bytes: &[u8], from: usize, generation: Option<u64>) -> Option<usize> {
    let mut at = from;
    while let Some(found) = bytes
        .get(at..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
    {
        let offset = at + found;
        if let At::Frame(frame) = frame_at(bytes, offset) {
            return generation
                .is_none_or(|current| current == frame.generation)
                .then_some(offset);
        }
        at = offset + 1;
    }
    None
}

/// Reads the records of the journal's current generation from its bytes.
pub fn scan(bytes: &[u8]) -> Scanned {
    let mut scanned = Scanned::default();
    let mut offset = 0usize;
    // Records of the first layout are read only before the first of the current one.
    let mut legacy = true;
    loop {
        legacy &= bytes.get(offset..offset + 4) != Some(&MAGIC[..]);
        let at = if legacy {
            legacy_at(bytes, offset)
        } else {
            frame_at(bytes, offset)
        };
        let current = scanned.generation;
        let (reason, next) = match at {
            // A terminator, unless records of this generation follow (a zeroed marker).
            At::End => match current.and_then(|g| resync(bytes, offset, Some(g))) {
                None => break,
                Some(next) => ("its record marker is zeroed".to_owned(), Some(next)),
            },
            // An older generation's record behind the current ones (a garbled legacy
            // record's generation is not trusted): the end.
            At::Frame(frame)
                if (frame.intact || !legacy) && current.is_some_and(|g| g != frame.generation) =>
            {
                break
            }
            At::Frame(frame) if frame.intact => {
                scanned.generation = Some(frame.generation);
                let end = frame.end(offset);
                match decode_payload(&bytes[offset + frame.header..end]) {
                    Ok(paths) => scanned.records.push(Found {
                        end: end as u64,
                        generation: frame.generation,
                        paths,
                    }),
                    Err(reason) => scanned.problems.push(Problem::Corrupt {
                        offset: offset as u64,
                        reason: format!("its paths do not decode: {reason}"),
                    }),
                }
                offset = end;
                scanned.end = end as u64;
                continue;
            }
            // A garbled payload behind a header that holds: its length is right.
            At::Frame(frame) if !legacy => (
                "its payload checksum does not match".to_owned(),
                resync(bytes, frame.end(offset), Some(frame.generation)),
            ),
            // A garbled legacy record: its length is not covered by its checksum.
            At::Frame(frame) => {
                let generation = current.unwrap_or(frame.generation);
                let next = legacy_next(bytes, frame.end(offset), generation)
                    .or_else(|| resync(bytes, offset + 1, current));
                ("its checksum does not match".to_owned(), next)
            }
            At::Damaged(reason) => (reason, resync(bytes, offset + 1, current)),
        };
        let Some(next) = next else {
            scanned.problems.push(Problem::TornTail {
                offset: offset as u64,
                reason,
            });
            break;
        };
        scanned.problems.push(Problem::Corrupt {
            offset: offset as u64,
            reason,
        });
        offset = next;
        scanned.end = next as u64;
    }
    scanned
}

/// `end`, if an intact record of the first layout and of `generation` starts there (the
/// first layout's rule for telling a garbled record in the middle from a torn tail).
fn legacy_next(bytes: &[u8], end: usize, generation: u64) -> Option<usize> {
    match legacy_at(bytes, end) {
        At::Frame(frame) if frame.intact && frame.generation == generation => Some(end),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
