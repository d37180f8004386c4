//! One NAR from the store to the sink, streamed: the NAR is serialized, hashed and compressed
//! (on zstd's worker threads when it is big) on a blocking thread, while the async side uploads
//! what comes out. A NAR up to the settings' `single_put_max` is kept whole (in memory, or in
//! an unnamed temporary file once it outgrows one part; see [`crate::sink::spill`]) and written with
//! one PUT; a bigger one is cut into fixed-size parts, each uploaded as it arrives.
//!
//! Invariants:
//! - **Bounded memory**: a NAR kept whole holds at most one part's worth in memory; a NAR
//!   streamed in parts at most [`PARTS_IN_FLIGHT`] parts (see [`super::parts`]), whatever its
//!   size; plus the compressor's own buffers.
//! - **Fixed part size**: every part but the last is exactly the part size, as R2 demands;
//!   the part size is raised for huge NARs so that no upload needs more than 10,000 parts.
//! - **Nothing unverified becomes visible**: an object is written (one PUT) or completed
//!   (multipart) only after the NarHash and NarSize computed from the stream equal the ones the
//!   store recorded; on a mismatch or any error a multipart upload is aborted.
//! - **Names follow [`crate::layout`]**: every NAR, written with one PUT or streamed, gets a
//!   name no other upload uses ([`layout::nar_key_unique`]), so no NAR object is ever
//!   overwritten, and no collection can have planned the deletion of a key before it was
//!   written (which is why a narinfo may name it at once: rule U5 of [`crate::coexist`]).
//! - **One read of the tree**: the `.ls` listing, when asked for, is built by the same
//!   serialization that produces the NAR; it is returned with the stored NAR and uploaded by
//!   the caller before the narinfo.
//!
//! Cancellation: dropping the future drops the producer's handle, so the producer stops at its
//! next write (see [`super::producer`]); a multipart upload cut off that way stays open in the
//! bucket until its lifecycle rule removes it. A temporary file disappears with its last
//! descriptor.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use super::compress::{Compression, Encoder};
use super::parts::{Part, PartSplitter, Recycler, PARTS_IN_FLIGHT};
use super::producer::{Producer, Stop};
use super::progress::StreamProgress;
use super::UploadError;
use crate::format::hash::{HashingWriter, Sha256};
use crate::format::nar;
use crate::layout::{self, content_type};
use crate::sink::spill::{SpillWriter, Spilled};
use crate::sink::{MultipartUpload, Sink};
use crate::store::PathInfo;

/// The part size of multipart uploads, unless a NAR would need more than [`MAX_PARTS`].
/// At least 5 MiB (S3's and R2's minimum).
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// S3 caps a multipart upload at this many parts.
const MAX_PARTS: u64 = 10_000;
/// NARs at least this big may be compressed on zstd worker threads, beside the thread that
/// reads and hashes them. Smaller ones are compressed on that thread: for a few jobs' worth of
/// input, starting threads and their buffers costs more than it saves.
pub const WORKERS_FROM: u64 = 16 << 20;
/// Compression workers of one NAR at most: each holds its own jobs' buffers (a few MiB).
pub const MAX_WORKERS: u32 = 4;
/// The largest NAR written with one PUT unless configured otherwise (`single_put_max_bytes`).
pub const DEFAULT_SINGLE_PUT_MAX: u64 = 1 << 30;

/// How NARs are encoded and cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    pub compression: Compression,
    pub level: i32,
    /// The part size for NARs small enough to need fewer than 10,000 parts of it.
    pub part_size: u64,
    /// zstd worker threads for one NAR of [`WORKERS_FROM`] or more.
    pub workers: u32,
    /// Build the `.ls` listing while streaming, compressed with this (`None`: no listing).
    pub listing: Option<Compression>,
    /// Named in the NARs streamed in parts (see [`layout::WriterId`]).
    pub writer: layout::WriterId,
    /// NARs up to this size are written with one PUT (S3 only; a directory target writes
    /// every NAR straight into place); bigger ones are streamed in parts.
    pub single_put_max: u64,
    /// Where a NAR written with one PUT goes once it outgrows one part (an unnamed file).
    pub spill_dir: PathBuf,
    /// Compressed beside a NAR that has the workers: its thread runs at a lower priority (see
    /// [`super::producer`]).
    pub background: bool,
}

