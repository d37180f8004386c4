//! An S3 bucket in memory, with the faults of a remote one, for the deterministic simulation
//! (feature `sim` only; its unit tests run with it): every request takes a latency of virtual time (so
//! concurrent requests finish out of order), and may fail before it has any effect (5xx,
//! 403, throttling with `Retry-After`) or after it (the write happened, the answer was lost).
//! A delete may be slow: it lands late in a long request.
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
//! the draws do not depend on the order in which concurrent tasks issue their requests.
//!
//! An observer, when set, sees the whole bucket after every change, under the bucket's lock:
//! the simulation checks the closure invariant there, at every instant it could break.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::inventory::Object;
use super::{ErrorClass, Read, SinkError};
use crate::format::hash::Sha256;

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
}

/// A change to the bucket: an object written, or objects deleted.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    Put(&'a str),
    Delete(&'a [String]),
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
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Stored>,
    faults: Faults,
    /// Requests drawn so far per operation and key.
    drawn: BTreeMap<(&'static str, String), u64>,
    observer: Option<Observer>,
    counts: Counts,
}

/// The bucket; [`MemorySink`]s and the simulation share it.
#[derive(Default)]
pub struct Bucket {
    inner: Mutex<Inner>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServerError,
    Forbidden,
    Throttled,
    LostResponse,
}

/// A request that failed: the error, and whether it was a refusal (403).
struct Failed {
    error: SinkError,
    refused: bool,
}

/// One request's fate.
struct Draw {
    latency: Duration,
    /// When within the latency its effect lands.
    lands_after: Duration,
    fault: Option<Fault>,
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
        self.change(Change::Put(key), |objects| {
            objects.insert(key.to_owned(), stored(body));
        });
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

    fn change(&self, change: Change<'_>, apply: impl FnOnce(&mut BTreeMap<String, Stored>)) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        apply(&mut inner.objects);
        if let Some(observer) = &mut inner.observer {
            observer(change, &inner.objects);
        }
    }

    fn draw(&self, operation: &'static str, key: &str) -> Draw {
        let mut inner = self.lock();
        let n = {
            let count = inner.drawn.entry((operation, key.to_owned())).or_default();
            *count += 1;
            *count
        };
        let f = &inner.faults;
        let mut bits = Bits(mix(f.seed, operation, key, n));
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
        let counts = &mut inner.counts;
        counts.requests += 1;
        counts.slow_deletes += u64::from(slow);
        match fault {
            Some(Fault::ServerError) => counts.server_errors += 1,
            Some(Fault::Forbidden) => counts.forbidden += 1,
            Some(Fault::Throttled) => counts.throttled += 1,
            Some(Fault::LostResponse) => counts.lost_responses += 1,
            None => {}
        }
        Draw {
            latency,
            lands_after,
            fault,
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
            }) => Ok(Read::Refused(error)),
            Err(Failed { error, .. }) => Err(error),
        }
    }

    /// [`Bucket::request`], whose effect lands no later than `land_by` when given.
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
        }
        tokio::time::sleep(draw.lands_after).await;
        let failed = |class, detail: &str, retry_after| SinkError {
            operation,
            key: key.to_owned(),
            class,
            detail: detail.to_owned(),
            retry_after,
        };
        let early = match draw.fault {
            Some(Fault::ServerError) => Some(failed(
                ErrorClass::Transient,
                "500 InternalError (simulated)",
                None,
            )),
            Some(Fault::Forbidden) => Some(failed(
                ErrorClass::Permanent,
                "403 AccessDenied (simulated)",
                None,
            )),
            Some(Fault::Throttled) => Some(failed(
                ErrorClass::Transient,
                "503 SlowDown (simulated)",
                Some(Duration::from_secs(1)),
            )),
            Some(Fault::LostResponse) | None => None,
        };
        let result = match early {
            Some(error) => Err(Failed {
                error,
                refused: draw.fault == Some(Fault::Forbidden),
            }),
            None => Ok(effect(self)),
        };
        tokio::time::sleep(draw.latency.saturating_sub(draw.lands_after)).await;
        match (result, draw.fault) {
            (Ok(_), Some(Fault::LostResponse)) => Err(Failed {
                error: failed(
                    ErrorClass::Transient,
                    "connection reset before the answer (simulated; the request took effect)",
                    None,
                ),
                refused: false,
            }),
            (result, _) => result,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Read<Stored>, SinkError> {
        self.read("GET", key, |b| b.lock().objects.get(key).cloned())
            .await
    }

    pub async fn head(&self, key: &str) -> Result<Read<Head>, SinkError> {
        self.read("HEAD", key, |b| {
            b.lock().objects.get(key).map(|o| Head {
                size: o.body.len() as u64,
                modified: o.modified,
                etag: o.etag.clone(),
            })
        })
        .await
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        self.request("PUT", key, |b| {
            b.change(Change::Put(key), |objects| {
                objects.insert(key.to_owned(), stored(body));
            });
        })
        .await
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

/// 64 bits that depend on every input (FNV-1a, then splitmix64's finaliser).
fn mix(seed: u64, operation: &str, key: &str, n: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in operation
        .bytes()
        .chain([0])
        .chain(key.bytes())
        .chain(n.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(hash)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Successive draws from one request's 64 bits.
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// In [0, 1,000,000).
    fn ppm(&mut self) -> u64 {
        self.next() % 1_000_000
    }
}

#[path = "memory/sink.rs"]
mod sink;
pub use sink::{MemorySink, MemoryUpload};

#[cfg(test)]
#[path = "memory/tests.rs"]
mod tests;
