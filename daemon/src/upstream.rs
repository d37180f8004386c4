//! Upstream caches: where clients already substitute from (cache.nixos.org, a company cache),
//! so that what they serve is not uploaded again. Two layers, both cheap:
//!
//! - **by signature**, offline: a path whose store signatures include a valid signature by one
//!   of the upstream keys (`upstream_public_keys`) was substituted from that cache;
//! - **by asking**: the path's narinfo is fetched from each upstream cache in turn.
//!
//! # What an uploader may trust from an upstream cache
//!
//! The upstream side of the rules in [`crate::engine::presence`]:
//!
//! 1. A cache serves a path only if its narinfo names that path, verifies with a key that
//!    counts **for that cache** (the cache's own `keys` when it has a table entry, else any
//!    upstream key), and the NAR the narinfo names is there: a HEAD of it (a file's existence
//!    for `file://`) answers 200. A cache that replays a trusted narinfo without the NAR, or
//!    another cache's narinfo, serves nothing.
//! 2. A NAR named outside the cache's root (an absolute URL, `..`) does not count.
//! 3. A positive answer is remembered for [`POSITIVE_FOR`], a negative one for
//!    [`NEGATIVE_FOR`], at most [`ANSWERS_CAPACITY`] of them; a cache that did not answer is
//!    left alone for [`DOWN_FOR`], so it costs at most one timeout per few minutes. "No
//!    answer" ([`Answer::NoAnswer`]) is told apart from "not served" and never remembered: a
//!    path the push filters exclude is skipped only when no upstream serves it, so for such a
//!    path an outage means "try again later" (see `engine::graph`), not "skip".
//!
//! Invariant: a path is upstream's only on a verified signature and a NAR seen. Anything else
//! (no answer, a malformed or unsigned narinfo, a missing NAR, an unreachable cache) means
//! "not upstream's": the worst an upstream can cost is an upload (or a retry of an excluded
//! path), never a path missing for clients.

mod address;
#[cfg(feature = "sim")]
mod simulated;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub use address::{UpstreamCache, UpstreamUrl, UpstreamUrlError};
#[cfg(feature = "sim")]
pub use simulated::SimulatedCache;

use crate::coexist::{Reader, WhenRefused};
use crate::format::narinfo::fingerprint;
use crate::format::signing::VerifyingKey;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;
use crate::sync::lock;
use crate::trust::trusted_narinfo;

/// cache.nixos.org's key, the default of `upstream_public_keys`.
pub const NIXOS_PUBLIC_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
/// The longest wait for a connection to an upstream cache.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait for a whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest narinfo read from an upstream cache (real ones are a few hundred bytes; one
/// with thousands of references a few hundred KiB): a bigger answer is not read further.
pub const MAX_NARINFO: usize = 1 << 20;
/// How long a cache that did not answer is not asked.
pub const DOWN_FOR: Duration = Duration::from_secs(300);
/// How long a path found upstream (narinfo and NAR) is trusted to stay there: an upstream may
/// collect its garbage too.
pub const POSITIVE_FOR: Duration = Duration::from_secs(3600);
/// How long "not upstream" is remembered: briefly, since an upstream may build it later.
pub const NEGATIVE_FOR: Duration = Duration::from_secs(300);
/// Answers remembered at most.
pub const ANSWERS_CAPACITY: usize = 100_000;

/// What the upstream caches say of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// One of them serves it, with this NarSize.
    Served(u64),
    /// Every cache asked answered, and none serves it.
    NotServed,
    /// None serves it as far as they answered, but one did not answer (an error, or marked
    /// down): it may serve it.
    NoAnswer,
}

/// What one request to a cache gave.
enum Reply<T> {
    Got(T),
    Absent,
    Unreachable(String),
    /// More than [`MAX_NARINFO`] bytes, at this address.
    TooLarge(String),
}

struct Cache {
    url: UpstreamUrl,
    /// The keys that count on its narinfos.
    keys: Vec<VerifyingKey>,
    /// Not asked until then, after a request that got no answer.
    down_until: Mutex<Option<Instant>>,
}

