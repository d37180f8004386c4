//! COMMAND's process group and the terminal: when `narpush exec` runs in the foreground of a
//! terminal, COMMAND's group (a group of its own, so that signals reach everything it started)
//! takes the terminal's foreground while it runs, so that it can read the terminal (a prompt)
//! and Ctrl-C reaches it directly; exec takes the foreground back when COMMAND has ended.
//!
//! Ctrl-Z stops COMMAND's group, not exec: exec then takes the terminal back and stops itself
//! ([`stop_self`]) so that the shell sees the job stopped; once continued it hands the
//! terminal over again (see [`super::command`]).
//!
//! Invariant: the terminal is handed back exactly when it was handed over (by [`Terminal`]'s
//! `Drop`), and never touched when exec was not in its foreground (CI, a pipe, a background job).

use std::io::IsTerminal;

use nix::sys::signal::{self, SigSet, Signal};
use nix::unistd::{getpgrp, tcgetpgrp, tcsetpgrp, Pid};

/// The terminal lent to COMMAND's group; given back to exec's group when dropped.
pub struct Terminal {
    own_group: Pid,
}

/// Puts `group` in the foreground of the terminal on stdin, if exec is in its foreground now.
pub fn hand_over(group: Pid) -> Option<Terminal> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    let own_group = getpgrp();
    if tcgetpgrp(&stdin).ok()? != own_group {
        return None;
    }
    tcsetpgrp(&stdin, group).ok()?;
    // COMMAND may have read the terminal before it was its own, and been stopped for it.
    narpush::process_group::signal(group, Signal::SIGCONT);
    Some(Terminal { own_group })
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // exec is in the background now: taking the terminal back would stop it with SIGTTOU,
        // unless that signal is blocked (POSIX then lets tcsetpgrp through).
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let blocked = ttou.thread_block().is_ok();
        let _ = tcsetpgrp(std::io::stdin(), self.own_group);
        if blocked {
            let _ = ttou.thread_unblock();
        }
    }
}

/// Stops exec as Ctrl-Z would (SIGTSTP); returns once something continues it (`fg`, `bg`).
/// In an orphaned process group, where nobody could continue it, the kernel discards the
/// signal and this returns at once.
pub fn stop_self() {
    let _ = signal::raise(Signal::SIGTSTP);
}
