//! Streaming NAR serialization of a filesystem tree, byte-identical to `nix-store --dump`.
//!
//! # Format
//!
//! Every integer is a u64, little-endian. A string token `str(s)` is `u64 len`, the bytes,
//! then zero padding to a multiple of 8 ([`push_str`], [`padding_len`]).
//!
//! ```text
//! archive ::= str("nix-archive-1") node
//! node    ::= str("(") str("type") str("regular") [ str("executable") str("") ]
//!                 str("contents") u64(size) bytes pad str(")")
//!           | str("(") str("type") str("symlink") str("target") str(target) str(")")
//!           | str("(") str("type") str("directory") { entry } str(")")
//! entry   ::= str("entry") str("(") str("name") str(name) str("node") node str(")")
//! ```
//!
//! # Rules and where they are enforced
//!
//! | rule | enforced by |
//! |---|---|
//! | the root may be a file, a symlink or a directory; nothing is followed | `Dumper::node` (`symlink_metadata`) |
//! | FIFOs, sockets and devices make the dump fail, naming the file | `Dumper::node` → [`NarError::UnsupportedFileType`] |
//! | executable iff the owner-execute bit (`0o100`) is set; no other metadata | `Dumper::regular` |
//! | the size in the header is the metadata size, and the file must yield exactly that many bytes | `Dumper::regular`, `copy_exact` → [`NarError::FileShrank`] / [`NarError::FileGrew`] |
//! | a symlink target is the raw bytes of `readlink` | `Dumper::node` |
//! | entries in strictly ascending raw-byte order (not locale, not UTF-8 aware) | `Dumper::directory` sorts by `OsStrExt::as_bytes`, then rejects duplicates |
//! | entry names are non-empty, not `.`/`..`, contain no `/` or NUL | [`check_entry_name`] → [`NarError::InvalidEntryName`] |
//!
//! These hold in release builds: a reader (Nix's included) rejects an archive that breaks
//! them, so the writer returns an error instead of producing one.
//!
//! # Streaming and buffering
//!
//! File contents go through one fixed [`CONTENT_BUF_SIZE`] buffer, so memory does not grow
//! with file size. Header tokens are gathered in a small pending buffer and written in one
//! call just before file contents (or when it fills), so the caller's writer sees few, large
//! writes; the caller still decides whether to add a `BufWriter`. Directory recursion keeps
//! one sorted name list per level, so memory grows with depth × directory width only.
//!
//! On error, whatever was already written to `out` is an incomplete archive: the caller must
//! discard it (an uploader aborts the upload).
//!
//! With [`dump_with_listing`], the `.ls` listing is built from the same walk, recording each
//! file's offset as its contents are written; it is held in memory until the end (its size
//! grows with the number of entries, not with file sizes).
//!
//! macOS's `use-case-hack` renaming is not implemented: narpush targets Linux stores.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::listing::ListingWriter;

/// Size of the buffer file contents are streamed through.
pub const CONTENT_BUF_SIZE: usize = 64 * 1024;
/// Pending header bytes are written out once they reach this size.
const PENDING_FLUSH_AT: usize = 8 * 1024;