impl StreamSettings {
    /// The default part size, and a compression worker per core, up to [`MAX_WORKERS`].
    pub fn new(compression: Compression, level: i32) -> StreamSettings {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        StreamSettings {
            compression,
            level,
            part_size: DEFAULT_PART_SIZE,
            workers: u32::try_from(cores).unwrap_or(1).min(MAX_WORKERS),
            listing: None,
            writer: layout::WriterId::random(),
            single_put_max: DEFAULT_SINGLE_PUT_MAX,
            spill_dir: std::env::temp_dir(),
            background: false,
        }
    }
}

/// A NAR object in the sink: what its narinfo says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredNar {
    pub key: String,
    pub compression: Compression,
    pub file_hash: Sha256,
    pub file_size: u64,
    /// The `.ls` listing built from the same read, encoded with the settings' `listing`
    /// compression; `None` unless a listing was asked for.
    pub listing: Option<Bytes>,
}

/// What the store recorded of the NAR being produced.
struct Expected {
    path: String,
    nar_hash: Sha256,
    nar_size: u64,
}

impl Expected {
    fn of(info: &PathInfo) -> Expected {
        Expected {
            path: info.path.to_absolute(),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
        }
    }

    fn mismatch(&self, actual_hash: &Sha256, actual_size: u64) -> UploadError {
        UploadError::NarMismatch {
            path: self.path.clone(),
            expected_hash: self.nar_hash.to_string(),
            expected_size: self.nar_size,
            actual_hash: actual_hash.to_string(),
            actual_size,
        }
    }
}

/// What the producer measured.
#[derive(Clone, Debug)]
struct Measured {
    nar_hash: Sha256,
    nar_size: u64,
    file_hash: Sha256,
    file_size: u64,
    listing: Option<Bytes>,
}

/// The part size for a NAR of `nar_size` bytes: `base`, raised (in whole MiB) when the
/// compressed stream could otherwise need more than [`MAX_PARTS`] parts.
pub fn part_size_for(nar_size: u64, base: u64) -> u64 {
    let needed = compressed_bound(nar_size).div_ceil(MAX_PARTS);
    base.max(needed.div_ceil(1 << 20) << 20)
}

/// An upper bound on the compressed size of a NAR: incompressible data grows by a small
/// fraction under zstd and xz, plus their headers.
pub fn compressed_bound(nar_size: u64) -> u64 {
    nar_size + nar_size / 128 + (1 << 16)
}

/// How a NAR kept whole gives its `jobs` slot back once it is compressed, before its PUT (see
/// [`super::big_nars`]): it first takes one of `put_slots`, then calls `release`.
pub struct SlotRelease {
    pub put_slots: Arc<Semaphore>,
    pub release: Box<dyn FnOnce() + Send>,
}

/// Streams `info`'s NAR into `sink` and returns where it went. With a `slot`, a NAR kept whole
/// gives its `jobs` slot back as soon as it is compressed.
pub async fn store_nar(
    sink: &Sink,
    info: &PathInfo,
    settings: StreamSettings,
    progress: Arc<StreamProgress>,
    slot: Option<SlotRelease>,
) -> Result<StoredNar, UploadError> {
    if sink.writes_whole_objects() && info.nar_size <= settings.single_put_max {
        store_whole(sink, info, settings, progress, slot).await
    } else {
        let stored = store_in_parts(sink, info, settings, progress).await;
        // Compressed and written: the slot is free before any wait for the NAR (rule U6).
        if let Some(slot) = slot {
            (slot.release)();
        }
        stored
    }
}

/// The compression workers for `info`'s NAR: none for a small one.
fn workers_for(info: &PathInfo, settings: &StreamSettings) -> u32 {
    if info.nar_size >= WORKERS_FROM {
        settings.workers
    } else {
        0
    }
}

