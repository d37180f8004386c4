//! The upload engine: the one place where store paths become cache objects, used by both
//! `narpush upload` and the daemon (which adds only its queue bookkeeping around it).
//!
//! Work flows through it path by path, never batch by batch:
//!
//! ```text
//! submit(tops) ─▶ resolve closures ─▶ look each path up ─▶ store its NAR ─▶ publish its narinfo
//!                 (one nix process     (known set, upstream (stream.rs)       (once its references
//!                  per batch)           signatures, the      are in the cache
//!                                       sink, then upstream                    or served upstream)
//!                                       caches)                                      │
//!                                                         publish its realisations ◀─┘
//!                                                         (content-addressed outputs, after
//!                                                          the realisations they depend on)
//! ```
//!
//! A path is in the cache only when its narinfo there is trusted: it parses, names the path,
//! is signed by one of our own keys, and its NAR exists (see `tasks::check`). A narinfo
//! that fails any of these is treated as absent: the path is uploaded again and the narinfo
//! overwritten (a NAR object is never overwritten with other bytes, see [`crate::layout`]).
//!
//! - [`graph`]: the state of every path in flight and the closure invariant, as a pure state
//!   machine; `coordinator`: the task that owns the graph and performs its actions, as the
//!   futures of `tasks`;
//! - [`stream`], [`parts`], [`compress`]: one NAR streamed through hashing and compression
//!   into fixed-size parts; [`resolve`]: closures from the store; [`presence`]: paths known to
//!   be in the cache; [`progress`]: what is in flight, for `status`; [`error`]: failures;
//!   `realisations`: realisations of content-addressed outputs, published after them.
//!
//! # Concurrency
//!
//! Work that arrives while a big upload runs starts as soon as its own limits allow:
//! - **`jobs`** NARs above [`SMALL_NAR`] stream at once, largest first (the largest bounds the
//!   wall time, so it starts first). Each holds at most two parts of memory. A NAR of
//!   [`stream::WORKERS_FROM`] or more that starts while no other streams gets zstd worker
//!   threads (one per core, up to [`stream::MAX_WORKERS`]); one that starts beside others is
//!   compressed on its own thread, since the others already keep the cores busy.
//! - **`parallel_requests`** small requests are in flight at once: lookups, narinfos, and
//!   NARs up to [`SMALL_NAR`], whose buffers also draw from a fixed byte budget
//!   ([`SMALL_NAR_BUDGET`]). Wide closures of tiny paths are bound by latency, not by `jobs`.
//!
//! Memory is therefore bounded by configuration: `jobs` × two parts, one set of compression
//! workers, and the small-NAR budget (which also counts the xz encoders of small NARs, their
//! dictionaries cut to the input: see [`compress`]), whatever the NAR sizes. Beyond it: the xz
//! encoder of each big NAR holds its level's dictionary (`jobs` of them), and, opt-in, with
//! `write_nar_listing` each NAR in flight also holds its `.ls` listing until it is stored,
//! which grows with the path's number of files (not their sizes).

mod big_nars;
pub mod compress;
mod coordinator;
pub mod error;
pub mod graph;
pub mod parts;
pub mod presence;
mod producer;
pub mod progress;
mod realisations;
pub mod resolve;
pub mod stream;
mod tasks;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::{Failure, UploadError};
pub use graph::{Lookup, Report};
use progress::EngineView;
use stream::{StoredNar, StreamSettings};

use crate::filter::PushFilter;
use crate::format::narinfo::NarInfo;
use crate::format::realisation::Realisation;
use crate::format::signing::{SigningKey, VerifyingKey};
use crate::format::store_path::StorePath;
use crate::layout::{self, content_type, CacheInfo};
use crate::sink::contended::Wanted;
use crate::sink::{Sink, SinkError};
use crate::store::PathInfo;
use crate::upstream::Upstream;

/// NARs up to this size are small: uploaded in one request under the `parallel_requests`
/// limit, with their whole compressed form in memory.
pub const SMALL_NAR: u64 = 1 << 20;
/// Bytes that the buffers of small NARs may hold at once, all uploads together.
pub const SMALL_NAR_BUDGET: u32 = 16 << 20;

