//! Why a path did not make it into the cache, and whether trying again can help.

use std::time::Duration;

use crate::error_chain;
use crate::format::nar::NarError;
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
    #[error("cannot keep the compressed NAR of {path} until its upload: {detail}")]
    Spill { path: String, detail: String },
    #[error(
        "not publishing realisation {id}: the realisation it depends on, {dependency}, \
         is not in the cache yet"
    )]
    RealisationDependencyMissing { id: String, dependency: String },
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
            | UploadError::RealisationDependencyMissing { .. } => ErrorClass::Transient,
            UploadError::Invalid { .. }
            | UploadError::Nar { .. }
            | UploadError::NarMismatch { .. }
            | UploadError::Internal { .. } => ErrorClass::Permanent,
        }
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
}
