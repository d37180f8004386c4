//! Why a path did not make it into the cache, and whether trying again can help.
//!
//! Invariant: a failure is permanent only when the same attempt would fail the same way
//! later (the path is gone or broken, the server refuses us). The machine running short of
//! something (open files, memory, threads, disk space) or an I/O error of the disk under the
//! store is transient: see [`io_class`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::error_chain;
use crate::format::nar::NarError;
use crate::format::store_path::StorePath;
use crate::sink::{ErrorClass, SinkError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot read the closure from the Nix store")]
    Store(#[source] StoreError),
    #[error("{path} is no longer valid in the store: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot serialize {path}")]
    Nar {
        path: String,
        #[source]
        source: NarError,
    },
    #[error(
        "NAR of {path} does not match the store's record (store: {expected_hash}, {expected_size} \
         bytes; read: {actual_hash}, {actual_size} bytes); upload aborted — run `nix-store --verify-path {path}`"
    )]
    NarMismatch {
        path: String,
        expected_hash: String,
        expected_size: u64,
        actual_hash: String,
        actual_size: u64,
    },
    #[error("{path}: {detail}")]
    Internal { path: String, detail: String },
    /// A resource of this machine failed us (a thread, the compressor's I/O); the error
    /// decides whether it may pass ([`io_class`]).
    #[error("{path}: {what}")]
    Resource {
        path: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot keep the compressed NAR of {path} until its upload: {detail}")]
    Spill { path: String, detail: String },
    #[error(
        "not publishing realisation {id}: the realisation it depends on, {dependency}, \
         is not in the cache yet"
    )]
    RealisationDependencyMissing { id: String, dependency: String },
    #[error(
        "not publishing realisation {id} (which another one depends on): its output {output} \
         is not in the cache, and not part of this upload (upload its closure)"
    )]
    RealisationOutputMissing { id: String, output: String },
    #[error(
        "not recording {path} as done this attempt: more realisations wait for their outputs \
         than the engine keeps ({bound}); it is retried"
    )]
    RealisationsOverflow { path: String, bound: usize },
    #[error(
        "{path} is not in the cache and the push filters keep it from uploads, but an upstream \
         cache that may serve it did not answer: it is skipped only once none serves it"
    )]
    UpstreamUnanswered { path: String },
    #[error("not publishing {path}: its reference {reference} {why}")]
    ReferenceMissing {
        path: String,
        reference: String,
        why: &'static str,
    },
}

impl UploadError {
    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UploadError::Sink(e) => e.retry_after,
            _ => None,
        }
    }

    /// Whether the same upload may succeed if tried again later.
    pub fn class(&self) -> ErrorClass {
        match self {
            UploadError::Sink(e) => e.class,
            // `nix` missing, the nix-daemon restarting, "database is locked": the store is
            // there and will answer later.
            // A full disk under the temporary files: space comes back.
            UploadError::Store(_)
            | UploadError::Spill { .. }
            | UploadError::ReferenceMissing { .. }
            | UploadError::UpstreamUnanswered { .. }
            | UploadError::RealisationDependencyMissing { .. }
            | UploadError::RealisationOutputMissing { .. }
            | UploadError::RealisationsOverflow { .. } => ErrorClass::Transient,
            UploadError::Nar { source, .. } => nar_class(source),
            UploadError::Resource { source, .. } => io_class(source),
            UploadError::Invalid { .. }
            | UploadError::NarMismatch { .. }
            | UploadError::Internal { .. } => ErrorClass::Permanent,
        }
    }
}

/// Reading the tree fails transiently when the I/O error does; a tree the NAR format cannot
/// hold, or a file that changed under us, fails the same way every time.
fn nar_class(error: &NarError) -> ErrorClass {
    match error {
        NarError::Io { source, .. } | NarError::Write { source, .. } => io_class(source),
        _ => ErrorClass::Permanent,
    }
}

