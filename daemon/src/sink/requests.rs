//! Request accounting: every request sent to an S3 target, counted per attempt as it goes out
//! (the SDK's retries included), by operation, by R2's price class and by the kind of object.
//!
//! Invariant: one process-wide tally ([`tally`]) counts each attempt once, when the S3 client
//! hands it to the network (the interceptor of [`super::s3`]); every report (`status`, the
//! metrics, the summaries of `upload`, `exec`, `gc` and `verify`) reads it, and nothing counts
//! a request a second time. A process is one command or one daemon, so the tally is "since the
//! command or the daemon started".
//!
//! Beside the requests, the tally counts how throttled writes of shared keys ended
//! ([`ThrottledWrites`], counted by [`super::contended`] for every store that throttles: S3,
//! and the simulation's bucket when it keeps R2's per-key limit).
//!
//! Only S3 requests are counted: a directory target (`file://`) and the simulation's bucket
//! in memory cost nothing per operation, so their reports show zero requests.
//!
//! The object kind of a request on one key is that key's ([`crate::layout::kind_of`]); a
//! listing (ListObjectsV2, ListMultipartUploads) takes the kind its prefix holds (`nar/`:
//! `nar`), the whole bucket being `mixed`; a DeleteObjects batch takes the kind its keys share,
//! else `mixed`. A key narpush does not write is `other`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::layout::{kind_of, ObjectKind};
use crate::sync::lock;

/// R2's price classes of S3 operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Writes, listings and every multipart call.
    A,
    /// Reads (GET, HEAD).
    B,
    /// Deletes and aborts.
    Free,
}

impl Class {
    /// The class of an S3 operation by its API name; an operation R2 does not list is class A
    /// (the dearer guess).
    pub fn of(operation: &str) -> Class {
        match operation {
            "GetObject" | "HeadObject" | "HeadBucket" => Class::B,
            "DeleteObject" | "DeleteObjects" | "AbortMultipartUpload" => Class::Free,
            _ => Class::A,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::A => "A",
            Class::B => "B",
            Class::Free => "free",
        }
    }
}

/// What a request is about, by its key (or its keys' common kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Object {
    Narinfo,
    Nar,
    Listing,
    Log,
    Realisation,
    CacheInfo,
    Pin,
    /// Several kinds at once: the whole bucket listed, a batch of deletes of several kinds.
    Mixed,
    /// A key narpush and Nix do not write.
    Other,
}

impl Object {
    pub fn of_key(key: &str) -> Object {
        match kind_of(key) {
            ObjectKind::CacheInfo => Object::CacheInfo,
            ObjectKind::NarInfo { .. } => Object::Narinfo,
            ObjectKind::Listing { .. } => Object::Listing,
            ObjectKind::Nar => Object::Nar,
            ObjectKind::Log { .. } => Object::Log,
            ObjectKind::Realisation => Object::Realisation,
            ObjectKind::Pin { .. } => Object::Pin,
            ObjectKind::Other => Object::Other,
        }
    }

    /// The kind a listing under `prefix` returns.
    pub fn of_prefix(prefix: &str) -> Object {
        match prefix {
            "" => Object::Mixed,
            _ if prefix.starts_with(crate::layout::NAR_PREFIX) => Object::Nar,
            _ if prefix.starts_with(crate::layout::PIN_PREFIX) => Object::Pin,
            _ if prefix.starts_with("log/") => Object::Log,
            _ if prefix.starts_with("realisations/") || prefix.starts_with("build-trace-v2/") => {
                Object::Realisation
            }
            _ => Object::Other,
        }
    }

    /// The kind all of `keys` share, else [`Object::Mixed`].
    pub fn of_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Object {
        let mut kinds = keys.into_iter().map(Object::of_key);
        let Some(first) = kinds.next() else {
            return Object::Mixed;
        };
        match kinds.all(|kind| kind == first) {
            true => first,
            false => Object::Mixed,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Object::Narinfo => "narinfo",
            Object::Nar => "nar",
            Object::Listing => "listing",
            Object::Log => "log",
            Object::Realisation => "realisation",
            Object::CacheInfo => "cache-info",
            Object::Pin => "pin",
            Object::Mixed => "mixed",
            Object::Other => "other",
        }
    }
}

