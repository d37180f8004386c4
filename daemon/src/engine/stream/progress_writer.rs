//! The writer between the NAR dump and the compressor: it counts progress, honours a stop,
//! and never passes on more bytes than the compressor was promised.

use std::io::{self, Write};

use super::super::producer::Stop;
use super::super::progress::StreamProgress;

/// Counts NAR bytes for progress reports as they pass, stops the stream once the upload was
/// cancelled, and passes on no more than `room` bytes (the size the compressor was promised):
/// the rest is only counted and hashed, and then reported as a mismatch.
pub(super) struct ProgressWriter<'a, W> {
    pub inner: W,
    pub progress: &'a StreamProgress,
    pub stop: &'a Stop,
    pub room: u64,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stop.check()?;
        if buf.len() as u64 > self.room {
            self.room = 0;
            return Ok(buf.len());
        }
        let written = self.inner.write(buf)?;
        self.room -= written as u64;
        self.progress.add(written as u64);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
