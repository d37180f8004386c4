//! One NAR from the store to the target, streamed: the NAR is serialized, hashed, compressed
//! and cut into fixed-size parts on a blocking thread, while the async side uploads each part
//! as it arrives.
//!
//! Invariants:
//! - **Bounded memory.** At most two parts of one upload exist at once (one being filled, one
//!   being sent), whatever the NAR's size: a part holds one of two permits from the moment the
//!   writer starts filling it until its upload returns. Compression runs single-threaded per
//!   NAR (parallelism comes from uploading `jobs` NARs at once), so zstd's buffers stay small.
//! - **Fixed part size.** Every part but the last is exactly `part_size` bytes, as R2 demands;
//!   `part_size` is raised for huge NARs so that no upload needs more than 10,000 parts.
//! - **Nothing unverified becomes visible.** The object is completed (or, when it fits in one
//!   part, written at all) only after the NarHash and NarSize computed from the stream equal the
//!   ones the store recorded; on a mismatch or any error the multipart upload is aborted.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::compress::{Compression, Encoder};
use super::progress::Progress;
use super::UploadError;
use crate::format::hash::{HashingWriter, Sha256};
use crate::format::nar;
use crate::store::PathInfo;
use crate::target::{content_type, Target, Upload};

/// The part size of multipart uploads, unless a NAR would need more than [`MAX_PARTS`].
/// At least 5 MiB (S3's and R2's minimum); memory holds at most two parts per upload.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// S3 caps a multipart upload at this many parts.
const MAX_PARTS: u64 = 10_000;
/// Parts of one upload that may exist at once.
const PARTS_IN_FLIGHT: usize = 2;

/// How NARs are encoded and cut.
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    pub compression: Compression,
    pub level: i32,
    /// The part size for NARs small enough to need fewer than 10,000 parts of it.
    pub base_part_size: u64,
}

/// What the stream measured: the narinfo's FileHash/FileSize and the checked NarHash/NarSize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamedNar {
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub file_hash: Sha256,
    pub file_size: u64,
}

