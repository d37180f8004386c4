//! The S3 target (AWS, Cloudflare R2, or anything S3-compatible) through aws-sdk-s3.
//!
//! Owns the client settings that make non-AWS stores work, and keeps them in one place:
//!
//! - checksums only `WhenRequired` (R2 rejects the SDK's default CRC32 headers);
//! - path-style addressing whenever a custom endpoint is given;
//! - object bodies are signed (SHA-256 of the payload in the signature) only over plain HTTP;
//!   over HTTPS, TLS already protects them, so `UNSIGNED-PAYLOAD` spares a hash of every
//!   uploaded byte, as `aws s3` does;
//! - credentials from the environment (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`), then the
//!   shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, `profile`), as with Nix. The EC2
//!   instance-metadata provider is deliberately left out: probing it costs seconds on every
//!   machine that is not an EC2 instance.
//!
//! Multipart uploads send parts in order through [`S3Upload::put_part`]; the caller guarantees
//! the R2 rule (all parts but the last the same size). An upload that is not completed must be
//! aborted with [`S3Upload::abort`], otherwise the bucket keeps its parts until a lifecycle rule
//! removes them.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;

use super::spill::SpillFile;
use super::url::S3Location;
use super::{ErrorClass, Fetched, Read, SinkError};
use crate::layout::CacheControl;
use aws_smithy_types::byte_stream::Length;

/// The chunk size of a body read from a file: few reads, little memory. Uploading a 514 MiB
/// NAR (163 MiB compressed) took 1.77-1.97 s with 1 MiB chunks, 1.93-2.02 s with 256 KiB.
const FILE_READ_BUFFER: usize = 1 << 20;

mod client;
mod counting;
mod throttle;
use client::{credentials_chain, sdk_config, signs_payload};

pub struct S3Sink {
    pub(super) client: aws_sdk_s3::Client,
    pub(super) bucket: String,
    sign_payload: bool,
    /// The `Cache-Control` of each object written.
    pub(super) cache_control: CacheControl,
}

impl S3Sink {
    pub async fn open(
        location: &S3Location,
        request_timeout: Duration,
    ) -> Result<S3Sink, SinkError> {
        let mut config = sdk_config(location, request_timeout);
        config = if location.anonymous {
            config.allow_no_auth()
        } else {
            config.credentials_provider(credentials_chain(location).await?)
        };
        Ok(S3Sink::with_config(location, config.build()))
    }

    fn with_config(location: &S3Location, config: aws_sdk_s3::Config) -> S3Sink {
        S3Sink {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: location.bucket.clone(),
            sign_payload: signs_payload(location),
            cache_control: CacheControl::default(),
        }
    }