/// Whether an I/O error may pass: the machine short of open files, memory, threads or disk
/// space, an interrupted or timed-out call, or an I/O error of the device (a flaky disk, a
/// network filesystem) may; anything else (the file is gone, access denied, not a directory)
/// fails the same way next time.
pub fn io_class(error: &io::Error) -> ErrorClass {
    use nix::libc;
    const TRANSIENT_ERRNOS: [i32; 12] = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOMEM,
        libc::ENOBUFS,
        libc::EAGAIN,
        libc::EINTR,
        libc::EIO,
        libc::EBUSY,
        libc::ETIMEDOUT,
        libc::ENOSPC,
        libc::EDQUOT,
        libc::ESTALE,
    ];
    if let Some(errno) = error.raw_os_error() {
        return if TRANSIENT_ERRNOS.contains(&errno) {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
    }
    match error.kind() {
        io::ErrorKind::OutOfMemory
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::TimedOut
        | io::ErrorKind::StorageFull
        | io::ErrorKind::QuotaExceeded
        | io::ErrorKind::ResourceBusy => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// The outcome of a failed top path, as its owner records it: one line, the retry class, and a
/// server's `Retry-After`. For a path that failed because something in its closure did, the
/// line names the path at the bottom of that chain and its error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn of(error: &UploadError) -> Failure {
        Failure {
            class: error.class(),
            message: error_chain(error),
            retry_after: error.retry_after(),
        }
    }

    /// A top path's failure: its own error's class (a missing reference may come back), with
    /// the message and `Retry-After` of the failure at the bottom of the chain (`root`: the
    /// path that failed first, and its error).
    pub(super) fn of_top(
        top: &StorePath,
        error: &UploadError,
        root: Option<&(StorePath, Arc<UploadError>)>,
    ) -> Failure {
        let mut failure = Failure::of(error);
        if let Some((failed_path, root_error)) = root {
            failure.message = format!(
                "{failed_path} (needed by {top}): {}",
                error_chain(root_error.as_ref())
            );
            failure.retry_after = root_error.retry_after();
        }
        failure
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use nix::libc;

    use super::*;

    fn reading(source: io::Error) -> UploadError {
        UploadError::Nar {
            path: "/nix/store/x".to_owned(),
            source: NarError::Io {
                path: PathBuf::from("/nix/store/x/file"),
                source,
            },
        }
    }

    #[test]
    fn the_machine_running_short_while_reading_the_store_is_transient() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EIO,
            libc::EAGAIN,
        ] {
            let error = reading(io::Error::from_raw_os_error(errno));
            assert_eq!(error.class(), ErrorClass::Transient, "{error:?}");
        }
        let error = reading(io::Error::from(io::ErrorKind::OutOfMemory));
        assert_eq!(error.class(), ErrorClass::Transient);
    }

    #[test]
    fn a_store_path_that_cannot_be_read_for_good_is_permanent() {
        for errno in [libc::ENOENT, libc::EACCES, libc::ENOTDIR, libc::ELOOP] {
            let error = reading(io::Error::from_raw_os_error(errno));
            assert_eq!(error.class(), ErrorClass::Permanent, "{error:?}");
        }
        let error = UploadError::Nar {
            path: "/nix/store/x".to_owned(),
            source: NarError::UnsupportedFileType {
                path: PathBuf::from("/nix/store/x/fifo"),
                kind: "FIFO",
            },
        };
        assert_eq!(error.class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_thread_that_cannot_be_started_is_transient() {
        // What std::thread::Builder::spawn returns when the process is at its thread limit.
        let error = UploadError::Resource {
            path: "/nix/store/x".to_owned(),
            what: "cannot start a thread for the NAR",
            source: io::Error::from_raw_os_error(libc::EAGAIN),
        };
        assert_eq!(error.class(), ErrorClass::Transient);
        assert!(crate::error_chain(&error).contains("cannot start a thread"));
    }
}
