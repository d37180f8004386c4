//! `narpush-hook`: the program Nix runs as `post-build-hook`.
//!
//! It hands `DRV_PATH` and `OUT_PATHS` to the narpush daemon over `NARPUSH_SOCKET` and waits
//! for the acknowledgement, which the daemon sends only once the request is on disk. When the
//! daemon is absent, refuses, is slow, or answers garbage, the hook writes the same request
//! into `NARPUSH_SPOOL_DIR` instead (temporary file, fsync, rename), where the daemon finds it
//! later.
//!
//! **Exit policy: always 0**, decided in [`main`] alone. A hook that fails makes Nix stop
//! starting builds, and a hook that blocks holds the build loop, so every path out of this
//! program is bounded by [`DEADLINE`] and ends in success; problems go to stderr, one line.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use narpush_protocol::{Request, Response};

const DEFAULT_SOCKET: &str = "/run/narpush/narpush.sock";
const DEFAULT_SPOOL_DIR: &str = "/var/lib/narpush/spool";
/// The longest the daemon gets to acknowledge, connection included.
const DEADLINE: Duration = Duration::from_secs(3);
/// A daemon's answer is one short line; anything longer is not an answer.
const MAX_RESPONSE: u64 = 64 * 1024;

fn main() -> ExitCode {
    let request = Request::from_hook_env(
        std::env::var("DRV_PATH").ok().as_deref(),
        std::env::var("OUT_PATHS").ok().as_deref(),
    );
    if matches!(&request, Request::Enqueue { drv: None, outs, .. } if outs.is_empty()) {
        eprintln!("narpush-hook: neither DRV_PATH nor OUT_PATHS is set; nothing to hand over");
        return ExitCode::SUCCESS;
    }
    let bytes = request.encode();
    let socket = env_path("NARPUSH_SOCKET", DEFAULT_SOCKET);
    let why = match deliver_within(&socket, bytes.clone(), DEADLINE) {
        Ok(()) => return ExitCode::SUCCESS,
        Err(why) => why,
    };
    let spool_dir = env_path("NARPUSH_SPOOL_DIR", DEFAULT_SPOOL_DIR);
    match spool(&spool_dir, &bytes) {
        Ok(file) => eprintln!(
            "narpush-hook: daemon at {} did not take the request ({why}); spooled to {}",
            socket.display(),
            file.display()
        ),
        Err(e) => eprintln!(
            "narpush-hook: daemon at {} did not take the request ({why}) and spooling to {} \
             failed ({e}); these paths will not be uploaded automatically",
            socket.display(),
            spool_dir.display()
        ),
    }
    ExitCode::SUCCESS
}

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Runs the exchange on a thread and gives up waiting after `deadline`: `connect` itself has
/// no timeout, and a daemon may accept and then never answer.
fn deliver_within(socket: &Path, request: Vec<u8>, deadline: Duration) -> Result<(), String> {
    let (done_tx, done_rx) = mpsc::channel();
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let _ = done_tx.send(deliver(&socket, &request, deadline));
    });
    match done_rx.recv_timeout(deadline) {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", deadline.as_secs())),
    }
}

fn deliver(socket: &Path, request: &[u8], deadline: Duration) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(deadline));
    let _ = stream.set_write_timeout(Some(deadline));
    stream
        .write_all(request)
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut answer)
        .map_err(|e| format!("read answer: {e}"))?;
    match Response::parse(&answer) {
        Some(Response::Ok(_)) => Ok(()),
        Some(Response::Error(reason)) => Err(format!("daemon said: {reason}")),
        None if answer.is_empty() => Err("connection closed without an answer".to_owned()),
        None => Err("the answer is not narpush protocol".to_owned()),
    }
}

/// Writes the request atomically into `dir`: a hidden temporary file, flushed, renamed to its
/// final name, and the directory flushed, so the daemon sees a whole file or none.
fn spool(dir: &Path, request: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{nanos}-{}.request", std::process::id());
    let temporary = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(&name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        // create_new is O_CREAT|O_EXCL, which never follows a symlink planted at the name.
        .mode(0o644)
        .open(&temporary)?;
    let written = file.write_all(request).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&temporary, &final_path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(final_path)
}
