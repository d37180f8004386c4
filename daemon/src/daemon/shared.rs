//! What every task of the daemon shares: the queue and its intake journal, the GC roots, the live settings, the
//! engine's handle, the stop signal and the tracker of every task spawned along the way.
//!
//! Settings are swapped whole (an `Arc` behind a lock held only to clone or replace it), so a
//! task always works with one consistent configuration.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::activity::Activity;
use super::intake::Intake;
use super::settings::Settings;
use crate::config::Config;
use crate::engine::Engine;
use crate::gcroots::GcRoots;
use crate::queue::Queue;

pub struct Shared {
    pub queue: Queue,
    /// The intake journal and its mover: where requests become durable before the ack.
    pub intake: Intake,
    pub roots: GcRoots,
    settings: RwLock<Arc<Settings>>,
    pub engine: Engine,
    /// Signalled when new work was queued.
    pub wake: Notify,
    /// One build log is uploaded at a time (each is held in memory whole).
    pub log_upload: Arc<tokio::sync::Semaphore>,
    /// Signalled when the spool should be read again at once (the queue is open again).
    pub rescan_spool: Notify,
    /// Cancelled on SIGTERM/SIGINT; every task selects on it.
    pub stop: CancellationToken,
    /// Tasks spawned on the way (connections, build logs), waited for at shutdown.
    pub tasks: TaskTracker,
    /// The daemon's own uid, which may always enqueue.
    pub own_uid: u32,
    /// What happened since the start that the queue does not keep (for status and metrics).
    pub activity: Activity,
    config_path: Option<PathBuf>,
}

/// How long a listener rests after a failed accept (EMFILE and the like) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

impl Shared {
    /// The next connection `accept` yields, or `None` at the stop signal. A failed accept is
    /// logged (under `listener`'s name) and tried again after a pause, so it cannot spin.
    pub async fn next_connection<S, Accept, Accepted>(
        &self,
        listener: &str,
        mut accept: Accept,
    ) -> Option<S>
    where
        Accept: FnMut() -> Accepted,
        Accepted: Future<Output = io::Result<S>>,
    {
        loop {
            let accepted = tokio::select! {
                accepted = accept() => accepted,
                () = self.stop.cancelled() => return None,
            };
            match accepted {
                Ok(stream) => return Some(stream),
                Err(e) => {
                    tracing::warn!("{listener}: cannot accept a connection: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        () = self.stop.cancelled() => return None,
                    }
                }
            }
        }
    }

    pub fn new(
        queue: Queue,
        intake: Intake,
        roots: GcRoots,
        settings: Settings,
        engine: Engine,
        stop: CancellationToken,
        config_path: Option<PathBuf>,
    ) -> Shared {
        Shared {
            queue,
            intake,
            roots,
            settings: RwLock::new(Arc::new(settings)),
            engine,
            wake: Notify::new(),
            rescan_spool: Notify::new(),
            log_upload: Arc::new(tokio::sync::Semaphore::new(1)),
            stop,
            tasks: TaskTracker::new(),
            own_uid: nix::unistd::geteuid().as_raw(),
            activity: Activity::default(),
            config_path,
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(settings) => settings.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the config file; on any error the old settings stay and the error is logged.
    pub async fn reload(&self) {
        let loaded = match Config::load(self.config_path.as_deref()) {
            Ok(config) => Settings::load(config, Some(self.settings().engine.stream.writer)).await,
            Err(e) => Err(anyhow::Error::new(e)),
        };
        let new = match loaded {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("configuration not reloaded, keeping the old one: {e:#}");
                return;
            }
        };
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
        if old.config.metrics_listen != new.config.metrics_listen {
            tracing::warn!("metrics_listen changed; it takes effect at the next restart");
        }
        tracing::info!(target = %new.target_url, "configuration reloaded");
        self.engine.reconfigure(new.engine.clone());
        match self.settings.write() {
            Ok(mut settings) => *settings = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        self.wake.notify_one();
    }
}