/// The object key of a NAR: named by the NarHash the store already knows, so the upload can
/// start before compression ends.
pub fn nar_key(info: &PathInfo, compression: Compression) -> String {
    format!(
        "nar/{}{}",
        info.nar_hash.to_nix32(),
        compression.nar_extension()
    )
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

/// Streams `info`'s NAR to `key` on `target` and returns what was measured.
pub async fn upload_nar(
    target: &Target,
    key: &str,
    info: &PathInfo,
    settings: StreamSettings,
    progress: Arc<Progress>,
) -> Result<StreamedNar, UploadError> {
    let part_size = part_size_for(info.nar_size, settings.base_part_size);
    let (parts_tx, mut parts_rx) = mpsc::channel::<Part>(1);
    let source = PathBuf::from(info.path.to_absolute());
    let permits = Arc::new(Semaphore::new(PARTS_IN_FLIGHT));
    let runtime = tokio::runtime::Handle::current();
    let producer = tokio::task::spawn_blocking(move || {
        let splitter = PartSplitter::new(part_size, parts_tx, permits, runtime);
        produce(source, settings, splitter, &progress)
    });

    let Some(first) = parts_rx.recv().await else {
        // The producer stopped before its first part: its error says why.
        finish_producer(producer, info).await?;
        return Err(UploadError::Internal {
            path: info.path.to_absolute(),
            detail: "the NAR stream ended without data".to_owned(),
        });
    };
    if first.last {
        // The whole object fits in one part: check it, then write it in one request.
        let measured = finish_producer(producer, info).await?;
        target.put(key, first.bytes, content_type::NAR).await?;
        return Ok(measured);
    }

    let mut upload = match target.start_upload(key, content_type::NAR).await {
        Ok(upload) => upload,
        Err(error) => {
            drop(parts_rx);
            let _ = producer.await;
            return Err(error.into());
        }
    };
    let sent = send_parts(&mut upload, first, &mut parts_rx).await;
    // Dropping the receiver makes a producer that is still writing stop at its next part.
    drop(parts_rx);
    let measured = finish_producer(producer, info).await;
    match (sent, measured) {
        (Ok(()), Ok(measured)) => {
            upload.complete().await?;
            Ok(measured)
        }
        (Err(error), _) | (Ok(()), Err(error)) => {
            upload.abort().await;
            Err(error)
        }
    }
}

/// A slice of the compressed stream, with the permit that counts it against the memory bound.
struct Part {
    bytes: Bytes,
    last: bool,
    _permit: OwnedSemaphorePermit,
}

async fn send_parts(
    upload: &mut Upload,
    first: Part,
    rest: &mut mpsc::Receiver<Part>,
) -> Result<(), UploadError> {
    upload.put_part(first.bytes).await?;
    while let Some(part) = rest.recv().await {
        upload.put_part(part.bytes).await?;
    }
    Ok(())
}

/// Waits for the producer and checks what it measured against the store's record.
async fn finish_producer(
    producer: tokio::task::JoinHandle<Result<StreamedNar, UploadError>>,
    info: &PathInfo,
) -> Result<StreamedNar, UploadError> {
    let measured = producer.await.map_err(|e| UploadError::Internal {
        path: info.path.to_absolute(),
        detail: format!("NAR writer thread failed: {e}"),
    })??;
    if measured.nar_hash != info.nar_hash || measured.nar_size != info.nar_size {
        return Err(UploadError::NarMismatch {
            path: info.path.to_absolute(),
            expected_hash: info.nar_hash.to_string(),
            expected_size: info.nar_size,
            actual_hash: measured.nar_hash.to_string(),
            actual_size: measured.nar_size,
        });
    }
    Ok(measured)
}

/// The blocking side: NAR → hash → compress → hash → fixed-size parts → channel.
fn produce(
    source: PathBuf,
    settings: StreamSettings,
    splitter: PartSplitter,
    progress: &Progress,
) -> Result<StreamedNar, UploadError> {
    let path = source.display().to_string();
    let io_failed = |e: io::Error| UploadError::Internal {
        path: path.clone(),
        detail: format!("compressing the NAR failed: {e}"),
    };
    let compressed = HashingWriter::new(splitter);
    let encoder =
        Encoder::new(settings.compression, settings.level, compressed).map_err(io_failed)?;
    let mut nar_sink = HashingWriter::new(ProgressWriter {
        inner: encoder,
        progress,
    });
    nar::dump(&source, &mut nar_sink).map_err(|source| UploadError::Nar {
        path: path.clone(),
        source,
    })?;
    let (progress_writer, nar_hash, nar_size) = nar_sink.finish();
    let compressed = progress_writer.inner.finish().map_err(io_failed)?;
    let (mut splitter, file_hash, file_size) = compressed.finish();
    splitter.send(true).map_err(io_failed)?;
    Ok(StreamedNar {
        nar_hash,
        nar_size,
        file_hash,
        file_size,
    })
}

/// Counts NAR bytes for the progress display as they pass.
struct ProgressWriter<'a, W> {
    inner: W,
    progress: &'a Progress,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.progress.add_nar_bytes(written as u64);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts a byte stream into parts of exactly `part_size` bytes (the last one shorter) and
/// hands each to the uploader. A full part is sent only once more data arrives, so every part
/// but the final one is known not to be last; before filling a part the splitter waits for a
/// permit, which the uploader releases when that part's upload returns.
struct PartSplitter {
    part_size: usize,
    current: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    parts: mpsc::Sender<Part>,
}

impl PartSplitter {
    fn new(
        part_size: u64,
        parts: mpsc::Sender<Part>,
        permits: Arc<Semaphore>,
        runtime: tokio::runtime::Handle,
    ) -> PartSplitter {
        let part_size = usize::try_from(part_size).unwrap_or(usize::MAX);
        PartSplitter {
            part_size,
            current: Vec::new(),
            permit: None,
            permits,
            runtime,
            parts,
        }
    }

    fn stopped() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the upload was stopped")
    }

    fn acquire(&mut self) -> io::Result<OwnedSemaphorePermit> {
        match self.permit.take() {
            Some(permit) => Ok(permit),
            None => self
                .runtime
                .block_on(self.permits.clone().acquire_owned())
                .map_err(|_| Self::stopped()),
        }
    }

    fn send(&mut self, last: bool) -> io::Result<()> {
        let permit = self.acquire()?;
        let part = Part {
            bytes: Bytes::from(std::mem::take(&mut self.current)),
            last,
            _permit: permit,
        };
        self.parts.blocking_send(part).map_err(|_| Self::stopped())
    }
}