/// Why a tree could not be serialized. Every variant names the file concerned.
#[derive(Debug, Error)]
pub enum NarError {
    /// Reading the tree failed (metadata, directory listing, link target or contents).
    #[error("cannot read '{}'", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The caller's writer failed; `root` is the tree being archived.
    #[error("writing the NAR of '{}' failed", root.display())]
    Write {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A FIFO, socket or device: Nix cannot archive these either.
    #[error("'{}' is a {kind}, which a NAR cannot contain", path.display())]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    /// A name no NAR reader accepts (only a broken or exotic filesystem yields one).
    #[error("directory '{}' has an entry named {:?}, which a NAR cannot contain", dir.display(), name)]
    InvalidEntryName { dir: PathBuf, name: OsString },
    /// The same name twice in one listing (a broken filesystem); readers reject it.
    #[error("directory '{}' lists the entry {:?} twice", dir.display(), name)]
    DuplicateEntry { dir: PathBuf, name: OsString },
    /// The file ended before the size already written into the header.
    #[error("'{}' shrank while being archived: expected {expected} bytes, got {actual}", path.display())]
    FileShrank {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The file had more bytes than the size already written into the header.
    #[error("'{}' grew while being archived: it has more than the expected {expected} bytes", path.display())]
    FileGrew { path: PathBuf, expected: u64 },
    /// The path named a different inode when opened than when its metadata was read.
    #[error("'{}' was replaced while being archived", path.display())]
    FileReplaced { path: PathBuf },
}

/// Writes the NAR serialization of `path` to `out` and returns the number of bytes written.
pub fn dump<W: Write>(path: &Path, out: &mut W) -> Result<u64, NarError> {
    let (written, _) = dump_inner(path, out, None)?;
    Ok(written)
}

/// Like [`dump`], and also returns the tree's `.ls` listing (see [`super::listing`]), built in
/// the same pass: every file is read once.
pub fn dump_with_listing<W: Write>(path: &Path, out: &mut W) -> Result<(u64, Vec<u8>), NarError> {
    let (written, listing) = dump_inner(path, out, Some(ListingWriter::new()))?;
    Ok((
        written,
        listing.map(ListingWriter::finish).unwrap_or_default(),
    ))
}

fn dump_inner<W: Write>(
    path: &Path,
    out: &mut W,
    listing: Option<ListingWriter>,
) -> Result<(u64, Option<ListingWriter>), NarError> {
    let mut dumper = Dumper {
        out,
        root: path,
        pending: Vec::with_capacity(PENDING_FLUSH_AT + 512),
        content_buf: vec![0u8; CONTENT_BUF_SIZE],
        written: 0,
        listing,
    };
    push_str(&mut dumper.pending, b"nix-archive-1");
    dumper.node(path)?;
    dumper.flush_pending()?;
    Ok((dumper.written, dumper.listing))
}

/// Number of zero bytes that pad a `len`-byte string to a multiple of 8.
pub fn padding_len(len: u64) -> usize {
    // The remainder is below 8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as usize
}

/// Appends a little-endian u64.
pub fn push_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(&n.to_le_bytes());
}

/// Appends the string token `str(s)`: length, bytes, zero padding.
pub fn push_str(buf: &mut Vec<u8>, s: &[u8]) {
    push_u64(buf, s.len() as u64);
    buf.extend_from_slice(s);
    buf.resize(buf.len() + padding_len(s.len() as u64), 0);
}

/// Checks that `name` may appear as a directory entry in a NAR.
pub fn check_entry_name(dir: &Path, name: &OsStr) -> Result<(), NarError> {
    let bytes = name.as_bytes();
    let bad = bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/');
    if bad || bytes.contains(&0) {
        return Err(NarError::InvalidEntryName {
            dir: dir.to_owned(),
            name: name.to_os_string(),
        });
    }
    Ok(())
}

/// Copies exactly `expected` bytes from `reader` to `out` through `buf`, failing if the
/// reader yields fewer or more. Returns the write error separately from read errors so the
/// caller can attribute each to the right side.
fn copy_exact<R: Read, W: Write>(
    path: &Path,
    reader: &mut R,
    expected: u64,
    buf: &mut [u8],
    out: &mut W,
) -> Result<(), CopyError> {
    let mut copied: u64 = 0;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(CopyError::Nar(NarError::Io {
                    path: path.to_owned(),
                    source,
                }))
            }
        };
        if copied + n as u64 > expected {
            return Err(CopyError::Nar(NarError::FileGrew {
                path: path.to_owned(),
                expected,
            }));
        }
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        copied += n as u64;
    }
    if copied != expected {
        return Err(CopyError::Nar(NarError::FileShrank {
            path: path.to_owned(),
            expected,
            actual: copied,
        }));
    }
    Ok(())
}

/// The two ways [`copy_exact`] fails: the source (already a [`NarError`]) or the sink.
#[derive(Debug)]
enum CopyError {
    Nar(NarError),
    Write(io::Error),
}

struct Dumper<'a, W> {
    out: &'a mut W,
    root: &'a Path,
    pending: Vec<u8>,
    content_buf: Vec<u8>,
    written: u64,
    listing: Option<ListingWriter>,
}

