//! The task that owns the engine's [`Graph`]: it takes submissions, performs the graph's
//! actions as tasks under the concurrency limits (see the [module doc](super)), and feeds
//! their results back. All state lives in this one task, so nothing here is locked; other
//! tasks see it only through the [`EngineView`].
//!
//! Every task it starts is in its [`JoinSet`]: when the engine ends, whatever still runs is
//! aborted, and a task that panics is turned into a failure of its path, so the graph never
//! waits for a result that will not come.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::big_nars::BigNars;
use super::graph::{Action, Graph, Report};
use super::presence::{self, KnownPresent};
use super::progress::{EngineView, Stages};
use super::realisations::Realisations;
use super::resolve::{self, Resolution};
use super::tasks::{self, Done, Filtered, Purpose};
use super::SMALL_NAR_BUDGET;
use super::{Command, EngineConfig, Failure, UploadError};
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::sleep_until;
use crate::store::PathInfo;

/// Stored NARs kept for a later attempt at most (their narinfos wait in memory).
const KEPT_NARS: usize = 10_000;
pub(super) struct Coordinator {
    config: Arc<EngineConfig>,
    commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<Report>,
    view: Arc<EngineView>,
    graph: Graph,
    tasks: JoinSet<Done>,
    purposes: HashMap<Id, Purpose>,
    /// Submitted tops waiting for the resolution in progress to end.
    waiting: Vec<StorePath>,
    /// Tops being resolved.
    resolving: usize,
    big: BigNars,
    /// Paths whose NAR task runs (at most one each).
    storing: HashSet<StorePath>,
    requests: Arc<Semaphore>,
    small_bytes: Arc<Semaphore>,
    known: KnownPresent,
    kept: HashMap<StorePath, Box<NarInfo>>,
    realisations: Realisations,
    accepting: bool,
}

impl Coordinator {
    pub(super) fn new(
        config: Arc<EngineConfig>,
        commands: mpsc::UnboundedReceiver<Command>,
        reports: mpsc::UnboundedSender<Report>,
        view: Arc<EngineView>,
    ) -> Coordinator {
        Coordinator {
            requests: Arc::new(Semaphore::new(config.parallel_requests)),
            small_bytes: Arc::new(Semaphore::new(SMALL_NAR_BUDGET as usize)),
            big: BigNars::new(config.jobs),
            config,
            commands,
            reports,
            view,
            graph: Graph::default(),
            tasks: JoinSet::new(),
            purposes: HashMap::new(),
            waiting: Vec::new(),
            resolving: 0,
            storing: HashSet::new(),
            known: KnownPresent::default(),
            kept: HashMap::new(),
            realisations: Realisations::default(),
            accepting: true,
        }
    }