/// Requests sent, by operation and object kind.
#[derive(Debug, Default)]
pub struct Tally {
    sent: Mutex<BTreeMap<(String, Object), u64>>,
    throttled: Mutex<ThrottledWrites>,
}

/// Throttled writes of the keys several writers write ([`super::contended`]), by outcome.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ThrottledWrites {
    /// Done without writing: another writer had published what this one wanted.
    pub taken_as_published: u64,
    /// PUTs sent again after a throttled answer.
    pub written_again: u64,
    /// Throttled writes given up after the last PUT (left to the caller's retries).
    pub given_up: u64,
}

impl Tally {
    /// A throttled write was taken as published by another writer.
    pub fn taken_as_published(&self) {
        lock(&self.throttled).taken_as_published += 1;
    }

    /// A throttled write is sent again.
    pub fn written_again(&self) {
        lock(&self.throttled).written_again += 1;
    }

    /// A throttled write is given up after its last PUT.
    pub fn given_up(&self) {
        lock(&self.throttled).given_up += 1;
    }

    /// One attempt of `operation` on `object` went out.
    pub fn sent(&self, operation: &str, object: Object) {
        let mut sent = lock(&self.sent);
        match sent.get_mut(&(operation.to_owned(), object)) {
            Some(count) => *count += 1,
            None => {
                sent.insert((operation.to_owned(), object), 1);
            }
        }
    }

    /// What was sent so far, priced with `prices`.
    pub fn counts(&self, prices: &RequestPrices) -> RequestCounts {
        let mut counts = RequestCounts::default();
        for ((operation, object), &n) in lock(&self.sent).iter() {
            counts.total += n;
            match Class::of(operation) {
                Class::A => counts.class_a += n,
                Class::B => counts.class_b += n,
                Class::Free => counts.free += n,
            }
            *counts.by_op.entry(operation.clone()).or_default() += n;
            *counts
                .by_object
                .entry(operation.clone())
                .or_default()
                .entry(object.label().to_owned())
                .or_default() += n;
        }
        counts.estimated_cost_usd = prices.cost(counts.class_a, counts.class_b);
        counts.throttled_writes = lock(&self.throttled).clone();
        counts
    }
}

/// The tally of this process.
pub fn tally() -> &'static Tally {
    process_tally()
}

/// The tally of this process, shared: what the S3 client's interceptor counts into unless it is
/// given another ([`super::s3`]'s tests give theirs their own).
pub fn process_tally() -> &'static Arc<Tally> {
    static TALLY: OnceLock<Arc<Tally>> = OnceLock::new();
    TALLY.get_or_init(Arc::default)
}

/// What requests cost, in dollars per million (`[request_prices]`); R2's prices by default.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestPrices {
    pub class_a_per_million: f64,
    pub class_b_per_million: f64,
}

/// The dearest price accepted, in dollars per million requests: far above any provider's, and
/// low enough that a count of requests times it stays a finite number of dollars (a price
/// such as 1e308 would make the cost infinite, which JSON cannot carry).
pub const MAX_PRICE_PER_MILLION: f64 = 1_000_000.0;

/// Prices are checked finite and non-negative ([`RequestPrices::check`]), so never NaN.
impl Eq for RequestPrices {}

impl Default for RequestPrices {
    fn default() -> RequestPrices {
        RequestPrices {
            class_a_per_million: 4.50,
            class_b_per_million: 0.36,
        }
    }
}

impl RequestPrices {
    /// The reason the prices are unusable, naming the key, if they are.
    pub fn check(&self) -> Result<(), String> {
        for (key, price) in [
            ("class_a_per_million", self.class_a_per_million),
            ("class_b_per_million", self.class_b_per_million),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(format!(
                    "{key} = {price}: a price is a number of dollars, 0 or more"
                ));
            }
            if price > MAX_PRICE_PER_MILLION {
                return Err(format!(
                    "{key} = {price:e}: a price is at most 1,000,000 dollars per million requests"
                ));
            }
        }
        Ok(())
    }

    pub fn cost(&self, class_a: u64, class_b: u64) -> f64 {
        (class_a as f64 * self.class_a_per_million + class_b as f64 * self.class_b_per_million)
            / 1e6
    }
}

