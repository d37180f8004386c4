use super::*;
use std::time::SystemTime;

use crate::queue::{NewPath, State};
use narpush_protocol::Source;

#[tokio::test]
async fn an_outcome_the_queue_refused_is_recorded_once_it_is_open_again() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let path = StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-refused").unwrap();
    queue
        .enqueue(&[NewPath {
            path: path.clone(),
            source: Source::Push,
            drv: None,
            realisations: Vec::new(),
        }])
        .await
        .unwrap();
    assert_eq!(queue.take_due(now_ms() + 1, 10, 20, true).entries.len(), 1);

    // The database fails just as the upload ends: the outcome cannot be written.
    queue.fail_for_test("disk full");
    let mut books = Books::default();
    let outcome = Outcome::Failed {
        error: "gone from the store".to_owned(),
    };
    assert!(!books.record(&queue, &path, outcome));

    // As `take_due` does: reopen (which puts `uploading` entries back to pending), then
    // record what was refused, before anything is taken.
    queue.reopen().unwrap();
    assert!(books.record_again(&queue, |_| {}));
    let entry = queue.get(&path).unwrap().unwrap();
    assert_eq!(entry.state, State::Failed);
    assert_eq!(entry.last_error.as_deref(), Some("gone from the store"));
}

fn throttled(retry_after: Option<Duration>) -> Failure {
    Failure {
        class: ErrorClass::Transient,
        message: "503 SlowDown".to_owned(),
        retry_after,
    }
}

/// The wait an outcome asks for, from `before` (ms since the epoch).
fn wait_of(outcome: &Outcome, before: u64) -> Duration {
    match outcome {
        Outcome::RetryAt { at_ms, .. } => Duration::from_millis(at_ms.saturating_sub(before)),
        other => panic!("not a retry: {other:?}"),
    }
}

#[test]
fn retry_after_is_honoured_up_to_the_configured_maximum_and_never_overflows() {
    let config = Config {
        retry_initial_delay: Duration::from_secs(1),
        retry_max_delay: Duration::from_secs(600),
        ..Config::default()
    };
    let before = now_ms();
    let asked = throttled(Some(Duration::from_secs(120)));
    let wait = wait_of(&outcome_of_failure(&config, 1, &asked), before);
    assert!(wait >= Duration::from_secs(120), "{wait:?}");
    assert!(wait < Duration::from_secs(121), "{wait:?}");

    // A huge Retry-After (the parser caps it at an hour; the pipeline at retry_max_delay).
    let huge = crate::sink::retry_after::parse("99999999999999999999", SystemTime::now());
    let wait = wait_of(&outcome_of_failure(&config, 1, &throttled(huge)), before);
    assert!(
        wait <= config.retry_max_delay + Duration::from_secs(1),
        "{wait:?}"
    );
    let wait = wait_of(
        &outcome_of_failure(&config, 1, &throttled(Some(Duration::MAX))),
        before,
    );
    assert!(
        wait <= config.retry_max_delay + Duration::from_secs(1),
        "{wait:?}"
    );

    // An HTTP-date in the past asks for no wait: the backoff alone decides (0.5–1 s).
    let past = crate::sink::retry_after::parse("Sun, 06 Nov 1994 08:49:37 GMT", SystemTime::now());
    assert_eq!(past, Some(Duration::ZERO));
    let wait = wait_of(&outcome_of_failure(&config, 1, &throttled(past)), before);
    assert!(wait >= Duration::from_millis(500), "{wait:?}");
    assert!(wait <= Duration::from_secs(2), "{wait:?}");

    // The largest settings neither panic nor wrap around to an earlier time.
    let unbounded = Config {
        retry_max_delay: Duration::MAX,
        max_attempts: u32::MAX,
        ..config
    };
    let outcome = outcome_of_failure(&unbounded, 40, &throttled(Some(Duration::MAX)));
    assert!(matches!(outcome, Outcome::RetryAt { at_ms, .. } if at_ms >= before));
    let at = instant_in(u64::MAX);
    assert!(at <= Instant::now() + LONGEST_SLEEP);
}

#[test]
fn a_retry_time_beyond_any_clock_is_capped_instead_of_overflowing() {
    let before = Instant::now();
    let at = instant_in(u64::MAX);
    assert!(at >= before && at <= Instant::now() + LONGEST_SLEEP);
}

#[test]
fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
    let initial = Duration::from_secs(1);
    let max = Duration::from_secs(60);
    for attempt in 1..=10 {
        let full = Duration::from_secs(1 << (attempt - 1)).min(max);
        for _ in 0..50 {
            let delay = backoff(attempt, initial, max);
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?}"
            );
        }
    }
    assert!(backoff(1000, initial, max) <= max);
}
