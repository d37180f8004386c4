//! The work the coordinator hands out, one future per task: look a path up, store a NAR,
//! publish a narinfo (and realisations, in `realisations`). Each ends in a [`Done`] that says what it was for, and a task that
//! panicked or was cancelled is turned into the [`Done`] its [`Purpose`] implies, so the
//! coordinator's graph never waits for a result that will not come.
//!
//! Concurrency limits are the coordinator's: these futures run once they hold their permits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinError;
use tokio::time::Instant;

use super::graph::Lookup;
use super::progress::{EngineView, Listed};
use super::resolve::Resolution;
use super::stream::{self, SlotRelease, StreamSettings};
use super::{narinfo_for, sign, EngineConfig, UploadError};
// How long a refreshed narinfo is watched for a collection that planned its deletion before
// the refresh: the protocol's rule U2.
use crate::coexist::{
    Check, CLOCK_SLACK, REFRESH_ROUNDS, REFRESH_SETTLE, SETTLE_ROUNDS, STORED_SETTLE,
};
use crate::filter::SkipReason;
use crate::format::narinfo::NarInfo;
use crate::format::realisation::DrvOutputId;
use crate::format::store_path::StorePath;
use crate::gc;
use crate::layout::{self, content_type};
use crate::sink::contended::Wanted;
use crate::sink::Sink;
use crate::store::PathInfo;
use crate::trust::trusted_narinfo;
use crate::upstream::Answer;

