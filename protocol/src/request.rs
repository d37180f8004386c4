//! Requests and responses on the daemon's socket, and their one text encoding (a spool file holds
//! the same bytes as a request on the socket).
//!
//! # Grammar (version 1)
//!
//! One request per connection. Every line ends in `\n`; text is UTF-8 without control
//! characters.
//!
//! ```text
//! request  = "narpush 1 " command "\n" *( field "\n" ) "end\n"
//! command  = "enqueue" | "status" | "retry"
//! field    = name " " value
//! response = ( "ok" [ " " text ] | "error" [ " " text ] ) "\n"
//! ```
//!
//! Fields by command:
//! - `enqueue`: `source hook|spool|push` (once), `drv PATH` (at most once), `out PATH` (any
//!   number). At least one `drv` or `out`. With no `out`, the daemon reads the outputs from the
//!   `drv` (Nix 2.8.0 leaves `OUT_PATHS` empty).
//! - `status`: none. The `ok` text is a JSON document on the same line.
//! - `retry`: `all` (a field without value) or `out PATH` (any number).
//!
//! # Limits
//!
//! A line is at most [`MAX_LINE`] bytes and a request at most [`MAX_REQUEST`] bytes; a peer that
//! exceeds either gets an error. These limits hold for the parser alone; store-path validity is
//! the daemon's job, since this crate cannot know the store's rules beyond the shape of a line.

use std::fmt;

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;
/// Longest line accepted (a store path is at most about 260 bytes).
pub const MAX_LINE: usize = 4096;
/// Largest request accepted (thousands of paths).
pub const MAX_REQUEST: usize = 1 << 20;