/// Compresses the whole NAR first, checks it, then writes it with one PUT under a name of its own.
async fn store_whole(
    sink: &Sink,
    info: &PathInfo,
    settings: StreamSettings,
    progress: Arc<StreamProgress>,
    slot: Option<SlotRelease>,
) -> Result<StoredNar, UploadError> {
    let workers = workers_for(info, &settings);
    let memory_limit = usize::try_from(settings.part_size.min(compressed_bound(info.nar_size)))
        .unwrap_or(usize::MAX);
    let spill = SpillWriter::new(&settings.spill_dir, memory_limit);
    let spill_failure = spill.failure();
    let source = PathBuf::from(info.path.to_absolute());
    let (compression, writer) = (settings.compression, settings.writer);
    let expected = Expected::of(info);
    let producer = Producer::spawn(&info.path.to_absolute(), settings.background, move |stop| {
        let (measured, spill) = produce(
            &source, &expected, &settings, workers, spill, &progress, stop,
        )?;
        let spilled = spill.finish().map_err(|e| compressing_failed(&source, e))?;
        Ok((measured, spilled))
    })?;
    let (measured, spilled) = match finish_producer(producer, info).await {
        Err(_) if spill_failure.get().is_some() => {
            return Err(UploadError::Spill {
                path: info.path.to_absolute(),
                detail: spill_failure.get().unwrap_or_default().to_owned(),
            })
        }
        result => result?,
    };
    let _put_slot = match slot {
        Some(SlotRelease { put_slots, release }) => {
            let permit = put_slots.acquire_owned().await.ok();
            release();
            permit
        }
        None => None,
    };
    let key = layout::nar_key_unique(&info.nar_hash, compression, writer);
    match spilled {
        Spilled::Memory(bytes) => sink.put(&key, bytes, content_type::NAR).await?,
        Spilled::File(file) => sink.put_file(&key, &file, content_type::NAR).await?,
    }
    Ok(stored(key, compression, measured))
}

/// Uploads the NAR part by part while it is being compressed.
async fn store_in_parts(
    sink: &Sink,
    info: &PathInfo,
    settings: StreamSettings,
    progress: Arc<StreamProgress>,
) -> Result<StoredNar, UploadError> {
    let part_size = part_size_for(info.nar_size, settings.part_size);
    let workers = workers_for(info, &settings);
    let (parts_tx, mut parts_rx) = mpsc::channel::<Part>(1);
    let source = PathBuf::from(info.path.to_absolute());
    let (splitter, recycler) = PartSplitter::new(
        part_size,
        compressed_bound(info.nar_size),
        parts_tx,
        Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
        tokio::runtime::Handle::current(),
    );
    let (compression, writer) = (settings.compression, settings.writer);
    let expected = Expected::of(info);
    let producer = Producer::spawn(&info.path.to_absolute(), settings.background, move |stop| {
        let (measured, mut splitter) = produce(
            &source, &expected, &settings, workers, splitter, &progress, stop,
        )?;
        splitter
            .send(true)
            .map_err(|e| compressing_failed(&source, e))?;
        Ok((measured, ()))
    })?;

    let Some(first) = parts_rx.recv().await else {
        // The producer stopped before its first part: its error says why.
        finish_producer(producer, info).await?;
        return Err(UploadError::Internal {
            path: info.path.to_absolute(),
            detail: "the NAR stream ended without data".to_owned(),
        });
    };
    if first.last {
        // The whole object fits in one part: check it, then write it with one PUT.
        let (measured, ()) = finish_producer(producer, info).await?;
        let key = layout::nar_key_unique(&info.nar_hash, compression, writer);
        sink.put(&key, first.bytes, content_type::NAR).await?;
        return Ok(stored(key, compression, measured));
    }

    let key = layout::nar_key_unique(&info.nar_hash, compression, writer);
    let mut upload = match sink.start_upload(&key, content_type::NAR).await {
        Ok(upload) => upload,
        Err(error) => {
            drop(parts_rx);
            let _ = producer.join().await;
            return Err(error.into());
        }
    };
    let sent = send_parts(&mut upload, first, &mut parts_rx, &recycler).await;
    // Dropping the receiver makes a producer that is still writing stop at its next part.
    drop(parts_rx);
    let measured = finish_producer(producer, info).await;
    match (sent, measured) {
        (Ok(()), Ok((measured, ()))) => {
            upload.complete().await?;
            Ok(stored(key, compression, measured))
        }
        (Err(error), _) | (Ok(()), Err(error)) => {
            upload.abort().await;
            Err(error)
        }
    }
}

fn compressing_failed(source: &std::path::Path, error: io::Error) -> UploadError {
    UploadError::Resource {
        path: source.display().to_string(),
        what: "compressing the NAR failed",
        source: error,
    }
}

fn stored(key: String, compression: Compression, measured: Measured) -> StoredNar {
    StoredNar {
        key,
        compression,
        file_hash: measured.file_hash,
        file_size: measured.file_size,
        listing: measured.listing,
    }
}

