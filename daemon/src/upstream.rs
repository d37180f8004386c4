//! Upstream caches: where clients already substitute from (cache.nixos.org, a company cache),
//! so that what they serve is not uploaded again. Two layers, both cheap:
//!
//! - **by signature**, offline: a path whose store signatures include a valid signature by one
//!   of the upstream keys was substituted from that cache;
//! - **by asking**: the path's narinfo is fetched from each upstream cache in turn, and counts
//!   only if it names the same path and verifies with an upstream key.
//!
//! Invariant: a path is upstream's only on a verified signature. Anything else (no answer, a
//! malformed or unsigned narinfo, an unreachable cache) means "not upstream's": the worst an
//! upstream can cost is an upload, never a path missing for clients.
//!
//! Answers are remembered (positive ones for long, negative ones briefly), and a cache that does
//! not answer is left alone for [`DOWN_FOR`] after one failed request, so it costs at most one
//! timeout per few minutes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::coexist::{Reader, WhenRefused};
use crate::format::narinfo::fingerprint;
use crate::format::signing::VerifyingKey;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;
use crate::trust::trusted_narinfo;

/// cache.nixos.org's key, the default of `upstream_public_keys`.
pub const NIXOS_PUBLIC_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
/// The longest wait for a connection to an upstream cache.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait for a whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cache that did not answer is not asked.
pub const DOWN_FOR: Duration = Duration::from_secs(300);
/// How long a path found upstream is trusted to stay there.
const POSITIVE_FOR: Duration = Duration::from_secs(24 * 3600);
/// How long "not upstream" is remembered: briefly, since an upstream may build it later.
const NEGATIVE_FOR: Duration = Duration::from_secs(300);
/// Answers remembered at most.
const ANSWERS_CAPACITY: usize = 100_000;