/// Requests sent, as every report shows them (`requests` in `status --json` and the `--json`
/// summaries).
///
/// Every field may be absent and unknown fields are ignored, so a version 3 status document
/// (whose `requests` was `{"acknowledged", "spool_ingested"}`) reads as zero requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestCounts {
    /// Every request sent (each attempt of each operation).
    pub total: u64,
    pub class_a: u64,
    pub class_b: u64,
    pub free: u64,
    /// Requests by S3 operation (`PutObject`, `GetObject`, …).
    pub by_op: BTreeMap<String, u64>,
    /// Requests by operation, then by object kind (`narinfo`, `nar`, …).
    pub by_object: BTreeMap<String, BTreeMap<String, u64>>,
    /// Dollars at `[request_prices]` (R2's by default).
    pub estimated_cost_usd: f64,
    /// How throttled writes of shared keys (narinfos, `nix-cache-info`) ended.
    pub throttled_writes: ThrottledWrites,
}

impl RequestCounts {
    /// What was sent since `earlier` (a snapshot of the same tally) was taken.
    pub fn since(&self, earlier: &RequestCounts, prices: &RequestPrices) -> RequestCounts {
        let minus = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            a.iter()
                .map(|(k, n)| (k.clone(), n - b.get(k).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect::<BTreeMap<_, _>>()
        };
        let empty = BTreeMap::new();
        let by_object = self
            .by_object
            .iter()
            .map(|(op, kinds)| {
                let before = earlier.by_object.get(op).unwrap_or(&empty);
                (op.clone(), minus(kinds, before))
            })
            .filter(|(_, kinds)| !kinds.is_empty())
            .collect();
        let class_a = self.class_a - earlier.class_a;
        let class_b = self.class_b - earlier.class_b;
        RequestCounts {
            total: self.total - earlier.total,
            class_a,
            class_b,
            free: self.free - earlier.free,
            by_op: minus(&self.by_op, &earlier.by_op),
            by_object,
            estimated_cost_usd: prices.cost(class_a, class_b),
            throttled_writes: ThrottledWrites {
                taken_as_published: self.throttled_writes.taken_as_published
                    - earlier.throttled_writes.taken_as_published,
                written_again: self.throttled_writes.written_again
                    - earlier.throttled_writes.written_again,
                given_up: self.throttled_writes.given_up - earlier.throttled_writes.given_up,
            },
        }
    }
}

impl RequestCounts {
    /// `1,234 (class A 1,000, class B 234, free 0), estimated cost $0.0046`.
    pub fn breakdown(&self) -> String {
        format!(
            "{} (class A {}, class B {}, free {}), estimated cost ${}",
            thousands(self.total),
            thousands(self.class_a),
            thousands(self.class_b),
            thousands(self.free),
            dollars(self.estimated_cost_usd)
        )
    }
}

/// The summary line: `requests: 1,234 (class A 1,000, class B 234, free 0), estimated cost
/// $0.0046`, and after it, when the target throttled writes of shared keys, `; throttled
/// writes: 3 published by another writer, 1 written again, 0 given up`.
impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "requests: {}", self.breakdown())?;
        let throttled = &self.throttled_writes;
        if throttled.taken_as_published > 0 || throttled.written_again > 0 || throttled.given_up > 0
        {
            write!(
                f,
                "; throttled writes: {} published by another writer, {} written again, {} given up",
                thousands(throttled.taken_as_published),
                thousands(throttled.written_again),
                thousands(throttled.given_up)
            )?;
        }
        Ok(())
    }
}

/// Four decimals, six for a cost under a hundredth of a cent (so it does not read as 0).
fn dollars(cost: f64) -> String {
    match cost > 0.0 && cost < 0.0001 {
        true => format!("{cost:.6}"),
        false => format!("{cost:.4}"),
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
#[path = "requests/tests.rs"]
mod tests;
