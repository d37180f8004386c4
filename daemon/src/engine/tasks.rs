//! The work the coordinator hands out, one future per task: look a path up, store a NAR,
//! publish a narinfo (and realisations, in `realisations`). Each ends in a [`Done`] that says what it was for, and a task that
//! panicked or was cancelled is turned into the [`Done`] its [`Purpose`] implies, so the
//! coordinator's graph never waits for a result that will not come.
//!
//! Concurrency limits are the coordinator's: these futures run once they hold their permits.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::task::JoinError;

use super::graph::Lookup;
use super::progress::EngineView;
use super::resolve::Resolution;
use super::stream::{self, StreamSettings};
use super::{narinfo_for, sign, EngineConfig, UploadError};
use crate::format::narinfo::NarInfo;
use crate::format::realisation::DrvOutputId;
use crate::format::store_path::StorePath;
use crate::gc;
use crate::layout::{self, content_type};
use crate::sink::Sink;
use crate::store::PathInfo;

/// How long a refreshed narinfo is watched for a collection that planned its deletion before
/// the refresh: longer than such a collection may take to delete it.
const REFRESH_SETTLE: Duration = Duration::from_secs(2 * gc::DELETE_WINDOW.as_secs() + 1);

/// The result of one task, keyed by what it worked on.
pub(super) enum Done {
    Resolved(Vec<StorePath>, Result<Resolution, UploadError>),
    Checked(StorePath, Result<Lookup, UploadError>),
    Stored {
        path: StorePath,
        big: bool,
        result: Result<Box<NarInfo>, UploadError>,
    },
    Published(StorePath, Box<NarInfo>, Result<(), UploadError>),
    /// Realisations written (see `realisations`), by id.
    RealisationsPublished(Vec<DrvOutputId>, Result<(), UploadError>),
}

/// What a task was for, so that a task that panicked still yields a [`Done`].
pub(super) enum Purpose {
    Resolve(Vec<StorePath>),
    Check(StorePath),
    Store(StorePath, bool),
    Publish(StorePath, Box<NarInfo>),
    PublishRealisations(Vec<DrvOutputId>),
}

/// Looks `path` up: in the cache (its narinfo exists), else in the upstream caches.
///
/// A narinfo found older than `refresh_after` is rewritten so that retention GC sees that the
/// path is built upon again. A collection that listed it just before may still delete it: such
/// a deletion comes within [`gc::DELETE_WINDOW`] of that listing, so after waiting longer than
/// that the narinfo is looked for once more, and uploaded again if it is gone.
pub(super) async fn check(config: &EngineConfig, path: StorePath) -> Done {
    let key = layout::narinfo_key(&path);
    let result = match config.sink.modified(&key).await {
        Ok(Some(modified)) => {
            let age = SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default();
            if age > config.refresh_after {
                refresh(&config.sink, &key).await
            } else {
                Ok(Lookup::Present)
            }
        }
        Ok(None) => Ok(match config.upstream.serves(&path).await {
            Some(nar_size) => Lookup::Upstream { nar_size },
            None => Lookup::Absent,
        }),
        Err(e) => Err(UploadError::from(e)),
    };
    Done::Checked(path, result)
}

/// Writes the narinfo at `key` again, unchanged, then makes sure no collection deleted it.
async fn refresh(sink: &Sink, key: &str) -> Result<Lookup, UploadError> {
    let Some(body) = sink.get(key).await? else {
        return Ok(Lookup::Absent);
    };
    sink.put(key, body, content_type::NARINFO).await?;
    tokio::time::sleep(REFRESH_SETTLE).await;
    Ok(match sink.modified(key).await? {
        Some(_) => Lookup::Present,
        None => Lookup::Absent,
    })
}

/// Signs `narinfo` with the configured keys and writes it.
pub(super) async fn publish(config: &EngineConfig, path: StorePath, narinfo: Box<NarInfo>) -> Done {
    let mut signed = (*narinfo).clone();
    let result = async {
        sign(&mut signed, &config.keys)?;
        let body = Bytes::from(signed.to_string());
        config
            .sink
            .put(&layout::narinfo_key(&path), body, content_type::NARINFO)
            .await?;
        Ok(())
    }
    .await;
    Done::Published(path, narinfo, result)
}

/// Stores the NAR of `info` (and its `.ls` listing when `settings` ask for one), or reuses one
/// stored by an earlier attempt if it is still there.
pub(super) async fn store_nar(
    config: &EngineConfig,
    info: &PathInfo,
    settings: StreamSettings,
    kept: Option<Box<NarInfo>>,
    view: &EngineView,
) -> Result<Box<NarInfo>, UploadError> {
    if let Some(kept) = kept {
        // Only a NAR well inside retention GC's grace period: an older one, which no narinfo
        // uses yet, may be collected before the narinfo that would use it is published.
        let fresh = |modified: SystemTime| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age < gc::MIN_GRACE / 2)
        };
        // The attempt that stored it also wrote its listing, unless listings were turned on
        // since: then the NAR is streamed again, to build one.
        if kept.nar_hash == info.nar_hash
            && config.sink.modified(&kept.url).await?.is_some_and(fresh)
            && (settings.listing.is_none()
                || config.sink.exists(&layout::listing_key(&info.path)).await?)
        {
            return Ok(kept);
        }
    }
    let listed = view.start_stream(&info.path, info.nar_size);
    let progress = listed.progress();
    let stored = stream::store_nar(&config.sink, info, settings, progress.clone()).await;
    drop(listed);
    if stored.is_ok() {
        view.stream_finished(info.nar_size, progress.started.elapsed());
    }
    let stored = stored?;
    if let (Some(listing), Some(compression)) = (&stored.listing, settings.listing) {
        // Before the narinfo, which is published only once this task has returned.
        config
            .sink
            .put_encoded(
                &layout::listing_key(&info.path),
                listing.clone(),
                content_type::LISTING,
                layout::listing_content_encoding(compression),
            )
            .await?;
    }
    Ok(Box::new(narinfo_for(info, &stored)))
}

/// The result a task would have given, for a task that panicked or was cancelled.
pub(super) fn failed(purpose: Purpose, error: &JoinError) -> Done {
    let internal = |path: &StorePath| UploadError::Internal {
        path: path.to_absolute(),
        detail: format!("the upload task failed: {error}"),
    };
    match purpose {
        Purpose::Resolve(tops) => {
            let error = UploadError::Internal {
                path: format!("{} path(s)", tops.len()),
                detail: format!("reading the closures failed: {error}"),
            };
            Done::Resolved(tops, Err(error))
        }
        Purpose::Check(path) => Done::Checked(path.clone(), Err(internal(&path))),
        Purpose::Store(path, big) => Done::Stored {
            result: Err(internal(&path)),
            path,
            big,
        },
        Purpose::Publish(path, narinfo) => {
            Done::Published(path.clone(), narinfo, Err(internal(&path)))
        }
        Purpose::PublishRealisations(ids) => {
            let error = UploadError::Internal {
                path: format!("{} realisation(s)", ids.len()),
                detail: format!("publishing them failed: {error}"),
            };
            Done::RealisationsPublished(ids, Err(error))
        }
    }
}
