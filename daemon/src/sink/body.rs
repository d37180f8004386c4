//! Reading an object piece by piece, for readers that must not hold a whole NAR in memory
//! (`narpush verify --nar-hash`), and opening a cache only to read it.
//!
//! Invariant: a [`Body`] holds at most one chunk at a time (S3: what the HTTP client
//! buffered; a file: [`FILE_CHUNK`] bytes), whatever the size of the object; and
//! [`Sink::open_for_reading`] neither creates nor cleans anything in the target.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::file::{io_error, refused_or_absent, FileSink};
use super::s3::classify;
use super::url::TargetUrl;
use super::{ErrorClass, Read, Sink, SinkError};

/// The bytes read from a file at a time.
pub const FILE_CHUNK: usize = 1 << 20;

/// An object being read.
pub enum Body {
    File {
        key: String,
        file: tokio::fs::File,
    },
    S3 {
        key: String,
        stream: aws_sdk_s3::primitives::ByteStream,
    },
    /// The simulation's objects are in memory already.
    #[cfg(feature = "sim")]
    Memory(Option<Bytes>),
}

impl Body {
    /// The next piece of the object; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, SinkError> {
        match self {
            Body::File { key, file } => {
                let mut buffer = BytesMut::with_capacity(FILE_CHUNK);
                let read = file
                    .read_buf(&mut buffer)
                    .await
                    .map_err(|e| io_error("read", key, &e))?;
                Ok((read > 0).then(|| buffer.freeze()))
            }
            Body::S3 { key, stream } => stream.try_next().await.map_err(|e| SinkError {
                operation: "GET",
                key: key.clone(),
                class: ErrorClass::Transient,
                detail: e.to_string(),
                retry_after: None,
            }),
            #[cfg(feature = "sim")]
            Body::Memory(rest) => Ok(rest.take()),
        }
    }
}

impl Sink {
    /// Opens `url` to read it only: a directory must exist already (nothing is created, and
    /// no temporary file is removed); an S3 target is opened as for any other command.
    pub async fn open_for_reading(
        url: &TargetUrl,
        request_timeout: std::time::Duration,
    ) -> Result<Sink, SinkError> {
        match url {
            TargetUrl::File { dir, .. } => match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => Ok(Sink::File(FileSink { root: dir.clone() })),
                Ok(_) => Err(SinkError {
                    operation: "open",
                    key: dir.display().to_string(),
                    class: ErrorClass::Permanent,
                    detail: "not a directory".to_owned(),
                    retry_after: None,
                }),
                Err(e) => Err(io_error("open", &dir.display().to_string(), &e)),
            },
            TargetUrl::S3(_) => Sink::open(url, request_timeout).await,
        }
    }

    /// Opens the object at `key` for reading piece by piece ([`Body::chunk`]).
    pub async fn open_body(&self, key: &str) -> Result<Read<Body>, SinkError> {
        match self {
            Sink::File(t) => match tokio::fs::File::open(t.root.join(key)).await {
                Ok(file) => Ok(Read::Found(Body::File {
                    key: key.to_owned(),
                    file,
                })),
                Err(e) => refused_or_absent("read", key, e),
            },
            Sink::S3(t) => {
                let result = t
                    .client
                    .get_object()
                    .bucket(&t.bucket)
                    .key(key)
                    .send()
                    .await;
                match result {
                    Ok(output) => Ok(Read::Found(Body::S3 {
                        key: key.to_owned(),
                        stream: output.body,
                    })),
                    Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                        Ok(Read::Absent)
                    }
                    // As `S3Sink::read`: other 403 codes (bad credentials) stay errors.
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
            #[cfg(feature = "sim")]
            Sink::Memory(t) => Ok(match t.read(key).await? {
                Read::Found(fetched) => Read::Found(Body::Memory(Some(fetched.body))),
                Read::Absent => Read::Absent,
                Read::Refused(error) => Read::Refused(error),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_is_read_in_chunks_and_a_missing_one_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..FILE_CHUNK * 2 + 17).map(|i| i as u8).collect();
        std::fs::create_dir(dir.path().join("nar")).unwrap();
        std::fs::write(dir.path().join("nar/x.nar"), &content).unwrap();
        let url = TargetUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
        let sink = Sink::open_for_reading(&url, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let Read::Found(mut body) = sink.open_body("nar/x.nar").await.unwrap() else {
            panic!("not found");
        };
        let mut read = Vec::new();
        while let Some(chunk) = body.chunk().await.unwrap() {
            assert!(chunk.len() <= FILE_CHUNK);
            read.extend_from_slice(&chunk);
        }
        assert_eq!(read, content);
        assert!(matches!(
            sink.open_body("nar/y.nar").await.unwrap(),
            Read::Absent
        ));
    }

    #[tokio::test]
    async fn opening_for_reading_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let url = TargetUrl::parse(&format!("file://{}", missing.display())).unwrap();
        let error = Sink::open_for_reading(&url, std::time::Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(error.operation, "open");
        assert!(!missing.exists());
    }
}
