//! Writes to keys that other writers write too: narinfos (two uploaders of overlapping
//! closures publish the same path) and `nix-cache-info` (every uploader makes sure of it).
//!
//! R2 accepts about one write per second to one key and answers HTTP 429 beyond; S3 answers
//! 503 `SlowDown`. Such an answer to a write of a shared key usually means that another writer
//! is publishing the same thing. So a throttled PUT ([`Put::Throttled`]) is not sent again
//! blindly: the key is read (GET) and the write counts as done when the key holds what this
//! writer wanted there ([`judge`]):
//!
//! - the very bytes it was writing; or, for `nix-cache-info`, the same announcement;
//! - for a narinfo, one of the same store path, `NarHash` and `NarSize`, signed by one of our
//!   own keys (the signing keys and `own_public_keys`), whose NAR is in the cache (a HEAD finds
//!   it; its compression, and so its URL, may differ from ours). The closure invariant holds:
//!   the other writer published that narinfo after its NAR and its references' narinfos, and
//!   the HEAD proves the NAR there now, as a lookup would ([`crate::trust`]).
//!
//! Anything else (the key still empty, another writer's announcement, a narinfo not ours to
//! trust or whose NAR is missing) is written again, at most [`ATTEMPTS`] times in all, at least
//! [`KEY_WRITE_INTERVAL`] apart (longer if the answer's `Retry-After` asks, up to
//! [`MAX_THROTTLED_WAIT`]); then the throttled answer is the caller's error, retried as any
//! transient failure. The SDK never retries a throttled write of a shared key itself (see
//! `s3::throttle`), so one such write costs at most [`ATTEMPTS`] PUTs, GETs and HEADs, all
//! counted in the request tally ([`super::requests`]) like any other request; so is each
//! throttled write's outcome (`throttled_writes`, [`Outcome`]).
//!
//! S3 throttles; so does the simulation's bucket when it keeps R2's per-key limit (feature
//! `sim`), which is also told each outcome, with when the look behind it began, so that the
//! simulation checks what was taken as published. A directory never throttles.

use std::time::Duration;

use bytes::Bytes;

use super::{Read, Sink, SinkError};
use crate::format::narinfo::NarInfo;
use crate::format::signing::VerifyingKey;
use crate::layout;
use crate::trust::trusted_narinfo;

/// PUTs of a shared key per write, the first included.
pub const ATTEMPTS: u32 = 3;
/// How often R2 accepts a write to one key: the shortest wait before writing it again.
pub const KEY_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait before writing a throttled key again, whatever `Retry-After` says.
pub const MAX_THROTTLED_WAIT: Duration = Duration::from_secs(5);

/// What one PUT of a shared key did.
#[derive(Debug)]
pub enum Put {
    Written,
    /// The store answered "too many writes" (HTTP 429, `SlowDown`): this error.
    Throttled(SinkError),
}

/// How a throttled write went on, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done without writing: the key held what this writer wanted there.
    TakenAsPublished,
    /// Not yet: the key is written again.
    WrittenAgain,
    /// Given up after the last PUT: the throttled answer is the caller's error.
    GivenUp,
}

impl Outcome {
    /// The name the counts use (`requests.throttled_writes`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::TakenAsPublished => "taken_as_published",
            Outcome::WrittenAgain => "written_again",
            Outcome::GivenUp => "given_up",
        }
    }
}

/// What the key must hold for a throttled write of it to count as done.
pub enum Wanted<'a> {
    /// `nix-cache-info`: one that announces what ours does ([`layout::same_cache_info`]).
    CacheInfo,
    /// A narinfo: ours, or one of the same path and contents signed by one of `keys`.
    Narinfo {
        ours: &'a NarInfo,
        keys: &'a [VerifyingKey],
    },
}

/// What a GET of a throttled key found, judged against what this writer wanted there.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// What this writer was writing (or, for `nix-cache-info`, the same announcement).
    Ours,
    /// Another writer's narinfo that will do, once its NAR at `url` is found, of the
    /// `file_size` the narinfo states (when it states one).
    TheirsIfNarAt { url: String, file_size: Option<u64> },
    /// Not what this writer wanted: it writes again.
    Other(Mismatch),
}

