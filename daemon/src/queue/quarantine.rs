//! Quarantine after a fatal stop: which due entries [`Queue::take_due`] starts while some were
//! uploading when a task of the daemon failed (a panic: see `daemon::supervise`).
//!
//! Any path in flight at a panic may have caused it, and a backlog batch holds up to a thousand.
//! So that only the culprit uses up its attempts:
//!
//! - [`Queue::requeue_uploading`] with [`Interrupted::Fatal`] gives every interrupted entry an
//!   error starting with [`SUSPECT`] (the record says it, so the quarantine survives restarts).
//!   An entry that was uploading alone keeps its attempt counted: it likely caused the stop.
//!   Entries that were uploading together get theirs back.
//! - While any due entry is a suspect, [`select`] starts only the oldest suspect, and only when
//!   the engine holds nothing else; nothing else starts meanwhile. The attempt's outcome
//!   replaces the error, so each suspect has one attempt alone and then proceeds normally; one
//!   that stops the daemon again, alone, stays a suspect with one more attempt counted, and
//!   [`Queue::take_due`] fails it after `max_attempts` with `gave up after N attempts:
//!   interrupted: … alone, which likely caused it: <the panic>`.
//!
//! Bound: an entry is interrupted together with others at most once before it is a suspect, and
//! a suspect is only ever started alone, so a path that panics the daemon every time stops it at
//! most `max_attempts + 1` times (a kill during its attempt alone resets that: see
//! [`Interrupted::Crash`]).
//!
//! [`Interrupted::Fatal`]: super::Interrupted::Fatal
//! [`Interrupted::Crash`]: super::Interrupted::Crash
//! [`Queue::take_due`]: super::Queue::take_due
//! [`Queue::requeue_uploading`]: super::Queue::requeue_uploading

use super::Entry;

/// How the last error of an entry a fatal stop interrupted begins (also in records written
/// before the quarantine, which are suspects too).
pub const SUSPECT: &str = "interrupted: the daemon stopped during the upload";

/// Whether `entry` was uploading when the daemon last stopped on a fatal error, and has not had
/// an attempt alone since.
pub fn is_suspect(entry: &Entry) -> bool {
    entry
        .last_error
        .as_deref()
        .is_some_and(|error| error.starts_with(SUSPECT))
}

/// The last error of an entry that was uploading, with `others` other entries, when the daemon
/// stopped because `reason`.
pub fn interruption(reason: &str, others: usize) -> String {
    if others == 0 {
        format!("{SUSPECT} of this path alone, which likely caused it: {reason}")
    } else {
        format!(
            "{SUSPECT} of this path and {others} other(s); attempt not counted, it is tried \
             alone next: {reason}"
        )
    }
}

/// Which of the `due` entries (those with attempts left, oldest first) to start.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// No suspect is due: the first `n` (at most the limit).
    Batch(usize),
    /// The suspect at this index, alone.
    Alone(usize),
    /// Suspects are due, but the engine still holds other entries: none now.
    Wait,
}

/// What [`Queue::take_due`](super::Queue::take_due) starts of `due` (oldest first), at most
/// `limit`, when the engine holds nothing (`engine_idle`) or something.
pub fn select(due: &[&Entry], limit: usize, engine_idle: bool) -> Selection {
    match due.iter().position(|entry| is_suspect(entry)) {
        None => Selection::Batch(due.len().min(limit)),
        Some(first) if engine_idle && limit > 0 => Selection::Alone(first),
        Some(_) => Selection::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::store_path::StorePath;
    use crate::queue::NewPath;
    use narpush_protocol::Source;

    fn entry(n: usize, last_error: Option<String>) -> Entry {
        let path = format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-p{n}");
        let mut entry = Entry::fresh(
            &NewPath {
                path: StorePath::from_basename(&path).unwrap(),
                source: Source::Push,
                drv: None,
                realisations: Vec::new(),
            },
            1_000 + n as u64,
        );
        entry.last_error = last_error;
        entry
    }

    #[test]
    fn without_suspects_a_batch_up_to_the_limit_starts() {
        let due = [
            entry(0, None),
            entry(1, Some("503 SlowDown".to_owned())),
            entry(
                2,
                Some("interrupted: the daemon stopped (crash or kill)".to_owned()),
            ),
        ];
        let due: Vec<&Entry> = due.iter().collect();
        assert_eq!(select(&due, 10, false), Selection::Batch(3));
        assert_eq!(select(&due, 2, true), Selection::Batch(2));
        assert_eq!(select(&[], 10, true), Selection::Batch(0));
    }

    #[test]
    fn the_oldest_suspect_starts_alone_and_only_when_the_engine_is_idle() {
        let due = [
            entry(0, None),
            entry(1, Some(interruption("the engine task panicked: boom", 3))),
            entry(2, Some(interruption("the engine task panicked: boom", 0))),
        ];
        let due: Vec<&Entry> = due.iter().collect();
        assert_eq!(select(&due, 1000, true), Selection::Alone(1));
        assert_eq!(select(&due, 1000, false), Selection::Wait);
        assert_eq!(select(&due, 0, true), Selection::Wait);
    }

    #[test]
    fn both_interruptions_and_the_older_wording_are_suspects_but_their_failure_is_not() {
        for others in [0, 1, 999] {
            assert!(is_suspect(&entry(0, Some(interruption("x", others)))));
        }
        let older = "interrupted: the daemon stopped during the upload: the pipeline task panicked";
        assert!(is_suspect(&entry(0, Some(older.to_owned()))));
        let failed = format!("gave up after 3 attempts: {}", interruption("x", 0));
        assert!(!is_suspect(&entry(0, Some(failed))));
        assert!(!is_suspect(&entry(0, None)));
    }

    #[test]
    fn the_interruption_says_whether_the_path_was_alone() {
        let alone = interruption("the engine task panicked: boom", 0);
        assert!(alone.contains("alone, which likely caused it"), "{alone}");
        assert!(
            alone.ends_with(": the engine task panicked: boom"),
            "{alone}"
        );
        let together = interruption("the engine task panicked: boom", 4);
        assert!(together.contains("and 4 other(s)"), "{together}");
        assert!(together.contains("attempt not counted"), "{together}");
    }
}
