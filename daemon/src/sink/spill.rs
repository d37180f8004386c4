//! The compressed stream of one NAR kept whole until it is uploaded with one PUT: in memory
//! while it fits in one part, in an unnamed temporary file beyond that.
//!
//! One PUT instead of a multipart upload means one request instead of several (R2 bills each),
//! and a server that reads the bytes once (a multipart upload is stored part by part and joined
//! again when it completes).
//!
//! Invariants:
//! - **Bounded memory**: at most `memory_limit` bytes are held; the rest goes to the file.
//! - **Nothing left behind**: the file is created with `O_TMPFILE` (no name in the directory),
//!   so it disappears when the last descriptor closes, whether the process ends or crashes.
//! - **A failing disk is told apart from a failing NAR**: a write the temporary file refused
//!   (a full disk) is recorded in [`SpillFailure`], so the upload is retried later instead of
//!   failing the path.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// A writer that keeps what it is given in memory up to a limit, then in a temporary file.
pub struct SpillWriter {
    dir: PathBuf,
    memory_limit: usize,
    buffer: Vec<u8>,
    file: Option<File>,
    len: u64,
    failure: SpillFailure,
}

/// Why the temporary file failed, once it did (shared with whoever waits for the writer).
#[derive(Clone, Debug, Default)]
pub struct SpillFailure(Arc<OnceLock<String>>);

impl SpillFailure {
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// What a [`SpillWriter`] holds once the stream is complete.
#[derive(Debug)]
pub enum Spilled {
    Memory(Bytes),
    File(SpillFile),
}

/// A complete stream in an unnamed temporary file.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    len: u64,
}

impl SpillFile {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A path that opens this file again from the start, for as long as `self` lives (the
    /// file has no name of its own): each attempt of an upload reads it anew.
    pub fn reopen_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

impl SpillWriter {
    /// Spills into an unnamed file in `dir` once more than `memory_limit` bytes were written.
    /// The memory is reserved at once (the pages are touched only as they fill), so the buffer
    /// is never copied to grow.
    pub fn new(dir: &Path, memory_limit: usize) -> SpillWriter {
        SpillWriter {
            dir: dir.to_owned(),
            memory_limit,
            buffer: Vec::with_capacity(memory_limit),
            file: None,
            len: 0,
            failure: SpillFailure::default(),
        }
    }

    /// Set once a write to the temporary file (or its creation) failed.
    pub fn failure(&self) -> SpillFailure {
        self.failure.clone()
    }

    /// The stream as written; a file is flushed to the kernel (not synced: it is read back,
    /// never kept).
    pub fn finish(self) -> io::Result<Spilled> {
        match self.file {
            None => Ok(Spilled::Memory(Bytes::from(self.buffer))),
            Some(file) => Ok(Spilled::File(SpillFile {
                file,
                len: self.len,
            })),
        }
    }

    /// Moves what is in memory to a new temporary file (making the directory again if it was
    /// removed since the start).
    fn spill(&mut self) -> io::Result<&mut File> {
        let mut file = std::fs::create_dir_all(&self.dir)
            .and_then(|()| tempfile::tempfile_in(&self.dir))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create a temporary file in {}: {e}",
                        self.dir.display()
                    ),
                )
            })?;
        file.write_all(&self.buffer)?;
        self.buffer = Vec::new();
        Ok(self.file.insert(file))
    }

    fn write_inner(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None if self.buffer.len() + buf.len() <= self.memory_limit => {
                self.buffer.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.spill()?.write(buf),
        }
    }
}

impl Write for SpillWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.write_inner(buf).inspect_err(|e| {
            let _ = self.failure.0.set(e.to_string());
        })?;
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_within_the_limit_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SpillWriter::new(dir.path(), 10);
        writer.write_all(b"0123456789").unwrap();
        match writer.finish().unwrap() {
            Spilled::Memory(bytes) => assert_eq!(&bytes[..], b"0123456789"),
            Spilled::File(file) => panic!("spilled {} bytes", file.len()),
        }
    }

    #[test]
    fn a_longer_stream_is_read_back_whole_from_a_file_without_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SpillWriter::new(dir.path(), 10);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        for chunk in data.chunks(7) {
            writer.write_all(chunk).unwrap();
        }
        let Spilled::File(file) = writer.finish().unwrap() else {
            panic!("100,000 bytes stayed in memory");
        };
        assert_eq!(file.len(), data.len() as u64);
        assert_eq!(std::fs::read(file.reopen_path()).unwrap(), data);
        assert_eq!(
            std::fs::read(file.reopen_path()).unwrap(),
            data,
            "read twice"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "the temporary file has a name: {names:?}");
    }

    #[test]
    fn a_directory_that_cannot_hold_the_file_is_named_in_the_error_and_recorded() {
        let not_a_dir = tempfile::NamedTempFile::new().unwrap();
        let dir = not_a_dir.path().join("spill");
        let mut writer = SpillWriter::new(&dir, 1);
        let failure = writer.failure();
        assert_eq!(failure.get(), None);
        let error = writer.write_all(b"too long").unwrap_err();
        assert!(
            error.to_string().contains(&*dir.to_string_lossy()),
            "{error}"
        );
        assert_eq!(failure.get(), Some(error.to_string().as_str()));
    }

    #[test]
    fn a_directory_removed_since_the_start_is_made_again() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("tmp");
        let mut writer = SpillWriter::new(&dir, 1);
        writer.write_all(b"more than one byte").unwrap();
        assert!(matches!(writer.finish().unwrap(), Spilled::File(_)));
        assert!(dir.is_dir());
    }
}