/// Who handed the paths over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Hook,
    Spool,
    Push,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hook => "hook",
            Source::Spool => "spool",
            Source::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "hook" => Some(Source::Hook),
            "spool" => Some(Source::Spool),
            "push" => Some(Source::Push),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request, as sent by a client or stored in a spool file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Enqueue {
        source: Source,
        drv: Option<String>,
        outs: Vec<String>,
    },
    Status,
    Retry {
        all: bool,
        outs: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    TooLarge {
        limit: usize,
    },
    LineTooLong {
        line: usize,
        limit: usize,
    },
    NotUtf8 {
        line: usize,
    },
    ControlCharacter {
        line: usize,
    },
    BadHeader {
        found: String,
    },
    UnsupportedVersion {
        found: String,
    },
    UnknownCommand {
        found: String,
    },
    UnknownField {
        command: &'static str,
        field: String,
    },
    DuplicateField {
        field: &'static str,
    },
    BadValue {
        field: &'static str,
        value: String,
    },
    MissingEnd,
    TrailingData,
    NothingToEnqueue,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::TooLarge { limit } => write!(f, "request larger than {limit} bytes"),
            ProtocolError::LineTooLong { line, limit } => {
                write!(f, "line {line} is longer than {limit} bytes")
            }
            ProtocolError::NotUtf8 { line } => write!(f, "line {line} is not UTF-8"),
            ProtocolError::ControlCharacter { line } => {
                write!(f, "line {line} contains a control character")
            }
            ProtocolError::BadHeader { found } => {
                write!(f, "expected 'narpush {VERSION} COMMAND', got '{found}'")
            }
            ProtocolError::UnsupportedVersion { found } => write!(
                f,
                "protocol version {found} is not supported (this side speaks {VERSION})"
            ),
            ProtocolError::UnknownCommand { found } => write!(
                f,
                "unknown command '{found}' (known: enqueue, status, retry)"
            ),
            ProtocolError::UnknownField { command, field } => {
                write!(f, "unknown field '{field}' for {command}")
            }
            ProtocolError::DuplicateField { field } => write!(f, "field '{field}' given twice"),
            ProtocolError::BadValue { field, value } => {
                write!(f, "field '{field}' has a bad value '{value}'")
            }
            ProtocolError::MissingEnd => write!(f, "request ended without an 'end' line"),
            ProtocolError::TrailingData => write!(f, "data after the 'end' line"),
            ProtocolError::NothingToEnqueue => {
                write!(f, "enqueue needs a 'drv' or at least one 'out' field")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

impl Request {
    /// The request the hook sends for Nix's `DRV_PATH` and `OUT_PATHS` (space-separated).
    pub fn from_hook_env(drv_path: Option<&str>, out_paths: Option<&str>) -> Request {
        Request::Enqueue {
            source: Source::Hook,
            drv: drv_path
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            outs: out_paths
                .unwrap_or_default()
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut text = String::new();
        let mut line = |s: &str| {
            text.push_str(s);
            text.push('\n');
        };
        match self {
            Request::Enqueue { source, drv, outs } => {
                line(&format!("narpush {VERSION} enqueue"));
                line(&format!("source {source}"));
                if let Some(drv) = drv {
                    line(&format!("drv {drv}"));
                }
                for out in outs {
                    line(&format!("out {out}"));
                }
            }
            Request::Status => line(&format!("narpush {VERSION} status")),
            Request::Retry { all, outs } => {
                line(&format!("narpush {VERSION} retry"));
                if *all {
                    line("all");
                }
                for out in outs {
                    line(&format!("out {out}"));
                }
            }
        }
        line("end");
        text.into_bytes()
    }

    /// Whether `buffer` holds a complete request (its `end` line), so a reader knows when to
    /// stop reading without waiting for the peer to close.
    pub fn is_complete(buffer: &[u8]) -> bool {
        buffer == b"end\n" || buffer.ends_with(b"\nend\n")
    }

    pub fn parse(bytes: &[u8]) -> Result<Request, ProtocolError> {
        if bytes.len() > MAX_REQUEST {
            return Err(ProtocolError::TooLarge { limit: MAX_REQUEST });
        }
        let mut lines = Lines::new(bytes);
        let header = lines.next_line()?.ok_or(ProtocolError::MissingEnd)?;
        let command = parse_header(header)?;
        let mut source = None;
        let mut drv = None;
        let mut outs = Vec::new();
        let mut all = false;
        loop {
            let line = lines.next_line()?.ok_or(ProtocolError::MissingEnd)?;
            if line == "end" {
                break;
            }
            let (name, value) = line.split_once(' ').unwrap_or((line, ""));
            match (command, name) {
                ("enqueue", "source") => {
                    let parsed = Source::parse(value).ok_or_else(|| ProtocolError::BadValue {
                        field: "source",
                        value: value.to_owned(),
                    })?;
                    if source.replace(parsed).is_some() {
                        return Err(ProtocolError::DuplicateField { field: "source" });
                    }
                }
                ("enqueue", "drv") => {
                    let value = non_empty("drv", value)?;
                    if drv.replace(value).is_some() {
                        return Err(ProtocolError::DuplicateField { field: "drv" });
                    }
                }
                ("enqueue" | "retry", "out") => outs.push(non_empty("out", value)?),
                ("retry", "all") if value.is_empty() => all = true,
                (command, _) => {
                    return Err(ProtocolError::UnknownField {
                        command,
                        field: name.to_owned(),
                    })
                }
            }
        }
        if lines.rest_len() > 0 {
            return Err(ProtocolError::TrailingData);
        }
        Ok(match command {
            "enqueue" => {
                if drv.is_none() && outs.is_empty() {
                    return Err(ProtocolError::NothingToEnqueue);
                }
                Request::Enqueue {
                    source: source.unwrap_or(Source::Push),
                    drv,
                    outs,
                }
            }
            "status" => Request::Status,
            _ => Request::Retry { all, outs },
        })
    }
}

fn parse_header(header: &str) -> Result<&'static str, ProtocolError> {
    let mut words = header.split(' ');
    let (Some("narpush"), Some(version), Some(command), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(ProtocolError::BadHeader {
            found: header.to_owned(),
        });
    };
    if version != VERSION.to_string() {
        return Err(ProtocolError::UnsupportedVersion {
            found: version.to_owned(),
        });
    }
    match command {
        "enqueue" => Ok("enqueue"),
        "status" => Ok("status"),
        "retry" => Ok("retry"),
        other => Err(ProtocolError::UnknownCommand {
            found: other.to_owned(),
        }),
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<String, ProtocolError> {
    if value.is_empty() || value.contains(' ') {
        return Err(ProtocolError::BadValue {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value.to_owned())
}

/// Checked lines of a request.
struct Lines<'a> {
    rest: &'a [u8],
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Lines<'a> {
        Lines {
            rest: bytes,
            number: 0,
        }
    }

    fn rest_len(&self) -> usize {
        self.rest.len()
    }

    fn next_line(&mut self) -> Result<Option<&'a str>, ProtocolError> {
        let Some(end) = self.rest.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        self.number += 1;
        let line = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        if line.len() > MAX_LINE {
            return Err(ProtocolError::LineTooLong {
                line: self.number,
                limit: MAX_LINE,
            });
        }
        let text =
            std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8 { line: self.number })?;
        if text.chars().any(char::is_control) {
            return Err(ProtocolError::ControlCharacter { line: self.number });
        }
        Ok(Some(text))
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Ok(String),
    Error(String),
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let (word, text) = match self {
            Response::Ok(text) => ("ok", text),
            Response::Error(text) => ("error", text),
        };
        let text = text.replace('\n', " ");
        let mut line = if text.is_empty() {
            word.to_owned()
        } else {
            format!("{word} {text}")
        };
        line.push('\n');
        line.into_bytes()
    }

    /// Parses a response line (with or without its `\n`); `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Response> {
        let text = std::str::from_utf8(bytes).ok()?;
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return None;
        }
        match line.split_once(' ') {
            None if line == "ok" => Some(Response::Ok(String::new())),
            None if line == "error" => Some(Response::Error(String::new())),
            Some(("ok", rest)) => Some(Response::Ok(rest.to_owned())),
            Some(("error", rest)) => Some(Response::Error(rest.to_owned())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