    /// GET `key`. A 403 AccessDenied is a refusal (without `s3:ListBucket`, AWS answers it for
    /// a missing key too); credentials the server rejects have their own codes and stay errors.
    pub async fn read(&self, key: &str) -> Result<Read<Fetched>, SinkError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(output) => {
                let modified = output
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let body = output.body.collect().await.map_err(|e| SinkError {
                    operation: "GET",
                    key: key.to_owned(),
                    class: ErrorClass::Transient,
                    detail: e.to_string(),
                    retry_after: None,
                })?;
                Ok(Read::Found(Fetched {
                    body: body.into_bytes(),
                    modified,
                }))
            }
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(Read::Absent),
            Err(SdkError::ServiceError(e))
                if e.raw().status().as_u16() == 403
                    && matches!(e.err().code(), None | Some("AccessDenied")) =>
            {
                Ok(Read::Refused(classify(
                    "GET",
                    key,
                    SdkError::ServiceError(e),
                )))
            }
            Err(e) => Err(classify("GET", key, e)),
        }
    }

    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        content_encoding: Option<&str>,
    ) -> Result<(), SinkError> {
        self.put_object(key, ByteStream::from(body), content_type, content_encoding)
            .await
    }

    /// One PUT whose body is read from `file` (again on each attempt the SDK makes).
    pub async fn put_file(
        &self,
        key: &str,
        file: &SpillFile,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let body = ByteStream::read_from()
            .path(file.reopen_path())
            .buffer_size(FILE_READ_BUFFER)
            .length(Length::Exact(file.len()))
            .build()
            .await
            .map_err(|e| SinkError {
                operation: "PUT",
                key: key.to_owned(),
                class: ErrorClass::Transient,
                detail: format!(
                    "cannot read the temporary file: {}",
                    DisplayErrorContext(&e)
                ),
                retry_after: None,
            })?;
        self.put_object(key, body, content_type, None).await
    }

    async fn put_object(
        &self,
        key: &str,
        body: ByteStream,
        content_type: &str,
        content_encoding: Option<&str>,
    ) -> Result<(), SinkError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_cache_control(self.cache_control.for_key(key).map(str::to_owned))
            .set_content_encoding(content_encoding.map(str::to_owned))
            .body(body)
            .customize();
        let request = match self.sign_payload {
            true => request,
            false => request.disable_payload_signing(),
        };
        request.send().await.map_err(|e| classify("PUT", key, e))?;
        Ok(())
    }

    pub async fn start_upload(&self, key: &str, content_type: &str) -> Result<S3Upload, SinkError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_cache_control(self.cache_control.for_key(key).map(str::to_owned))
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", key, e))?;
        let upload_id = created.upload_id().ok_or_else(|| SinkError {
            operation: "CreateMultipartUpload",
            key: key.to_owned(),
            class: ErrorClass::Transient,
            detail: "the server returned no upload id".to_owned(),
            retry_after: None,
        })?;
        Ok(S3Upload {
            sign_payload: self.sign_payload,
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
            parts: Vec::new(),
            size: 0,
        })
    }
}

impl S3Sink {
    /// Aborts the unfinished multipart uploads under `prefix` that were initiated before
    /// `before` and whose key `is_ours`; returns how many. Uploads of other writers (other
    /// key shapes) and uploads started since are left alone.
    pub async fn abort_stale_uploads(
        &self,
        prefix: &str,
        before: SystemTime,
        is_ours: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize, SinkError> {
        let mut aborted = 0;
        let (mut key_marker, mut upload_id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send()
                .await
                .map_err(|e| classify("ListMultipartUploads", prefix, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let initiated = upload
                    .initiated()
                    .and_then(|at| SystemTime::try_from(*at).ok());
                if !is_ours(key) || initiated.is_none_or(|at| at >= before) {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await
                    .map_err(|e| classify("AbortMultipartUpload", key, e))?;
                aborted += 1;
            }
            if page.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                return Ok(aborted);
            }
        }
    }
}

/// A multipart upload in progress.
pub struct S3Upload {
    client: aws_sdk_s3::Client,
    sign_payload: bool,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    /// Bytes sent in parts so far: the size of the completed object.
    size: u64,
}

impl S3Upload {
    pub async fn put_part(&mut self, part: Bytes) -> Result<(), SinkError> {
        let part_number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let part_size = part.len() as u64;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(part_number)
            .body(ByteStream::from(part))
            .customize();
        let request = match self.sign_payload {
            true => request,
            false => request.disable_payload_signing(),
        };
        let uploaded = request
            .send()
            .await
            .map_err(|e| classify("UploadPart", &self.key, e))?;
        self.parts.push(
            CompletedPart::builder()
                .set_e_tag(uploaded.e_tag().map(str::to_owned))
                .part_number(part_number)
                .build(),
        );
        self.size += part_size;
        Ok(())
    }

    pub async fn complete(self) -> Result<(), SinkError> {
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await;
        let error = match result {
            Ok(_) => return Ok(()),
            Err(e) => {
                let refused = e.raw_response().is_some_and(|r| r.status().as_u16() == 403);
                let mut error = classify("CompleteMultipartUpload", &self.key, e);
                // These credentials started the upload and wrote its parts: a 403 now means
                // the upload is gone (s3s-fs answers so where AWS says NoSuchUpload), e.g.
                // completed by an earlier request whose answer the client gave up on while the
                // server was still assembling the object. The next attempt uploads again.
                if refused {
                    error.class = ErrorClass::Transient;
                    error.detail = "HTTP 403: the multipart upload was gone at its completion \
                                    (an earlier try may still be completing it)"
                        .to_owned();
                }
                error
            }
        };
        // The server may have completed the upload and the answer been lost: then the SDK's
        // retry meets NoSuchUpload, or the answer could not be read. The key is this upload's
        // own (see crate::layout), so an object there with our size is our completed upload.
        match self.completed_size().await {
            Some(size) if size == self.size => {
                tracing::info!(key = %self.key, "CompleteMultipartUpload failed ({error}), but the object is complete");
                Ok(())
            }
            _ => {
                self.abort().await;
                Err(error)
            }
        }
    }

    /// The size of the object under the upload's key, if one is there.
    async fn completed_size(&self) -> Option<u64> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await;
        match head {
            Ok(object) => object.content_length().and_then(|n| u64::try_from(n).ok()),
            Err(e) => {
                tracing::debug!(key = %self.key, error = %DisplayErrorContext(&e), "no completed object");
                None
            }
        }
    }

    /// Best effort: a failed abort leaves parts that the bucket's lifecycle rule removes.
    pub async fn abort(self) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(key = %self.key, error = %DisplayErrorContext(&e), "could not abort multipart upload");
        }
    }
}

