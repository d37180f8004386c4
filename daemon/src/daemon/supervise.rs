//! Supervision of the daemon's long-running tasks (server, spool, pipeline, engine).
//!
//! Invariant: the daemon never keeps acknowledging requests while nothing uploads them. Each
//! task runs until the stop signal; one that ends before it (a panic, or a return nobody
//! planned), or panics at any time, records why and cancels the stop token, so the daemon
//! shuts down like on SIGTERM and then exits non-zero, and the service manager
//! (`Restart=on-failure`) starts a fresh one. The queue is on disk, so nothing acknowledged is
//! lost on the way. Unlike a clean shutdown, such a stop keeps the attempts of the uploads in
//! flight counted (with the reason as their error): a path that makes the daemon panic ends
//! `failed` after `max_attempts` instead of crash-looping the service.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// Why the daemon stops on its own, if it does: the first task that ended early.
#[derive(Clone, Default)]
pub struct Fatal(Arc<Mutex<Option<String>>>);

impl Fatal {
    fn record(&self, reason: String) {
        lock(&self.0).get_or_insert(reason);
    }

    pub fn reason(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

/// Waits for the task `name`; if it ends before `stop` was cancelled, records why in `fatal`
/// and cancels `stop`.
pub async fn watch(
    name: &'static str,
    task: JoinHandle<()>,
    stop: CancellationToken,
    fatal: Fatal,
) {
    let ended = task.await;
    // A task that ends after the stop is done; one that panics is never done cleanly.
    if stop.is_cancelled() && !ended.as_ref().is_err_and(tokio::task::JoinError::is_panic) {
        return;
    }
    let reason = match ended {
        Ok(()) => format!("the {name} task stopped unexpectedly"),
        Err(e) if e.is_panic() => format!("the {name} task panicked: {}", panic_text(e)),
        Err(e) => format!("the {name} task was cancelled: {e}"),
    };
    tracing::error!("{reason}; stopping so that the service manager starts a fresh daemon");
    fatal.record(reason);
    stop.cancel();
}

fn panic_text(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_the_daemon_with_the_reason() {
        let stop = CancellationToken::new();
        let fatal = Fatal::default();
        let task = tokio::spawn(async { panic!("queue exploded") });
        watch("pipeline", task, stop.clone(), fatal.clone()).await;
        assert!(stop.is_cancelled());
        let reason = fatal.reason().unwrap();
        assert!(
            reason.contains("pipeline") && reason.contains("queue exploded"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_panic_after_the_stop_is_still_recorded() {
        let stop = CancellationToken::new();
        let fatal = Fatal::default();
        stop.cancel();
        let task = tokio::spawn(async { panic!("drain exploded") });
        watch("pipeline", task, stop.clone(), fatal.clone()).await;
        assert!(fatal.reason().unwrap().contains("drain exploded"));
    }

    #[tokio::test]
    async fn a_task_ending_after_the_stop_is_no_failure() {
        let stop = CancellationToken::new();
        let fatal = Fatal::default();
        stop.cancel();
        watch("spool", tokio::spawn(async {}), stop.clone(), fatal.clone()).await;
        assert!(fatal.reason().is_none());
    }
}
