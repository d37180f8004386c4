//! Starting the coordinator's NAR tasks under the concurrency limits of the engine's module
//! doc: small NARs under `parallel_requests` and the small-NAR byte budget at once, big ones
//! queued in `big` and started, largest first, while `jobs` allows. At most one NAR task
//! runs per path (`storing`).

use super::super::big_nars::{Queued, Start};
use super::super::tasks::{self, Done, Purpose};
use super::super::{compress, stream};
use super::super::{SMALL_NAR, SMALL_NAR_BUDGET};
use super::Coordinator;
use crate::store::PathInfo;

impl Coordinator {
    pub(super) fn store(&mut self, info: PathInfo) {
        if !self.storing.insert(info.path.clone()) {
            // Its NAR task is still running (from before a failure); its result will do.
            return;
        }
        let kept = self.kept.remove(&info.path);
        if info.nar_size > SMALL_NAR {
            // Started by `start_big`, once every action of this result is applied.
            self.big.push(info, kept);
            return;
        }
        let requests = self.requests.clone();
        let small_bytes = self.small_bytes.clone();
        let config = self.config.clone();
        let view = self.view.clone();
        // The compressed NAR and the encoder's own state (an xz dictionary) share the budget.
        let settings = &self.config.stream;
        let bound = (stream::compressed_bound(info.nar_size)
            + compress::encoder_memory(settings.compression, settings.level, info.nar_size))
        .min(u64::from(SMALL_NAR_BUDGET));
        let path = info.path.clone();
        self.spawn(Purpose::Store(path.clone(), false), async move {
            let mut kept = kept;
            let store = || {
                let (config, info, view) = (config.clone(), info.clone(), view.clone());
                let (small_bytes, requests, kept) =
                    (small_bytes.clone(), requests.clone(), kept.take());
                async move {
                    // The buffer first: a task waiting for memory must not hold a request
                    // slot that lookups and narinfos need.
                    let _buffer = small_bytes
                        .acquire_many_owned(u32::try_from(bound).unwrap_or(SMALL_NAR_BUDGET))
                        .await;
                    let _request = requests.acquire_owned().await;
                    let stream = config.stream.clone();
                    tasks::store_nar(&config, &info, stream, kept, &view, None).await
                }
            };
            let result = tasks::store_settled(&config, &path, &requests, store).await;
            Done::Stored {
                path,
                big: false,
                result,
            }
        });
    }

    /// Starts the largest waiting big NARs while `jobs` allows.
    pub(super) fn start_big(&mut self) {
        let lookups_running = self.graph.stages().checking > 0;
        while let Some(Start {
            queued: Queued { info, kept },
            alone,
            slot,
        }) = self.big.next(self.config.jobs, lookups_running)
        {
            // A NAR that starts alone gets a compression worker per core; one that starts
            // beside others is compressed on its own thread, since the others already keep
            // the cores busy (and each set of workers needs its own buffers), at a lower
            // priority: the first, the largest, is what the upload waits for longest.
            let mut stream = self.config.stream.clone();
            if !alone {
                stream.workers = 0;
                stream.background = true;
            }
            let config = self.config.clone();
            let view = self.view.clone();
            let path = info.path.clone();
            let requests = self.requests.clone();
            self.spawn(Purpose::Store(path.clone(), true), async move {
                // A NAR stored again (rule U6) goes without a slot: its first one is given
                // back, and this is rare.
                let (mut kept, mut slot) = (kept, Some(slot));
                let store = || {
                    let (config, info, view) = (config.clone(), info.clone(), view.clone());
                    let (stream, kept, slot) = (stream.clone(), kept.take(), slot.take());
                    async move { tasks::store_nar(&config, &info, stream, kept, &view, slot).await }
                };
                let result = tasks::store_settled(&config, &path, &requests, store).await;
                Done::Stored {
                    path,
                    big: true,
                    result,
                }
            });
        }
    }
}
