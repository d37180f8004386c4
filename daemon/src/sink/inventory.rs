//! What a cache holds, object by object: listing with sizes and ages, ages of single objects,
//! and deletion. Used by retention GC (`narpush gc`) and by the engine, which keeps the
//! narinfos that builds still use young.
//!
//! Invariants: a listing names every object that existed for its whole duration, each with the
//! age the store reports (S3 `LastModified`, a file's mtime); deletion touches only the keys it
//! is given, and a key that is already gone counts as deleted. A directory cache's temporary
//! files (objects still being written) are never listed. A delete bound by a
//! [`Check`] is not sent once the check's time is up, and is given up (S3: the operation
//! timeout, retries included) when its time runs out ([`crate::coexist`], G6).

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_smithy_types::timeout::TimeoutConfig;

use super::file::{io_error, join_error, refused_or_absent, FileSink};
use super::s3::{classify, S3Sink};
use super::{ErrorClass, Read, Sink, SinkError};
use crate::coexist::{Check, Reader};

/// Keys deleted per request at most (the S3 DeleteObjects limit).
pub const DELETE_BATCH: usize = 1000;

/// What a HEAD tells of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// When it was last written (S3 `Last-Modified`, whole seconds; a file's mtime).
    pub modified: SystemTime,
    pub size: u64,
}

/// One object of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

impl Sink {
    /// Every object of the cache. For S3: ListObjectsV2, 1,000 keys per request.
    pub async fn list(&self) -> Result<Vec<Object>, SinkError> {
        match self {
            Sink::File(t) => t.list().await,
            Sink::S3(t) => t.list().await,
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.list().await,
        }
    }

    /// The objects whose keys start with `prefix` (for S3: ListObjectsV2 with that prefix).
    pub async fn list_under(&self, prefix: &str) -> Result<Vec<Object>, SinkError> {
        match self {
            Sink::File(t) => t.list_under(prefix).await,
            Sink::S3(t) => t.list_under(prefix).await,
            #[cfg(feature = "sim")]
            Sink::Memory(t) => {
                let mut objects = t.list().await?;
                objects.retain(|o| o.key.starts_with(prefix));
                Ok(objects)
            }
        }
    }

    /// When `key` was last written; `None` if it does not exist (or, by the uploader's rule,
    /// the HEAD was refused).
    pub async fn modified(&self, key: &str) -> Result<Option<SystemTime>, SinkError> {
        Ok(self
            .head(key)
            .await?
            .for_reader(Reader::Uploader)?
            .map(|head| head.modified))
    }

    /// When `key` was last written and its size, as the store answered (S3: HEAD).
    pub async fn head(&self, key: &str) -> Result<Read<Head>, SinkError> {
        match self {
            Sink::File(t) => t.head(key).await,
            Sink::S3(t) => t.head(key).await,
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.head(key).await,
        }
    }

    /// The permission a refused read lacks, in the store's terms.
    pub fn read_permission(&self) -> &'static str {
        match self {
            Sink::File(_) => "read permission",
            Sink::S3(_) => "s3:GetObject",
            #[cfg(feature = "sim")]
            Sink::Memory(_) => "s3:GetObject",
        }
    }

    /// The requests a listing of `objects` objects takes (S3: a page per 1,000 keys).
    pub fn list_requests(&self, objects: usize) -> u64 {
        match self {
            Sink::File(_) => 1,
            Sink::S3(_) => (objects / 1000 + 1) as u64,
            #[cfg(feature = "sim")]
            Sink::Memory(_) => (objects / 1000 + 1) as u64,
        }
    }

    /// The requests deleting `keys` keys takes (S3: one per [`DELETE_BATCH`]; a directory:
    /// one per file).
    pub fn delete_requests(&self, keys: usize) -> u64 {
        match self {
            Sink::File(_) => keys as u64,
            Sink::S3(_) => keys.div_ceil(DELETE_BATCH) as u64,
            #[cfg(feature = "sim")]
            Sink::Memory(_) => keys.div_ceil(DELETE_BATCH) as u64,
        }
    }

    /// Deletes `keys` (for S3: DeleteObjects, [`DELETE_BATCH`] keys per request).
    pub async fn delete(&self, keys: &[String]) -> Result<(), SinkError> {
        match self {
            Sink::File(t) => t.delete(keys, None).await,
            Sink::S3(t) => {
                for batch in keys.chunks(DELETE_BATCH) {
                    t.delete(batch, None).await?;
                }
                Ok(())
            }
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.delete(keys).await,
        }
    }

    /// Deletes `keys` within the bound `check` sets: no request is sent once too little of it
    /// is left, and a request still unanswered when it ends is given up (an error either way:
    /// some keys may be deleted, the rest are not).
    pub async fn delete_within(&self, keys: &[String], check: &Check) -> Result<(), SinkError> {
        match self {
            Sink::File(t) => t.delete(keys, Some(check)).await,
            Sink::S3(t) => {
                for batch in keys.chunks(DELETE_BATCH) {
                    t.delete(batch, Some(check)).await?;
                }
                Ok(())
            }
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.delete_within(keys, check).await,
        }
    }
}

/// The time a delete bound by `check` may take, or the error for one not sent.
fn time_left(
    check: Option<&Check>,
    operation: &'static str,
    key: &str,
) -> Result<Option<Duration>, SinkError> {
    let Some(check) = check else {
        return Ok(None);
    };
    match check.time_left() {
        Some(left) => Ok(Some(left)),
        None => Err(not_sent(check, operation, key)),
    }
}

