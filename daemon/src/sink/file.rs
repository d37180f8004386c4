//! The directory target: a plain binary cache in a local directory (`file:///DIR`), readable by
//! Nix as `file:///DIR` and servable by any static web server.
//!
//! Invariant: an object appears under its final name only when it is complete. Every write goes
//! to a temporary file in the same directory, is flushed to disk, and is then renamed into
//! place, so a reader (or a crash) never sees half an object.
//!
//! Temporary files are `.narpush-*.tmp` in the object's directory; one a killed writer left
//! behind is removed when a sink opens the directory and the file is older than
//! [`STALE_AFTER`] (an upload in progress keeps touching its file, so it stays).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::spill::SpillFile;
use super::{ErrorClass, Fetched, Read, SinkError};

/// A temporary file untouched for this long was left by a writer that died.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
const TEMPORARY_PREFIX: &str = ".narpush-";
const TEMPORARY_SUFFIX: &str = ".tmp";

pub struct FileSink {
    pub(super) root: PathBuf,
}

impl FileSink {
    pub fn open(root: &Path) -> Result<FileSink, SinkError> {
        std::fs::create_dir_all(root)
            .map_err(|e| io_error("create", &root.display().to_string(), &e))?;
        remove_stale_temporaries(root, STALE_AFTER);
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
        self.put_by(key, body, None).await
    }

    /// [`FileSink::put`], but nothing lands once `deadline` has passed.
    pub async fn put_by(
        &self,
        key: &str,
        body: Bytes,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), SinkError> {
        let mut upload = self.start_upload(key).await?;
        upload.put_part(body).await?;
        upload.complete_by(deadline).await
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
                .prefix(TEMPORARY_PREFIX)
                .suffix(TEMPORARY_SUFFIX)
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

    pub async fn complete(self) -> Result<(), SinkError> {
        self.complete_by(None).await
    }

    /// Completes the upload unless `deadline` has passed by the moment the file would be
    /// renamed into place (checked in the blocking task itself, so a caller that stopped
    /// waiting never sees it land later); past it, the temporary file is removed.
    pub async fn complete_by(
        mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), SinkError> {
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
            if deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) {
                return Err(SinkError {
                    operation: "PUT",
                    key,
                    class: ErrorClass::Transient,
                    detail: "not written: the bound of the read it rewrites had passed".to_owned(),
                    retry_after: None,
                });
            }
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

/// Removes temporary files not modified for `age` from `root` and its subdirectories (`nar/`,
/// `log/`, `realisations/`: where objects are written). Best effort: a file that cannot be
/// removed is logged and left.
fn remove_stale_temporaries(root: &Path, age: Duration) {
    let now = SystemTime::now();
    let entries = |dir: &Path| -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().collect())
            .unwrap_or_default()
    };
    let top = entries(root);
    let below = top
        .iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .flat_map(|e| entries(&e.path()));
    for entry in top.iter().chain(below.collect::<Vec<_>>().iter()) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(TEMPORARY_PREFIX) && name.ends_with(TEMPORARY_SUFFIX)) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| crate::clock::age(now, t) > age);
        if stale {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed a stale temporary file"),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot remove a stale temporary file: {e}")
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_removes_stale_temporary_files_and_keeps_fresh_ones_and_objects() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("nar")).unwrap();
        let stale_top = root.path().join(".narpush-a1.tmp");
        let stale_nar = root.path().join("nar/.narpush-b2.tmp");
        let fresh = root.path().join("nar/.narpush-c3.tmp");
        let object = root.path().join("nar/old.nar.zst");
        for file in [&stale_top, &stale_nar, &fresh, &object] {
            std::fs::write(file, "x").unwrap();
        }
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for file in [&stale_top, &stale_nar, &object] {
            std::fs::File::options()
                .write(true)
                .open(file)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        FileSink::open(root.path()).unwrap();
        assert!(
            !stale_top.exists() && !stale_nar.exists(),
            "stale files left"
        );
        assert!(fresh.exists(), "a file being written was removed");
        assert!(object.exists(), "an object was removed");
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[tokio::test]
    async fn a_write_past_its_deadline_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path()).unwrap();
        let past = std::time::Instant::now();
        let error = sink
            .put_by("x.narinfo", Bytes::from_static(b"late"), Some(past))
            .await
            .unwrap_err();
        assert!(error.detail.contains("not written"), "{error}");
        assert!(!dir.path().join("x.narinfo").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let later = std::time::Instant::now() + Duration::from_secs(60);
        sink.put_by("y.narinfo", Bytes::from_static(b"on time"), Some(later))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("y.narinfo")).unwrap(),
            b"on time"
        );
    }
}
