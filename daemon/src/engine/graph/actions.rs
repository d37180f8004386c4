//! What the graph asks of the coordinator ([`Action`]), what a lookup found ([`Lookup`]),
//! and what the engine's owner hears ([`Report`]): the graph's whole vocabulary with the
//! world outside it. Plain data; the rules that produce it are the graph's.

use std::sync::Arc;

use crate::engine::error::{Failure, UploadError};
use crate::filter::SkipReason;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;

/// What the coordinator must do next.
#[derive(Debug)]
pub enum Action {
    /// Look the path up in the cache (its narinfo).
    Check(StorePath),
    /// Upload the path's NAR.
    StoreNar(PathInfo),
    /// Sign and write the path's narinfo.
    Publish(StorePath, Box<NarInfo>),
    /// A stored NAR nobody waits for any more: keep it for a later attempt.
    KeepNar(StorePath, Box<NarInfo>),
    /// Tell the engine's owner.
    Report(Report),
}

/// Where a lookup found a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Neither in the cache nor upstream: it must be uploaded.
    Absent,
    /// Not in the cache, and an upstream cache did not answer: uploaded as if absent, but a
    /// path the push filters exclude is skipped only once no upstream serves it (retried).
    Unanswered,
    /// In the cache.
    Present,
    /// Served by an upstream cache (with its NarSize), so not uploaded.
    Upstream { nar_size: u64 },
}

/// What the engine's owner hears.
#[derive(Debug)]
pub enum Report {
    /// A path of a closure was found in the cache.
    Present(StorePath),
    /// A path of a closure is served upstream, so it is not uploaded.
    Upstream { path: StorePath, nar_size: u64 },
    /// A path's narinfo was published.
    Uploaded {
        path: StorePath,
        nar_size: u64,
        file_size: u64,
    },
    /// A path of a closure failed (its own error, or a reference's).
    Failed {
        path: StorePath,
        error: Arc<UploadError>,
    },
    /// A path of a closure is not uploaded: the push filters exclude it, or it needs a path
    /// they exclude that neither the cache nor upstream has.
    Skipped { path: StorePath, reason: SkipReason },
    /// A submitted path and its closure are in the cache.
    TopDone(StorePath),
    /// A submitted path is not uploaded, by the push filters (see [`Report::Skipped`]).
    TopSkipped { top: StorePath, reason: SkipReason },
    /// A submitted path is not in the cache, and why.
    TopFailed { top: StorePath, failure: Failure },
}
