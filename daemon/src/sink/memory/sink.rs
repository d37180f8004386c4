//! The [`crate::sink::Sink`] backend over a shared [`Bucket`]: the operations the engine and GC
//! call, each one or more of the bucket's requests. A multipart upload's parts are visible
//! only once it is completed.

use std::sync::Arc;

use bytes::Bytes;

use super::{Bucket, GIVEN_UP_LANDS_WITHIN};
use crate::coexist::Check;
use crate::sink::contended::Put;
use crate::sink::inventory::{self, Object};
use crate::sink::spill::SpillFile;
use crate::sink::{ErrorClass, Fetched, Read, SinkError};

/// A [`super::Sink`] backend over a shared [`Bucket`].
#[derive(Clone)]
pub struct MemorySink {
    bucket: Arc<Bucket>,
}

impl MemorySink {
    pub fn new(bucket: Arc<Bucket>) -> MemorySink {
        MemorySink { bucket }
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    pub async fn read(&self, key: &str) -> Result<Read<Fetched>, SinkError> {
        Ok(match self.bucket.get(key).await? {
            Read::Found(o) => Read::Found(Fetched {
                body: o.body,
                modified: o.modified,
            }),
            Read::Absent => Read::Absent,
            Read::Refused(error) => Read::Refused(error),
        })
    }

    pub async fn head(&self, key: &str) -> Result<Read<inventory::Head>, SinkError> {
        Ok(match self.bucket.head(key).await? {
            Read::Found(h) => Read::Found(inventory::Head {
                modified: h.modified,
                size: h.size,
            }),
            Read::Absent => Read::Absent,
            Read::Refused(error) => Read::Refused(error),
        })
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        self.bucket.put(key, body).await
    }

    /// A PUT of a key other writers write too ([`Bucket::put_shared`]).
    pub async fn put_unless_throttled(&self, key: &str, body: Bytes) -> Result<Put, SinkError> {
        self.bucket.put_shared(key, body).await
    }

    pub async fn put_file(&self, key: &str, file: &SpillFile) -> Result<(), SinkError> {
        let body = std::fs::read(file.reopen_path()).map_err(|e| SinkError {
            operation: "PUT",
            key: key.to_owned(),
            class: ErrorClass::Transient,
            detail: format!("cannot read the temporary file: {e}"),
            retry_after: None,
        })?;
        self.bucket.put(key, Bytes::from(body)).await
    }

    pub async fn list(&self) -> Result<Vec<Object>, SinkError> {
        self.bucket.list().await
    }

    pub async fn delete(&self, keys: &[String]) -> Result<(), SinkError> {
        for batch in keys.chunks(inventory::DELETE_BATCH) {
            self.bucket.delete(batch).await?;
        }
        Ok(())
    }

    /// Deletes `keys` within `check`'s bound: a request is not sent once too little of it is
    /// left, and is given up (an error) when unanswered at its end; a request given up still
    /// lands if it would, within [`GIVEN_UP_LANDS_WITHIN`] of being given up.
    pub async fn delete_within(&self, keys: &[String], check: &Check) -> Result<(), SinkError> {
        for batch in keys.chunks(inventory::DELETE_BATCH) {
            let first = batch.first().map_or("", String::as_str);
            let Some(left) = check.time_left() else {
                return Err(inventory::not_sent(check, "DELETE", first));
            };
            let bucket = self.bucket.clone();
            let owned = batch.to_vec();
            let request = tokio::spawn(async move {
                bucket
                    .delete_landing_by(&owned, Some(left + GIVEN_UP_LANDS_WITHIN))
                    .await
            });
            let given_up = |detail: String| SinkError {
                operation: "DELETE",
                key: first.to_owned(),
                class: ErrorClass::Transient,
                detail,
                retry_after: None,
            };
            match tokio::time::timeout(left, request).await {
                Ok(Ok(answer)) => answer?,
                Ok(Err(join)) => return Err(given_up(format!("the request failed: {join}"))),
                Err(_) => {
                    return Err(given_up(format!(
                        "given up: no answer within the {} ms left (simulated; it may still land)",
                        left.as_millis()
                    )))
                }
            }
        }
        Ok(())
    }

    pub async fn start_upload(&self, key: &str) -> Result<MemoryUpload, SinkError> {
        self.bucket.request("CREATE-MULTIPART", key, |_| ()).await?;
        Ok(MemoryUpload {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            parts: Vec::new(),
        })
    }
}

/// A multipart upload: its parts are visible only once it is completed.
pub struct MemoryUpload {
    bucket: Arc<Bucket>,
    key: String,
    parts: Vec<Bytes>,
}

impl MemoryUpload {
    pub async fn put_part(&mut self, part: Bytes) -> Result<(), SinkError> {
        self.bucket
            .request("UPLOAD-PART", &self.key, |_| ())
            .await?;
        self.parts.push(part);
        Ok(())
    }

    pub async fn complete(self) -> Result<(), SinkError> {
        let body = Bytes::from(self.parts.concat());
        let key = self.key.clone();
        self.bucket
            .request("COMPLETE-MULTIPART", &key, |b| b.land(&key, body))
            .await
    }

    pub async fn abort(self) {}
}
