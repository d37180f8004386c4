//! One exchange with the daemon: connect, send a request, read the one-line answer, all within a
//! deadline that holds even when the daemon accepts and then never answers.
//!
//! `connect` on a Unix socket has no timeout of its own (it blocks while the listener's backlog
//! is full), so the exchange runs on a helper thread and the caller stops waiting at the
//! deadline. A thread left behind that way ends with the process, or when its socket times out.
//!
//! The hook runs this once per build, so the helper thread is kept cheap: a small stack, and
//! its buffers allocated by the caller (a thread's first allocation sets up a malloc arena).

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::request::{Request, Response};

/// How long to wait and how much to read.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole exchange, connection included.
    pub deadline: Duration,
    /// An answer longer than this is not an answer.
    pub max_response: u64,
}

/// Why an exchange did not end in `ok`.
#[derive(Debug)]
pub enum ExchangeError {
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// No answer within the deadline.
    Timeout { socket: PathBuf, deadline: Duration },
    /// The daemon closed the connection without a word.
    NoAnswer { socket: PathBuf },
    /// The answer is not narpush protocol.
    Garbled { socket: PathBuf },
    /// The daemon answered `error …`.
    Refused { reason: String },
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Connect { socket, .. } => {
                write!(f, "cannot connect to {}", socket.display())
            }
            ExchangeError::Io { socket, .. } => write!(f, "talking to {} failed", socket.display()),
            ExchangeError::Timeout { socket, deadline } => write!(
                f,
                "no answer from {} within {} s",
                socket.display(),
                deadline.as_secs_f64()
            ),
            ExchangeError::NoAnswer { socket } => {
                write!(
                    f,
                    "{} closed the connection without an answer",
                    socket.display()
                )
            }
            ExchangeError::Garbled { socket } => {
                write!(
                    f,
                    "{} answered something that is not narpush protocol",
                    socket.display()
                )
            }
            ExchangeError::Refused { reason } => write!(f, "the daemon said: {reason}"),
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExchangeError::Connect { source, .. } | ExchangeError::Io { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// The helper thread's stack: it only connects, writes and reads.
const HELPER_STACK: usize = 64 * 1024;
/// Room for an answer reserved up front; longer answers (status documents) grow the buffer.
const ANSWER_CAPACITY: usize = 1024;

/// Sends `request` to the daemon at `socket`; returns the text of an `ok` answer.
pub fn exchange(socket: &Path, request: &Request, limits: Limits) -> Result<String, ExchangeError> {
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let bytes = request.encode();
    let socket_owned = socket.to_owned();
    let capacity = usize::try_from(limits.max_response)
        .map_or(ANSWER_CAPACITY, |max| max.min(ANSWER_CAPACITY));
    let answer = Vec::with_capacity(capacity);
    let helper = std::thread::Builder::new()
        .stack_size(HELPER_STACK)
        .spawn(move || {
            let _ = done_tx.send(exchange_blocking(&socket_owned, &bytes, answer, limits));
        });
    if let Err(source) = helper {
        return Err(ExchangeError::Io {
            socket: socket.to_owned(),
            source,
        });
    }
    let answer = done_rx.recv_timeout(limits.deadline).unwrap_or_else(|_| {
        Err(ExchangeError::Timeout {
            socket: socket.to_owned(),
            deadline: limits.deadline,
        })
    })?;
    match Response::parse(&answer) {
        Some(Response::Ok(text)) => Ok(text),
        Some(Response::Error(reason)) => Err(ExchangeError::Refused { reason }),
        None if answer.is_empty() => Err(ExchangeError::NoAnswer {
            socket: socket.to_owned(),
        }),
        None => Err(ExchangeError::Garbled {
            socket: socket.to_owned(),
        }),
    }
}

/// The helper thread's part: the raw answer, read until the daemon closes.
fn exchange_blocking(
    socket: &Path,
    request: &[u8],
    mut answer: Vec<u8>,
    limits: Limits,
) -> Result<Vec<u8>, ExchangeError> {
    let io = |source: std::io::Error| match source.kind() {
        // The socket timeouts are the deadline too.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ExchangeError::Timeout {
            socket: socket.to_owned(),
            deadline: limits.deadline,
        },
        _ => ExchangeError::Io {
            socket: socket.to_owned(),
            source,
        },
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ExchangeError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(limits.deadline)).map_err(io)?;
    stream
        .set_write_timeout(Some(limits.deadline))
        .map_err(io)?;
    stream.write_all(request).map_err(io)?;
    (&mut stream)
        .take(limits.max_response)
        .read_to_end(&mut answer)
        .map_err(io)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    const QUICK: Limits = Limits {
        deadline: Duration::from_millis(300),
        max_response: 1024,
    };

    /// A server that reads one request and answers `answer`; returns what it read.
    fn answering(
        listener: UnixListener,
        answer: &'static [u8],
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !Request::is_complete(&request) {
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            stream.write_all(answer).unwrap();
            request
        })
    }

    #[test]
    fn an_ok_answer_returns_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let server = answering(
            UnixListener::bind(&socket).unwrap(),
            b"ok queued 1 path(s)\n",
        );
        let answer = exchange(&socket, &Request::Status, QUICK).unwrap();
        assert_eq!(answer, "queued 1 path(s)");
        assert_eq!(server.join().unwrap(), Request::Status.encode());
    }

    #[test]
    fn a_daemon_that_never_answers_costs_the_deadline_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let listener = UnixListener::bind(&socket).unwrap();
        let _held = std::thread::spawn(move || {
            let kept = listener.accept();
            std::thread::sleep(Duration::from_secs(5));
            drop(kept);
        });
        let started = std::time::Instant::now();
        let error = exchange(&socket, &Request::Status, QUICK).unwrap_err();
        assert!(matches!(error, ExchangeError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn no_socket_and_garbage_answers_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let missing = exchange(&dir.path().join("none"), &Request::Status, QUICK).unwrap_err();
        assert!(
            matches!(missing, ExchangeError::Connect { .. }),
            "{missing}"
        );

        let socket = dir.path().join("s");
        answering(
            UnixListener::bind(&socket).unwrap(),
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        let garbled = exchange(&socket, &Request::Status, QUICK).unwrap_err();
        assert!(
            matches!(garbled, ExchangeError::Garbled { .. }),
            "{garbled}"
        );
    }
}
