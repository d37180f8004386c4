//! Where cache objects go (the config's `target`), and the one vocabulary for what went wrong there.
//!
//! [`Sink`] is a closed set (S3, directory) dispatched by `match`, so each operation's
//! behaviour on each backend is visible in one place. Every backend keeps the same promise:
//! an object is visible under its key only once it is complete ([`MultipartUpload::complete`]); an
//! upload that is dropped or [`MultipartUpload::abort`]ed leaves nothing under the key.
//!
//! Every failure is a [`SinkError`] whose [`ErrorClass`] says whether trying again can help;
//! the backends decide that once, where they understand the error. A read the store refuses
//! (HTTP 403, a file without read permission) is reported as such ([`Read::Refused`]); what it
//! means depends on who reads, and that rule is [`crate::coexist::Reader`]'s: the methods
//! without a reader ([`Sink::fetch`], [`Sink::exists`], [`Sink::modified`]) are the
//! uploader's.
//!
//! A key that other writers write too (narinfos, `nix-cache-info`) is written with
//! [`Sink::put_contended`]: a throttled write of it counts as done when another writer has
//! published what this one wanted there ([`contended`]).
//!
//! [`spill`] holds the body of a single PUT (memory, then an unnamed temporary file), which
//! the engine writes and every backend reads.

pub mod body;
pub mod contended;
pub mod file;
pub mod inventory;
#[cfg(feature = "sim")]
pub mod memory;
pub mod params;
pub mod requests;
pub mod retry_after;
pub mod s3;
pub mod spill;
pub mod url;

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::coexist::{Reader, WhenRefused};
use spill::SpillFile;
pub use url::TargetUrl;

/// Whether a failed operation is worth trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble, timeouts, throttling, 5xx: the same request may succeed later.
    Transient,
    /// Bad credentials, missing bucket, a refused request: retrying changes nothing.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
#[error("{operation} {key}: {detail}")]
pub struct SinkError {
    pub operation: &'static str,
    pub key: String,
    pub class: ErrorClass,
    pub detail: String,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

/// What a read of one key found, before the reader's rule for a refusal applies.
#[derive(Debug)]
pub enum Read<T> {
    Found(T),
    Absent,
    /// The store refused the read (S3: 403 AccessDenied; a directory: permission denied).
    /// S3 also answers so for a missing key to credentials without `s3:ListBucket`.
    Refused(SinkError),
}

impl<T> Read<T> {
    /// The read under `reader`'s rule for a refusal: absent, or the refusal as an error.
    pub fn for_reader(self, reader: Reader) -> Result<Option<T>, SinkError> {
        match self {
            Read::Found(found) => Ok(Some(found)),
            Read::Absent => Ok(None),
            Read::Refused(error) => match reader.when_refused() {
                WhenRefused::Absent => Ok(None),
                WhenRefused::Stop => Err(error),
            },
        }
    }
}

/// An object read whole.
pub struct Fetched {
    pub body: Bytes,
    /// When it was last written (S3 `Last-Modified`, a file's mtime).
    pub modified: SystemTime,
}

pub enum Sink {
    File(file::FileSink),
    S3(s3::S3Sink),
    /// The simulation's bucket in memory (see [`memory`]).
    #[cfg(feature = "sim")]
    Memory(memory::MemorySink),
}

/// A large object being written part by part.
pub enum MultipartUpload {
    File(file::FileUpload),
    S3(s3::S3Upload),
    #[cfg(feature = "sim")]
    Memory(memory::MemoryUpload),
}

impl Sink {
    /// Opens the target; `request_timeout` bounds the wait for each answer of a remote one.
    pub async fn open(url: &TargetUrl, request_timeout: Duration) -> Result<Sink, SinkError> {
        match url {
            TargetUrl::File { dir, .. } => file::FileSink::open(dir).map(Sink::File),
            TargetUrl::S3(location) => s3::S3Sink::open(location, request_timeout)
                .await
                .map(Sink::S3),
        }
    }

    /// Writes every object from now on with `cache_control`'s header (S3; a directory has no
    /// headers).
    pub fn set_cache_control(&mut self, cache_control: crate::layout::CacheControl) {
        if let Sink::S3(t) = self {
            t.cache_control = cache_control;
        }
    }

    /// Whether `key` is there (a refused HEAD: no, by the uploader's rule). Bad credentials
    /// are caught before any HEAD: every upload starts with `ensure_cache_info`, whose GET
    /// (or the PUT after a 403) reports them with their reason.
    pub async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        Ok(self.modified(key).await?.is_some())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, SinkError> {
        Ok(self.fetch(key).await?.map(|fetched| fetched.body))
    }

    /// The object at `key` and when it was written, in one request; `None` if it is absent
    /// (or, by the uploader's rule, refused).
    pub async fn fetch(&self, key: &str) -> Result<Option<Fetched>, SinkError> {
        let read = self.read(key).await?;
        if let Read::Refused(error) = &read {
            tracing::warn!(
                key,
                "{error}: taken as absent. The credentials lack s3:ListBucket (then S3 answers \
                 403 for a missing key) or, if the object exists, s3:GetObject; grant both on \
                 the bucket"
            );
        }
        read.for_reader(Reader::Uploader)
    }