/// The upstream filter, shared by every lookup of an engine configuration.
pub struct Upstream {
    /// The upstream keys: for signatures in the store, and for caches without keys of their own.
    keys: Vec<VerifyingKey>,
    caches: Vec<Cache>,
    client: Option<reqwest::Client>,
    /// NarSize when found upstream, and when that was learnt.
    answers: Mutex<HashMap<StorePath, (Option<u64>, Instant)>>,
}

impl Upstream {
    /// A filter that skips nothing (`--no-upstream`).
    pub fn off() -> Upstream {
        Upstream::new(Vec::new(), Vec::new())
    }

    pub fn new(caches: Vec<UpstreamCache>, keys: Vec<VerifyingKey>) -> Upstream {
        let needs_http = caches.iter().any(|c| matches!(c.url, UpstreamUrl::Http(_)));
        let client = needs_http.then(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("narpush/", env!("CARGO_PKG_VERSION")))
                .build()
        });
        let client = match client.transpose() {
            Ok(client) => client,
            Err(e) => {
                // Only a broken TLS setup gets here; the filter then only asks file:// caches.
                tracing::warn!("cannot ask upstream caches over HTTP: {e}");
                None
            }
        };
        Upstream {
            caches: caches
                .into_iter()
                .map(|cache| Cache {
                    keys: cache.keys.unwrap_or_else(|| keys.clone()),
                    url: cache.url,
                    down_until: Mutex::new(None),
                })
                .collect(),
            keys,
            client,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any check can skip a path (some key configured; without keys nothing verifies).
    pub fn is_on(&self) -> bool {
        !self.keys.is_empty() || self.caches.iter().any(|cache| !cache.keys.is_empty())
    }

    /// Whether `other` trusts exactly what this filter trusts (the same keys, the same caches
    /// with the same keys each).
    pub fn same_trust(&self, other: &Upstream) -> bool {
        self.keys == other.keys
            && self.caches.len() == other.caches.len()
            && self
                .caches
                .iter()
                .zip(&other.caches)
                .all(|(a, b)| a.url == b.url && a.keys == b.keys)
    }

    /// Whether the store's own signatures of `info` include a valid one by an upstream key.
    pub fn signed_by_upstream(&self, info: &PathInfo) -> bool {
        if self.keys.is_empty() || info.signatures.is_empty() {
            return false;
        }
        let fingerprint = fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references);
        self.keys.iter().any(|key| {
            info.signatures
                .iter()
                .any(|sig| key.verify(&fingerprint, sig))
        })
    }

    /// Whether an upstream cache serves `path` (see the module doc); its NarSize if so. Never
    /// fails: a cache that cannot answer does not serve it.
    pub async fn serves(&self, path: &StorePath) -> Option<u64> {
        match self.answer(path).await {
            Answer::Served(nar_size) => Some(nar_size),
            Answer::NotServed | Answer::NoAnswer => None,
        }
    }

    /// What the upstream caches say of `path`: [`Upstream::serves`], telling "none serves it"
    /// from "one did not answer" (which is not remembered: see rule 3).
    pub async fn answer(&self, path: &StorePath) -> Answer {
        if self.caches.iter().all(|cache| cache.keys.is_empty()) {
            return Answer::NotServed;
        }
        if let Some(known) = self.remembered(path) {
            return known.map_or(Answer::NotServed, Answer::Served);
        }
        let mut answer = Answer::NotServed;
        for cache in self.caches.iter().filter(|cache| !cache.keys.is_empty()) {
            match self.ask(cache, path).await {
                Answer::Served(nar_size) => {
                    answer = Answer::Served(nar_size);
                    break;
                }
                Answer::NoAnswer => answer = Answer::NoAnswer,
                Answer::NotServed => {}
            }
        }
        match answer {
            Answer::Served(nar_size) => self.remember(path, Some(nar_size)),
            Answer::NotServed => self.remember(path, None),
            Answer::NoAnswer => {}
        }
        answer
    }

    /// Whether `cache` has a trusted narinfo of `path` and its NAR.
    async fn ask(&self, cache: &Cache, path: &StorePath) -> Answer {
        let down_until = *lock(&cache.down_until);
        if down_until.is_some_and(|until| Instant::now() < until) {
            return Answer::NoAnswer;
        }
        let name = format!("{}.narinfo", path.hash_part());
        let text = match self.answered(cache, self.read(cache, &name).await) {
            Ok(text) => text,
            Err(answer) => return answer,
        };
        let narinfo = match trusted_narinfo(text.as_bytes(), path, &cache.keys) {
            Ok(narinfo) => narinfo,
            Err(why) => {
                tracing::debug!(
                    %path,
                    "upstream {} has a narinfo for it, not trusted: {}",
                    cache.url,
                    crate::error_chain(&why)
                );
                return Answer::NotServed;
            }
        };
        let Some(nar) = address::nar_location(&narinfo.url) else {
            tracing::debug!(
                %path,
                url = narinfo.url,
                "upstream {} names a NAR outside the cache; not counted",
                cache.url
            );
            return Answer::NotServed;
        };
        let has_nar = self.answered(cache, self.head(cache, nar).await);
        if has_nar.is_err() {
            tracing::debug!(
                %path,
                url = narinfo.url,
                "upstream {} has a trusted narinfo but not its NAR; not counted",
                cache.url
            );
        }
        has_nar.map_or_else(|answer| answer, |()| Answer::Served(narinfo.nar_size))
    }

    /// The caches that did not answer their last question (marked down): what they were
    /// asked since was answered "not served" without asking.
    pub fn caches_down(&self) -> Vec<String> {
        let now = Instant::now();
        self.caches
            .iter()
            .filter(|cache| lock(&cache.down_until).is_some_and(|until| now < until))
            .map(|cache| cache.url.to_string())
            .collect()
    }

    /// What `reply` says (`Err`: what it means for the path), noting whether `cache` answered.
    fn answered<T>(&self, cache: &Cache, reply: Reply<T>) -> Result<T, Answer> {
        match reply {
            Reply::Got(value) => {
                *lock(&cache.down_until) = None;
                Ok(value)
            }
            Reply::Absent => {
                *lock(&cache.down_until) = None;
                Err(Answer::NotServed)
            }
            Reply::TooLarge(location) => {
                *lock(&cache.down_until) = None;
                tracing::warn!(
                    "upstream cache {} answered {location} with more than {MAX_NARINFO} bytes, \
                     which no narinfo is; not reading it, the path is uploaded",
                    cache.url
                );
                Err(Answer::NotServed)
            }
            Reply::Unreachable(reason) => {
                let mut down_until = lock(&cache.down_until);
                // Concurrent lookups fail together; one warning per outage.
                if !down_until.is_some_and(|until| Instant::now() < until) {
                    tracing::warn!(
                        "upstream cache {} did not answer ({reason}); paths are uploaded as if \
                         it had nothing, and it is asked again in {} s",
                        cache.url,
                        DOWN_FOR.as_secs()
                    );
                    *down_until = Some(Instant::now() + DOWN_FOR);
                }
                Err(Answer::NoAnswer)
            }
        }
    }

    /// The object `name` of `cache`, as text, at most [`MAX_NARINFO`] bytes of it.
    async fn read(&self, cache: &Cache, name: &str) -> Reply<String> {
        match &cache.url {
            UpstreamUrl::File(dir) => read_file(&dir.join(name)).await,
            #[cfg(feature = "sim")]
            UpstreamUrl::Memory(bucket) => simulated::read(bucket, name).await,
            UpstreamUrl::Http(base) => match self.request(reqwest::Method::GET, base, name).await {
                Reply::Got(response) => read_body(response).await,
                Reply::Absent => Reply::Absent,
                Reply::TooLarge(location) => Reply::TooLarge(location),
                Reply::Unreachable(reason) => Reply::Unreachable(reason),
            },
        }
    }

    /// Whether `cache` has the object `name`.
    async fn head(&self, cache: &Cache, name: &str) -> Reply<()> {
        match &cache.url {
            UpstreamUrl::File(dir) => match tokio::fs::metadata(dir.join(name)).await {
                Ok(meta) if meta.is_file() => Reply::Got(()),
                Ok(_) => Reply::Absent,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reply::Absent,
                Err(e) => Reply::Unreachable(e.to_string()),
            },
            #[cfg(feature = "sim")]
            UpstreamUrl::Memory(bucket) => simulated::head(bucket, name).await,
            UpstreamUrl::Http(base) => {
                match self.request(reqwest::Method::HEAD, base, name).await {
                    Reply::Got(_) => Reply::Got(()),
                    Reply::Absent => Reply::Absent,
                    Reply::TooLarge(location) => Reply::TooLarge(location),
                    Reply::Unreachable(reason) => Reply::Unreachable(reason),
                }
            }
        }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        base: &url::Url,
        name: &str,
    ) -> Reply<reqwest::Response> {
        let Some(client) = &self.client else {
            return Reply::Unreachable("no HTTP client".to_owned());
        };
        let url = match base.join(name) {
            Ok(url) => url,
            Err(e) => return Reply::Unreachable(e.to_string()),
        };
        // reqwest's errors name the URL, credentials and all: the caller names the cache.
        let response = match client.request(method, url).send().await {
            Ok(response) => response,
            Err(e) => return Reply::Unreachable(crate::error_chain(&e.without_url())),
        };
        let status = response.status();
        // 403: S3-style buckets answer it for a key that is not there; the protocol's rule for
        // an upstream (crate::coexist::Reader) makes it "not served".
        let refused_is_absent = Reader::Upstream.when_refused() == WhenRefused::Absent;
        if status == reqwest::StatusCode::NOT_FOUND
            || (status == reqwest::StatusCode::FORBIDDEN && refused_is_absent)
        {
            return Reply::Absent;
        }
        if !status.is_success() {
            return Reply::Unreachable(format!("HTTP {status}"));
        }
        Reply::Got(response)
    }

    fn remembered(&self, path: &StorePath) -> Option<Option<u64>> {
        let answers = lock(&self.answers);
        let (found, since) = answers.get(path)?;
        (since.elapsed() < valid_for(*found)).then_some(*found)
    }

    fn remember(&self, path: &StorePath, found: Option<u64>) {
        let mut answers = lock(&self.answers);
        if answers.len() >= ANSWERS_CAPACITY {
            answers.retain(|_, (found, since)| since.elapsed() < valid_for(*found));
            if answers.len() >= ANSWERS_CAPACITY {
                answers.clear();
            }
        }
        answers.insert(path.clone(), (found, Instant::now()));
    }
}

