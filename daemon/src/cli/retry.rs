//! `narpush retry`: put failed paths back in the queue.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Outcome;
use narpush::control;
use narpush::store;
use narpush_protocol::Request;

/// Put failed paths back in the queue (with a fresh attempt count).
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// Every failed path.
    #[arg(long, conflicts_with = "paths")]
    all: bool,

    /// The failed paths to retry.
    #[arg(value_name = "PATH", required_unless_present = "all")]
    paths: Vec<String>,

    /// The daemon's socket. Default: $NARPUSH_SOCKET, else `socket` from the config file,
    /// else /run/narpush/narpush.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

pub fn run(args: &RetryArgs, config: Option<&Path>) -> anyhow::Result<Outcome> {
    let outs = store::resolve_store_path_args(&args.paths)?
        .iter()
        .map(|path| path.to_absolute())
        .collect();
    let socket = control::socket_path(args.socket.as_deref(), config);
    let answer = control::call(
        &socket,
        &Request::Retry {
            all: args.all,
            outs,
        },
    )
    .context("retry failed")?;
    eprintln!("narpush: {answer}");
    Ok(Outcome::Success)
}
