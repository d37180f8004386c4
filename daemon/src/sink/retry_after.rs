//! The `Retry-After` header of a throttled answer (RFC 9110 §10.2.3), read without trusting it.
//!
//! The value is either a number of seconds or an HTTP-date. Anything else, a date in the past,
//! or a number too large for a `Duration` gives `None` or a bounded wait: a server cannot make
//! narpush wait longer than [`MAX_RETRY_AFTER`] (callers cap it further at their own maximum).

use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};

/// The longest wait a `Retry-After` can ask for, whatever it says.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// The wait a `Retry-After` value asks for, measured from `now`, at most [`MAX_RETRY_AFTER`].
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // A number of seconds too large for u64 is "very long": the cap applies.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = DateTime::from_str(value, Format::HttpDate).ok()?;
        let at = SystemTime::try_from(at).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn seconds_are_read_and_capped() {
        assert_eq!(parse("7", at(0)), Some(Duration::from_secs(7)));
        assert_eq!(parse(" 0 ", at(0)), Some(Duration::ZERO));
        assert_eq!(parse("86400", at(0)), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse("99999999999999999999999999", at(0)),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn an_http_date_is_a_wait_from_now() {
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse(date, at(784_111_767)), Some(Duration::from_secs(10)));
        assert_eq!(parse(date, at(784_111_800)), Some(Duration::ZERO));
        assert_eq!(parse(date, at(0)), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn anything_else_is_ignored() {
        for value in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 99 Nov 1994 08:49:37 GMT",
            "+3",
        ] {
            assert_eq!(parse(value, at(0)), None, "{value:?}");
        }
    }
}
