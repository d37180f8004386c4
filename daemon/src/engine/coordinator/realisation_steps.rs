//! The coordinator's realisation steps: taking realisations handed over, releasing those
//! whose outputs (and dependencies) are in the cache, and settling their tops once published.

use std::sync::Arc;

use super::super::graph::Report;
use super::super::realisations;
use super::super::tasks::Purpose;
use super::super::{Failure, UploadError};
use super::Coordinator;
use crate::format::realisation::{DrvOutputId, Realisation};
use crate::format::store_path::StorePath;

impl Coordinator {
    /// Takes realisations handed over, with the tops submitted with them (held from now on,
    /// so their realisations are kept over the bound), and reports the held tops it refused.
    pub(super) fn take_realisations(&mut self, tops: &[StorePath], list: Vec<Realisation>) {
        for report in self.realisations.submitted(tops, list) {
            self.report(report);
        }
        self.release_realisations();
    }

    /// Starts publishing the realisations whose outputs (and dependencies) are in the cache.
    pub(super) fn release_realisations(&mut self) {
        let (known, graph) = (&self.known, &self.graph);
        let Some(release) = self
            .realisations
            .release(|path| known.contains(path), |path| graph.uploading(path))
        else {
            return;
        };
        let ids = release.ordered.iter().map(|r| r.id.clone()).collect();
        let requests = self.requests.clone();
        let config = self.config.clone();
        self.spawn(Purpose::PublishRealisations(ids), async move {
            let _permit = requests.acquire_owned().await;
            realisations::publish(&config, release).await
        });
    }

    pub(super) fn realisations_published(
        &mut self,
        ids: &[DrvOutputId],
        result: Result<(), UploadError>,
    ) {
        let error = result.err().map(Arc::new);
        if let Some(error) = &error {
            tracing::warn!(
                "cannot publish {} realisation(s): {}",
                ids.len(),
                crate::error_chain(error.as_ref())
            );
        }
        for (top, failed) in self.realisations.finished(ids, error.is_some()) {
            match (&error, failed) {
                (Some(error), true) => {
                    let failure = Failure::of(error);
                    self.report(Report::Failed {
                        path: top.clone(),
                        error: error.clone(),
                    });
                    self.report(Report::TopFailed { top, failure });
                }
                _ => self.report(Report::TopDone(top)),
            }
        }
        self.release_realisations();
    }
}
