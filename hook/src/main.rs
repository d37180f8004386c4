//! `narpush-hook`: the program Nix runs as `post-build-hook`.
//!
//! It hands `DRV_PATH` and `OUT_PATHS` to the narpush daemon over `NARPUSH_SOCKET` and waits
//! for the acknowledgement, which the daemon sends only once the request is on disk. When the
//! daemon is absent, refuses, is slow, or answers garbage, the hook writes the same request
//! into `NARPUSH_SPOOL_DIR` instead, where the daemon finds it later.
//!
//! **Exit policy: always 0**, decided in [`main`] alone. A hook that fails makes Nix stop
//! starting builds, and a hook that blocks holds the build loop, so every path out of this
//! program is bounded by [`LIMITS`] and ends in success; problems go to stderr, one line.

use std::process::ExitCode;
use std::time::Duration;

use narpush_protocol::client::{self, Limits};
use narpush_protocol::{defaults, env, spool, Request};

/// The longest the daemon gets to acknowledge, connection included; its answer is one short
/// line.
const LIMITS: Limits = Limits {
    deadline: Duration::from_secs(3),
    max_response: 64 * 1024,
};

fn main() -> ExitCode {
    let request = Request::from_hook_env(
        std::env::var(env::DRV_PATH).ok().as_deref(),
        std::env::var(env::OUT_PATHS).ok().as_deref(),
    );
    if matches!(&request, Request::Enqueue { drv: None, outs, .. } if outs.is_empty()) {
        eprintln!("narpush-hook: neither DRV_PATH nor OUT_PATHS is set; nothing to hand over");
        return ExitCode::SUCCESS;
    }
    let socket = env::path(env::SOCKET).unwrap_or_else(|| defaults::SOCKET.into());
    let why = match client::exchange(&socket, &request, LIMITS) {
        Ok(_) => return ExitCode::SUCCESS,
        Err(why) => why,
    };
    let spool_dir = env::path(env::SPOOL_DIR).unwrap_or_else(|| defaults::SPOOL_DIR.into());
    match spool::write(&spool_dir, &request.encode()) {
        Ok(file) => eprintln!(
            "narpush-hook: the daemon did not take the request ({}); spooled to {}",
            one_line(&why),
            file.display()
        ),
        Err(e) => eprintln!(
            "narpush-hook: the daemon did not take the request ({}) and spooling to {} \
             failed ({e}); these paths will not be uploaded automatically",
            one_line(&why),
            spool_dir.display()
        ),
    }
    ExitCode::SUCCESS
}

/// An error and its cause on one line.
fn one_line(error: &client::ExchangeError) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}