    /// The object at `key` and when it was written, in one request, as the store answered.
    pub async fn read(&self, key: &str) -> Result<Read<Fetched>, SinkError> {
        match self {
            Sink::File(t) => t.read(key).await,
            Sink::S3(t) => t.read(key).await,
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.read(key).await,
        }
    }

    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), SinkError> {
        self.put_encoded(key, body, content_type, None).await
    }

    /// Writes a small object only within the bound `check` sets (a refresh or a resign
    /// rewriting what a read found, rule U2 of [`crate::coexist`]): not sent once too little
    /// of it is left, given up when it ends, and a directory's write that was given up never
    /// lands later.
    pub async fn put_within(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        check: &crate::coexist::Check,
    ) -> Result<(), SinkError> {
        let too_late = || SinkError {
            operation: "PUT",
            key: key.to_owned(),
            class: ErrorClass::Transient,
            detail: format!(
                "not answered within {} ms of the read it rewrites (rule U2 of the gc protocol)",
                crate::coexist::DELETE_WINDOW.as_millis()
            ),
            retry_after: None,
        };
        let Some(left) = check.time_left() else {
            return Err(too_late());
        };
        let write = async {
            match self {
                Sink::File(t) => t.put_by(key, body, Some(check.deadline().into_std())).await,
                _ => self.put(key, body, content_type).await,
            }
        };
        tokio::time::timeout(left, write)
            .await
            .unwrap_or_else(|_| Err(too_late()))
    }

    /// Writes an object whose bytes are compressed with `content_encoding`, so HTTP clients
    /// (Nix's included) decode it by that header. A directory has no headers: only
    /// uncompressed objects belong there (the URL parameters refuse the rest).
    pub async fn put_encoded(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        content_encoding: Option<&str>,
    ) -> Result<(), SinkError> {
        match self {
            Sink::File(t) => t.put(key, body).await,
            Sink::S3(t) => t.put(key, body, content_type, content_encoding).await,
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.put(key, body).await,
        }
    }

    /// Whether a big object is best written with one request from a complete copy
    /// ([`Sink::put_file`]): true for S3, where that spares the requests and the server work of
    /// a multipart upload; false for a directory, where a streamed object is written straight
    /// into place anyway.
    pub fn writes_whole_objects(&self) -> bool {
        match self {
            Sink::File(_) => false,
            Sink::S3(_) => true,
            #[cfg(feature = "sim")]
            Sink::Memory(_) => true,
        }
    }

    /// Writes the object at `key` from a complete temporary file, in one request.
    pub async fn put_file(
        &self,
        key: &str,
        file: &SpillFile,
        content_type: &str,
    ) -> Result<(), SinkError> {
        match self {
            Sink::File(t) => t.put_file(key, file).await,
            Sink::S3(t) => t.put_file(key, file, content_type).await,
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.put_file(key, file).await,
        }
    }

    /// Aborts the multipart uploads `writer` left unfinished in an earlier run (initiated
    /// before `before`, under a name of a NAR it streamed); returns how many. Other writers'
    /// uploads, and those under names without a writer id, are left to the bucket's lifecycle
    /// rule. A directory target has none to abort.
    pub async fn abort_stale_uploads(
        &self,
        before: SystemTime,
        writer: crate::layout::WriterId,
    ) -> Result<usize, SinkError> {
        match self {
            Sink::File(_) => Ok(0),
            #[cfg(feature = "sim")]
            Sink::Memory(_) => Ok(0),
            Sink::S3(t) => {
                t.abort_stale_uploads(crate::layout::NAR_PREFIX, before, &|key| {
                    crate::layout::is_streamed_by(key, writer)
                })
                .await
            }
        }
    }

    pub async fn start_upload(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<MultipartUpload, SinkError> {
        match self {
            Sink::File(t) => t.start_upload(key).await.map(MultipartUpload::File),
            Sink::S3(t) => t
                .start_upload(key, content_type)
                .await
                .map(MultipartUpload::S3),
            #[cfg(feature = "sim")]
            Sink::Memory(t) => t.start_upload(key).await.map(MultipartUpload::Memory),
        }
    }
}

impl MultipartUpload {
    pub async fn put_part(&mut self, part: Bytes) -> Result<(), SinkError> {
        match self {
            MultipartUpload::File(u) => u.put_part(part).await,
            MultipartUpload::S3(u) => u.put_part(part).await,
            #[cfg(feature = "sim")]
            MultipartUpload::Memory(u) => u.put_part(part).await,
        }
    }

    pub async fn complete(self) -> Result<(), SinkError> {
        match self {
            MultipartUpload::File(u) => u.complete().await,
            MultipartUpload::S3(u) => u.complete().await,
            #[cfg(feature = "sim")]
            MultipartUpload::Memory(u) => u.complete().await,
        }
    }

    pub async fn abort(self) {
        match self {
            MultipartUpload::File(u) => u.abort().await,
            MultipartUpload::S3(u) => u.abort().await,
            #[cfg(feature = "sim")]
            MultipartUpload::Memory(u) => u.abort().await,
        }
    }
}
