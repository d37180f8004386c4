//! An S3 bucket in memory, with the faults of a remote one, for the deterministic simulation
//! (feature `sim` only; its unit tests run with it): every request takes a latency of virtual time (so
//! concurrent requests finish out of order), and may fail before it has any effect (5xx,
//! 403, throttling with `Retry-After`) or after it (the write happened, the answer was lost).
//! A delete may be slow: it lands late in a long request.
//!
//! With [`Faults::key_write_interval`], the bucket keeps R2's limit on writes to one key
//! ("1 per second"): a write that reaches a key while another write of it is in progress, or
//! within the interval after one landed there, is answered 429 without effect; and a lost
//! answer to a write is then sometimes a 429 too (the SDK's retry met the limit the first
//! attempt, which landed, had set). A PUT of a shared key ([`Bucket::put_shared`]) returns a
//! throttled answer (429, 503 `SlowDown`) as [`Put::Throttled`], for the caller to judge
//! ([`crate::sink::contended`]), which tells the bucket how it judged ([`Bucket::judged`]),
//! with what it was writing; the bucket adds when that writer's GET of the key, and its HEAD
//! after it, landed (it keeps each task's last GET and HEAD, and a serial that orders every
//! change and read: [`Landed`]), so that the simulation excuses only damage the judge could
//! not have seen.
//!
//! A 403 on a read (GET, HEAD) is answered as [`Read::Refused`], as the S3 backend does, so
//! that each reader's rule for it ([`crate::coexist::Reader`]) is exercised. A delete bound by
//! a [`Check`] ([`MemorySink::delete_within`]) is not sent once the check's time is up, and is
//! given up when unanswered at its end; a request given up still lands if it would have, but
//! no later than [`GIVEN_UP_LANDS_WITHIN`] after the client gave it up (the protocol's
//! assumption on how late a delete may reach the store, [`crate::coexist`]).
//!
//! Objects carry what S3 says of them: `LastModified` from [`crate::clock::now`] at the
//! moment the write lands, and an ETag of the bytes. A write or delete lands at one instant
//! inside its request, drawn like its latency.
//!
//! Determinism: each request's latency and fault are drawn from the seed, the operation, the
//! key and how many requests of that operation the key had before, not from one stream, so
//! the draws do not depend on the order in which concurrent tasks issue their requests
//! ([`fate`]). Whether a write meets the per-key limit depends on the other writes of its key
//! and their virtual times only.
//!
//! An observer, when set, sees the whole bucket after every change, under the bucket's lock:
//! the simulation checks the closure invariant there, at every instant it could break.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::contended::{Outcome, Put};
use super::inventory::Object;
use super::{Read, SinkError};
use crate::format::hash::Sha256;
use fate::Fault;

/// How long after its client gave it up a delete request may still land.
pub const GIVEN_UP_LANDS_WITHIN: Duration = Duration::from_secs(1);

/// One object of the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub body: Bytes,
    pub modified: SystemTime,
    /// The bytes' digest (S3's ETag of a single PUT is their MD5; any digest serves).
    pub etag: String,
}

/// What a HEAD says of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub modified: SystemTime,
    pub etag: String,
}

/// How often requests fail and how long they take. Rates are per request, in parts per
/// million so that they stay integers.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub seed: u64,
    pub min_latency: Duration,
    pub max_latency: Duration,
    /// 500 InternalError before any effect.
    pub server_error_ppm: u32,
    /// 403 AccessDenied before any effect.
    pub forbidden_ppm: u32,
    /// 503 SlowDown with a `Retry-After`, before any effect.
    pub throttle_ppm: u32,
    /// The request has its effect but its answer is lost (a transient error).
    pub lost_response_ppm: u32,
    /// A delete that takes up to `slow_delete` and lands near its end.
    pub slow_delete_ppm: u32,
    pub slow_delete: Duration,
    /// R2's limit on writes to one key (`None`: none, as on S3): a write (PUT, multipart
    /// completion) that reaches a key while another write of it is in progress, or within
    /// this long after one landed, is answered 429 before any effect. Not a fault: a quiet
    /// phase keeps it.
    pub key_write_interval: Option<Duration>,
}

