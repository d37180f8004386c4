//! The wall clock, read through one function so that the deterministic simulation (feature
//! `sim`) can run the engine, the queue and retention GC on virtual time.
//!
//! Rules for the modules the simulation drives (engine, queue, pipeline, gc, sink, upstream):
//! - the time of day (object ages, `Retry-After` dates, queue timestamps) comes from [`now`],
//!   never from `SystemTime::now()`;
//! - elapsed time and deadlines use `tokio::time::Instant`, which is virtual on a runtime whose
//!   time is paused, never `std::time::Instant`.
//!
//! Production reads the system clock; nothing here changes its behaviour.

use std::time::{Duration, SystemTime};

#[cfg(feature = "sim")]
thread_local! {
    /// The virtual wall clock's reading at a virtual instant, while a simulation runs on this
    /// thread.
    static VIRTUAL: std::cell::Cell<Option<(SystemTime, tokio::time::Instant)>> =
        const { std::cell::Cell::new(None) };
}

/// The time of day.
pub fn now() -> SystemTime {
    #[cfg(feature = "sim")]
    if let Some((epoch, start)) = VIRTUAL.with(std::cell::Cell::get) {
        return epoch + tokio::time::Instant::now().saturating_duration_since(start);
    }
    SystemTime::now()
}

/// `time` in whole seconds since the epoch: S3 lists modification times in milliseconds but a
/// HEAD gives them in whole seconds, so times from both are compared so.
pub fn whole_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long before `now` `then` was (an object's or file's age). A `then` after `now` (a
/// clock ahead of ours) is zero: a skewed timestamp makes a thing new, never old, so nothing
/// is collected or trusted as stale because of it.
pub fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// Makes [`now`] on this thread read `epoch` at this (virtual) instant and advance with
/// tokio's clock from there; `None` returns to the system clock.
#[cfg(feature = "sim")]
pub fn set_virtual(epoch: Option<SystemTime>) {
    VIRTUAL.with(|v| v.set(epoch.map(|e| (e, tokio::time::Instant::now()))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_the_time_since_and_zero_for_a_time_ahead() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            age(now, now - Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(age(now, now + Duration::from_secs(30)), Duration::ZERO);
    }
}
