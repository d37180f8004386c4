//! `narpush push`: hand paths to the running daemon; returns once they are durably queued.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{wait, Outcome};
use narpush::control;
use narpush::store;
use narpush_protocol::{Request, Source};

/// Hand store paths to the running daemon (returns once they are durably queued).
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Store paths, files inside them, or symlinks to them (like ./result).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,

    /// Then wait until the queue is idle, as `narpush wait` does.
    #[arg(long)]
    wait: bool,

    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECS", requires = "wait")]
    timeout: Option<u64>,

    /// The daemon's socket. Default: $NARPUSH_SOCKET, else `socket` from the config file,
    /// else /run/narpush/narpush.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

pub fn run(args: &PushArgs, config: Option<&Path>) -> anyhow::Result<Outcome> {
    let outs = store::resolve_store_path_args(&args.paths)?
        .iter()
        .map(|path| path.to_absolute())
        .collect();
    let socket = control::socket_path(args.socket.as_deref(), config);
    let request = Request::Enqueue {
        source: Source::Push,
        drv: None,
        outs,
    };
    let answer = control::call(&socket, &request).context("push failed")?;
    eprintln!("narpush: {answer}");
    if args.wait {
        return wait::wait_idle(&socket, args.timeout);
    }
    Ok(Outcome::Success)
}