impl<W: Write> Dumper<'_, W> {
    fn write_error(&self, source: io::Error) -> NarError {
        NarError::Write {
            root: self.root.to_owned(),
            source,
        }
    }

    fn flush_pending(&mut self) -> Result<(), NarError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.out.write_all(&self.pending) {
            return Err(self.write_error(e));
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn maybe_flush(&mut self) -> Result<(), NarError> {
        if self.pending.len() >= PENDING_FLUSH_AT {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn node(&mut self, path: &Path) -> Result<(), NarError> {
        let meta = fs::symlink_metadata(path).map_err(|source| io_error(path, source))?;
        let file_type = meta.file_type();
        push_str(&mut self.pending, b"(");
        push_str(&mut self.pending, b"type");
        if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(|source| io_error(path, source))?;
            push_str(&mut self.pending, b"symlink");
            push_str(&mut self.pending, b"target");
            push_str(&mut self.pending, target.as_os_str().as_bytes());
            if let Some(listing) = &mut self.listing {
                listing.symlink(target.as_os_str().as_bytes());
            }
        } else if file_type.is_file() {
            self.regular(path, &meta)?;
        } else if file_type.is_dir() {
            self.directory(path)?;
        } else {
            return Err(NarError::UnsupportedFileType {
                path: path.to_owned(),
                kind: describe_file_type(&meta),
            });
        }
        push_str(&mut self.pending, b")");
        self.maybe_flush()
    }

    fn regular(&mut self, path: &Path, meta: &Metadata) -> Result<(), NarError> {
        let size = meta.len();
        // Open before writing the header, so an unreadable file fails before its header.
        let mut file = File::open(path).map_err(|source| io_error(path, source))?;
        // `File::open` follows symlinks; if the path was swapped since `symlink_metadata`,
        // the inode differs and the header we are about to write would be wrong.
        let opened = file.metadata().map_err(|source| io_error(path, source))?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(NarError::FileReplaced {
                path: path.to_owned(),
            });
        }

        push_str(&mut self.pending, b"regular");
        let executable = meta.mode() & 0o100 != 0;
        if executable {
            push_str(&mut self.pending, b"executable");
            push_str(&mut self.pending, b"");
        }
        push_str(&mut self.pending, b"contents");
        push_u64(&mut self.pending, size);
        self.flush_pending()?;
        if let Some(listing) = &mut self.listing {
            // Everything before the contents is written now: `written` is their offset.
            listing.regular(size, executable, self.written);
        }

        let result = copy_exact(path, &mut file, size, &mut self.content_buf, self.out);
        match result {
            Ok(()) => {}
            Err(CopyError::Nar(e)) => return Err(e),
            Err(CopyError::Write(e)) => return Err(self.write_error(e)),
        }
        self.written += size;
        self.pending
            .resize(self.pending.len() + padding_len(size), 0);
        Ok(())
    }

    fn directory(&mut self, path: &Path) -> Result<(), NarError> {
        push_str(&mut self.pending, b"directory");
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(|source| io_error(path, source))? {
            let entry = entry.map_err(|source| io_error(path, source))?;
            let name = entry.file_name();
            check_entry_name(path, &name)?;
            names.push(name);
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(NarError::DuplicateEntry {
                dir: path.to_owned(),
                name: pair[0].clone(),
            });
        }

        if let Some(listing) = &mut self.listing {
            listing.start_directory();
        }
        for name in names {
            if let Some(listing) = &mut self.listing {
                listing.entry(name.as_bytes());
            }
            push_str(&mut self.pending, b"entry");
            push_str(&mut self.pending, b"(");
            push_str(&mut self.pending, b"name");
            push_str(&mut self.pending, name.as_bytes());
            push_str(&mut self.pending, b"node");
            self.node(&path.join(&name))?;
            push_str(&mut self.pending, b")");
        }
        if let Some(listing) = &mut self.listing {
            listing.end_directory();
        }
        Ok(())
    }
}

fn io_error(path: &Path, source: io::Error) -> NarError {
    NarError::Io {
        path: path.to_owned(),
        source,
    }
}

fn describe_file_type(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "file of unknown type"
    }
}

#[cfg(test)]
mod tests;
