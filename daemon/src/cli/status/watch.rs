//! `narpush status --watch`: the status text again and again until Ctrl-C.
//!
//! On a terminal each refresh is drawn over the previous one (cursor home, each line cleared to
//! its end, the rest of the screen cleared), so the picture does not scroll or flicker. When
//! stdout is not a terminal (a pipe, a log file) each refresh is printed whole after a blank
//! line, without escape codes. A daemon that does not answer is shown as such and asked again
//! at the next refresh. Ctrl-C (SIGINT) ends the watch with exit status 0, also while waiting
//! for an answer.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use super::render;
use crate::cli::Outcome;
use narpush::control;

/// Moves the cursor to the top-left corner.
const HOME: &str = "\x1b[H";
/// Clears from the cursor to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Clears from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";
/// Clears the whole screen (before the first frame).
const CLEAR_SCREEN: &str = "\x1b[2J";

pub fn run(socket: PathBuf, interval: Duration) -> anyhow::Result<Outcome> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(watch(socket, interval))
}

async fn watch(socket: PathBuf, interval: Duration) -> anyhow::Result<Outcome> {
    // Registered before the first request, so an early Ctrl-C is not lost.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let terminal = std::io::stdout().is_terminal();
    let mut frames = 0u64;
    loop {
        let asking = socket.clone();
        let fetch = tokio::task::spawn_blocking(move || control::status(&asking));
        let report = tokio::select! {
            fetched = fetch => fetched.context("the status request stopped")?,
            _ = interrupt.recv() => return Ok(Outcome::Success),
        };
        let body = match report {
            Ok(report) => render(&report),
            Err(e) => format!("cannot get the status: {}\n", narpush::error_chain(&e)),
        };
        let heading = format!(
            "narpush status, every {} (Ctrl-C to stop)\n\n",
            humantime::format_duration(interval)
        );
        draw(&(heading + &body), terminal, frames == 0)?;
        frames += 1;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = interrupt.recv() => return Ok(Outcome::Success),
        }
    }
}

/// Writes one refresh: over the previous one on a terminal, after a blank line otherwise.
fn draw(text: &str, terminal: bool, first: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if terminal {
        let mut frame = String::with_capacity(text.len() + 64);
        if first {
            frame.push_str(CLEAR_SCREEN);
        }
        frame.push_str(HOME);
        for line in text.lines() {
            frame.push_str(line);
            frame.push_str(CLEAR_LINE);
            frame.push('\n');
        }
        frame.push_str(CLEAR_BELOW);
        out.write_all(frame.as_bytes())?;
    } else {
        if !first {
            out.write_all(b"\n")?;
        }
        out.write_all(text.as_bytes())?;
    }
    out.flush()
}
