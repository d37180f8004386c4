//! Reading a deriver's `.drv` from the store for `exclude_outputs`: which output name it
//! records for each path. Bounded and careful, since the file is read on behalf of whoever
//! submitted the path: at most [`MAX_DRV_BYTES`], opened without following a symlink and
//! without blocking on anything but a regular file, and read off the async runtime (see
//! [`outputs_of`]).
//!
//! Invariant: a `.drv` that cannot be read (gone, too big, not a regular file, not text, does
//! not parse) yields no outputs, so its paths are not excluded by output name; every such
//! case but a missing file (a substituted or garbage-collected deriver, which is ordinary) is
//! logged as a warning naming the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::format::derivation;
use crate::format::store_path::{StorePath, STORE_DIR};

/// The largest `.drv` read (real ones are kilobytes; a few of nixpkgs' reach a megabyte).
pub const MAX_DRV_BYTES: u64 = 16 << 20;

/// A deriver's outputs that have a path: `(output name, path)`.
pub type Outputs = Vec<(String, StorePath)>;

#[derive(Debug, thiserror::Error)]
pub enum DrvReadError {
    #[error("cannot open {file}: {source}")]
    Open {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not a regular file")]
    NotAFile { file: PathBuf },
    #[error("{file} is larger than {MAX_DRV_BYTES} bytes")]
    TooBig { file: PathBuf },
    #[error("cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not UTF-8 text")]
    NotText { file: PathBuf },
    #[error("{file} does not parse as a derivation: {reason}")]
    Parse { file: PathBuf, reason: String },
}

impl DrvReadError {
    /// Whether the file is simply not there (an ordinary case, not worth a warning).
    fn is_missing(&self) -> bool {
        matches!(self, DrvReadError::Open { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The outputs of each of `derivers` that can be read from the store (the others are left
/// out, with a warning naming the file), read on tokio's blocking threads.
pub async fn outputs_of(derivers: Vec<StorePath>) -> HashMap<StorePath, Outputs> {
    if derivers.is_empty() {
        return HashMap::new();
    }
    // The simulated store (feature `sim`) is the calling thread's, and answers at once.
    #[cfg(feature = "sim")]
    if crate::store::simulated::installed().is_some() {
        return derivers
            .into_iter()
            .filter_map(|drv| Some((drv.clone(), read_simulated_drv(&drv)?)))
            .collect();
    }
    let read = tokio::task::spawn_blocking(move || {
        derivers
            .into_iter()
            .filter_map(|drv| Some((drv.clone(), read_store_drv(&drv)?)))
            .collect()
    })
    .await;
    read.unwrap_or_else(|e| {
        tracing::warn!("reading derivers failed ({e}): no path is excluded by output name");
        HashMap::new()
    })
}

/// A `.drv`'s outputs from the store; `None`, said in the log, when it cannot be read.
fn read_store_drv(drv: &StorePath) -> Option<Outputs> {
    let file = Path::new(STORE_DIR).join(drv.basename());
    match read_drv_file(&file) {
        Ok(outputs) => Some(outputs),
        Err(e) if e.is_missing() => {
            tracing::debug!("deriver {e}: its outputs are not excluded by name");
            None
        }
        Err(e) => {
            tracing::warn!("deriver {e}: its outputs are not excluded by output name");
            None
        }
    }
}

/// A `.drv`'s outputs from the simulated store; `None` when it lacks the file or the file
/// does not parse (as for the real store).
#[cfg(feature = "sim")]
fn read_simulated_drv(drv: &StorePath) -> Option<Outputs> {
    let file = Path::new(STORE_DIR).join(drv.basename());
    let text = crate::store::simulated::derivation(&file.to_string_lossy())??;
    derivation::output_paths(&text)
        .inspect_err(|e| {
            tracing::warn!(
                "deriver {} does not parse ({e}): its outputs are not excluded by output name",
                file.display()
            );
        })
        .ok()
}

/// The outputs `file`, a `.drv`, records with a path.
pub fn read_drv_file(file: &Path) -> Result<Outputs, DrvReadError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
        .map_err(|source| DrvReadError::Open {
            file: file.to_owned(),
            source,
        })?;
    let read_error = |source| DrvReadError::Read {
        file: file.to_owned(),
        source,
    };
    if !opened.metadata().map_err(read_error)?.is_file() {
        return Err(DrvReadError::NotAFile {
            file: file.to_owned(),
        });
    }
    let mut bytes = Vec::new();
    let mut limited: std::io::Take<File> = opened.take(MAX_DRV_BYTES + 1);
    limited.read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_DRV_BYTES {
        return Err(DrvReadError::TooBig {
            file: file.to_owned(),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| DrvReadError::NotText {
        file: file.to_owned(),
    })?;
    derivation::output_paths(&text).map_err(|e| DrvReadError::Parse {
        file: file.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[path = "derivers/tests.rs"]
mod tests;
