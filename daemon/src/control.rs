//! The client side of the daemon's socket, for `narpush push`, `status`, `wait` and `retry`:
//! one request per connection, bounded in time, the same protocol code as the hook.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use narpush_protocol::{Request, Response};

use crate::config::{Config, DEFAULT_SOCKET, SOCKET_ENV};
use crate::daemon::status::StatusReport;

/// How long a command waits for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Status documents can list many failures; anything beyond this is not an answer.
const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the narpush daemon at {socket} (is `narpush daemon` running?)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon at {socket} failed")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon at {socket} sent something that is not narpush protocol")]
    Garbled { socket: PathBuf },
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error("the daemon's status is not understood: {0}")]
    BadStatus(String),
}

/// The socket a client uses: the `--socket` flag, else `$NARPUSH_SOCKET`, else `socket` from
/// the config file (`--config`, `$NARPUSH_CONFIG`, the default location), else the default.
/// An unreadable config file only costs its `socket` key: status must work without it.
pub fn socket_path(flag: Option<&Path>, config: Option<&Path>) -> PathBuf {
    if let Some(flag) = flag {
        return flag.to_owned();
    }
    if let Some(from_env) = std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(from_env);
    }
    Config::load(config).map_or_else(|_| PathBuf::from(DEFAULT_SOCKET), |c| c.socket)
}

/// Sends `request` and returns the text of an `ok` answer.
pub fn call(socket: &Path, request: &Request) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.write_all(&request.encode()).map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut answer)
        .map_err(io)?;
    match Response::parse(&answer) {
        Some(Response::Ok(text)) => Ok(text),
        Some(Response::Error(reason)) => Err(ControlError::Refused(reason)),
        None => Err(ControlError::Garbled {
            socket: socket.to_owned(),
        }),
    }
}

pub fn status(socket: &Path) -> Result<StatusReport, ControlError> {
    let text = call(socket, &Request::Status)?;
    serde_json::from_str(&text).map_err(|e| ControlError::BadStatus(e.to_string()))
}