/// A change to the bucket: an object written, or objects deleted; or how a writer judged a
/// throttled write, which changes nothing.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    Put(&'a str),
    Delete(&'a [String]),
    /// A throttled write of `key` was judged ([`crate::sink::contended`]) from a look at the
    /// key that began at `looked_from`; the bucket is as it is when the writer decided.
    Judged {
        key: &'a str,
        outcome: Outcome,
        looked_from: SystemTime,
        /// The bytes the writer was writing there (what it wanted the key to hold).
        ours: &'a [u8],
        /// When the judge's GET of `key` landed (the last one its task sent), if it did.
        got: Option<Landed>,
        /// What that GET found there (`None`: nothing, or no GET).
        seen: Option<&'a [u8]>,
        /// The key the judge's task sent a HEAD for after that GET, and when it landed: the
        /// other writer's NAR (none when the judge took the key without a HEAD).
        headed: Option<(&'a str, Landed)>,
    },
}

/// When a request had its effect: its place in the order of the bucket's events (changes and
/// reads, one counter: [`Bucket::serial`]) and the virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landed {
    pub serial: u64,
    pub at: SystemTime,
}

/// The last GET and the last HEAD one task's requests made, each with its key.
#[derive(Clone, Debug, Default)]
struct TaskReads {
    get: Option<(String, Landed, Option<Bytes>)>,
    head: Option<(String, Landed)>,
}

