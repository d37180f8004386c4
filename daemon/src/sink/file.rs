//! The directory target: a plain binary cache in a local directory (`file:///DIR`), readable by
//! Nix as `file:///DIR` and servable by any static web server.
//!
//! Invariant: an object appears under its final name only when it is complete. Every write goes
//! to a temporary file in the same directory, is flushed to disk, and is then renamed into
//! place, so a reader (or a crash) never sees half an object.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ErrorClass, Fetched, Read, SinkError};
use crate::engine::spill::SpillFile;

pub struct FileSink {
    pub(super) root: PathBuf,
}

impl FileSink {
    pub fn open(root: &Path) -> Result<FileSink, SinkError> {
        std::fs::create_dir_all(root)
            .map_err(|e| io_error("create", &root.display().to_string(), &e))?;
        Ok(FileSink {
            root: root.to_owned(),
        })
    }

    pub async fn read(&self, key: &str) -> Result<Read<Fetched>, SinkError> {
        let file = self.root.join(key);
        let (body, modified) =
            match tokio::try_join!(tokio::fs::read(&file), tokio::fs::metadata(&file)) {
                Ok((bytes, meta)) => (bytes, meta.modified()),
                Err(e) => return refused_or_absent("read", key, e),
            };
        Ok(Read::Found(Fetched {
            body: Bytes::from(body),
            modified: modified.map_err(|e| io_error("stat", key, &e))?,
        }))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let mut upload = self.start_upload(key).await?;
        upload.put_part(body).await?;
        upload.complete().await
    }

    pub async fn put_file(&self, key: &str, source: &SpillFile) -> Result<(), SinkError> {
        let mut upload = self.start_upload(key).await?;
        let Some(mut file) = upload.file.take() else {
            unreachable!("a new upload has its file");
        };
        let (source, key_owned) = (source.reopen_path(), key.to_owned());
        let file = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&source)
                .and_then(|mut source| std::io::copy(&mut source, &mut file))
                .map(|_| file)
                .map_err(|e| io_error("write", &key_owned, &e))
        })
        .await
        .map_err(|e| join_error(key, &e))??;
        upload.file = Some(file);
        upload.complete().await
    }

    pub async fn start_upload(&self, key: &str) -> Result<FileUpload, SinkError> {
        let final_path = self.root.join(key);
        let key_owned = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let dir = final_path.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(dir)
                .map_err(|e| io_error("create directory for", &key_owned, &e))?;
            let file = tempfile::Builder::new()
                .prefix(".narpush-")
                .suffix(".tmp")
                .tempfile_in(dir)
                .map_err(|e| io_error("create temporary file for", &key_owned, &e))?;
            Ok(FileUpload {
                file: Some(file),
                final_path,
                key: key_owned,
            })
        })
        .await
        .map_err(|e| join_error(key, &e))?
    }
}

/// A file being written; it becomes visible under its key only in [`FileUpload::complete`].
/// Dropping it without completing removes the temporary file.
pub struct FileUpload {
    file: Option<tempfile::NamedTempFile>,
    final_path: PathBuf,
    key: String,
}

impl FileUpload {
    pub async fn put_part(&mut self, part: Bytes) -> Result<(), SinkError> {
        let Some(mut file) = self.file.take() else {
            return Err(io_error(
                "write",
                &self.key,
                &std::io::Error::other("upload already finished"),
            ));
        };
        let key = self.key.clone();
        let file = tokio::task::spawn_blocking(move || {
            file.write_all(&part)
                .map(|()| file)
                .map_err(|e| io_error("write", &key, &e))
        })
        .await
        .map_err(|e| join_error(&self.key, &e))??;
        self.file = Some(file);
        Ok(())
    }

    pub async fn complete(mut self) -> Result<(), SinkError> {
        let Some(file) = self.file.take() else {
            return Err(io_error(
                "finish",
                &self.key,
                &std::io::Error::other("upload already finished"),
            ));
        };
        let key = self.key.clone();
        let final_path = self.final_path.clone();
        tokio::task::spawn_blocking(move || {
            file.as_file()
                .sync_all()
                .map_err(|e| io_error("sync", &key, &e))?;
            set_world_readable(file.path()).map_err(|e| io_error("chmod", &key, &e))?;
            file.persist(&final_path)
                .map_err(|e| io_error("rename into place", &key, &e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| join_error(&self.key, &e))?
    }

    pub async fn abort(self) {
        // Dropping the NamedTempFile deletes it.
    }
}

/// A cache directory is meant to be served; tempfile creates files 0600.
fn set_world_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

pub(super) fn io_error(operation: &'static str, key: &str, error: &std::io::Error) -> SinkError {
    SinkError {
        operation,
        key: key.to_owned(),
        class: match error.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::Interrupted => {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        },
        detail: error.to_string(),
        retry_after: None,
    }
}

/// A failed read of `key`: absent, refused (permission denied), or an error.
pub(super) fn refused_or_absent<T>(
    operation: &'static str,
    key: &str,
    error: std::io::Error,
) -> Result<Read<T>, SinkError> {
    match error.kind() {
        std::io::ErrorKind::NotFound => Ok(Read::Absent),
        std::io::ErrorKind::PermissionDenied => Ok(Read::Refused(io_error(operation, key, &error))),
        _ => Err(io_error(operation, key, &error)),
    }
}

pub(super) fn join_error(key: &str, error: &tokio::task::JoinError) -> SinkError {
    SinkError {
        operation: "write",
        key: key.to_owned(),
        class: ErrorClass::Permanent,
        detail: format!("writer task failed: {error}"),
        retry_after: None,
    }
}