/// Why a throttled key's content does not do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the key is empty (the other write has not landed yet)")]
    Absent,
    #[error("it announces another cache ({found:?})")]
    OtherCacheInfo { found: String },
    #[error("its narinfo is not ours to trust: {reason}")]
    Untrusted { reason: String },
    #[error("its narinfo has other contents (NarHash {nar_hash}, NarSize {nar_size})")]
    OtherContents { nar_hash: String, nar_size: u64 },
    #[error("its narinfo points outside nar/ ({url})")]
    OutsideNar { url: String },
    #[error("its narinfo's NAR {url} is not in the cache")]
    NarMissing { url: String },
    #[error("its narinfo's NAR {url} has {found} bytes, the narinfo says {stated}")]
    NarOtherSize {
        url: String,
        found: u64,
        stated: u64,
    },
}

/// Judges `theirs`, what the key holds (`None`: nothing), against `ours`, what this writer
/// was writing there. Pure: a narinfo's NAR is looked for by the caller.
pub fn judge(ours: &[u8], theirs: Option<&[u8]>, wanted: &Wanted<'_>) -> Verdict {
    let Some(theirs) = theirs else {
        return Verdict::Other(Mismatch::Absent);
    };
    if theirs == ours {
        return Verdict::Ours;
    }
    match wanted {
        Wanted::CacheInfo => {
            let ours = String::from_utf8_lossy(ours);
            match layout::same_cache_info(theirs, &ours) {
                true => Verdict::Ours,
                false => Verdict::Other(Mismatch::OtherCacheInfo {
                    found: String::from_utf8_lossy(theirs).into_owned(),
                }),
            }
        }
        Wanted::Narinfo { ours, keys } => judge_narinfo(ours, theirs, keys),
    }
}

fn judge_narinfo(ours: &NarInfo, theirs: &[u8], keys: &[VerifyingKey]) -> Verdict {
    let theirs = match trusted_narinfo(theirs, &ours.store_path, keys) {
        Ok(narinfo) => narinfo,
        Err(why) => {
            return Verdict::Other(Mismatch::Untrusted {
                reason: crate::error_chain(&why),
            })
        }
    };
    if theirs.nar_hash != ours.nar_hash || theirs.nar_size != ours.nar_size {
        return Verdict::Other(Mismatch::OtherContents {
            nar_hash: theirs.nar_hash.to_string(),
            nar_size: theirs.nar_size,
        });
    }
    if !layout::is_nar_key(&theirs.url) {
        return Verdict::Other(Mismatch::OutsideNar { url: theirs.url });
    }
    match theirs.url == ours.url {
        // Our own NAR, stored (and settled) before this narinfo was written.
        true => Verdict::Ours,
        false => Verdict::TheirsIfNarAt {
            url: theirs.url,
            file_size: theirs.file_size,
        },
    }
}

