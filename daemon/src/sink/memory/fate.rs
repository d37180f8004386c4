//! Each request's fate in the bucket: its latency, when within it its effect lands, and which
//! fault it meets, if any. Drawn from the seed, the operation, the key and how many requests
//! of that operation the key had before ([`crate::random::seeded::mix`]), so the draws do not
//! depend on the order in which concurrent tasks issue their requests. Draws are added only
//! after the ones before them, so a seed's earlier draws stay what they were.
//!
//! The one fate not drawn is the per-key limit's ([`Bucket::refuses_write`]): whether a write
//! reaches a key that is busy depends on the other writes of that key and their virtual times.

use std::time::Duration;

use super::{Bucket, Failed};
use crate::random::seeded::{mix, Bits};
use crate::sink::{ErrorClass, SinkError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    ServerError,
    Forbidden,
    /// 503 `SlowDown`, drawn.
    Throttled,
    LostResponse,
    /// 429: the key had another write in progress or landed within the interval.
    KeyBusy,
}

/// One request's fate.
pub(super) struct Draw {
    pub latency: Duration,
    /// When within the latency its effect lands.
    pub lands_after: Duration,
    /// When within the latency a write reaches its key (at most `lands_after`): where the
    /// per-key limit decides.
    pub arrives_after: Duration,
    pub fault: Option<Fault>,
    /// The `Retry-After` of a 429 of the per-key limit.
    pub retry_after: Option<Duration>,
    /// A lost answer to a write is a 429 (with the per-key limit: the SDK's retry of the
    /// write met the limit its first attempt set; that attempt landed).
    pub lost_as_throttled: bool,
}

/// Operations that write a key, which the per-key limit counts.
pub(super) fn writes(operation: &str) -> bool {
    matches!(operation, "PUT" | "COMPLETE-MULTIPART")
}

impl Bucket {
    pub(super) fn draw(&self, operation: &'static str, key: &str) -> Draw {
        let mut inner = self.lock();
        let n = {
            let count = inner.drawn.entry((operation, key.to_owned())).or_default();
            *count += 1;
            *count
        };
        let f = &inner.faults;
        let mut bits = Bits(mix(f.seed, operation, key.as_bytes(), n));
        let span = f.max_latency.saturating_sub(f.min_latency);
        let mut latency = f.min_latency + span.mul_f64(bits.unit());
        let mut lands_after = latency.mul_f64(bits.unit());
        let pick = bits.ppm();
        let mut fault = None;
        let mut threshold = 0u64;
        for (ppm, kind) in [
            (f.server_error_ppm, Fault::ServerError),
            (f.forbidden_ppm, Fault::Forbidden),
            (f.throttle_ppm, Fault::Throttled),
            (f.lost_response_ppm, Fault::LostResponse),
        ] {
            threshold += u64::from(ppm);
            if pick < threshold {
                fault = Some(kind);
                break;
            }
        }
        let slow = operation == "DELETE" && bits.ppm() < u64::from(f.slow_delete_ppm);
        if slow {
            latency = f.slow_delete.mul_f64(0.5 + bits.unit() / 2.0);
            lands_after = latency.mul_f64(0.9);
        }
        let limited = f.key_write_interval.is_some() && writes(operation);
        let (arrives_after, retry_after, lost_as_throttled) = match limited {
            true => {
                let arrives_after = lands_after.mul_f64(bits.unit());
                // Half the answers without `Retry-After`, the others 0 to 6 s (beyond the
                // 5 s a writer waits at most).
                let retry_after = bits
                    .ppm()
                    .checked_sub(500_000)
                    .map(|n| Duration::from_secs(n % 7));
                (arrives_after, retry_after, bits.ppm() < 500_000)
            }
            false => (lands_after, None, false),
        };
        let counts = &mut inner.counts;
        counts.requests += 1;
        counts.slow_deletes += u64::from(slow);
        match fault {
            Some(Fault::ServerError) => counts.server_errors += 1,
            Some(Fault::Forbidden) => counts.forbidden += 1,
            Some(Fault::Throttled) => counts.throttled += 1,
            Some(Fault::LostResponse) => counts.lost_responses += 1,
            Some(Fault::KeyBusy) | None => {}
        }
        Draw {
            latency,
            lands_after,
            arrives_after,
            fault,
            retry_after,
            lost_as_throttled,
        }
    }

    /// Whether a write of `key` reaching it now is refused by the per-key limit; if not, the
    /// key is busy from now until the interval after the write lands, `lands_in` from now.
    pub(super) fn refuses_write(&self, operation: &str, key: &str, lands_in: Duration) -> bool {
        let mut inner = self.lock();
        let Some(interval) = inner.faults.key_write_interval else {
            return false;
        };
        if !writes(operation) {
            return false;
        }
        let now = tokio::time::Instant::now();
        if inner.busy.get(key).is_some_and(|until| *until > now) {
            inner.counts.key_throttled += 1;
            return true;
        }
        inner.busy.insert(key.to_owned(), now + lands_in + interval);
        false
    }
}

impl Draw {
    /// The error of a request whose fault came before any effect (`None`: no such fault).
    pub(super) fn early_failure(&self, operation: &'static str, key: &str) -> Option<Failed> {
        let fault = self.fault;
        let (class, detail, retry_after) = match fault? {
            Fault::ServerError => (ErrorClass::Transient, "500 InternalError", None),
            Fault::Forbidden => (ErrorClass::Permanent, "403 AccessDenied", None),
            Fault::Throttled => (
                ErrorClass::Transient,
                "503 SlowDown",
                Some(Duration::from_secs(1)),
            ),
            Fault::KeyBusy => (
                ErrorClass::Transient,
                "429 Too Many Requests: another write of the key is in progress or landed less \
                 than a second ago",
                self.retry_after,
            ),
            Fault::LostResponse => return None,
        };
        Some(Failed {
            error: failed(
                operation,
                key,
                class,
                &format!("{detail} (simulated)"),
                retry_after,
            ),
            refused: fault == Some(Fault::Forbidden),
            throttled: matches!(fault, Some(Fault::Throttled | Fault::KeyBusy)),
        })
    }

    /// The error of a request whose effect landed but whose answer was lost.
    pub(super) fn lost_answer(&self, operation: &'static str, key: &str) -> Failed {
        let (detail, throttled) = match self.lost_as_throttled {
            true => (
                "429 Too Many Requests (simulated: the answer was lost and the SDK's retry met \
                 the key's limit; the first attempt took effect)",
                true,
            ),
            false => (
                "connection reset before the answer (simulated; the request took effect)",
                false,
            ),
        };
        let retry_after = self.retry_after.filter(|_| throttled);
        Failed {
            error: failed(operation, key, ErrorClass::Transient, detail, retry_after),
            refused: false,
            throttled,
        }
    }
}

fn failed(
    operation: &'static str,
    key: &str,
    class: ErrorClass,
    detail: &str,
    retry_after: Option<Duration>,
) -> SinkError {
    SinkError {
        operation,
        key: key.to_owned(),
        class,
        detail: detail.to_owned(),
        retry_after,
    }
}