/// How old a narinfo found in the cache may be before a push of its path rewrites it
/// ([`EngineConfig::refresh_after`], the config's `refresh_after`).
pub const DEFAULT_REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Everything the engine needs besides the paths. Replaced as a whole on reconfiguration;
/// work in flight finishes with the configuration it started with.
pub struct EngineConfig {
    pub sink: Arc<Sink>,
    /// The sink's URL, for people; a change of it empties the known-present set.
    pub sink_name: String,
    pub keys: Arc<Vec<SigningKey>>,
    /// The public halves of `keys`: a narinfo in the cache counts only when one of them
    /// verifies it.
    pub own_keys: Vec<VerifyingKey>,
    pub stream: StreamSettings,
    /// NARs above [`SMALL_NAR`] streamed at once.
    pub jobs: usize,
    /// Small requests in flight at once.
    pub parallel_requests: usize,
    /// Upload the closure of each submitted path (else only the paths, whose references must
    /// already be in the cache).
    pub closure: bool,
    /// What clients get elsewhere, and so is not uploaded.
    pub upstream: Arc<Upstream>,
    /// A narinfo found in the cache is rewritten once it is older than this, so that
    /// retention GC sees the path as in use (see `gc`).
    pub refresh_after: Duration,
    /// What `nix-cache-info` must say.
    pub cache_info: CacheInfo,
    /// Paths uploaded whatever the cache or upstream caches hold (`narpush verify --repair`:
    /// a narinfo whose NAR is damaged looks present, but its NAR must be written afresh and
    /// the narinfo rewritten after it).
    pub forced: HashSet<StorePath>,
    /// Paths never uploaded (see [`crate::filter`]).
    pub filter: Arc<PushFilter>,
    cache_info_checked: AtomicBool,
}

impl EngineConfig {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sink: Arc<Sink>,
        sink_name: String,
        keys: Arc<Vec<SigningKey>>,
        stream: StreamSettings,
        jobs: usize,
        parallel_requests: usize,
        closure: bool,
    ) -> EngineConfig {
        EngineConfig {
            sink,
            sink_name,
            own_keys: keys.iter().map(SigningKey::public_key).collect(),
            keys,
            stream,
            jobs: jobs.max(1),
            parallel_requests: parallel_requests.max(1),
            closure,
            upstream: Arc::new(Upstream::off()),
            refresh_after: DEFAULT_REFRESH_AFTER,
            cache_info: CacheInfo {
                priority: layout::DEFAULT_PRIORITY,
                want_mass_query: true,
            },
            forced: HashSet::new(),
            filter: Arc::new(PushFilter::default()),
            cache_info_checked: AtomicBool::new(false),
        }
    }

    /// Uploads `paths` whatever the cache and upstream caches hold: their lookups answer
    /// absent, and a store signature by an upstream key does not skip them.
    pub fn with_forced(mut self, paths: HashSet<StorePath>) -> EngineConfig {
        self.forced = paths;
        self
    }

    /// Never uploads what `filter` excludes (the default excludes nothing).
    pub fn with_filter(mut self, filter: PushFilter) -> EngineConfig {
        self.filter = Arc::new(filter);
        self
    }

    /// Announces `cache_info` in `nix-cache-info`.
    pub fn with_cache_info(mut self, cache_info: CacheInfo) -> EngineConfig {
        self.cache_info = cache_info;
        self
    }

    /// Also counts narinfos signed by `keys` as ours (`own_public_keys`: a rotated-out key).
    pub fn with_own_public_keys(mut self, keys: &[VerifyingKey]) -> EngineConfig {
        for key in keys {
            if !self.own_keys.contains(key) {
                self.own_keys.push(key.clone());
            }
        }
        self
    }

    /// Rewrites narinfos found in the cache once they are older than `refresh_after`.
    pub fn with_refresh_after(mut self, refresh_after: Duration) -> EngineConfig {
        self.refresh_after = refresh_after;
        self
    }

    /// Skips what `upstream` serves (the default skips nothing).
    pub fn with_upstream(mut self, upstream: Upstream) -> EngineConfig {
        self.upstream = Arc::new(upstream);
        self
    }

    /// Makes sure the sink has `nix-cache-info` (without it Nix refuses the cache) saying what
    /// this configuration says, once per configuration; one that says otherwise is rewritten. Reading it first also proves that the sink is reachable and the
    /// credentials work, before any NAR is streamed.
    pub async fn ensure_cache_info(&self) -> Result<(), SinkError> {
        if self.cache_info_checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wanted = layout::nix_cache_info(self.cache_info);
        let current = self.sink.get(layout::NIX_CACHE_INFO).await?;
        if current.is_none_or(|text| !layout::same_cache_info(&text, &wanted)) {
            self.sink
                .put_contended(
                    layout::NIX_CACHE_INFO,
                    Bytes::from(wanted),
                    content_type::NIX_CACHE_INFO,
                    &Wanted::CacheInfo,
                )
                .await?;
        }
        self.cache_info_checked.store(true, Ordering::Relaxed);
        Ok(())
    }
}

enum Command {
    /// Top paths whose closures the engine reads from the store, with their realisations.
    Submit(Vec<StorePath>, Vec<Realisation>),
    /// Closures already read: every path's metadata, the tops among them, their realisations.
    SubmitResolved(Vec<PathInfo>, Vec<StorePath>, Vec<Realisation>),
    /// Realisations to publish once their outputs are in the cache, for paths the engine may
    /// hold already.
    Realisations(Vec<Realisation>),
    Reconfigure(Arc<EngineConfig>),
}

/// The owner's handle. Reports arrive on the receiver [`Engine::start`] returns: one
/// [`Report::TopDone`], [`Report::TopFailed`] or [`Report::TopSkipped`] per submitted path, and a report for each path
/// of its closure on the way. A path submitted again while the engine still holds it is not
/// reported on twice: the one report answers both.
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::UnboundedSender<Command>,
    view: Arc<EngineView>,
}