impl Sink {
    /// Writes `body` at `key`, a key other writers write too: a throttled PUT is success when
    /// the key holds what `wanted` accepts (see the module doc), else it is sent again, up to
    /// [`ATTEMPTS`] in all.
    pub async fn put_contended(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        wanted: &Wanted<'_>,
    ) -> Result<(), SinkError> {
        if !self.throttles_writes() {
            return self.put(key, body, content_type).await;
        }
        let mut attempt = 1;
        loop {
            let throttled = match self
                .put_unless_throttled(key, body.clone(), content_type)
                .await?
            {
                Put::Written => return Ok(()),
                Put::Throttled(error) => error,
            };
            let looked_from = crate::clock::now();
            let mismatch = match self.published_by_another(key, &body, wanted).await? {
                None => {
                    self.count(key, &body, Outcome::TakenAsPublished, looked_from);
                    tracing::debug!(
                        key,
                        "{throttled}: another writer published it meanwhile; taken as published"
                    );
                    return Ok(());
                }
                Some(mismatch) => mismatch,
            };
            if attempt >= ATTEMPTS {
                self.count(key, &body, Outcome::GivenUp, looked_from);
                tracing::info!(
                    key,
                    "{throttled}, and {mismatch} after {ATTEMPTS} writes; left to the retries"
                );
                return Err(throttled);
            }
            self.count(key, &body, Outcome::WrittenAgain, looked_from);
            let wait = wait_before_writing_again(key, throttled.retry_after);
            tracing::debug!(
                key,
                attempt,
                "{throttled}, and {mismatch}: writing it again in {} ms",
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Whether this store throttles writes of a key (a directory never does).
    fn throttles_writes(&self) -> bool {
        match self {
            Sink::S3(_) => true,
            Sink::File(_) => false,
            #[cfg(feature = "sim")]
            Sink::Memory(memory) => memory.bucket().limits_key_writes(),
        }
    }

    /// One PUT of a shared key; a throttled answer is [`Put::Throttled`].
    async fn put_unless_throttled(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Put, SinkError> {
        match self {
            Sink::S3(s3) => s3.put_unless_throttled(key, body, content_type).await,
            Sink::File(_) => self
                .put(key, body, content_type)
                .await
                .map(|()| Put::Written),
            #[cfg(feature = "sim")]
            Sink::Memory(memory) => memory.put_unless_throttled(key, body).await,
        }
    }

    /// Counts `outcome` in the request tally (and tells the simulation's bucket, with what this
    /// writer was writing, `ours`, and when the look it was judged from began).
    fn count(&self, key: &str, ours: &[u8], outcome: Outcome, looked_from: std::time::SystemTime) {
        let tally = super::requests::tally();
        match outcome {
            Outcome::TakenAsPublished => tally.taken_as_published(),
            Outcome::WrittenAgain => tally.written_again(),
            Outcome::GivenUp => tally.given_up(),
        }
        #[cfg(feature = "sim")]
        if let Sink::Memory(memory) = self {
            memory.bucket().judged(key, ours, outcome, looked_from);
        }
        let _ = (key, ours, looked_from);
    }

    /// `None` when `key` holds what `wanted` accepts in place of `ours` (a GET, then a HEAD
    /// of another writer's NAR), else why not.
    async fn published_by_another(
        &self,
        key: &str,
        ours: &[u8],
        wanted: &Wanted<'_>,
    ) -> Result<Option<Mismatch>, SinkError> {
        let theirs = self.get(key).await?;
        let nar = match judge(ours, theirs.as_deref(), wanted) {
            Verdict::Ours => return Ok(None),
            Verdict::Other(mismatch) => return Ok(Some(mismatch)),
            Verdict::TheirsIfNarAt { url, file_size } => (url, file_size),
        };
        let (nar, file_size) = nar;
        Ok(match self.head(&nar).await? {
            // A damaged NAR (one `verify --repair` is replacing, say) does not do.
            Read::Found(head) => match file_size {
                Some(stated) if stated != head.size => Some(Mismatch::NarOtherSize {
                    url: nar,
                    found: head.size,
                    stated,
                }),
                _ => None,
            },
            // A refused HEAD cannot show the NAR: not taken on trust.
            Read::Absent | Read::Refused(_) => Some(Mismatch::NarMissing { url: nar }),
        })
    }
}

/// At least [`KEY_WRITE_INTERVAL`], or what `retry_after` asks up to [`MAX_THROTTLED_WAIT`],
/// plus up to half a second of jitter (drawn for `key`, [`crate::random`]), so that writers
/// throttled together do not come back together.
pub fn wait_before_writing_again(key: &str, retry_after: Option<Duration>) -> Duration {
    let base = retry_after
        .unwrap_or(KEY_WRITE_INTERVAL)
        .clamp(KEY_WRITE_INTERVAL, MAX_THROTTLED_WAIT);
    base + Duration::from_millis(crate::random::below("jitter", key.as_bytes(), 501))
}

#[cfg(test)]
#[path = "contended/tests.rs"]
mod tests;