/// The error for a delete not sent because `check`'s time is up.
pub(super) fn not_sent(check: &Check, operation: &'static str, key: &str) -> SinkError {
    SinkError {
        operation,
        key: key.to_owned(),
        class: ErrorClass::Transient,
        detail: format!(
            "not sent: {} ms after the check that allowed it, past the bound of {} ms",
            check.elapsed().as_millis(),
            crate::coexist::DELETE_WINDOW.as_millis()
        ),
        retry_after: None,
    }
}

impl FileSink {
    async fn list(&self) -> Result<Vec<Object>, SinkError> {
        self.list_under("").await
    }

    /// The objects under `prefix`: a directory (`pins/`) is read alone, anything else is
    /// filtered from the whole listing.
    async fn list_under(&self, prefix: &str) -> Result<Vec<Object>, SinkError> {
        let root = self.root.clone();
        let (dir, rest) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = root.join(dir);
        let rest = rest.to_owned();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut objects = list_dir(&root, &start)?;
            if !rest.is_empty() {
                objects.retain(|o| o.key.starts_with(&prefix));
            }
            Ok(objects)
        })
        .await
        .map_err(|e| join_error("(listing)", &e))?
    }

    async fn head(&self, key: &str) -> Result<Read<Head>, SinkError> {
        match tokio::fs::metadata(self.root.join(key)).await {
            Ok(meta) => Ok(Read::Found(Head {
                modified: meta.modified().map_err(|e| io_error("stat", key, &e))?,
                size: meta.len(),
            })),
            Err(e) => refused_or_absent("stat", key, e),
        }
    }

    async fn delete(&self, keys: &[String], check: Option<&Check>) -> Result<(), SinkError> {
        for key in keys {
            time_left(check, "delete", key)?;
            match tokio::fs::remove_file(self.root.join(key)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", key, &e)),
            }
        }
        Ok(())
    }
}

/// The files under `start` (a directory inside `root`), keyed relative to `root`.
fn list_dir(root: &Path, start: &Path) -> Result<Vec<Object>, SinkError> {
    let mut objects = Vec::new();
    let mut pending = vec![start.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("list", &dir.display().to_string(), &e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &dir.display().to_string(), &e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".narpush-") {
                continue;
            }
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("stat", &path.display().to_string(), &e)),
            };
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            objects.push(Object {
                key: relative.to_string_lossy().into_owned(),
                size: meta.len(),
                modified: meta
                    .modified()
                    .map_err(|e| io_error("stat", &path.display().to_string(), &e))?,
            });
        }
    }
    Ok(objects)
}

impl S3Sink {
    async fn list(&self) -> Result<Vec<Object>, SinkError> {
        self.list_under("").await
    }

    async fn list_under(&self, prefix: &str) -> Result<Vec<Object>, SinkError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_prefix((!prefix.is_empty()).then(|| prefix.to_owned()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListObjectsV2", "", e))?;
            for object in page.contents() {
                let (Some(key), Some(modified)) = (object.key(), object.last_modified()) else {
                    continue;
                };
                objects.push(Object {
                    key: key.to_owned(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                    modified: SystemTime::try_from(*modified).unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(objects)
    }

    async fn head(&self, key: &str) -> Result<Read<Head>, SinkError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(head) => Ok(Read::Found(Head {
                modified: head
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                size: head
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            })),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(Read::Absent),
            // A HEAD answer has no body, hence no error code to tell bad credentials apart.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 403 => Ok(
                Read::Refused(classify("HEAD", key, SdkError::ServiceError(e))),
            ),
            Err(e) => Err(classify("HEAD", key, e)),
        }
    }

    async fn delete(&self, keys: &[String], check: Option<&Check>) -> Result<(), SinkError> {
        if keys.is_empty() {
            return Ok(());
        }
        let time_left = time_left(check, "DeleteObjects", &keys[0])?;
        let failed = |detail: String| SinkError {
            operation: "DeleteObjects",
            key: keys[0].clone(),
            class: ErrorClass::Permanent,
            detail,
            retry_after: None,
        };
        let objects = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed(e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let mut request = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .customize();
        if let Some(left) = time_left {
            // The SDK's retries happen within this time too.
            request = request.config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    TimeoutConfig::builder()
                        .operation_timeout(left)
                        .operation_attempt_timeout(left)
                        .build(),
                ),
            );
        }
        let output = request
            .send()
            .await
            .map_err(|e| classify("DeleteObjects", &keys[0], e))?;
        if let Some(error) = output.errors().first() {
            return Err(SinkError {
                operation: "DeleteObjects",
                key: error.key().unwrap_or_default().to_owned(),
                class: ErrorClass::Transient,
                detail: format!(
                    "{} of {} keys not deleted: {} {}",
                    output.errors().len(),
                    keys.len(),
                    error.code().unwrap_or_default(),
                    error.message().unwrap_or_default()
                ),
                retry_after: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delete_whose_check_is_over_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.narinfo"), "x").unwrap();
        let sink = Sink::File(FileSink::open(dir.path()).unwrap());
        let keys = vec!["a.narinfo".to_owned()];
        let over = Check::began_at(tokio::time::Instant::now() - crate::coexist::DELETE_WINDOW);
        let error = sink.delete_within(&keys, &over).await.unwrap_err();
        assert!(error.detail.contains("not sent"), "{error}");
        assert!(dir.path().join("a.narinfo").exists());
        sink.delete_within(&keys, &Check::begin()).await.unwrap();
        assert!(!dir.path().join("a.narinfo").exists());
    }
}
