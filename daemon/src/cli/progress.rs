//! What `narpush upload` shows while it works: one line per path published or failed, and on a
//! terminal a live bar of the NAR bytes streamed (read from the engine's view), so logs and CI
//! output stay readable while a person at a terminal sees the rate. And the spinner that
//! the cache-reading commands (`verify`, `du`, `gc`, `resign`) show on a terminal only.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use narpush::engine::progress::EngineView;
use narpush::filter::{SkipReason, SKIP_KINDS};

pub struct Display {
    bar: Option<ProgressBar>,
    /// Only failures are printed.
    quiet: bool,
    ticker: Option<tokio::task::JoinHandle<()>>,
    total_paths: usize,
    finished_paths: usize,
    pub totals: Totals,
    started: Instant,
}

/// What the run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub uploaded: usize,
    pub uploaded_nar_bytes: u64,
    pub uploaded_file_bytes: u64,
    pub present: usize,
    pub upstream: usize,
    pub upstream_nar_bytes: u64,
    pub failed: usize,
    /// Kept out by the push filters, by kind of reason (see `narpush::filter::SKIP_KINDS`).
    pub skipped: [usize; SKIP_KINDS.len()],
}

impl Totals {
    /// "2 skipped (1 excluded_output, 1 needs_skipped)", or "0 skipped".
    pub fn skipped_summary(&self) -> String {
        let total: usize = self.skipped.iter().sum();
        if total == 0 {
            return "0 skipped".to_owned();
        }
        let kinds: Vec<String> = SKIP_KINDS
            .iter()
            .zip(self.skipped)
            .filter(|(_, count)| *count > 0)
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect();
        format!("{total} skipped ({})", kinds.join(", "))
    }
}

impl Display {
    /// Must be called inside the runtime: the bar is refreshed by a task.
    pub fn new(
        total_paths: usize,
        total_nar_bytes: u64,
        view: Arc<EngineView>,
        quiet: bool,
    ) -> Display {
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
            bar
        });
        let ticker = bar.clone().map(|bar| {
            tokio::spawn(async move {
                loop {
                    bar.set_position(view.nar_bytes());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        });
        Display {
            bar,
            quiet,
            ticker,
            total_paths,
            finished_paths: 0,
            totals: Totals::default(),
            started: Instant::now(),
        }
    }

    pub fn uploaded(&mut self, path: &str, nar_size: u64, file_size: u64) {
        self.totals.uploaded += 1;
        self.totals.uploaded_nar_bytes += nar_size;
        self.totals.uploaded_file_bytes += file_size;
        if self.quiet {
            self.finished_paths += 1;
            return;
        }
        self.say(format!(
            "uploaded {path} ({} NAR, {} stored)",
            HumanBytes(nar_size),
            HumanBytes(file_size)
        ));
    }

    pub fn present(&mut self) {
        self.totals.present += 1;
        self.finished_paths += 1;
        self.refresh_message();
    }

    pub fn upstream(&mut self, nar_size: u64) {
        self.totals.upstream += 1;
        self.totals.upstream_nar_bytes += nar_size;
        self.finished_paths += 1;
        self.refresh_message();
    }

    /// Not uploaded, by the push filters: a line with the reason (not a failure).
    pub fn skipped(&mut self, path: &str, reason: &SkipReason) {
        if let Some(index) = SKIP_KINDS.iter().position(|k| *k == reason.kind()) {
            self.totals.skipped[index] += 1;
        }
        if self.quiet {
            self.finished_paths += 1;
            return;
        }
        self.say(format!("skipped {path}: {reason}"));
    }

    pub fn failed(&mut self, path: &str, reason: &str) {
        self.totals.failed += 1;
        self.say(format!("FAILED {path}: {reason}"));
    }

    fn say(&mut self, what: String) {
        self.finished_paths += 1;
        let line = format!("[{}/{}] {what}", self.finished_paths, self.total_paths);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        self.refresh_message();
    }

    fn refresh_message(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("[{}/{}]", self.finished_paths, self.total_paths));
        }
    }

    /// Clears the live line; returns the totals and the time taken.
    pub fn finish(self) -> (Totals, Duration) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        (self.totals, self.started.elapsed())
    }
}

/// NAR bytes per second, for people.
pub fn rate(nar_bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", HumanBytes((nar_bytes as f64 / secs) as u64))
}

/// What a long read of the cache (`verify`, `du`, `gc`, `resign`) is doing, as a spinner on a
/// terminal and nothing elsewhere (logs and CI output stay clean).
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    pub fn on_terminal() -> Spinner {
        let bar = std::io::stderr()
            .is_terminal()
            .then(ProgressBar::new_spinner);
        if let Some(bar) = &bar {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Spinner(bar)
    }

    /// Shows `what` as the current step.
    pub fn say(&self, what: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(what.to_owned());
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}
