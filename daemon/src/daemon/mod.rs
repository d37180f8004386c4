//! `narpush daemon`: the long-running service that takes paths from the hook and the CLI and
//! uploads them, retrying until done.
//!
//! - [`shared`]: what every task shares; [`settings`]: the live configuration (sink, keys,
//!   limits), reloadable on SIGHUP;
//! - [`enqueue`]: turning a request into durable queue entries and GC roots (shared by the
//!   socket and the spool), made durable first in the intake journal by [`intake`], whose
//!   [`mover`] then writes them into the queue; [`state_files`]: the journal and `writer-id`
//!   made again when a full disk refused them at the start;
//! - [`server`]: the Unix socket, peer credentials, request limits;
//! - [`spool`]: requests the hook left on disk while the daemon was away;
//! - [`pipeline`]: due queue entries into the upload engine, and its outcomes back into the
//!   queue (retries, GC roots, build logs via [`logs`]);
//! - [`status`]: what `narpush status` shows, partly from [`activity`] (what happened since
//!   the start); [`metrics`]: the same numbers for Prometheus (`metrics_listen`).
//!
//! # Shutdown protocol
//!
//! SIGTERM or SIGINT cancels the stop token, which every task selects on. The server stops
//! accepting; the spool watcher and the metrics endpoint stop; the pipeline takes no new entries; the engine gives the
//! work in flight [`DRAIN_TIMEOUT`] to finish and aborts the rest, while the pipeline records
//! every outcome that still arrives. Connection handlers and log uploads are waited for (they
//! are bounded in time themselves). Requests still in the intake journal are moved into the
//! queue, whatever is still `uploading` goes back to `pending` (its attempt given back, unless a
//! task failed: see [`supervise`]), the queue is flushed, and the process exits 0 (2 after a
//! task failed). Multipart uploads cut off this way are left
//! for the bucket's lifecycle rule; their paths are uploaded again on start.

pub mod activity;
pub mod enqueue;
pub mod intake;
pub mod logs;
pub mod metrics;
pub mod mover;
pub mod pipeline;
pub mod server;
pub mod settings;
pub mod shared;
pub mod spool;
pub mod state_files;
pub mod status;
pub mod supervise;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Engine;
use crate::format::store_path::StorePath;
use crate::gcroots::GcRoots;
use crate::layout::WriterId;
use crate::queue::{Interrupted, Queue};
use crate::sink::Sink;
use intake::Intake;
use settings::Settings;
use shared::Shared;

/// How long in-flight uploads may run after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_async(config_path))
}

async fn run_async(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    for dir in [&config.state_dir, &config.spool_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A full disk does not stop the start: the queue then refuses requests with the reason
    // (the hook spools them) until the pipeline opens it again.
    let queue = Queue::open_or_closed(&config.state_dir.join("queue"))?;
    if let Some(reason) = queue.failure() {
        tracing::error!(
            "the queue database cannot be opened now ({reason}); requests are refused (the hook \
             spools them) until it can, tried every {:?}",
            pipeline::QUEUE_ERROR_PAUSE
        );
    }
    let intake = Intake::open(&config.state_dir, &queue);
    let roots = GcRoots::open(&config.gc_roots_dir)?;
    reconcile_roots(&queue, &intake, &roots, &config.state_dir).await;
    let started = std::time::SystemTime::now();
    let settings = Settings::load(config.clone(), None).await?;
    tokio::spawn(abort_stale_uploads(
        settings.engine.sink.clone(),
        started,
        settings.engine.stream.writer,
    ));
    for key in &settings.public_keys {
        tracing::warn!(public_key = %key, target = %settings.target_url, "narpush daemon starting");
    }
    let (listener, bound_path) = server::listen(&config.socket)?;
    let metrics_listener = config.metrics_listen.map(metrics::listen).transpose()?;
    let stop = CancellationToken::new();
    let (engine, reports, engine_task) =
        Engine::start(settings.engine.clone(), stop.clone(), DRAIN_TIMEOUT);
    let shared = Arc::new(Shared::new(
        queue,
        intake,
        roots,
        settings,
        engine,
        stop.clone(),
        config_path,
    ));

    let fatal = supervise::Fatal::default();
    let watched =
        |name, task| tokio::spawn(supervise::watch(name, task, stop.clone(), fatal.clone()));
    let server = watched(
        "server",
        tokio::spawn(server::serve(listener, shared.clone())),
    );
    let spool = watched(
        "spool",
        tokio::spawn(spool::run(shared.clone(), config.spool_dir.clone())),
    );
    let mover = watched("intake", tokio::spawn(mover::run(shared.clone())));
    let state_files = tokio::spawn(state_files::run(shared.clone()));
    // What the journal held at the start is moved first.
    shared.intake.wake();
    let pipeline = watched(
        "pipeline",
        tokio::spawn(pipeline::run(shared.clone(), reports)),
    );
    let engine_task = watched("engine", engine_task);
    let metrics = metrics_listener.map(|listener| {
        watched(
            "metrics",
            tokio::spawn(metrics::serve(listener, shared.clone())),
        )
    });
    notify_ready();

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => shared.reload().await,
            () = stop.cancelled() => break,
        }
    }
    tracing::warn!("stopping: no new requests; draining uploads for up to {DRAIN_TIMEOUT:?}");
    stop.cancel();
    let _ = server.await;
    let _ = spool.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let _ = engine_task.await;
    let _ = pipeline.await;
    shared.tasks.close();
    shared.tasks.wait().await;
    let _ = mover.await;
    let _ = state_files.await;
    // No request is acknowledged any more: move the last ones, or leave them to the next start.
    if let Err(e) = shared
        .intake
        .move_now(&shared.queue, &shared.roots, &shared.wake)
        .await
    {
        tracing::error!(
            "cannot move the last acknowledged requests into the queue; they stay in the intake \
             journal for the next start: {}",
            crate::error_chain(&e)
        );
    }
    requeue_interrupted(&shared.queue, fatal.reason());
    if let Some(path) = bound_path {
        let _ = std::fs::remove_file(path);
    }
    if let Some(reason) = fatal.reason() {
        anyhow::bail!("{reason}; the queue is saved, and a restart resumes it");
    }
    tracing::warn!("stopped");
    Ok(())
}