/// Reports from the engine to its owner.
pub type Reports = mpsc::UnboundedReceiver<Report>;

impl Engine {
    /// Starts the engine on the current runtime; the returned task ends when `stop` is
    /// cancelled (it then takes no new work and gives the work in flight `drain` to finish),
    /// or once every handle is dropped and all work is done.
    pub fn start(
        config: Arc<EngineConfig>,
        stop: CancellationToken,
        drain: Duration,
    ) -> (Engine, Reports, tokio::task::JoinHandle<()>) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let view = Arc::new(EngineView::default());
        let coordinator =
            coordinator::Coordinator::new(config, commands_rx, reports_tx, view.clone());
        let task = tokio::spawn(coordinator.run(stop, drain));
        (Engine { commands, view }, reports, task)
    }

    /// Uploads the closures of `tops` (or only `tops`, per the configuration).
    pub fn submit(&self, tops: Vec<StorePath>) {
        self.submit_with_realisations(tops, Vec::new());
    }

    /// Uploads the closures of `tops`, and publishes `realisations` (theirs, and those they
    /// depend on) once their output paths are in the cache: each top is reported done only
    /// after its realisations. Handed over with their tops, they are kept over the engine's
    /// bound on waiting realisations (see `realisations`).
    pub fn submit_with_realisations(&self, tops: Vec<StorePath>, realisations: Vec<Realisation>) {
        let _ = self.commands.send(Command::Submit(tops, realisations));
    }

    /// Uploads what `infos` describe; `tops` are reported on as submitted paths, each only
    /// after its `realisations` are published (as [`Engine::submit_with_realisations`]).
    pub fn submit_resolved(
        &self,
        infos: Vec<PathInfo>,
        tops: Vec<StorePath>,
        realisations: Vec<Realisation>,
    ) {
        let _ = self
            .commands
            .send(Command::SubmitResolved(infos, tops, realisations));
    }

    /// Publishes `realisations` once their output paths are in the cache (see
    /// `realisations`), for paths the engine may be uploading already: a path it holds is
    /// reported done only after the realisations of it known by then. Those of paths it does
    /// not hold are the first forgotten at the bound: hand those over with their submission.
    pub fn add_realisations(&self, realisations: Vec<Realisation>) {
        if !realisations.is_empty() {
            let _ = self.commands.send(Command::Realisations(realisations));
        }
    }

    pub fn reconfigure(&self, config: Arc<EngineConfig>) {
        let _ = self.commands.send(Command::Reconfigure(config));
    }

    /// What is in flight right now.
    pub fn view(&self) -> &Arc<EngineView> {
        &self.view
    }

    /// A handle whose commands nobody carries out: the test reads what was submitted from the
    /// returned receiver and plays the engine's part itself.
    #[cfg(test)]
    pub(crate) fn stub() -> (Engine, StubCommands) {
        let (commands, received) = mpsc::unbounded_channel();
        let view = Arc::new(EngineView::default());
        (Engine { commands, view }, StubCommands(received))
    }
}

#[cfg(test)]
mod test_store;

/// What was sent to an [`Engine::stub`].
#[cfg(test)]
pub(crate) struct StubCommands(mpsc::UnboundedReceiver<Command>);

#[cfg(test)]
impl StubCommands {
    /// The tops submitted since the last call, in order (other commands are dropped).
    pub(crate) fn submitted(&mut self) -> Vec<StorePath> {
        let mut tops = Vec::new();
        while let Ok(command) = self.0.try_recv() {
            match command {
                Command::Submit(more, _) | Command::SubmitResolved(_, more, _) => tops.extend(more),
                Command::Realisations(_) | Command::Reconfigure(_) => {}
            }
        }
        tops
    }
}

/// The narinfo of a path whose NAR is stored, without our signatures yet: it is signed when it
/// is published, with the keys of that moment. Signatures the store already holds (from other
/// caches) are kept.
pub fn narinfo_for(info: &PathInfo, stored: &StoredNar) -> NarInfo {
    NarInfo {
        store_path: info.path.clone(),
        url: stored.key.clone(),
        compression: stored.compression.narinfo_name().to_owned(),
        file_hash: Some(stored.file_hash),
        file_size: Some(stored.file_size),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.as_ref().map(|d| d.basename().to_owned()),
        system: None,
        signatures: info.signatures.clone(),
        ca: info.ca.clone(),
    }
}

/// Adds a signature by each of `keys`.
pub fn sign(narinfo: &mut NarInfo, keys: &[SigningKey]) -> Result<(), UploadError> {
    for key in keys {
        narinfo
            .add_signature(key)
            .map_err(|e| UploadError::Internal {
                path: narinfo.store_path.to_absolute(),
                detail: format!("cannot sign: {e}"),
            })?;
    }
    narinfo.signatures.sort();
    narinfo.signatures.dedup();
    Ok(())
}
