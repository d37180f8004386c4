//! Cutting the compressed stream of one NAR into upload parts, on the blocking thread that
//! produces it, with the memory of the parts bounded.
//!
//! Invariants:
//! - **Fixed part size.** Every part but the last is exactly `part_size` bytes (R2 rejects a
//!   multipart upload whose parts differ, the last excepted).
//! - **Bounded memory.** A part holds a permit of the upload's semaphore from the moment the
//!   writer starts filling it until the consumer drops it (its upload returned); with
//!   [`PARTS_IN_FLIGHT`] permits, one part is being filled while one is being sent.
//! - **Buffers are reused.** The consumer hands each sent part's buffer back ([`Recycler`]),
//!   and the writer fills it again, so a NAR of any size allocates at most
//!   [`PARTS_IN_FLIGHT`] buffers instead of one per part (each fresh buffer of several MiB
//!   costs page faults, and churning them fragments the heap).
//! - **The last part is known.** A full part is sent only once more data arrives, so every
//!   part marked `last: false` has a successor.

use std::io::{self, Write};
use std::sync::{mpsc as std_mpsc, Arc};

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Parts of one upload that may exist at once: one being filled, one being sent.
pub const PARTS_IN_FLIGHT: usize = 2;

/// A slice of the compressed stream, with the permit that counts it against the memory bound.
pub struct Part {
    pub bytes: Bytes,
    pub last: bool,
    pub permit: OwnedSemaphorePermit,
}

/// Cuts a byte stream into parts of exactly `part_size` bytes (the last one shorter) and
/// hands each to the uploader. A full part is sent only once more data arrives, so every part
/// but the final one is known not to be last; before filling a part the splitter waits for a
/// permit, which the uploader releases when that part's upload returns.
pub struct PartSplitter {
    part_size: usize,
    capacity: usize,
    current: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    parts: mpsc::Sender<Part>,
    recycled: std_mpsc::Receiver<Vec<u8>>,
}

/// The consumer's side of buffer reuse: gives a sent part's buffer back to the writer.
pub struct Recycler(std_mpsc::Sender<Vec<u8>>);

impl Recycler {
    /// Returns the buffer behind `bytes`, if nobody else holds it any more (the upload
    /// dropped its copies); otherwise the writer simply allocates a new one.
    pub fn give_back(&self, bytes: Bytes) {
        if let Ok(buffer) = bytes.try_into_mut() {
            let mut buffer = Vec::from(buffer);
            buffer.clear();
            let _ = self.0.send(buffer);
        }
    }
}

impl PartSplitter {
    /// `capacity` is what a part's buffer reserves up front: the part size, or less when the
    /// whole stream is known to be smaller.
    pub fn new(
        part_size: u64,
        capacity: u64,
        parts: mpsc::Sender<Part>,
        permits: Arc<Semaphore>,
        runtime: tokio::runtime::Handle,
    ) -> (PartSplitter, Recycler) {
        let part_size = usize::try_from(part_size).unwrap_or(usize::MAX);
        let (recycle, recycled) = std_mpsc::channel();
        let splitter = PartSplitter {
            part_size,
            capacity: usize::try_from(capacity)
                .unwrap_or(usize::MAX)
                .min(part_size),
            current: Vec::new(),
            permit: None,
            permits,
            runtime,
            parts,
            recycled,
        };
        (splitter, Recycler(recycle))
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

    /// Hands over the part being filled; `last` marks the end of the stream.
    pub fn send(&mut self, last: bool) -> io::Result<()> {
        let permit = self.acquire()?;
        let part = Part {
            bytes: Bytes::from(std::mem::take(&mut self.current)),
            last,
            permit,
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
            // A buffer of a part sent earlier, or a new one reserved whole, so that a part is
            // never copied while it grows.
            self.current = self
                .recycled
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(self.capacity));
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

    /// A splitter of `part_size`-byte parts with `permits` parts in flight, on a runtime of
    /// its own; the receiver sees what it sends.
    fn splitter(
        part_size: u64,
        permits: usize,
    ) -> (
        tokio::runtime::Runtime,
        PartSplitter,
        Recycler,
        mpsc::Receiver<Part>,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (splitter, recycler) = PartSplitter::new(
            part_size,
            part_size,
            tx,
            Arc::new(Semaphore::new(permits)),
            runtime.handle().clone(),
        );
        (runtime, splitter, recycler, rx)
    }

    #[test]
    fn splitter_emits_equal_parts_and_marks_only_the_final_one_last() {
        let (_runtime, mut splitter, _recycler, mut rx) = splitter(10, 16);
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
        let (_runtime, mut splitter, _recycler, mut rx) = splitter(10, 2);
        splitter.write_all(&[1u8; 10]).unwrap();
        splitter.send(true).unwrap();
        drop(splitter);
        let part = rx.try_recv().unwrap();
        assert_eq!((part.bytes.len(), part.last), (10, true));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_sent_buffer_comes_back_to_the_writer_and_is_filled_again() {
        let (_runtime, mut splitter, recycler, mut rx) = splitter(4, 2);
        // Part 1 is sent when part 2 starts, so part 2 gets a new buffer; part 1's buffer,
        // handed back meanwhile, carries part 3.
        splitter.write_all(&[1u8; 4]).unwrap();
        splitter.write_all(&[2u8; 4]).unwrap();
        let first = rx.try_recv().unwrap();
        let address = first.bytes.as_ptr();
        let Part { bytes, permit, .. } = first;
        recycler.give_back(bytes);
        drop(permit);
        splitter.write_all(&[3u8; 2]).unwrap();
        splitter.send(true).unwrap();
        let _second = rx.try_recv().unwrap();
        let third = rx.try_recv().unwrap();
        assert_eq!(&third.bytes[..], &[3, 3]);
        assert_eq!(third.bytes.as_ptr(), address, "the first buffer was reused");
    }

    #[test]
    fn the_writer_waits_while_two_parts_are_unsent() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let permits = Arc::new(Semaphore::new(PARTS_IN_FLIGHT));
        let (mut splitter, _recycler) =
            PartSplitter::new(4, 4, tx, permits.clone(), runtime.handle().clone());
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
