//! Process groups narpush starts (a `nix` command, `exec`'s COMMAND and its private daemon),
//! signalled whole so that nothing a child started outlives it.
//!
//! A group is named by its leader's pid. That name is safe only while the leader is not yet
//! reaped (until then its id cannot name another process or group); every caller signals
//! before it waits for the leader.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The group led by the child with id `leader` (started with `process_group(0)`).
pub fn led_by(leader: u32) -> Option<Pid> {
    i32::try_from(leader).ok().map(Pid::from_raw)
}

/// Sends `signal` to every process of `group`. A group that is gone already (ESRCH: its
/// processes all exited) is what a caller wants, so failures are not reported.
pub fn signal(group: Pid, signal: Signal) {
    let _ = killpg(group, signal);
}

/// Kills every process of `group` (SIGKILL).
pub fn kill(group: Pid) {
    signal(group, Signal::SIGKILL);
}
