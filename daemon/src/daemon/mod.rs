//! `narpush daemon`: the long-running service that takes paths from the hook and the CLI and
//! uploads them, retrying until done.
//!
//! - [`settings`]: the live configuration (target, keys, limits), reloadable on SIGHUP;
//! - [`enqueue`]: turning a request into durable queue entries and GC roots (shared by the
//!   socket and the spool);
//! - [`server`]: the Unix socket, peer credentials, request limits;
//! - [`spool`]: requests the hook left on disk while the daemon was away;
//! - [`pipeline`]: batches, closures, uploads, retries; [`logs`]: build logs;
//! - [`status`]: what `narpush status` shows.
//!
//! # Shutdown protocol
//!
//! SIGTERM or SIGINT sets the shutdown flag (a `watch` channel every task selects on). The
//! server stops accepting; the spool watcher stops; the pipeline takes no new batch and gives
//! the batch in flight [`DRAIN_TIMEOUT`] to finish. Whatever is still `uploading` then goes
//! back to `pending`, the queue is flushed, and the process exits 0. Multipart uploads cut off
//! this way are left for the bucket's lifecycle rule; their paths are uploaded again on start.

pub mod enqueue;
pub mod logs;
pub mod pipeline;
pub mod server;
pub mod settings;
pub mod spool;
pub mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::gcroots::GcRoots;
use crate::queue::Queue;
use crate::upload::progress::Progress;
use settings::Settings;

/// How long in-flight uploads may run after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every task of the daemon shares.
pub struct Shared {
    pub queue: Queue,
    pub roots: GcRoots,
    settings: RwLock<Arc<Settings>>,
    /// Signalled when new work was queued.
    pub wake: Notify,
    /// The batch being uploaded, for `status`.
    pub activity: Mutex<Option<Activity>>,
    /// The daemon's own uid, which may always enqueue.
    pub own_uid: u32,
    config_path: Option<PathBuf>,
}

/// The batch in flight.
pub struct Activity {
    pub paths: Vec<String>,
    pub nar_bytes_total: u64,
    pub progress: Arc<Progress>,
    pub started: Instant,
}

impl Shared {
    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(settings) => settings.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the config file; on any error the old settings stay and the error is logged.
    pub async fn reload(&self) {
        let loaded = match Config::load(self.config_path.as_deref()) {
            Ok(config) => Settings::load(config).await,
            Err(e) => Err(anyhow::Error::new(e)),
        };
        match loaded {
            Ok(new) => {
                let old = self.settings();
                for (what, before, after) in [
                    ("socket", &old.config.socket, &new.config.socket),
                    ("state_dir", &old.config.state_dir, &new.config.state_dir),
                    ("spool_dir", &old.config.spool_dir, &new.config.spool_dir),
                    (
                        "gc_roots_dir",
                        &old.config.gc_roots_dir,
                        &new.config.gc_roots_dir,
                    ),
                ] {
                    if before != after {
                        tracing::warn!("{what} changed; it takes effect at the next restart");
                    }
                }
                tracing::info!(target = %new.target_url, "configuration reloaded");
                match self.settings.write() {
                    Ok(mut settings) => *settings = Arc::new(new),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
                }
                self.wake.notify_one();
            }
            Err(e) => tracing::error!("configuration not reloaded, keeping the old one: {e:#}"),
        }
    }
}

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
    let queue = Queue::open(&config.state_dir.join("queue"))?;
    let roots = GcRoots::open(&config.gc_roots_dir)?;
    let settings = Settings::load(config.clone()).await?;
    for key in &settings.public_keys {
        tracing::warn!(public_key = %key, target = %settings.target_url, "narpush daemon starting");
    }
    let (listener, bound_path) = server::listen(&config.socket)?;
    let shared = Arc::new(Shared {
        queue,
        roots,
        settings: RwLock::new(Arc::new(settings)),
        wake: Notify::new(),
        activity: Mutex::new(None),
        own_uid: current_uid(),
        config_path,
    });

    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, shared.clone(), stopped.clone()));
    let spool = tokio::spawn(spool::run(
        shared.clone(),
        config.spool_dir.clone(),
        stopped.clone(),
    ));
    let pipeline = tokio::spawn(pipeline::run(shared.clone(), stopped.clone()));
    notify_ready();

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => shared.reload().await,
        }
    }
    tracing::warn!("stopping: no new requests; draining uploads for up to {DRAIN_TIMEOUT:?}");
    let _ = stop.send(true);
    let _ = server.await;
    let _ = spool.await;
    let _ = pipeline.await;
    requeue_interrupted(&shared.queue);
    if let Some(path) = bound_path {
        let _ = std::fs::remove_file(path);
    }
    tracing::warn!("stopped");
    Ok(())
}

/// Uploads cut off by the shutdown go back to `pending`, and everything is flushed.
fn requeue_interrupted(queue: &Queue) {
    if let Err(e) = queue.requeue_uploading() {
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

fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}
