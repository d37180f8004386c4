//! The PUT of a key that other writers write too ([`crate::sink::contended`]), sent so that a
//! throttled answer comes back to the caller at once instead of being retried by the SDK.
//!
//! Invariant: a throttled answer (HTTP 429, or `SlowDown`) to such a PUT is never sent again
//! by the SDK ([`ThrottlingIsTheCallers`] forbids it); every other failure keeps the client's
//! retry settings, under which any other request answered 429 is retried as throttled
//! ([`TooManyRequestsIsThrottling`]). R2 accepts about one write per second to one key: the SDK's retries of a
//! throttled write, a second or less apart, mostly meet the same answer, where a GET of the key
//! often shows that another writer already published what this one meant to.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::put_object::PutObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use bytes::Bytes;

use super::{classify, S3Sink};
use crate::sink::contended::Put;
use crate::sink::SinkError;

/// Whether an answer with `status` and error `code` says "too many writes, slow down".
pub(crate) fn is_throttling(status: u16, code: Option<&str>) -> bool {
    status == 429 || matches!(code, Some("SlowDown" | "TooManyRequests"))
}

/// Makes the SDK retry an HTTP 429 as the throttling it is, with its backoff, as it retries
/// `SlowDown`: its own classifiers retry 503 and known error codes, and R2's 429 carries
/// neither (its code is `ServiceUnavailable`). Every client has it ([`super::client`]).
#[derive(Debug)]
pub(super) struct TooManyRequestsIsThrottling;

impl ClassifyRetry for TooManyRequestsIsThrottling {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response().map(|r| r.status().as_u16()) {
            Some(429) => RetryAction::throttling_error(),
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "narpush: HTTP 429 is throttling"
    }
}

/// Forbids the SDK to retry a throttled answer: the caller looks at the key first.
#[derive(Debug)]
struct ThrottlingIsTheCallers;

impl ClassifyRetry for ThrottlingIsTheCallers {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(status) = ctx.response().map(|r| r.status().as_u16()) else {
            return RetryAction::NoActionIndicated;
        };
        let code = match ctx.output_or_error() {
            Some(Err(error)) => error
                .as_operation_error()
                .and_then(|e| e.downcast_ref::<PutObjectError>())
                .and_then(|e| e.code()),
            _ => None,
        };
        match is_throttling(status, code) {
            true => RetryAction::RetryForbidden,
            false => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "narpush: a throttled write to a shared key is the caller's to retry"
    }
}

impl S3Sink {
    /// PUTs `body` at `key`; a throttled answer is [`Put::Throttled`], at its first occurrence.
    pub(crate) async fn put_unless_throttled(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Put, SinkError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_cache_control(self.cache_control.for_key(key).map(str::to_owned))
            .body(ByteStream::from(body))
            .customize()
            .config_override(
                aws_sdk_s3::Config::builder().retry_classifier(ThrottlingIsTheCallers),
            );
        let request = match self.sign_payload {
            true => request,
            false => request.disable_payload_signing(),
        };
        match request.send().await {
            Ok(_) => Ok(Put::Written),
            Err(error) => {
                let throttled = error.raw_response().is_some_and(|r| {
                    let code = error.as_service_error().and_then(|e| e.code());
                    is_throttling(r.status().as_u16(), code)
                });
                let error = classify("PUT", key, error);
                Ok(match throttled {
                    true => Put::Throttled(error),
                    false => return Err(error),
                })
            }
        }
    }
}

#[cfg(test)]
#[path = "throttle/tests.rs"]
mod tests;
