//! The simulation's upstream cache (feature `sim`): a bucket of the S3 model in memory, asked
//! as an HTTP upstream would be, with the model's latency and faults. A refusal counts as the
//! upstream rule of [`crate::coexist::Reader`] says; any other failure is "did not answer".

use std::sync::Arc;

use super::Reply;
use crate::coexist::Reader;
use crate::sink::memory::Bucket;
use crate::sink::{Read, SinkError};

/// An upstream cache in memory; two are the same cache when they share one bucket.
#[derive(Clone)]
pub struct SimulatedCache(pub Arc<Bucket>);

impl PartialEq for SimulatedCache {
    fn eq(&self, other: &SimulatedCache) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SimulatedCache {}

impl std::fmt::Debug for SimulatedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimulatedCache")
    }
}

fn reply<T, U>(answer: Result<Read<T>, SinkError>, found: impl FnOnce(T) -> U) -> Reply<U> {
    match answer.and_then(|read| read.for_reader(Reader::Upstream)) {
        Ok(Some(object)) => Reply::Got(found(object)),
        Ok(None) => Reply::Absent,
        Err(error) => Reply::Unreachable(error.to_string()),
    }
}

pub(super) async fn read(cache: &SimulatedCache, name: &str) -> Reply<String> {
    let answer = cache.0.get(name).await;
    match reply(answer, |object| object.body) {
        Reply::Got(body) if body.len() > super::MAX_NARINFO => {
            Reply::TooLarge(format!("memory://upstream/{name}"))
        }
        Reply::Got(body) => Reply::Got(String::from_utf8_lossy(&body).into_owned()),
        Reply::Absent => Reply::Absent,
        Reply::TooLarge(location) => Reply::TooLarge(location),
        Reply::Unreachable(reason) => Reply::Unreachable(reason),
    }
}

pub(super) async fn head(cache: &SimulatedCache, name: &str) -> Reply<()> {
    reply(cache.0.head(name).await, |_| ())
}
