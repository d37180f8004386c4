//! The thread that reads, hashes and compresses one NAR (its producer), apart from the async
//! runtime: the result comes back through a channel, and dropping the handle stops the work.
//!
//! Invariants:
//! - **Background producers have a thread of their own.** A producer marked `background` runs on
//!   a new thread that lowers its own CPU priority (nice 10), so the NAR the upload waits for
//!   longest (the largest, compressed on zstd's workers) is not slowed down by the smaller ones
//!   beside it; they use what it leaves idle. The thread ends with its NAR, so the priority
//!   never applies to other work. Other producers run on the runtime's blocking threads.
//! - **Dropping stops it.** [`Producer`]'s drop raises the stop flag, which the producer checks on
//!   every write ([`Stop::check`]): a cancelled upload stops reading the store at once, even when
//!   nothing downstream would notice (a NAR kept whole, in a temporary file).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::UploadError;

/// The CPU priority (nice value) of a background producer.
const BACKGROUND_NICE: i32 = 10;

/// Raised when the producer's handle is dropped.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// An error once the upload was cancelled.
    pub fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::Relaxed) {
            Err(io::Error::other("the upload was cancelled"))
        } else {
            Ok(())
        }
    }
}

/// A running producer; [`Producer::join`] waits for its result.
pub struct Producer<T> {
    result: oneshot::Receiver<Result<T, UploadError>>,
    stop: Stop,
    path: String,
}

impl<T: Send + 'static> Producer<T> {
    /// Runs `work` for the NAR at `path`: on a blocking thread of the runtime, or with
    /// `background` on a new thread at a lower priority.
    pub fn spawn<F>(path: &str, background: bool, work: F) -> Result<Producer<T>, UploadError>
    where
        F: FnOnce(&Stop) -> Result<T, UploadError> + Send + 'static,
    {
        let (sender, result) = oneshot::channel();
        let stop = Stop::default();
        let thread_stop = stop.clone();
        let run = move || {
            if background {
                lower_priority();
            }
            let _ = sender.send(work(&thread_stop));
        };
        if runs_inline() {
            run();
        } else if background {
            std::thread::Builder::new()
                .name("narpush-nar".to_owned())
                .spawn(run)
                .map_err(|source| UploadError::Resource {
                    path: path.to_owned(),
                    what: "cannot start a thread for the NAR",
                    source,
                })?;
        } else {
            tokio::task::spawn_blocking(run);
        }
        Ok(Producer {
            result,
            stop,
            path: path.to_owned(),
        })
    }

    /// The producer's result, or an error if its thread died without one (a panic).
    pub async fn join(mut self) -> Result<T, UploadError> {
        match (&mut self.result).await {
            Ok(result) => result,
            Err(_) => Err(UploadError::Internal {
                path: self.path.clone(),
                detail: "the NAR writer thread ended without a result (it panicked)".to_owned(),
            }),
        }
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.stop.0.store(true, Ordering::Relaxed);
    }
}

/// Whether producers run on the calling thread: only under a simulated store (feature `sim`),
/// whose NARs are in memory and whose simulation must not depend on other threads' timing.
fn runs_inline() -> bool {
    #[cfg(feature = "sim")]
    if crate::store::simulated::installed().is_some() {
        return true;
    }
    false
}

/// Nice 10 for the calling thread only (Linux applies `setpriority` to one thread when given
/// its thread id). A failure changes nothing but the speed, so it is ignored.
fn lower_priority() {
    let thread = nix::unistd::gettid().as_raw();
    let Ok(who) = nix::libc::id_t::try_from(thread) else {
        return;
    };
    // SAFETY: setpriority only reads its three integer arguments; it changes the scheduling
    // priority of this thread, which runs nothing but this NAR's producer.
    #[allow(unsafe_code)]
    let _ = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, who, BACKGROUND_NICE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_current_thread() -> i64 {
        let stat =
            std::fs::read_to_string(format!("/proc/self/task/{}/stat", nix::unistd::gettid()))
                .unwrap();
        // Field 19 (nice), counted after the parenthesised command name.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_background_producer_runs_at_a_lower_priority_and_others_do_not() {
        let background = Producer::spawn("/nix/store/x", true, |_| Ok(nice_of_current_thread()))
            .unwrap()
            .join()
            .await
            .unwrap();
        // Under `nice` the test inherits a priority; the producers are measured against it.
        let inherited = nice_of_current_thread();
        if inherited <= i64::from(BACKGROUND_NICE) {
            assert_eq!(background, i64::from(BACKGROUND_NICE));
        }
        let foreground = Producer::spawn("/nix/store/x", false, |_| Ok(nice_of_current_thread()))
            .unwrap()
            .join()
            .await
            .unwrap();
        assert_eq!(foreground, inherited);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_producer_at_its_next_check() {
        let (started, wait_started) = std::sync::mpsc::channel();
        let (finished, wait_finished) = std::sync::mpsc::channel();
        let producer = Producer::spawn("/nix/store/x", false, move |stop| {
            started.send(()).unwrap();
            let outcome = loop {
                if let Err(e) = stop.check() {
                    break e.to_string();
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            finished.send(outcome).unwrap();
            Ok(())
        })
        .unwrap();
        wait_started.recv().unwrap();
        drop(producer);
        let outcome = wait_finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the producer did not stop");
        assert_eq!(outcome, "the upload was cancelled");
    }

    #[tokio::test]
    async fn a_producer_that_panics_is_an_error_naming_the_path() {
        let error = Producer::<()>::spawn("/nix/store/x-panics", false, |_| panic!("boom"))
            .unwrap()
            .join()
            .await
            .unwrap_err();
        assert!(error.to_string().contains("/nix/store/x-panics"), "{error}");
    }
}
