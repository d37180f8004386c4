//! Turning an `enqueue` request (from the socket or a spool file) into durable queue entries.
//!
//! Order matters and is the point of this module: validate everything first (a request with
//! one bad path changes nothing), then take the GC roots and sync their directory, then make
//! the request durable (the intake journal, or the queue and its flush; see
//! [`super::intake`]). Only then may the
//! caller acknowledge, and by then the paths are protected from garbage collection and
//! survive a crash.
//!
//! A floating content-addressed derivation names no output paths: its outputs, and the
//! realisations to publish with them, come from `nix realisation info` (see
//! [`store::realisations_of`]), which costs one `nix` process while the hook waits.

use crate::format::derivation::DerivationHead;
use crate::format::realisation::Realisation;
use crate::format::store_path::{StorePath, StorePathError};
use crate::gcroots::GcRootError;
use crate::queue::{NewPath, QueueError};
use crate::store::{self, RealisationQueryError, StoreError};
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
    #[error(transparent)]
    Derivation(#[from] RealisationQueryError),
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
        // Nix that could not be run, or did not answer in time, may answer a later attempt.
        let nix_unavailable = matches!(
            self,
            EnqueueError::Derivation(RealisationQueryError::Store {
                source: StoreError::Spawn { .. } | StoreError::TimedOut { .. },
                ..
            })
        );
        !nix_unavailable && !matches!(self, EnqueueError::GcRoot(_) | EnqueueError::Queue(_))
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
    let mut realisations = Vec::new();
    if let Some(drv) = &drv {
        // Nix 2.8.0 leaves OUT_PATHS empty: the outputs come from the derivation. With
        // OUT_PATHS given, the derivation only matters if it is content-addressed.
        let head = match store::derivation_head(drv) {
            Ok(head) => head,
            Err(error) if paths.is_empty() => return Err(error.into()),
            Err(_) => DerivationHead::default(),
        };
        if head.has_floating_outputs() {
            let found = store::realisations_of(drv, &head).await?;
            realisations = found.all();
            if paths.is_empty() {
                paths.extend(found.own.iter().map(|r| r.out_path.clone()));
            }
        }
        if paths.is_empty() {
            paths.extend(head.outputs.into_iter().filter_map(|(_, path)| path));
        }
        if paths.is_empty() {
            return Err(EnqueueError::NoOutputs {
                drv: drv.to_absolute(),
            });
        }
    }
    for path in &paths {
        if std::fs::symlink_metadata(path.to_absolute()).is_err() {
            return Err(EnqueueError::Absent {
                path: path.to_absolute(),
            });
        }
    }
    // Durable before the request is: a root lost with a power loss after the ack would
    // leave the path to the next garbage collection.
    shared.roots.protect(&paths).await?;
    let new: Vec<NewPath> = paths
        .into_iter()
        .map(|path| NewPath {
            realisations: realisations_for(&realisations, &path),
            path,
            source,
            drv: drv.clone(),
        })
        .collect();
    shared.intake.accept(shared, &new).await?;
    // A path already uploading keeps its submission: the engine learns of the realisations
    // this request adds here (a pending one hands them over again when submitted).
    shared.engine.add_realisations(realisations);
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

/// The realisations to keep with `path`'s entry: those of `path`, and every other one of the
/// request (the dependencies they may name; the engine publishes each once).
fn realisations_for(realisations: &[Realisation], path: &StorePath) -> Vec<Realisation> {
    if realisations.iter().any(|r| &r.out_path == path) {
        realisations.to_vec()
    } else {
        Vec::new()
    }
}
