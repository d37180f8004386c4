//! Turning store paths into cache objects.
//!
//! - [`stream`]: one NAR, streamed through hashing and compression into fixed-size parts;
//! - [`schedule`]: many paths at once, `jobs` NARs in flight, each narinfo published only after
//!   its NAR and the narinfos of all its references (the closure invariant);
//! - [`narinfo_for`]: the signed narinfo of an uploaded path;
//! - [`compress`], [`progress`]: the compression methods and the progress display.
//!
//! Invariant kept by this module as a whole: a narinfo in the cache always points at a complete
//! NAR whose hash was checked, and every reference it names has a narinfo too.

pub mod compress;
pub mod progress;
pub mod schedule;
pub mod stream;

use std::collections::HashSet;

use futures::stream::StreamExt;

use crate::format::nar::NarError;
use crate::format::narinfo::NarInfo;
use crate::format::signing::SigningKey;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;
use crate::target::{ErrorClass, Target, TargetError};
use stream::StreamedNar;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Target(#[from] TargetError),
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
    #[error("not publishing {path}: its reference {reference} {why}")]
    ReferenceMissing {
        path: String,
        reference: String,
        why: &'static str,
    },
}

impl UploadError {
    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            UploadError::Target(e) => e.retry_after,
            _ => None,
        }
    }

    /// Whether the same upload may succeed if tried again later.
    pub fn class(&self) -> ErrorClass {
        match self {
            UploadError::Target(e) => e.class,
            UploadError::Nar { .. }
            | UploadError::NarMismatch { .. }
            | UploadError::Internal { .. } => ErrorClass::Permanent,
            UploadError::ReferenceMissing { .. } => ErrorClass::Transient,
        }
    }
}

/// The key of a path's narinfo: `<hashpart>.narinfo`.
pub fn narinfo_key(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

/// The signed narinfo for a path whose NAR was uploaded under `nar_key`. Signatures the store
/// already holds (from other caches) are kept beside ours.
pub fn narinfo_for(
    info: &PathInfo,
    nar_key: &str,
    compression: compress::Compression,
    streamed: &StreamedNar,
    keys: &[SigningKey],
) -> Result<NarInfo, UploadError> {
    let mut narinfo = NarInfo {
        store_path: info.path.clone(),
        url: nar_key.to_owned(),
        compression: compression.narinfo_name().to_owned(),
        file_hash: Some(streamed.file_hash),
        file_size: Some(streamed.file_size),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.as_ref().map(|d| d.basename().to_owned()),
        system: None,
        signatures: info.signatures.clone(),
        ca: info.ca.clone(),
    };
    for key in keys {
        narinfo
            .add_signature(key)
            .map_err(|e| UploadError::Internal {
                path: info.path.to_absolute(),
                detail: format!("cannot sign: {e}"),
            })?;
    }
    narinfo.signatures.sort();
    narinfo.signatures.dedup();
    Ok(narinfo)
}

/// Which of `paths` already have a narinfo in the target, asked `concurrency` at a time.
pub async fn present_in_target(
    target: &Target,
    paths: Vec<StorePath>,
    concurrency: usize,
) -> Result<HashSet<StorePath>, TargetError> {
    let mut checks = futures::stream::iter(paths)
        .map(|path| async move {
            let present = target.exists(&narinfo_key(&path)).await?;
            Ok::<_, TargetError>((path, present))
        })
        .buffer_unordered(concurrency.max(1));
    let mut present = HashSet::new();
    while let Some(checked) = checks.next().await {
        let (path, is_present) = checked?;
        if is_present {
            present.insert(path);
        }
    }
    Ok(present)
}
