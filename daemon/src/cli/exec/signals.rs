//! The signals that end a run of `exec`: SIGTERM, SIGINT and SIGHUP (a closed terminal), caught
//! from before the private daemon starts until exec exits, so that none of them can end exec
//! while its daemon and the daemon's GC roots live on.
//!
//! What a signal means depends on the moment (the caller decides): while the daemon starts,
//! stop it and exit; while COMMAND runs, pass the signal on to COMMAND's group; while exec
//! waits for the uploads, stop waiting. In every case the daemon is then stopped and its roots
//! removed.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Catches the three signals from now on (in a runtime's context).
    pub fn new() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them to arrive.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }
}