/// The result of one task, keyed by what it worked on.
pub(super) enum Done {
    Resolved(Vec<StorePath>, Result<Resolution, UploadError>),
    /// Closures submitted resolved, with what the push filters exclude of them.
    Filtered(Vec<StorePath>, Result<Filtered, UploadError>),
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
/// Resolved closures and the paths of them (or, without closures, of their references) that
/// the push filters exclude.
pub(super) struct Filtered {
    pub infos: Vec<PathInfo>,
    pub excluded: HashMap<StorePath, SkipReason>,
}

pub(super) enum Purpose {
    Resolve(Vec<StorePath>),
    Filter(Vec<StorePath>),
    Check(StorePath),
    Store(StorePath, bool),
    Publish(StorePath, Box<NarInfo>),
    PublishRealisations(Vec<DrvOutputId>),
}

/// Looks `path` up: in the cache, else in the upstream caches.
///
/// The cache has it only when its narinfo there is trusted (see [`in_cache`]); any other
/// narinfo is as good as none, and the path is uploaded again, overwriting it.
///
/// A narinfo found older than `refresh_after` is rewritten so that retention GC sees that the
/// path is built upon again. A collection that listed it just before may still delete it: such
/// a deletion comes within [`gc::DELETE_WINDOW`] of that listing, so after waiting longer than
/// that the narinfo and its NAR are looked for once more, and the path uploaded again if
/// either is gone.
///
/// Its requests each hold a slot of `requests`; the waits of U1 and U2 hold none, so that the
/// second looks of many young narinfos (a closure another uploader has just published) wait
/// side by side.
pub(super) async fn check(config: &EngineConfig, path: StorePath, requests: &Semaphore) -> Done {
    let result = lookup(config, &path, requests).await;
    Done::Checked(path, result)
}

/// A request slot held while the lookup's requests are sent, given back for its waits.
struct Slot<'a> {
    requests: &'a Semaphore,
    permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl<'a> Slot<'a> {
    async fn take(requests: &'a Semaphore) -> Slot<'a> {
        Slot {
            requests,
            permit: requests.acquire().await.ok(),
        }
    }

    /// Waits `duration` without the slot, then takes one again.
    async fn sleep(&mut self, duration: std::time::Duration) {
        self.permit = None;
        tokio::time::sleep(duration).await;
        self.permit = self.requests.acquire().await.ok();
    }
}

async fn lookup(
    config: &EngineConfig,
    path: &StorePath,
    requests: &Semaphore,
) -> Result<Lookup, UploadError> {
    if config.forced.contains(path) {
        return Ok(Lookup::Absent);
    }
    let key = layout::narinfo_key(path);
    let mut slot = Slot::take(requests).await;
    for _ in 0..REFRESH_ROUNDS {
        let check = Check::begin();
        let Some(found) = in_cache(config, path, &key).await? else {
            return Ok(match config.upstream.answer(path).await {
                Answer::Served(nar_size) => Lookup::Upstream { nar_size },
                Answer::NotServed => Lookup::Absent,
                Answer::NoAnswer => Lookup::Unanswered,
            });
        };
        let age = crate::clock::age(crate::clock::now(), found.modified);
        if age < REFRESH_SETTLE + CLOCK_SLACK {
            // Just written by another uploader (U1): a collection's delete allowed before
            // that write may still land; it has by `S` after this read.
            slot.sleep(REFRESH_SETTLE).await;
            return look_again(&config.sink, &key, &found.nar_key).await;
        }
        if age <= config.refresh_after {
            return Ok(Lookup::Present);
        }
        if let Some(lookup) = refresh(&config.sink, &key, found, &check, &mut slot).await? {
            return Ok(lookup);
        }
        tracing::info!(
            %path,
            "the lookup took longer than the bound of a refresh (rule U2); looking again"
        );
    }
    // The store answers too slowly to refresh within the bound: uploading the path again
    // publishes its narinfo under the rules of a new one.
    Ok(Lookup::Absent)
}

/// A narinfo of the cache that can be built upon, as read.
struct Found {
    body: Bytes,
    modified: SystemTime,
    nar_key: String,
}

/// The narinfo of `path` at `key`, if the cache has it and it can be trusted: it parses, is
/// `path`'s, carries a valid signature by one of our own keys, and its NAR exists. Two
/// requests for a path that is there (GET the narinfo, then HEAD its NAR), one for a path that
/// is not.
async fn in_cache(
    config: &EngineConfig,
    path: &StorePath,
    key: &str,
) -> Result<Option<Found>, UploadError> {
    let Some(fetched) = config.sink.fetch(key).await? else {
        return Ok(None);
    };
    let narinfo = match trusted_narinfo(&fetched.body, path, &config.own_keys) {
        Ok(narinfo) => narinfo,
        Err(why) => {
            tracing::info!(
                %path,
                "the cache's narinfo is not ours to trust ({}); uploading the path again",
                crate::error_chain(&why)
            );
            return Ok(None);
        }
    };
    if !layout::is_nar_key(&narinfo.url) {
        tracing::info!(
            %path,
            url = narinfo.url,
            "the cache's narinfo points outside nar/; uploading the path again"
        );
        return Ok(None);
    }
    if !config.sink.exists(&narinfo.url).await? {
        tracing::info!(
            %path,
            url = narinfo.url,
            "the cache's narinfo points at a NAR that is gone; uploading the path again"
        );
        return Ok(None);
    }
    Ok(Some(Found {
        body: fetched.body,
        modified: fetched.modified,
        nar_key: narinfo.url,
    }))
}

/// Writes the narinfo `found` at `key` again, unchanged, then makes sure no collection
/// deleted it or its NAR. The write is sent only within the bound of `check`, the lookup that
/// found it, and given only the time left (rule U2: a collection that deleted the narinfo
/// meanwhile waits for such a write-back before it looks at what the narinfo needs, G7);
/// `None` when the lookup took too long and must be made again.
async fn refresh(
    sink: &Sink,
    key: &str,
    found: Found,
    check: &Check,
    slot: &mut Slot<'_>,
) -> Result<Option<Lookup>, UploadError> {
    if check.time_left().is_none() {
        return Ok(None);
    }
    sink.put_within(key, found.body, content_type::NARINFO, check)
        .await?;
    slot.sleep(REFRESH_SETTLE).await;
    look_again(sink, key, &found.nar_key).await.map(Some)
}

/// The second look of U1 and U2: present only if the narinfo and its NAR both still are.
async fn look_again(sink: &Sink, key: &str, nar_key: &str) -> Result<Lookup, UploadError> {
    let (narinfo, nar) = tokio::try_join!(sink.exists(key), sink.exists(nar_key))?;
    Ok(if narinfo && nar {
        Lookup::Present
    } else {
        Lookup::Absent
    })
}

/// Signs `narinfo` with the configured keys and writes it.
pub(super) async fn publish(config: &EngineConfig, path: StorePath, narinfo: Box<NarInfo>) -> Done {
    let mut signed = (*narinfo).clone();
    let result = async {
        sign(&mut signed, &config.keys)?;
        let body = Bytes::from(signed.to_string());
        // Another uploader may publish the same path at the same moment (see
        // crate::sink::contended): its narinfo will do as well as ours.
        let wanted = Wanted::Narinfo {
            ours: &signed,
            keys: &config.own_keys,
        };
        config
            .sink
            .put_contended(
                &layout::narinfo_key(&path),
                body,
                content_type::NARINFO,
                &wanted,
            )
            .await?;
        Ok(())
    }
    .await;
    Done::Published(path, narinfo, result)
}

/// A NAR in the cache, as its narinfo will say, and since when it must stay there before that
/// narinfo may be published (rule U6).
pub(super) struct Written {
    pub narinfo: Box<NarInfo>,
    /// When a NAR named by its FileHash was found, kept from an earlier attempt (narpush
    /// before 2026-12 named NARs of one PUT so); `None` for a key no other upload uses, which
    /// is every NAR narpush writes.
    pub settle_from: Option<Instant>,
    /// Keeps the upload in `status` until its narinfo may be published (the look of U6).
    pub listed: Option<Listed>,
}

/// Rule U6 of [`crate::coexist`]: `store` stores the NAR, or finds one kept from an earlier
/// attempt; a kept one named by its FileHash (which other writers may write too) is looked at
/// (HEAD) again [`STORED_SETTLE`] after its PUT, and stored again if a collection
/// deleted it meanwhile, up to [`SETTLE_ROUNDS`] times. The wait holds no concurrency
/// permit: `store` takes its own, the look one of `requests`.
pub(super) async fn store_settled<F, Fut>(
    config: &EngineConfig,
    path: &StorePath,
    requests: &Semaphore,
    mut store: F,
) -> Result<Box<NarInfo>, UploadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Written, UploadError>>,
{
    for _ in 0..SETTLE_ROUNDS {
        let Written {
            narinfo,
            settle_from,
            listed,
        } = store().await?;
        let Some(from) = settle_from else {
            return Ok(narinfo);
        };
        tokio::time::sleep_until(from + STORED_SETTLE).await;
        let _permit = requests.acquire().await;
        let there = still_there(config, &narinfo.url).await?;
        drop(listed);
        if there {
            return Ok(narinfo);
        }
        tracing::warn!(
            %path,
            key = narinfo.url,
            "a collection deleted the NAR just stored again under its FileHash; storing it again"
        );
    }
    Err(UploadError::Internal {
        path: path.to_absolute(),
        detail: format!(
            "its NAR was deleted right after each of {SETTLE_ROUNDS} PUTs: is something besides \
             `narpush gc` deleting nar/ objects (a lifecycle rule)?"
        ),
    })
}

/// Whether the NAR at `key` is there. A refused look (credentials that may write but not
/// read) cannot tell: the narinfo is published as it would be without the look.
async fn still_there(config: &EngineConfig, key: &str) -> Result<bool, UploadError> {
    Ok(match config.sink.head(key).await? {
        crate::sink::Read::Found(_) => true,
        crate::sink::Read::Absent => false,
        crate::sink::Read::Refused(error) => {
            tracing::warn!(
                key,
                "{error}: cannot look at the NAR again before its narinfo (rule U6 of the \
                 gc protocol); grant s3:GetObject to close that window"
            );
            true
        }
    })
}

/// Stores the NAR of `info` (and its `.ls` listing when `settings` ask for one), or reuses one
/// stored by an earlier attempt if it is still there.
pub(super) async fn store_nar(
    config: &EngineConfig,
    info: &PathInfo,
    settings: StreamSettings,
    kept: Option<Box<NarInfo>>,
    view: &Arc<EngineView>,
    slot: Option<SlotRelease>,
) -> Result<Written, UploadError> {
    if let Some(kept) = kept {
        // Only a NAR well inside retention GC's grace period: an older one, which no narinfo
        // uses yet, may be collected before the narinfo that would use it is published.
        let fresh = |modified: SystemTime| {
            crate::clock::age(crate::clock::now(), modified) < gc::MIN_GRACE / 2
        };
        // The attempt that stored it also wrote its listing, unless listings were turned on
        // since: then the NAR is streamed again, to build one.
        if kept.nar_hash == info.nar_hash
            && config.sink.modified(&kept.url).await?.is_some_and(fresh)
            && (settings.listing.is_none()
                || config.sink.exists(&layout::listing_key(&info.path)).await?)
        {
            // When its own look (U6) was made is not known: it is made again.
            let by_file_hash = layout::is_named_by_file_hash(&kept.url);
            return Ok(Written {
                narinfo: kept,
                settle_from: by_file_hash.then(Instant::now),
                listed: None,
            });
        }
    }
    let listing_compression = settings.listing;
    let listed = view.start_stream(&info.path, info.nar_size);
    let progress = listed.progress();
    let stored = stream::store_nar(&config.sink, info, settings, progress.clone(), slot).await;
    if stored.is_ok() {
        view.stream_finished(info.nar_size, progress.started.elapsed());
    }
    let stored = stored?;
    if let (Some(listing), Some(compression)) = (&stored.listing, listing_compression) {
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
    Ok(Written {
        narinfo: Box::new(narinfo_for(info, &stored)),
        settle_from: None,
        listed: Some(listed),
    })
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
        Purpose::Filter(tops) => {
            let error = UploadError::Internal {
                path: format!("{} path(s)", tops.len()),
                detail: format!("applying the push filters failed: {error}"),
            };
            Done::Filtered(tops, Err(error))
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

#[cfg(test)]
#[path = "tasks/tests.rs"]
mod tests;
