//! The S3 client's interceptor that feeds the request tally ([`crate::sink::requests`]).
//!
//! Invariant: each attempt is counted exactly once, just before it is handed to the HTTP
//! client (`read_before_transmit` runs once per attempt, the SDK's retries included, and
//! never for an attempt that fails before it is sent); the object kind is read once per
//! operation from its input, before the input is serialized away. Production clients count
//! into the process's tally; a test may give a client a tally of its own.

use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::operation as op;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use std::sync::Arc;

use crate::sink::requests::{process_tally, Object, Tally};

/// Counts every attempt in its tally: the process's ([`CountRequests::default`]) or one given.
#[derive(Debug)]
pub(super) struct CountRequests {
    tally: Arc<Tally>,
}

impl CountRequests {
    /// Counts into `tally` instead of the process's.
    #[cfg(test)]
    pub(super) fn into_tally(tally: Arc<Tally>) -> CountRequests {
        CountRequests { tally }
    }
}

impl Default for CountRequests {
    fn default() -> CountRequests {
        CountRequests {
            tally: process_tally().clone(),
        }
    }
}

/// The object kind of the operation under way.
#[derive(Clone, Copy, Debug)]
struct ObjectOf(Object);

impl Storable for ObjectOf {
    type Storer = StoreReplace<ObjectOf>;
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "narpush::CountRequests"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let key = |key: Option<&str>| Object::of_key(key.unwrap_or_default());
        let object = if let Some(i) = input.downcast_ref::<op::get_object::GetObjectInput>() {
            key(i.key())
        } else if let Some(i) = input.downcast_ref::<op::head_object::HeadObjectInput>() {
            key(i.key())
        } else if let Some(i) = input.downcast_ref::<op::put_object::PutObjectInput>() {
            key(i.key())
        } else if let Some(i) = input.downcast_ref::<op::upload_part::UploadPartInput>() {
            key(i.key())
        } else if let Some(i) =
            input.downcast_ref::<op::create_multipart_upload::CreateMultipartUploadInput>()
        {
            key(i.key())
        } else if let Some(i) =
            input.downcast_ref::<op::complete_multipart_upload::CompleteMultipartUploadInput>()
        {
            key(i.key())
        } else if let Some(i) =
            input.downcast_ref::<op::abort_multipart_upload::AbortMultipartUploadInput>()
        {
            key(i.key())
        } else if let Some(i) = input.downcast_ref::<op::copy_object::CopyObjectInput>() {
            key(i.key())
        } else if let Some(i) = input.downcast_ref::<op::delete_object::DeleteObjectInput>() {
            key(i.key())
        } else if let Some(i) = input.downcast_ref::<op::delete_objects::DeleteObjectsInput>() {
            Object::of_keys(
                i.delete()
                    .map(|delete| delete.objects())
                    .unwrap_or_default()
                    .iter()
                    .map(|object| object.key()),
            )
        } else if let Some(i) = input.downcast_ref::<op::list_objects_v2::ListObjectsV2Input>() {
            Object::of_prefix(i.prefix().unwrap_or_default())
        } else if let Some(i) =
            input.downcast_ref::<op::list_multipart_uploads::ListMultipartUploadsInput>()
        {
            Object::of_prefix(i.prefix().unwrap_or_default())
        } else {
            Object::Other
        };
        cfg.interceptor_state().store_put(ObjectOf(object));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map(|metadata| metadata.name().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let object = cfg
            .load::<ObjectOf>()
            .map_or(Object::Other, |object| object.0);
        self.tally.sent(&operation, object);
        Ok(())
    }
}