/// Called with each change and the bucket after it.
pub type Observer = Box<dyn FnMut(Change<'_>, &BTreeMap<String, Stored>) + Send>;

/// Requests served and faults injected, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub server_errors: u64,
    pub forbidden: u64,
    pub throttled: u64,
    pub lost_responses: u64,
    pub slow_deletes: u64,
    /// Writes answered 429 by the per-key limit, without effect.
    pub key_throttled: u64,
    /// Lost answers to writes that landed, answered 429 (the SDK's retry met the limit).
    pub throttled_landed: u64,
    /// How throttled writes of shared keys were judged ([`Bucket::judged`]).
    pub taken_as_published: u64,
    pub written_again: u64,
    pub given_up: u64,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Stored>,
    faults: Faults,
    /// Requests drawn so far per operation and key.
    drawn: BTreeMap<(&'static str, String), u64>,
    /// Until when each key refuses writes (the per-key limit).
    busy: BTreeMap<String, tokio::time::Instant>,
    observer: Option<Observer>,
    counts: Counts,
    /// Events so far (changes and reads that landed), to order them ([`Landed::serial`]).
    serial: u64,
    /// The reads of each task (`None`: outside any task), for [`Change::Judged`].
    reads: std::collections::HashMap<Option<tokio::task::Id>, TaskReads>,
}

/// The bucket; [`MemorySink`]s and the simulation share it.
#[derive(Default)]
pub struct Bucket {
    inner: Mutex<Inner>,
}

/// A request that failed: the error, whether it was a refusal (403), and whether it was
/// throttled (429, 503 `SlowDown`).
struct Failed {
    error: SinkError,
    refused: bool,
    throttled: bool,
}

impl Bucket {
    pub fn new(faults: Faults) -> Arc<Bucket> {
        let bucket = Bucket::default();
        bucket.lock().faults = faults;
        Arc::new(bucket)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// Replaces the fault settings (a quiet phase sets them all to zero).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn set_observer(&self, observer: Option<Observer>) {
        self.lock().observer = observer;
    }

    /// The bucket as it is now.
    pub fn snapshot(&self) -> BTreeMap<String, Stored> {
        self.lock().objects.clone()
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    /// Writes an object at once, without a request (the simulation's setup).
    pub fn insert(&self, key: &str, body: Bytes) {
        self.land(key, body);
    }

    /// Whether the bucket keeps R2's per-key limit on writes ([`Faults::key_write_interval`]).
    pub fn limits_key_writes(&self) -> bool {
        self.lock().faults.key_write_interval.is_some()
    }

    /// Deletes objects at once, without a request (the simulation's damage: a lifecycle rule
    /// or an accident); a key that is gone counts as deleted.
    pub fn remove(&self, keys: &[String]) {
        self.change(Change::Delete(keys), |objects| {
            for key in keys {
                objects.remove(key);
            }
        });
    }

    /// How many events (changes, reads) have landed so far: the serial of the last one.
    pub fn serial(&self) -> u64 {
        self.lock().serial
    }

    fn change(&self, change: Change<'_>, apply: impl FnOnce(&mut BTreeMap<String, Stored>)) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !matches!(change, Change::Judged { .. }) {
            inner.serial += 1;
        }
        apply(&mut inner.objects);
        if let Some(observer) = &mut inner.observer {
            observer(change, &inner.objects);
        }
    }

    /// Runs one request: waits until it lands, applies `effect` unless it failed before,
    /// waits for the answer, and returns the effect's result or the fault.
    async fn request<T>(
        &self,
        operation: &'static str,
        key: &str,
        effect: impl FnOnce(&Bucket) -> T,
    ) -> Result<T, SinkError> {
        self.send(operation, key, None, effect)
            .await
            .map_err(|failed| failed.error)
    }

    /// A read: a 403 is the answer [`Read::Refused`], not an error.
    async fn read<T>(
        &self,
        operation: &'static str,
        key: &str,
        effect: impl FnOnce(&Bucket) -> Option<T>,
    ) -> Result<Read<T>, SinkError> {
        match self.send(operation, key, None, effect).await {
            Ok(Some(found)) => Ok(Read::Found(found)),
            Ok(None) => Ok(Read::Absent),
            Err(Failed {
                error,
                refused: true,
                ..
            }) => Ok(Read::Refused(error)),
            Err(Failed { error, .. }) => Err(error),
        }
    }

    /// [`Bucket::request`], whose effect lands no later than `land_by` when given. A write
    /// meets the per-key limit when it reaches its key ([`Bucket::refuses_write`]).
    async fn send<T>(
        &self,
        operation: &'static str,
        key: &str,
        land_by: Option<Duration>,
        effect: impl FnOnce(&Bucket) -> T,
    ) -> Result<T, Failed> {
        let mut draw = self.draw(operation, key);
        if let Some(land_by) = land_by {
            draw.lands_after = draw.lands_after.min(land_by);
            draw.arrives_after = draw.arrives_after.min(draw.lands_after);
        }
        tokio::time::sleep(draw.arrives_after).await;
        let lands_in = draw.lands_after - draw.arrives_after;
        let takes_effect = matches!(draw.fault, None | Some(Fault::LostResponse));
        if takes_effect && self.refuses_write(operation, key, lands_in) {
            draw.fault = Some(Fault::KeyBusy);
        }
        if !lands_in.is_zero() {
            // Only a write under the per-key limit reaches its key before it lands: other
            // requests sleep as they did before the limit existed.
            tokio::time::sleep(lands_in).await;
        }
        let result = match draw.early_failure(operation, key) {
            Some(failed) => Err(failed),
            None => Ok(effect(self)),
        };
        tokio::time::sleep(draw.latency.saturating_sub(draw.lands_after)).await;
        match (result, draw.fault) {
            (Ok(_), Some(Fault::LostResponse)) => {
                let lost = draw.lost_answer(operation, key);
                if lost.throttled {
                    self.lock().counts.throttled_landed += 1;
                }
                Err(lost)
            }
            (result, _) => result,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Read<Stored>, SinkError> {
        self.read("GET", key, |b| {
            let mut inner = b.lock();
            let landed = inner.landed();
            let found = inner.objects.get(key).cloned();
            let body = found.as_ref().map(|o| o.body.clone());
            inner.task_reads().get = Some((key.to_owned(), landed, body));
            found
        })
        .await
    }

    pub async fn head(&self, key: &str) -> Result<Read<Head>, SinkError> {
        self.read("HEAD", key, |b| {
            let mut inner = b.lock();
            let landed = inner.landed();
            inner.task_reads().head = Some((key.to_owned(), landed));
            inner.objects.get(key).map(|o| Head {
                size: o.body.len() as u64,
                modified: o.modified,
                etag: o.etag.clone(),
            })
        })
        .await
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        self.request("PUT", key, |b| b.land(key, body)).await
    }

    /// A PUT of a key other writers write too: a throttled answer (429, 503 `SlowDown`) is
    /// [`Put::Throttled`], as the S3 backend gives it ([`crate::sink::contended`]).
    pub async fn put_shared(&self, key: &str, body: Bytes) -> Result<Put, SinkError> {
        match self.send("PUT", key, None, |b| b.land(key, body)).await {
            Ok(()) => Ok(Put::Written),
            Err(Failed {
                error,
                throttled: true,
                ..
            }) => Ok(Put::Throttled(error)),
            Err(Failed { error, .. }) => Err(error),
        }
    }

    /// A writer judged a throttled write of `key`, where it was writing `ours`, so, from a look
    /// that began at `looked_from`: counted, and shown to the observer with when the judge's
    /// GET of `key` and its HEAD after it (its task's last ones) landed.
    pub fn judged(&self, key: &str, ours: &[u8], outcome: Outcome, looked_from: SystemTime) {
        let (got, seen, headed) = {
            let mut inner = self.lock();
            let counts = &mut inner.counts;
            match outcome {
                Outcome::TakenAsPublished => counts.taken_as_published += 1,
                Outcome::WrittenAgain => counts.written_again += 1,
                Outcome::GivenUp => counts.given_up += 1,
            }
            let reads = inner.task_reads().clone();
            let (got, seen) = reads
                .get
                .filter(|(got, landed, _)| got == key && landed.at >= looked_from)
                .map_or((None, None), |(_, landed, seen)| (Some(landed), seen));
            let headed = reads
                .head
                .filter(|(_, head)| got.is_some_and(|got| head.serial > got.serial));
            (got, seen, headed)
        };
        let judged = Change::Judged {
            key,
            outcome,
            looked_from,
            ours,
            got,
            seen: seen.as_deref(),
            headed: headed.as_ref().map(|(nar, landed)| (nar.as_str(), *landed)),
        };
        self.change(judged, |_| {});
    }

    /// A write's effect: `body` is the object at `key` from now on.
    fn land(&self, key: &str, body: Bytes) {
        self.change(Change::Put(key), |objects| {
            objects.insert(key.to_owned(), stored(body));
        });
    }

    /// Every object, as one listing that sees the bucket at one instant.
    pub async fn list(&self) -> Result<Vec<Object>, SinkError> {
        self.request("LIST", "", |b| {
            b.lock()
                .objects
                .iter()
                .map(|(key, o)| Object {
                    key: key.clone(),
                    size: o.body.len() as u64,
                    modified: o.modified,
                })
                .collect()
        })
        .await
    }

    /// Deletes `keys` in one request (a key that is gone counts as deleted).
    pub async fn delete(&self, keys: &[String]) -> Result<(), SinkError> {
        self.delete_landing_by(keys, None).await
    }

    /// [`Bucket::delete`], landing no later than `land_by` when given.
    async fn delete_landing_by(
        &self,
        keys: &[String],
        land_by: Option<Duration>,
    ) -> Result<(), SinkError> {
        let first = keys.first().map_or("", String::as_str);
        self.send("DELETE", first, land_by, |b| {
            b.change(Change::Delete(keys), |objects| {
                for key in keys {
                    objects.remove(key);
                }
            });
        })
        .await
        .map_err(|failed| failed.error)
    }
}

impl Inner {
    /// A read lands now: its serial and instant.
    fn landed(&mut self) -> Landed {
        self.serial += 1;
        Landed {
            serial: self.serial,
            at: crate::clock::now(),
        }
    }

    /// The reads of the task running now.
    fn task_reads(&mut self) -> &mut TaskReads {
        self.reads.entry(tokio::task::try_id()).or_default()
    }
}

fn stored(body: Bytes) -> Stored {
    Stored {
        etag: Sha256::digest(&body).to_base16()[..32].to_owned(),
        modified: truncate_to_millis(crate::clock::now()),
        body,
    }
}

/// S3 keeps `LastModified` in milliseconds.
fn truncate_to_millis(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

#[path = "memory/fate.rs"]
mod fate;
#[path = "memory/sink.rs"]
mod sink;
pub use sink::{MemorySink, MemoryUpload};

#[cfg(test)]
#[path = "memory/tests.rs"]
mod tests;