/// Makes the GC roots directory hold the roots of exactly the paths still owed an upload:
/// every queue entry not finished (`done`, `skipped`), and what the intake journal holds (see
/// [`GcRoots::reconcile`]). Runs before any request is taken. Roots of other paths are kept
/// when the journal exists but could not be read (it may name them); nothing is changed when
/// the queue cannot be read.
async fn reconcile_roots(queue: &Queue, intake: &Intake, roots: &GcRoots, state_dir: &Path) {
    let Some(mut owed) = owed_paths(queue) else {
        return;
    };
    owed.extend(intake.journaled_paths().await);
    let journal_unread =
        !intake.has_journal() && state_dir.join(crate::queue::journal::FILE_NAME).exists();
    match roots.reconcile(&owed, !journal_unread).await {
        Ok(done) => {
            if done.created > 0 {
                tracing::warn!(
                    "re-created {} missing GC root(s) of queued paths",
                    done.created
                );
            }
            if done.removed > 0 {
                tracing::info!(
                    "removed {} GC root(s) of paths no longer queued",
                    done.removed
                );
            }
        }
        Err(e) => tracing::error!(
            "cannot re-create the GC roots of queued paths: {}",
            crate::error_chain(&e)
        ),
    }
}

/// The paths of every queue entry not finished (`done`, `skipped`), or `None` (logged) when the queue cannot be read.
fn owed_paths(queue: &Queue) -> Option<HashSet<StorePath>> {
    match queue.entries() {
        Ok(entries) => Some(
            entries
                .into_iter()
                .filter(|entry| !entry.state.is_finished())
                .map(|entry| entry.path)
                .collect(),
        ),
        Err(e) => {
            tracing::error!(
                "cannot read the queue to re-create the GC roots of queued paths now: {}",
                crate::error_chain(&e)
            );
            None
        }
    }
}

/// Makes the missing GC roots of queue entries not finished (after the queue was opened again:
/// the start could not read it), removing none (requests may be on their way meanwhile).
pub async fn remake_roots(queue: &Queue, roots: &GcRoots) {
    let Some(owed) = owed_paths(queue) else {
        return;
    };
    let owed: Vec<StorePath> = owed.into_iter().collect();
    match roots.ensure(&owed).await {
        Ok(0) => {}
        Ok(made) => tracing::warn!("re-created {made} missing GC root(s) of queued paths"),
        Err(e) => tracing::error!(
            "cannot re-create the GC roots of queued paths: {}",
            crate::error_chain(&e)
        ),
    }
}

/// Best effort, beside the normal work: multipart uploads an earlier run of this daemon left
/// unfinished (kill -9, power loss) hold storage until aborted. Only its own (its writer id in
/// the name): another daemon on the same bucket may be completing its own right now. Servers without ListMultipartUploads, or
/// credentials without s3:ListBucketMultipartUploads, leave them to the bucket's lifecycle rule.
async fn abort_stale_uploads(sink: Arc<Sink>, started: std::time::SystemTime, writer: WriterId) {
    match sink.abort_stale_uploads(started, writer).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!("aborted {n} unfinished multipart upload(s) of an earlier run"),
        Err(e) => tracing::warn!(
            "cannot abort unfinished multipart uploads of earlier runs ({e}); the bucket's \
             lifecycle rule (AbortIncompleteMultipartUpload) removes them"
        ),
    }
}

/// Uploads cut off by the shutdown go back to `pending`, and everything is flushed. A clean
/// shutdown gives their attempts back; one forced by a failed task (`fatal`, a panic) does
/// not: a path in flight may have caused it, and must end `failed` after `max_attempts`.
fn requeue_interrupted(queue: &Queue, fatal: Option<String>) {
    let why = fatal.map_or(Interrupted::Shutdown, Interrupted::Fatal);
    if let Err(e) = queue.requeue_uploading(why) {
        tracing::error!("cannot requeue interrupted uploads: {e}");
    }
    if let Err(e) = queue.flush_blocking() {
        tracing::error!("cannot flush the queue at shutdown: {e}");
    }
}

/// Tells systemd (Type=notify) that the socket is served; nothing outside systemd.
fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
}
