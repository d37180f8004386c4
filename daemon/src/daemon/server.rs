//! The daemon's Unix socket: taken from systemd (`LISTEN_FDS`) or bound at `socket`.
//!
//! Every connection carries one request (see the protocol crate) and gets one response line.
//! Guarantees:
//! - **Who may do what.** The peer's uid comes from the kernel (`SO_PEERCRED`); `enqueue` and
//!   `retry` need a uid in `allowed_uids` or the daemon's own; `status` is open to anyone who
//!   can open the socket (its mode and group decide that).
//! - **No client stalls another.** Each connection is its own task; a request must arrive whole
//!   within [`REQUEST_TIMEOUT`] and within the protocol's size limit, and at most
//!   [`MAX_CONNECTIONS`] are served at once (the next one gets "busy" at once).
//! - **Ack after durability.** `ok` for an enqueue is written only once the request is on
//!   disk (the intake journal synced, or the queue flushed).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use narpush_protocol::{Request, Response, Source, MAX_REQUEST};

use super::shared::Shared;
use super::{enqueue, status};
use crate::error_chain;
use crate::queue::QueueError;

/// The longest a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// The listening socket, and the path to remove at exit if we bound it ourselves.
pub fn listen(path: &Path) -> anyhow::Result<(UnixListener, Option<PathBuf>)> {
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(listener) = fds
        .take_unix_listener(0)
        .context("cannot take the socket systemd passed (LISTEN_FDS)")?
    {
        listener.set_nonblocking(true)?;
        tracing::info!("serving the socket passed by systemd");
        return Ok((UnixListener::from_std(listener)?, None));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket's directory {}", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Root (which runs the hook under nix-daemon) and the socket's group may connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    tracing::info!(socket = %path.display(), "listening");
    Ok((listener, Some(path.to_owned())))
}

/// A socket file nobody answers on is left over from a crash; one that answers is another
/// daemon, which must not be replaced.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("another daemon is already listening on {}", path.display());
    }
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove the stale socket {}", path.display()))
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let listener = &listener;
    while let Some(stream) = shared
        .next_connection("socket", move || async move {
            listener.accept().await.map(|(stream, _)| stream)
        })
        .await
    {
        let tracked = shared.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                shared.tasks.spawn(async move {
                    handle(stream, &tracked).await;
                    drop(slot);
                });
            }
            Err(_) => {
                shared.tasks.spawn(async move {
                    respond(stream, Response::Error("busy: too many connections".into())).await;
                });
            }
        }
    }
}

async fn handle(mut stream: UnixStream, shared: &Shared) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!("cannot read peer credentials: {e}");
            return;
        }
    };
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Response::Error(format!(
            "request not complete within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Response::Error(format!("cannot read the request: {e}")),
        Ok(Ok(bytes)) => match Request::parse(&bytes) {
            Err(e) => Response::Error(format!("malformed request: {e}")),
            Ok(request) => dispatch(request, uid, shared).await,
        },
    };
    if let Response::Error(reason) = &response {
        tracing::warn!(uid, "rejected a request: {reason}");
    }
    respond(stream, response).await;
}

async fn respond(mut stream: UnixStream, response: Response) {
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = stream.write_all(&response.encode()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads until the request's `end` line, the peer closing, or the size limit.
async fn read_request(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(buffer);
        }
        buffer.extend_from_slice(&chunk[..read]);
        if buffer.len() > MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request larger than {MAX_REQUEST} bytes"),
            ));
        }
        if Request::is_complete(&buffer) {
            return Ok(buffer);
        }
    }
}

/// The status report, once everything acknowledged before the request is in the queue it is
/// read from.
async fn status_after_intake(shared: &Shared) -> Result<status::StatusReport, QueueError> {
    shared.intake.caught_up(&shared.queue).await;
    status::collect(shared)
}

async fn dispatch(request: Request, uid: u32, shared: &Shared) -> Response {
    let may_write = uid == shared.own_uid || shared.settings().config.allowed_uids.contains(&uid);
    match request {
        Request::Status => match status_after_intake(shared).await {
            Ok(report) => Response::Ok(serde_json::to_string(&report).unwrap_or_default()),
            Err(e) => Response::Error(match shared.queue.failure() {
                Some(reason) => format!(
                    "cannot read the queue: {reason}; requests are refused (the hook spools \
                     them) until the daemon has opened it again"
                ),
                None => format!("cannot read the queue: {e}"),
            }),
        },
        Request::Enqueue { .. } | Request::Retry { .. } if !may_write => Response::Error(format!(
            "uid {uid} may not change the queue (allowed_uids lists who may)"
        )),
        Request::Enqueue { source, drv, outs } => {
            // Only the daemon's own spool ingestion records `spool`; a socket peer saying so
            // is recorded as a push, so `status` never misattributes where a path came from.
            let source = if source == Source::Spool {
                Source::Push
            } else {
                source
            };
            match enqueue::enqueue(shared, source, drv.as_deref(), &outs).await {
                Ok(count) => {
                    shared.activity.acknowledged();
                    Response::Ok(format!("queued {count} path(s)"))
                }
                Err(e) => Response::Error(error_chain(&e)),
            }
        }
        Request::Retry { all, outs } => {
            let paths = match outs
                .iter()
                .map(|out| enqueue::store_path(out))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(paths) => paths,
                Err(e) => return Response::Error(error_chain(&e)),
            };
            match shared.queue.retry(all, &paths).await {
                Ok(count) => {
                    shared.wake.notify_one();
                    Response::Ok(format!("requeued {count} failed path(s)"))
                }
                Err(e) => Response::Error(error_chain(&e)),
            }
        }
    }
}
