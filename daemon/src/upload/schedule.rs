//! Uploading many paths at once while keeping the closure invariant: *whenever a narinfo
//! exists in the cache, the narinfos of all its references exist too*.
//!
//! NARs upload in parallel, at most `jobs` at a time, largest first (the largest NAR bounds
//! the batch's wall time, so it starts first). A path's narinfo is published once its own NAR
//! is complete and every reference (other than itself) is either already in the cache or was
//! published in this batch. References cannot form cycles between distinct store paths, so
//! every path is eventually published or failed.
//!
//! A failure is contagious upward only: when a path fails, every path that references it,
//! directly or not, is failed too without publishing its narinfo (its NAR may still have been
//! uploaded; an unreferenced NAR is harmless and is reused when the path is tried again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::progress::Progress;
use super::stream::{self, StreamSettings};
use super::{narinfo_for, narinfo_key, UploadError};
use crate::format::narinfo::NarInfo;
use crate::format::signing::SigningKey;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;
use crate::target::{content_type, Target};

/// Everything an upload batch needs besides the paths.
#[derive(Clone)]
pub struct Uploader {
    pub target: Arc<Target>,
    pub keys: Arc<Vec<SigningKey>>,
    pub settings: StreamSettings,
    pub jobs: usize,
}

/// One path that is now in the cache.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub path: StorePath,
    pub nar_size: u64,
    pub file_size: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub uploaded: Vec<Uploaded>,
    pub failed: Vec<(StorePath, UploadError)>,
}

enum Event {
    NarDone(StorePath, Result<Box<NarInfo>, UploadError>),
    NarInfoDone(StorePath, Result<(), UploadError>),
}

/// Uploads `missing` (paths whose narinfo the cache lacks). `available` are paths the cache
/// already has; a reference that is in neither set fails the path that needs it.
pub async fn upload_all(
    uploader: &Uploader,
    missing: Vec<PathInfo>,
    available: &HashSet<StorePath>,
    progress: Arc<Progress>,
) -> Report {
    let mut state = State::new(&missing, available);
    let mut tasks = JoinSet::new();
    let permits = Arc::new(Semaphore::new(uploader.jobs.max(1)));

    let mut by_size = missing;
    by_size.sort_by_key(|info| std::cmp::Reverse(info.nar_size));
    for info in by_size {
        if state.failed.contains(&info.path) {
            continue;
        }
        let uploader = uploader.clone();
        let permits = permits.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                unreachable!("the semaphore is never closed");
            };
            let key = stream::nar_key(&info, uploader.settings.compression);
            let result =
                stream::upload_nar(&uploader.target, &key, &info, uploader.settings, progress)
                    .await
                    .and_then(|streamed| {
                        narinfo_for(
                            &info,
                            &key,
                            uploader.settings.compression,
                            &streamed,
                            &uploader.keys,
                        )
                    })
                    .map(Box::new);
            Event::NarDone(info.path, result)
        });
    }
    state.report_failures(&progress);

    while let Some(joined) = tasks.join_next().await {
        let event = match joined {
            Ok(event) => event,
            Err(e) => panic!("an upload task panicked: {e}"),
        };
        match event {
            Event::NarDone(path, Ok(narinfo)) => {
                state.nar_ready.insert(path.clone(), *narinfo);
                state.publish_if_ready(&path, &mut tasks, &uploader.target);
            }
            Event::NarInfoDone(path, Ok(())) => {
                if let Some(uploaded) = state.published(&path) {
                    progress.path_uploaded(
                        &path.to_absolute(),
                        uploaded.nar_size,
                        uploaded.file_size,
                    );
                    state.report.uploaded.push(uploaded);
                }
                for dependent in state.dependents.get(&path).cloned().unwrap_or_default() {
                    if let Some(blockers) = state.blockers.get_mut(&dependent) {
                        blockers.remove(&path);
                    }
                    state.publish_if_ready(&dependent, &mut tasks, &uploader.target);
                }
            }
            Event::NarDone(path, Err(error)) | Event::NarInfoDone(path, Err(error)) => {
                state.fail(&path, error);
                state.report_failures(&progress);
            }
        }
    }
    state.report
}

struct State {
    /// References of each missing path that are not yet published.
    blockers: HashMap<StorePath, HashSet<StorePath>>,
    dependents: HashMap<StorePath, Vec<StorePath>>,
    nar_ready: HashMap<StorePath, NarInfo>,
    failed: HashSet<StorePath>,
    unreported: Vec<(StorePath, UploadError)>,
    report: Report,
}

impl State {
    fn new(missing: &[PathInfo], available: &HashSet<StorePath>) -> State {
        let in_batch: HashSet<&StorePath> = missing.iter().map(|i| &i.path).collect();
        let mut state = State {
            blockers: HashMap::new(),
            dependents: HashMap::new(),
            nar_ready: HashMap::new(),
            failed: HashSet::new(),
            unreported: Vec::new(),
            report: Report::default(),
        };
        let mut orphaned = Vec::new();
        for info in missing {
            let mut blockers = HashSet::new();
            for reference in info.references.iter().filter(|r| **r != info.path) {
                if in_batch.contains(reference) {
                    blockers.insert(reference.clone());
                    state
                        .dependents
                        .entry(reference.clone())
                        .or_default()
                        .push(info.path.clone());
                } else if !available.contains(reference) {
                    orphaned.push((info.path.clone(), reference.clone()));
                }
            }
            state.blockers.insert(info.path.clone(), blockers);
        }
        for (path, reference) in orphaned {
            let error = UploadError::ReferenceMissing {
                path: path.to_absolute(),
                reference: reference.to_absolute(),
                why: "is not in the cache and not part of this upload (upload its closure)",
            };
            state.fail(&path, error);
        }
        state
    }

    fn publish_if_ready(
        &mut self,
        path: &StorePath,
        tasks: &mut JoinSet<Event>,
        target: &Arc<Target>,
    ) {
        let unblocked = self.blockers.get(path).is_some_and(HashSet::is_empty);
        if !unblocked || self.failed.contains(path) {
            return;
        }
        let Some(narinfo) = self.nar_ready.get(path) else {
            return;
        };
        let body = bytes::Bytes::from(narinfo.to_string());
        let key = narinfo_key(path);
        let path = path.clone();
        let target = target.clone();
        tasks.spawn(async move {
            let result = target
                .put(&key, body, content_type::NARINFO)
                .await
                .map_err(UploadError::from);
            Event::NarInfoDone(path, result)
        });
    }

    fn published(&mut self, path: &StorePath) -> Option<Uploaded> {
        let narinfo = self.nar_ready.remove(path)?;
        Some(Uploaded {
            path: path.clone(),
            nar_size: narinfo.nar_size,
            file_size: narinfo.file_size.unwrap_or(narinfo.nar_size),
        })
    }

    /// Fails `path` and, transitively, everything that references it.
    fn fail(&mut self, path: &StorePath, error: UploadError) {
        if !self.failed.insert(path.clone()) {
            return;
        }
        self.nar_ready.remove(path);
        self.unreported.push((path.clone(), error));
        for dependent in self.dependents.get(path).cloned().unwrap_or_default() {
            let contagion = UploadError::ReferenceMissing {
                path: dependent.to_absolute(),
                reference: path.to_absolute(),
                why: "failed to upload",
            };
            self.fail(&dependent, contagion);
        }
    }

    fn report_failures(&mut self, progress: &Progress) {
        for (path, error) in self.unreported.drain(..) {
            progress.path_failed(&path.to_absolute(), &error.to_string());
            self.report.failed.push((path, error));
        }
    }
}
