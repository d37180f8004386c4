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
//!
//! A spooled request may name a path that vanished while the daemon was away (a store GC):
//! the other paths are queued, and the vanished one named in the log. Failures are of three
//! kinds (see [`EnqueueError::is_bad_request`]): the request's fault (refused for good), the
//! store's (Nix not answering, an I/O error: ask again later), and the daemon's own disk.

use crate::engine::error::io_class;
use crate::format::derivation::DerivationHead;
use crate::format::realisation::Realisation;
use crate::format::store_path::{StorePath, StorePathError};
use crate::gcroots::GcRootError;
use crate::queue::{NewPath, QueueError};
use crate::sink::ErrorClass;
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
    #[error("cannot look at '{path}'")]
    Stat {
        path: String,
        #[source]
        source: std::io::Error,
    },
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
    /// Whether the request itself is at fault, so that asking again cannot help (as opposed
    /// to the store not answering now, or the daemon's own disk).
    pub fn is_bad_request(&self) -> bool {
        !self.is_transient() && !self.is_own_trouble()
    }

    /// Whether the daemon's own state (its queue, its GC roots) failed: every other request
    /// would fail the same way now.
    pub fn is_own_trouble(&self) -> bool {
        matches!(self, EnqueueError::GcRoot(_) | EnqueueError::Queue(_))
    }

    /// Whether the store failed to answer for this request, and may answer later: Nix could
    /// not be run, did not answer in time or failed (the nix-daemon restarting, "database is
    /// locked"), or reading the store failed for lack of a resource or an I/O error.
    pub fn is_transient(&self) -> bool {
        match self {
            EnqueueError::Derivation(RealisationQueryError::Store { source, .. }) => {
                store_may_answer_later(source)
            }
            EnqueueError::Derivation(RealisationQueryError::Read { source, .. })
            | EnqueueError::Stat { source, .. } => io_class(source) == ErrorClass::Transient,
            _ => false,
        }
    }
}

/// Whether a failed `nix` command may succeed later: it ran, read the derivation (the
/// daemon parsed it already), and failed on the way, which is the store's condition, not the
/// request's; only output Nix printed that we cannot read is for good.
fn store_may_answer_later(error: &StoreError) -> bool {
    !matches!(
        error,
        StoreError::UnexpectedJson { .. } | StoreError::BadField { .. }
    )
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
    let paths = present_paths(paths, source)?;
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
    shared
        .intake
        .accept(&shared.queue, &shared.roots, &shared.wake, &new)
        .await?;
    // A path already uploading keeps its submission: the engine learns of the realisations
    // this request adds here (a pending one hands them over again when submitted, so the
    // engine forgets these first at its bound).
    shared.engine.add_realisations(realisations);
    Ok(new.len())
}

/// The paths still in the store. A vanished one fails the request, except in a spooled
/// request that names others: those are queued, the vanished one is named in the log (a
/// store GC while the daemon was away removed it; nothing could upload it any more).
fn present_paths(paths: Vec<StorePath>, source: Source) -> Result<Vec<StorePath>, EnqueueError> {
    let mut present = Vec::with_capacity(paths.len());
    let mut vanished = Vec::new();
    for path in paths {
        match std::fs::symlink_metadata(path.to_absolute()) {
            Ok(_) => present.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vanished.push(path),
            Err(source) => {
                return Err(EnqueueError::Stat {
                    path: path.to_absolute(),
                    source,
                })
            }
        }
    }
    match vanished.first() {
        None => Ok(present),
        Some(path) if source != Source::Spool || present.is_empty() => Err(EnqueueError::Absent {
            path: path.to_absolute(),
        }),
        Some(_) => {
            for path in &vanished {
                tracing::error!(
                    %path,
                    "a spooled request names a path that is no longer in the store (garbage-\
                     collected while the daemon was away?); it cannot be uploaded, queueing the \
                     request's other {} path(s)",
                    present.len()
                );
            }
            Ok(present)
        }
    }
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
