//! Turning an `enqueue` request (from the socket or a spool file) into durable queue entries.
//!
//! Order matters and is the point of this module: validate everything first (a request with
//! one bad path changes nothing), then take the GC roots, then write the queue and wait for the
//! flush. Only then may the caller acknowledge, and by then the paths are protected from
//! garbage collection and survive a crash.

use std::io::Read;
use std::path::Path;

use crate::format::derivation::{self, DerivationError};
use crate::format::store_path::{StorePath, StorePathError};
use crate::gcroots::GcRootError;
use crate::queue::{NewPath, QueueError};
use narpush_protocol::Source;

use super::shared::Shared;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("'{value}' is not a store path")]
    NotStorePath {
        value: String,
        #[source]
        source: StorePathError,
    },
    #[error("'{path}' is not in the store (was it garbage-collected?)")]
    Absent { path: String },
    #[error("'{drv}' is not a derivation (.drv)")]
    NotDerivation { drv: String },
    #[error("cannot read derivation {drv}")]
    ReadDerivation {
        drv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the outputs of {drv}")]
    ParseDerivation {
        drv: String,
        #[source]
        source: DerivationError,
    },
    #[error("{drv} has no output with a known path")]
    NoOutputs { drv: String },
    #[error(transparent)]
    GcRoot(#[from] GcRootError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl EnqueueError {
    /// Whether the request itself is at fault (as opposed to the daemon's disk).
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, EnqueueError::GcRoot(_) | EnqueueError::Queue(_))
    }
}

/// Queues the paths of a request durably; returns how many paths were queued.
pub async fn enqueue(
    shared: &Shared,
    source: Source,
    drv: Option<&str>,
    outs: &[String],
) -> Result<usize, EnqueueError> {
    let drv = drv.map(parse_drv).transpose()?;
    let mut paths = outs
        .iter()
        .map(|value| store_path(value))
        .collect::<Result<Vec<_>, _>>()?;
    if paths.is_empty() {
        // Nix 2.8.0 leaves OUT_PATHS empty: the outputs come from the derivation.
        if let Some(drv) = &drv {
            paths = outputs_of(drv)?;
        }
    }
    for path in &paths {
        if std::fs::symlink_metadata(path.to_absolute()).is_err() {
            return Err(EnqueueError::Absent {
                path: path.to_absolute(),
            });
        }
    }
    for path in &paths {
        shared.roots.add(path)?;
    }
    let new: Vec<NewPath> = paths
        .into_iter()
        .map(|path| NewPath {
            path,
            source,
            drv: drv.clone(),
        })
        .collect();
    // On failure too: the pipeline is what reopens a failed queue.
    let queued = shared.queue.enqueue(&new).await;
    shared.wake.notify_one();
    queued?;
    Ok(new.len())
}

pub fn store_path(value: &str) -> Result<StorePath, EnqueueError> {
    StorePath::from_absolute_path(value).map_err(|source| EnqueueError::NotStorePath {
        value: value.to_owned(),
        source,
    })
}

fn parse_drv(value: &str) -> Result<StorePath, EnqueueError> {
    let drv = store_path(value)?;
    if !drv.name().ends_with(".drv") {
        return Err(EnqueueError::NotDerivation {
            drv: value.to_owned(),
        });
    }
    Ok(drv)
}

/// How much of a `.drv` is read: its outputs list comes first, and the rest (the environment,
/// which any user's derivation can make huge) is never needed.
const DRV_PREFIX: u64 = 1 << 20;

fn outputs_of(drv: &StorePath) -> Result<Vec<StorePath>, EnqueueError> {
    let file = drv.to_absolute();
    let mut bytes = Vec::new();
    std::fs::File::open(Path::new(&file))
        .and_then(|f| f.take(DRV_PREFIX).read_to_end(&mut bytes))
        .map_err(|source| EnqueueError::ReadDerivation {
            drv: file.clone(),
            source,
        })?;
    // Environment strings may hold any bytes; the outputs list is ASCII, and a replaced
    // invalid sequence never contains the quotes or commas the parser looks for.
    let text = String::from_utf8_lossy(&bytes);
    let outputs =
        derivation::output_paths(&text).map_err(|source| EnqueueError::ParseDerivation {
            drv: file.clone(),
            source,
        })?;
    if outputs.is_empty() {
        return Err(EnqueueError::NoOutputs { drv: file });
    }
    Ok(outputs.into_iter().map(|(_, path)| path).collect())
}