    pub(super) async fn run(mut self, stop: CancellationToken, drain: Duration) {
        let mut commands_open = true;
        let mut deadline: Option<Instant> = None;
        loop {
            if (!commands_open || deadline.is_some()) && self.idle() {
                break;
            }
            tokio::select! {
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => commands_open = false,
                },
                Some(joined) = self.tasks.join_next_with_id() => self.on_joined(joined),
                () = stop.cancelled(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + drain);
                    self.accepting = false;
                    self.waiting.clear();
                }
                () = sleep_until(deadline) => {
                    tracing::warn!("uploads still running after {drain:?}; they resume at the next start");
                    break;
                }
                () = sleep_until(self.big.gate()) => self.start_big(),
                path = self.big.released() => {
                    self.big.free(&path);
                    self.start_big();
                }
            }
            self.publish_stages();
        }
        self.tasks.shutdown().await;
        self.view.set_stages(Stages::default());
    }

    fn idle(&self) -> bool {
        // A NAR waiting in `big` still has its node in the graph.
        self.graph.is_empty() && self.tasks.is_empty() && self.waiting.is_empty()
    }

    fn publish_stages(&self) {
        let mut stages = self.graph.stages();
        stages.resolving = (self.resolving + self.waiting.len()) as u64;
        self.view.set_stages(stages);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Submit(tops, realisations) if self.accepting => {
                panic_if_asked(&tops);
                self.take_realisations(&tops, realisations);
                for top in tops {
                    if self.known.contains(&top) {
                        self.report(Report::TopDone(top));
                    } else {
                        self.waiting.push(top);
                    }
                }
                self.resolve_waiting();
            }
            Command::SubmitResolved(infos, tops, realisations) if self.accepting => {
                panic_if_asked(&tops);
                self.take_realisations(&tops, realisations);
                let infos = self.skip_signed_upstream(infos);
                if self.config.filter.is_off() {
                    let actions = self.graph.add(infos, &tops, |p| self.known.contains(p));
                    self.act(actions);
                } else {
                    self.filter(infos, tops);
                }
            }
            Command::Realisations(list) if self.accepting => self.take_realisations(&[], list),
            Command::Submit(..) | Command::SubmitResolved(..) | Command::Realisations(_) => {}
            Command::Reconfigure(config) => {
                if config.sink_name != self.config.sink_name {
                    self.known.clear();
                    self.kept.clear();
                }
                if config.own_keys != self.config.own_keys
                    || !config.upstream.same_trust(&self.config.upstream)
                {
                    // What was trusted may not verify with the new keys (presence rule 4).
                    tracing::info!(
                        "signing keys or upstream trust changed: paths found before are looked \
                         up again"
                    );
                    self.known.clear();
                    self.realisations.forget_published();
                }
                if config.parallel_requests != self.config.parallel_requests {
                    self.requests = Arc::new(Semaphore::new(config.parallel_requests));
                }
                if config.jobs != self.config.jobs {
                    self.big.set_jobs(config.jobs);
                }
                self.config = config;
                self.start_big();
            }
        }
    }

    /// Starts resolving the waiting tops, unless a resolution runs: the tops that arrive
    /// meanwhile are resolved together by the next one.
    fn resolve_waiting(&mut self) {
        if self.resolving > 0 || self.waiting.is_empty() {
            return;
        }
        let tops = std::mem::take(&mut self.waiting);
        self.resolving = tops.len();
        let config = self.config.clone();
        let batch = tops.clone();
        self.spawn(Purpose::Resolve(tops), async move {
            let resolved = async {
                config.ensure_cache_info().await?;
                let mut resolution = resolve::resolve(&batch, config.closure)
                    .await
                    .map_err(UploadError::Store)?;
                resolution.excluded =
                    resolve::exclusions(&config.filter, &resolution.infos, config.closure).await;
                Ok(resolution)
            }
            .await;
            Done::Resolved(batch, resolved)
        });
    }

    /// Applies the push filters to closures submitted resolved, off the coordinator's task
    /// (derivers may be read from the store), then adds them to the graph.
    fn filter(&mut self, infos: Vec<PathInfo>, tops: Vec<StorePath>) {
        let config = self.config.clone();
        self.spawn(Purpose::Filter(tops.clone()), async move {
            let excluded = resolve::exclusions(&config.filter, &infos, config.closure).await;
            Done::Filtered(tops, Ok(Filtered { infos, excluded }))
        });
    }

    fn on_joined(&mut self, joined: Result<(Id, Done), JoinError>) {
        let done = match joined {
            Ok((id, done)) => {
                self.purposes.remove(&id);
                done
            }
            Err(error) => match self.purposes.remove(&error.id()) {
                Some(purpose) => tasks::failed(purpose, &error),
                None => return,
            },
        };
        let actions = match done {
            Done::Resolved(tops, result) => {
                self.resolving = 0;
                let actions = self.resolved(tops, result);
                self.resolve_waiting();
                actions
            }
            Done::Filtered(tops, Ok(Filtered { infos, excluded })) => {
                self.graph
                    .add_filtered(infos, &tops, |p| self.known.contains(p), &excluded)
            }
            Done::Filtered(tops, Err(error)) => all_failed(tops, &error),
            Done::Checked(path, result) => self.graph.checked(&path, result),
            Done::Stored { path, big, result } => {
                self.storing.remove(&path);
                if big {
                    self.big.free(&path);
                }
                self.graph.stored(&path, result)
            }
            Done::Published(path, narinfo, result) => self.graph.published(&path, &narinfo, result),
            Done::RealisationsPublished(ids, result) => {
                self.realisations_published(&ids, result);
                Vec::new()
            }
        };
        self.act(actions);
        // Only after the actions: a lookup that just ended may have queued the largest NAR.
        self.start_big();
    }

    fn resolved(
        &mut self,
        tops: Vec<StorePath>,
        result: Result<Resolution, UploadError>,
    ) -> Vec<Action> {
        match result {
            Ok(resolution) => {
                let mut actions = Vec::new();
                for (top, reason) in resolution.invalid {
                    let error = UploadError::Invalid {
                        path: top.to_absolute(),
                        reason,
                    };
                    actions.push(Action::Report(Report::TopFailed {
                        top,
                        failure: Failure::of(&error),
                    }));
                }
                let resolved: HashSet<&StorePath> =
                    resolution.infos.iter().map(|info| &info.path).collect();
                let valid: Vec<StorePath> = tops
                    .into_iter()
                    .filter(|top| resolved.contains(top))
                    .collect();
                let infos = self.skip_signed_upstream(resolution.infos);
                actions.extend(self.graph.add_filtered(
                    infos,
                    &valid,
                    |p| self.known.contains(p),
                    &resolution.excluded,
                ));
                actions
            }
            Err(error) => all_failed(tops, &error),
        }
    }

    fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Check(path) => self.check(path),
                Action::StoreNar(info) => self.store(info),
                Action::Publish(path, narinfo) => self.publish(path, narinfo),
                Action::KeepNar(path, narinfo) => {
                    if self.kept.len() >= KEPT_NARS {
                        self.kept.clear();
                    }
                    self.kept.insert(path, narinfo);
                }
                Action::Report(report) => self.report(report),
            }
        }
    }

    /// Records what `report` proves, starts publishing the realisations that frees, then
    /// tells the owner, unless the report is a top held for its realisations.
    fn report(&mut self, report: Report) {
        if let Report::Upstream { nar_size, .. } = &report {
            self.view.count_upstream(*nar_size);
        }
        self.remember_presence(&report);
        let reports = self.hold_top(report);
        self.release_realisations();
        for report in reports {
            // The owner may have stopped listening (shutting down); the work stands.
            let _ = self.reports.send(report);
        }
    }

    /// Known-present bookkeeping (see [`super::presence`]): only a lookup, an upstream answer
    /// or an upload starts a path's trust; a top reported done because it was known does not
    /// renew it.
    fn remember_presence(&mut self, report: &Report) {
        match report {
            Report::Present(path)
            | Report::Upstream { path, .. }
            | Report::Uploaded { path, .. } => {
                let trust_for = presence::trust_for(self.config.refresh_after);
                self.known.found(path.clone(), trust_for);
            }
            Report::TopDone(_)
            | Report::Failed { .. }
            | Report::TopFailed { .. }
            | Report::Skipped { .. }
            | Report::TopSkipped { .. } => {}
        }
    }

    /// Held tops: what the owner hears of `report` (nothing yet for a top done whose
    /// realisations are not published: it is reported once they are). A failed path's
    /// realisations are dropped; a top refused at their bound fails.
    fn hold_top(&mut self, report: Report) -> Vec<Report> {
        self.realisations.settle(report)
    }

    fn check(&mut self, path: StorePath) {
        let requests = self.requests.clone();
        let config = self.config.clone();
        self.spawn(Purpose::Check(path.clone()), async move {
            tasks::check(&config, path, &requests).await
        });
    }

    /// Takes the paths signed by an upstream key out of `infos`: they are reported as
    /// upstream's and known to need no upload, so the graph treats them as in the cache.
    fn skip_signed_upstream(&mut self, infos: Vec<PathInfo>) -> Vec<PathInfo> {
        if !self.config.upstream.is_on() {
            return infos;
        }
        let (upstream, rest): (Vec<PathInfo>, Vec<PathInfo>) =
            infos.into_iter().partition(|info| {
                !self.config.forced.contains(&info.path)
                    && self.config.upstream.signed_by_upstream(info)
            });
        for info in upstream {
            self.report(Report::Upstream {
                path: info.path,
                nar_size: info.nar_size,
            });
        }
        rest
    }

    fn publish(&mut self, path: StorePath, narinfo: Box<NarInfo>) {
        let requests = self.requests.clone();
        let config = self.config.clone();
        self.spawn(
            Purpose::Publish(path.clone(), narinfo.clone()),
            async move {
                let _permit = requests.acquire_owned().await;
                tasks::publish(&config, path, narinfo).await
            },
        );
    }

    fn spawn(&mut self, purpose: Purpose, task: impl Future<Output = Done> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.purposes.insert(handle.id(), purpose);
    }
}

/// Every top of `tops` failed for `error`.
fn all_failed(tops: Vec<StorePath>, error: &UploadError) -> Vec<Action> {
    let failure = Failure::of(error);
    tops.into_iter()
        .map(|top| {
            Action::Report(Report::TopFailed {
                top,
                failure: failure.clone(),
            })
        })
        .collect()
}

#[path = "coordinator/nar_tasks.rs"]
mod nar_tasks;
#[path = "coordinator/test_panic.rs"]
mod test_panic;
use test_panic::panic_if_asked;
#[path = "coordinator/realisation_steps.rs"]
mod realisation_steps;
#[cfg(test)]
#[path = "coordinator/tests.rs"]
mod tests;