/// A narinfo of a `file://` upstream, at most [`MAX_NARINFO`] bytes of it.
async fn read_file(file: &std::path::Path) -> Reply<String> {
    use tokio::io::AsyncReadExt;
    let opened = match tokio::fs::File::open(file).await {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Reply::Absent,
        Err(e) => return Reply::Unreachable(e.to_string()),
    };
    let mut bytes = Vec::new();
    if let Err(e) = opened
        .take(MAX_NARINFO as u64 + 1)
        .read_to_end(&mut bytes)
        .await
    {
        return Reply::Unreachable(e.to_string());
    }
    if bytes.len() > MAX_NARINFO {
        return Reply::TooLarge(file.display().to_string());
    }
    Reply::Got(String::from_utf8_lossy(&bytes).into_owned())
}

/// An HTTP answer's body, at most [`MAX_NARINFO`] bytes of it.
async fn read_body(mut response: reqwest::Response) -> Reply<String> {
    let location = crate::redact::url(response.url().as_str());
    if response
        .content_length()
        .is_some_and(|length| length > MAX_NARINFO as u64)
    {
        return Reply::TooLarge(location);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > MAX_NARINFO => {
                return Reply::TooLarge(location)
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Reply::Unreachable(crate::error_chain(&e.without_url())),
        }
    }
    Reply::Got(String::from_utf8_lossy(&body).into_owned())
}

/// How long an answer is remembered.
fn valid_for(found: Option<u64>) -> Duration {
    if found.is_some() {
        POSITIVE_FOR
    } else {
        NEGATIVE_FOR
    }
}

#[cfg(test)]
#[path = "upstream/tests.rs"]
mod tests;