/// Uploads the parts in order; each part's buffer goes back to the producer and its permit is
/// released as soon as its upload returns, so the producer fills the next part while this one
/// is on the wire.
async fn send_parts(
    upload: &mut MultipartUpload,
    first: Part,
    rest: &mut mpsc::Receiver<Part>,
    recycler: &Recycler,
) -> Result<(), UploadError> {
    let mut next = Some(first);
    while let Some(part) = next {
        let Part { bytes, permit, .. } = part;
        upload.put_part(bytes.clone()).await?;
        recycler.give_back(bytes);
        drop(permit);
        next = rest.recv().await;
    }
    Ok(())
}

/// Waits for the producer and checks what it measured against the store's record.
async fn finish_producer<T: Send + 'static>(
    producer: Producer<(Measured, T)>,
    info: &PathInfo,
) -> Result<(Measured, T), UploadError> {
    let (measured, output) = producer.join().await?;
    if measured.nar_hash != info.nar_hash || measured.nar_size != info.nar_size {
        return Err(Expected::of(info).mismatch(&measured.nar_hash, measured.nar_size));
    }
    Ok((measured, output))
}

/// The blocking side: NAR → hash → compress → hash → `output` (parts, or a whole object).
///
/// The compressor is told the NAR's size from the store's record. A NAR that turns out to have
/// another size is not compressed past that size (the compressor would refuse it): it is read to
/// the end for its hash, and reported as not matching the record.
fn produce<W: Write>(
    source: &std::path::Path,
    expected: &Expected,
    settings: &StreamSettings,
    workers: u32,
    output: W,
    progress: &StreamProgress,
    stop: &Stop,
) -> Result<(Measured, W), UploadError> {
    let path = source.display().to_string();
    let io_failed = |e: io::Error| compressing_failed(source, e);
    let compressed = HashingWriter::new(output);
    let encoder = Encoder::new(
        settings.compression,
        settings.level,
        workers,
        Some(expected.nar_size),
        compressed,
    )
    .map_err(io_failed)?;
    let mut nar_sink = HashingWriter::new(ProgressWriter {
        inner: encoder,
        progress,
        stop,
        room: expected.nar_size,
    });
    let nar_failed = |source| UploadError::Nar {
        path: path.clone(),
        source,
    };
    let listing = match settings.listing {
        None => {
            dump(source, &mut nar_sink).map_err(nar_failed)?;
            None
        }
        Some(listing_compression) => {
            let (_, listing) = nar::dump_with_listing(source, &mut nar_sink).map_err(nar_failed)?;
            Some(encode_listing(&listing, listing_compression).map_err(|e| {
                UploadError::Internal {
                    path: path.clone(),
                    detail: format!("compressing the listing failed: {e}"),
                }
            })?)
        }
    };
    let (progress_writer, nar_hash, nar_size) = nar_sink.finish();
    if nar_size != expected.nar_size {
        return Err(expected.mismatch(&nar_hash, nar_size));
    }
    let compressed = progress_writer.inner.finish().map_err(io_failed)?;
    let (output, file_hash, file_size) = compressed.finish();
    let measured = Measured {
        nar_hash,
        nar_size,
        file_hash,
        file_size,
        listing,
    };
    Ok((measured, output))
}

/// Writes the NAR of `source`: from the filesystem, or from the simulated store when one is
/// installed (feature `sim`).
fn dump<W: Write>(source: &std::path::Path, out: &mut W) -> Result<u64, nar::NarError> {
    #[cfg(feature = "sim")]
    if let Some(found) = crate::store::simulated::nar(&source.display().to_string()) {
        let missing = || io::Error::new(io::ErrorKind::NotFound, "not in the simulated store");
        let bytes = found.ok_or_else(|| nar::NarError::Io {
            path: source.to_owned(),
            source: missing(),
        })?;
        out.write_all(&bytes).map_err(|e| nar::NarError::Write {
            root: source.to_owned(),
            source: e,
        })?;
        return Ok(bytes.len() as u64);
    }
    nar::dump(source, out)
}

/// The listing as it is uploaded: compressed at the method's default level, on this thread.
fn encode_listing(listing: &[u8], compression: Compression) -> io::Result<Bytes> {
    let size = Some(listing.len() as u64);
    let mut encoder = Encoder::new(
        compression,
        compression.default_level(),
        0,
        size,
        Vec::new(),
    )?;
    encoder.write_all(listing)?;
    Ok(Bytes::from(encoder.finish()?))
}

mod progress_writer;

use progress_writer::ProgressWriter;

#[cfg(test)]
mod tests;
