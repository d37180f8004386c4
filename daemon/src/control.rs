//! The client side of the daemon's socket, for `narpush push`, `status`, `wait` and `retry`:
//! one request per connection, bounded in time, the same protocol code as the hook.

use std::path::{Path, PathBuf};
use std::time::Duration;

use narpush_protocol::client::{self, ExchangeError, Limits};
use narpush_protocol::{defaults, env, Request};

use crate::config::Config;
use crate::daemon::status::StatusReport;

/// How long a command waits for the daemon's answer; status documents can list many
/// failures, so answers may be long.
const LIMITS: Limits = Limits {
    deadline: Duration::from_secs(30),
    max_response: 64 << 20,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the narpush daemon (is `narpush daemon` running?)")]
    Unreachable(#[source] ExchangeError),
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
    if let Some(from_env) = env::path(env::SOCKET) {
        return from_env;
    }
    Config::load(config).map_or_else(|_| PathBuf::from(defaults::SOCKET), |c| c.socket)
}

/// Sends `request` and returns the text of an `ok` answer.
pub fn call(socket: &Path, request: &Request) -> Result<String, ControlError> {
    client::exchange(socket, request, LIMITS).map_err(|error| match error {
        ExchangeError::Refused { reason } => ControlError::Refused(reason),
        other => ControlError::Unreachable(other),
    })
}

pub fn status(socket: &Path) -> Result<StatusReport, ControlError> {
    let text = call(socket, &Request::Status)?;
    serde_json::from_str(&text).map_err(|e| ControlError::BadStatus(e.to_string()))
}