/// An upstream cache's address, checked: `https://`, `http://` or `file://`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamUrl {
    /// The base URL, ending in `/`.
    Http(url::Url),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("'{url}' is not a URL: {reason}")]
    Syntax {
        url: String,
        reason: url::ParseError,
    },
    #[error("'{url}': upstream caches are https://, http:// or file:// URLs, not {scheme}://")]
    Scheme { url: String, scheme: String },
    #[error("'{url}': a file:// URL needs an absolute directory")]
    FilePath { url: String },
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<UpstreamUrl, UpstreamUrlError> {
        let mut url = url::Url::parse(text).map_err(|reason| UpstreamUrlError::Syntax {
            url: text.to_owned(),
            reason,
        })?;
        match url.scheme() {
            "http" | "https" => {
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                Ok(UpstreamUrl::Http(url))
            }
            "file" => {
                url.to_file_path()
                    .map(UpstreamUrl::File)
                    .map_err(|()| UpstreamUrlError::FilePath {
                        url: text.to_owned(),
                    })
            }
            scheme => Err(UpstreamUrlError::Scheme {
                url: text.to_owned(),
                scheme: scheme.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamUrl::Http(url) => write!(f, "{url}"),
            UpstreamUrl::File(dir) => write!(f, "file://{}", dir.display()),
        }
    }
}

/// What a narinfo request to one cache gave.
enum Answer {
    Found(String),
    Absent,
    Unreachable(String),
}

struct Cache {
    url: UpstreamUrl,
    /// Not asked until then, after a request that got no answer.
    down_until: Mutex<Option<Instant>>,
}

/// The upstream filter, shared by every lookup of an engine configuration.
pub struct Upstream {
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

    pub fn new(caches: Vec<UpstreamUrl>, keys: Vec<VerifyingKey>) -> Upstream {
        let needs_http = caches.iter().any(|c| matches!(c, UpstreamUrl::Http(_)));
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
            keys,
            caches: caches
                .into_iter()
                .map(|url| Cache {
                    url,
                    down_until: Mutex::new(None),
                })
                .collect(),
            client,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any check can skip a path (keys configured; without keys nothing verifies).
    pub fn is_on(&self) -> bool {
        !self.keys.is_empty()
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

    /// Whether an upstream cache serves `path`, with a narinfo signed by an upstream key; its
    /// NarSize if so. Never fails: a cache that cannot answer does not serve it.
    pub async fn serves(&self, path: &StorePath) -> Option<u64> {
        if !self.is_on() || self.caches.is_empty() {
            return None;
        }
        if let Some(known) = self.remembered(path) {
            return known;
        }
        let mut found = None;
        for cache in &self.caches {
            if let Some(nar_size) = self.ask(cache, path).await {
                found = Some(nar_size);
                break;
            }
        }
        self.remember(path, found);
        found
    }

    async fn ask(&self, cache: &Cache, path: &StorePath) -> Option<u64> {
        let down_until = *lock(&cache.down_until);
        if down_until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let name = format!("{}.narinfo", path.hash_part());
        let answer = match &cache.url {
            UpstreamUrl::File(dir) => match tokio::fs::read_to_string(dir.join(&name)).await {
                Ok(text) => Answer::Found(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Answer::Absent,
                Err(e) => Answer::Unreachable(e.to_string()),
            },
            UpstreamUrl::Http(base) => self.fetch(base, &name).await,
        };
        match answer {
            Answer::Found(text) => {
                *lock(&cache.down_until) = None;
                self.verified(&text, path, &cache.url)
            }
            Answer::Absent => {
                *lock(&cache.down_until) = None;
                None
            }
            Answer::Unreachable(reason) => {
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
                None
            }
        }
    }

    async fn fetch(&self, base: &url::Url, name: &str) -> Answer {
        let Some(client) = &self.client else {
            return Answer::Unreachable("no HTTP client".to_owned());
        };
        let url = match base.join(name) {
            Ok(url) => url,
            Err(e) => return Answer::Unreachable(e.to_string()),
        };
        let response = match client.get(url).send().await {
            Ok(response) => response,
            Err(e) => return Answer::Unreachable(crate::error_chain(&e)),
        };
        let status = response.status();
        // 403: S3-style buckets answer it for a key that is not there; the protocol's rule for
        // an upstream (crate::coexist::Reader) makes it "not served".
        let refused_is_absent = Reader::Upstream.when_refused() == WhenRefused::Absent;
        if status == reqwest::StatusCode::NOT_FOUND
            || (status == reqwest::StatusCode::FORBIDDEN && refused_is_absent)
        {
            return Answer::Absent;
        }
        if !status.is_success() {
            return Answer::Unreachable(format!("HTTP {status}"));
        }
        match response.text().await {
            Ok(text) => Answer::Found(text),
            Err(e) => Answer::Unreachable(crate::error_chain(&e)),
        }
    }

    /// The NarSize of a narinfo for `path` that verifies with an upstream key.
    fn verified(&self, text: &str, path: &StorePath, from: &UpstreamUrl) -> Option<u64> {
        match trusted_narinfo(text.as_bytes(), path, &self.keys) {
            Ok(narinfo) => Some(narinfo.nar_size),
            Err(why) => {
                tracing::debug!(
                    %path,
                    "upstream {from} has a narinfo for it, not trusted: {}",
                    crate::error_chain(&why)
                );
                None
            }
        }
    }

    fn remembered(&self, path: &StorePath) -> Option<Option<u64>> {
        let answers = lock(&self.answers);
        let (found, since) = answers.get(path)?;
        let valid_for = if found.is_some() {
            POSITIVE_FOR
        } else {
            NEGATIVE_FOR
        };
        (since.elapsed() < valid_for).then_some(*found)
    }

    fn remember(&self, path: &StorePath, found: Option<u64>) {
        let mut answers = lock(&self.answers);
        if answers.len() >= ANSWERS_CAPACITY {
            answers.clear();
        }
        answers.insert(path.clone(), (found, Instant::now()));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[path = "upstream/tests.rs"]
mod tests;