impl Write for PartSplitter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.len() == self.part_size {
            self.send(false)?;
        }
        if self.permit.is_none() && self.current.is_empty() {
            self.permit = Some(self.acquire()?);
        }
        if self.current.capacity() == 0 {
            // Reserved once at the full part size, so a part is never copied while it grows;
            // a small NAR's buffer costs only the pages it writes.
            self.current.reserve_exact(self.part_size);
        }
        let room = self.part_size - self.current.len();
        let taken = room.min(buf.len());
        self.current.extend_from_slice(&buf[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_stays_at_base_for_ordinary_nars() {
        assert_eq!(part_size_for(100 << 20, 8 << 20), 8 << 20);
        assert_eq!(part_size_for(1, 8 << 20), 8 << 20);
    }

    #[test]
    fn huge_nars_get_parts_large_enough_for_ten_thousand_parts() {
        let nar_size = 200u64 << 30;
        let part = part_size_for(nar_size, 8 << 20);
        assert!(
            compressed_bound(nar_size).div_ceil(part) <= MAX_PARTS,
            "{part}"
        );
        assert_eq!(part % (1 << 20), 0);
    }

    #[test]
    fn splitter_emits_equal_parts_and_marks_only_the_final_one_last() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let permits = Arc::new(Semaphore::new(16));
        let mut splitter = PartSplitter::new(10, tx, permits, runtime.handle().clone());
        splitter.write_all(&[7u8; 35]).unwrap();
        splitter.send(true).unwrap();
        drop(splitter);
        let mut parts = Vec::new();
        while let Ok(part) = rx.try_recv() {
            parts.push((part.bytes.len(), part.last));
        }
        assert_eq!(
            parts,
            vec![(10, false), (10, false), (10, false), (5, true)]
        );
    }

    #[test]
    fn a_stream_of_exactly_one_part_is_sent_once_as_last() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut splitter = PartSplitter::new(
            10,
            tx,
            Arc::new(Semaphore::new(2)),
            runtime.handle().clone(),
        );
        splitter.write_all(&[1u8; 10]).unwrap();
        splitter.send(true).unwrap();
        drop(splitter);
        let part = rx.try_recv().unwrap();
        assert_eq!((part.bytes.len(), part.last), (10, true));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_writer_waits_while_two_parts_are_unsent() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let permits = Arc::new(Semaphore::new(PARTS_IN_FLIGHT));
        let mut splitter = PartSplitter::new(4, tx, permits.clone(), runtime.handle().clone());
        let writer = std::thread::spawn(move || {
            splitter.write_all(&[0u8; 40]).unwrap();
            splitter.send(true).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Two parts exist (one sent, one being filled); the writer is blocked on the third.
        assert_eq!(permits.available_permits(), 0);
        assert!(!writer.is_finished());
        let mut received = 0;
        while received < 10 {
            if let Ok(part) = rx.try_recv() {
                received += 1;
                drop(part);
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        writer.join().unwrap();
    }
}
