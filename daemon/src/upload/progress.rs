//! Progress of a batch of uploads, for a person watching: paths done of total, NAR bytes
//! processed and the rate. On a terminal it is one live line on stderr; otherwise one plain
//! line per finished path, so logs and CI output stay readable.
//!
//! The counters are atomics so the blocking NAR writer threads can feed them directly.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total_paths: u64,
    paths_done: AtomicU64,
    nar_bytes: AtomicU64,
    file_bytes: AtomicU64,
    started: Instant,
}

impl Progress {
    /// `quiet` silences everything (the daemon reports through its own channels).
    pub fn new(total_paths: u64, total_nar_bytes: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_nar_bytes),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("[0/{total_paths}]"));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            bar,
            quiet,
            total_paths,
            paths_done: AtomicU64::new(0),
            nar_bytes: AtomicU64::new(0),
            file_bytes: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub fn add_nar_bytes(&self, n: u64) {
        self.nar_bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// NAR bytes streamed so far.
    pub fn nar_bytes(&self) -> u64 {
        self.nar_bytes.load(Ordering::Relaxed)
    }

    pub fn path_uploaded(&self, path: &str, nar_size: u64, file_size: u64) {
        let done = self.paths_done.fetch_add(1, Ordering::Relaxed) + 1;
        self.file_bytes.fetch_add(file_size, Ordering::Relaxed);
        let line = format!(
            "[{done}/{}] uploaded {path} ({} NAR, {} stored)",
            self.total_paths,
            HumanBytes(nar_size),
            HumanBytes(file_size)
        );
        self.say(line, done);
    }

    pub fn path_failed(&self, path: &str, reason: &str) {
        let done = self.paths_done.fetch_add(1, Ordering::Relaxed) + 1;
        self.say(
            format!("[{done}/{}] FAILED {path}: {reason}", self.total_paths),
            done,
        );
    }

    fn say(&self, line: String, done: u64) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("[{done}/{}]", self.total_paths));
                bar.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Clears the live line and returns the totals.
    pub fn finish(&self) -> Totals {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        Totals {
            nar_bytes: self.nar_bytes.load(Ordering::Relaxed),
            file_bytes: self.file_bytes.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Totals {
    pub nar_bytes: u64,
    pub file_bytes: u64,
    pub elapsed: Duration,
}

impl Totals {
    pub fn rate(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        format!("{}/s", HumanBytes((self.nar_bytes as f64 / secs) as u64))
    }
}