/// The one place where an S3 failure is sorted into worth-retrying or not. Exhaustive on
/// purpose: a new kind of SDK error must be decided here, not fall through a wildcard.
pub(super) fn classify<E, R>(operation: &'static str, key: &str, error: SdkError<E, R>) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus + Send + Sync + 'static,
{
    let (class, retry_after, detail) = match &error {
        SdkError::ConstructionFailure(_) => (ErrorClass::Permanent, None, None),
        SdkError::TimeoutError(_) => (ErrorClass::Transient, None, None),
        SdkError::DispatchFailure(_) => (ErrorClass::Transient, None, None),
        SdkError::ResponseError(_) => (ErrorClass::Transient, None, None),
        SdkError::ServiceError(service) => {
            let status = service.raw().status_code();
            let code = service.err().code().unwrap_or("");
            let class = match status {
                408 | 429 | 500..=599 => ErrorClass::Transient,
                _ if matches!(code, "SlowDown" | "RequestTimeout" | "InternalError") => {
                    ErrorClass::Transient
                }
                // The multipart upload went away (a lifecycle rule, a stale-upload cleanup):
                // the next attempt starts a new one.
                _ if code == "NoSuchUpload" => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            };
            let explanation = match code {
                "SignatureDoesNotMatch" | "InvalidAccessKeyId" => {
                    " — the S3 server rejected the credentials; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile"
                }
                "AccessDenied" => {
                    " — the credentials lack a permission on the bucket: narpush needs \
                     s3:GetObject, s3:PutObject, s3:ListBucket, s3:AbortMultipartUpload and \
                     s3:ListBucketMultipartUploads (and s3:DeleteObject for gc)"
                }
                "NoSuchBucket" => " — the bucket does not exist; create it first",
                _ if status == 403 => " — access denied; check the credentials and the bucket's permissions",
                _ => "",
            };
            let message = service
                .err()
                .message()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let code = if code.is_empty() {
                "(no error code)"
            } else {
                code
            };
            (
                class,
                service.raw().retry_after(),
                Some(format!("HTTP {status} {code}{message}{explanation}")),
            )
        }
        _ => (ErrorClass::Transient, None, None),
    };
    SinkError {
        operation,
        key: key.to_owned(),
        class,
        detail: detail.unwrap_or_else(|| causes(&error)),
        retry_after,
    }
}

/// An error's chain of causes on one line, each cause once (the SDK's layers often repeat the
/// message of the layer below).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

/// What [`classify`] needs from a raw HTTP response.
pub(super) trait HttpStatus {
    fn status_code(&self) -> u16;
    fn retry_after(&self) -> Option<Duration>;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }

    fn retry_after(&self) -> Option<Duration> {
        self.headers()
            .get("retry-after")
            .and_then(|v| super::retry_after::parse(v, crate::clock::now()))
    }
}

#[cfg(test)]
#[path = "s3/tests.rs"]
mod tests;
