//! COMMAND's process: started in a process group of its own and waited for with `WUNTRACED`,
//! so that exec sees it stop as well as end.
//!
//! Why a group of its own: a signal exec passes on reaches everything COMMAND started
//! (`killpg`), and never exec itself, so passing one on cannot loop back. The price is job
//! control, which exec then does for the shell ([`Stopped`](Event::Stopped) and
//! [`super::foreground`]): Ctrl-Z stops COMMAND's group, which has the terminal; exec takes the
//! terminal back and stops itself with SIGTSTP, so the shell sees its job stopped and gets the
//! terminal; `fg` continues exec, which gives the terminal back to COMMAND's group and
//! continues it (`bg`: continues it without the terminal).

use std::process::Command;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::mpsc;

/// What became of COMMAND.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Its process stopped (it may be continued already when this is seen).
    Stopped,
    /// It ended, with this exit code (128+N for signal N).
    Ended(i32),
}

pub struct Running {
    pub pid: Pid,
    events: mpsc::UnboundedReceiver<Event>,
}

/// Starts `command` in a group of its own (led by it: the group's id is [`Running::pid`]).
pub fn spawn(command: &mut Command) -> std::io::Result<Running> {
    use std::os::unix::process::CommandExt;
    let child = command.process_group(0).spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(std::io::Error::other)?);
    let (events_tx, events) = mpsc::unbounded_channel();
    // Reaped here, by pid, rather than through `child` (whose wait cannot report stops).
    std::thread::Builder::new()
        .name("command-wait".to_owned())
        .spawn(move || loop {
            let event = match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
                Ok(WaitStatus::Exited(_, code)) => Event::Ended(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => Event::Ended(128 + signal as i32),
                Ok(WaitStatus::Stopped(..)) => Event::Stopped,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => Event::Ended(1),
            };
            let ended = matches!(event, Event::Ended(_));
            if events_tx.send(event).is_err() || ended {
                return;
            }
        })?;
    Ok(Running { pid, events })
}

impl Running {
    pub async fn next(&mut self) -> Event {
        self.events.recv().await.unwrap_or(Event::Ended(1))
    }

    /// Whether COMMAND is stopped now (a stop seen earlier may have been undone since).
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'T')
            })
            .unwrap_or(false)
    }
}
