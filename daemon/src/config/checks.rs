//! Checks of single configuration values, shared by the file parser and the CLI flags.
//!
//! Invariant: each check either returns the value unchanged or a reason that names the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::MAX_CONCURRENCY;
use crate::filter::PushFilter;
use crate::format::compression::Compression;
use crate::sink::params::SINGLE_PUT_MAX_LIMIT;
use crate::sink::requests::RequestPrices;

/// A configured path, which must be absolute, or the default.
pub(super) fn absolute(
    key: &str,
    value: Option<PathBuf>,
    default: &Path,
) -> Result<PathBuf, String> {
    match value {
        None => Ok(default.to_owned()),
        Some(path) if path.is_absolute() => Ok(path),
        Some(path) => Err(format!(
            "{key} must be an absolute path, got '{}'",
            path.display()
        )),
    }
}

/// A consumer's URL must parse and have a scheme Nix substitutes from; empty means unset.
pub(super) fn check_public_url(value: Option<String>) -> Result<Option<String>, String> {
    let Some(text) = value.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let shown = crate::redact::url(&text);
    let url = url::Url::parse(&text).map_err(|e| format!("'{shown}' is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" | "file" | "s3" => Ok(Some(text)),
        other => Err(format!(
            "'{shown}' has scheme '{other}'; Nix substitutes from https://, http://, file:// or s3://"
        )),
    }
}

/// An address to listen on, `IP:PORT` (`[::1]:9184` for IPv6); empty means off.
pub(super) fn check_listen_address(value: Option<String>) -> Result<Option<SocketAddr>, String> {
    let Some(text) = value.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    text.parse::<SocketAddr>().map(Some).map_err(|e| {
        format!("'{text}' is not an address like \"127.0.0.1:9184\" or \"[::1]:9184\": {e}")
    })
}

/// Checks a concurrency limit (`jobs`, `parallel_requests`).
pub fn check_concurrency(value: usize) -> Result<usize, String> {
    if (1..=MAX_CONCURRENCY).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be between 1 and {MAX_CONCURRENCY}, got {value}"
        ))
    }
}

/// The longest `batch_window_ms`: gathering requests for longer only delays every upload (a
/// typo of a day would hold each one back for a day).
pub const MAX_BATCH_WINDOW_MS: u64 = 60_000;
/// The shortest `retry_initial_delay_ms`: below it, retries of a failing path follow each
/// other in a tight loop that uses up `max_attempts` at once.
pub const MIN_RETRY_DELAY_MS: u64 = 10;

/// `batch_window_ms`: 0 (no gathering) to [`MAX_BATCH_WINDOW_MS`].
pub(super) fn check_batch_window(ms: u64) -> Result<Duration, String> {
    if ms <= MAX_BATCH_WINDOW_MS {
        Ok(Duration::from_millis(ms))
    } else {
        Err(format!(
            "must be between 0 and {MAX_BATCH_WINDOW_MS} (ms), got {ms}"
        ))
    }
}

/// `retry_initial_delay_ms`: at least [`MIN_RETRY_DELAY_MS`].
pub(super) fn check_retry_initial_delay(ms: u64) -> Result<Duration, String> {
    if ms >= MIN_RETRY_DELAY_MS {
        Ok(Duration::from_millis(ms))
    } else {
        Err(format!(
            "must be at least {MIN_RETRY_DELAY_MS} (ms), got {ms}: retries would follow each \
             other in a tight loop"
        ))
    }
}

/// The largest NAR written with one PUT: at most [`SINGLE_PUT_MAX_LIMIT`] (a PUT carries at
/// most 5 GiB); 0 streams every NAR over one part in parts.
pub(super) fn check_single_put_max(value: u64) -> Result<u64, String> {
    if value <= SINGLE_PUT_MAX_LIMIT {
        Ok(value)
    } else {
        Err(format!(
            "must be at most {SINGLE_PUT_MAX_LIMIT} (4 GiB: one PUT carries at most 5 GiB), got {value}"
        ))
    }
}

/// Checks a compression level against what the method accepts.
pub fn check_level(compression: Compression, level: i32) -> Result<(), String> {
    let range = compression.level_range();
    if range.contains(&level) {
        Ok(())
    } else {
        Err(format!(
            "{level} is outside {}..={} for {compression}",
            range.start(),
            range.end()
        ))
    }
}

/// " (line N)" for an error span, so a person can find the bad key.
pub(super) fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

/// The push filters from their keys; an error names the key and the value refused.
pub fn check_filter(
    exclude: Option<Vec<String>>,
    exclude_outputs: Option<Vec<String>>,
    max_nar_bytes: Option<u64>,
) -> Result<PushFilter, (&'static str, String)> {
    let mut filter = PushFilter::default();
    for pattern in exclude.unwrap_or_default() {
        filter
            .add_exclude(&pattern)
            .map_err(|e| ("exclude", e.to_string()))?;
    }
    for name in exclude_outputs.unwrap_or_default() {
        filter
            .add_exclude_output(&name)
            .map_err(|e| ("exclude_outputs", e.to_string()))?;
    }
    if let Some(max) = max_nar_bytes {
        filter
            .set_max_nar_bytes(max)
            .map_err(|e| ("max_nar_bytes", e.to_string()))?;
    }
    Ok(filter)
}

/// The prices as written, the missing ones R2's.
pub(super) fn check_request_prices(raw: Option<RequestPrices>) -> Result<RequestPrices, String> {
    let prices = raw.unwrap_or_default();
    prices.check()?;
    Ok(prices)
}

/// A header value as configured (`default` when unset): printable ASCII, no line break.
pub(super) fn check_header(value: Option<String>, default: &str) -> Result<String, String> {
    let value = value.unwrap_or_else(|| default.to_owned());
    if value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        Ok(value)
    } else {
        Err(format!(
            "'{}' is not a valid header value (printable ASCII on one line)",
            value.escape_debug()
        ))
    }
}
