//! narpush: puts every path Nix builds into a signed binary cache on S3-compatible storage.
//!
//! # Layout
//!
//! - [`format`]: the Nix formats (store paths, nixbase32, NAR, narinfo, signing keys). No I/O
//!   beyond reading the tree being archived, no tokio, no S3, no config.
//! - [`store`]: what the local Nix store knows about paths (metadata, closures), asked of the
//!   `nix` commands, one process per batch.
//! - [`layout`]: the cache's object keys and content types, and the NAR naming rule.
//! - [`sink`]: where objects go (`s3://…` through aws-sdk-s3, `file:///…`), and the one place
//!   that decides whether a failure is worth retrying.
//! - [`trust`]: when a narinfo read from a cache is believed (parses, names the path, signed
//!   by a trusted key), for the target and upstream caches alike.
//! - [`engine`]: the one upload engine, used by `narpush upload` and the daemon alike: closures,
//!   lookups, NAR streams (hash check, parallel compression, fixed-size parts), signed
//!   narinfos, and the ordering that keeps the closure invariant.
//! - [`filter`]: the push filters (`exclude`, `exclude_outputs`, `max_nar_bytes`): which
//!   paths are never uploaded, and why.
//! - [`gc`]: retention GC of a cache; [`coexist`]: the protocol that lets it run while
//!   uploaders write to the same cache (its rules, time bounds and what a 403 means to whom).
//! - [`queue`], [`gcroots`], [`daemon`]: the daemon's durable queue, the GC roots that protect
//!   queued paths, and the service around the engine; [`control`]: the CLI's side of the socket.
//! - [`config`]: the TOML config file, checked in one pass, with [`default_paths`] for what it
//!   does not say; [`keys`]: where the signing keys come from (flags, config,
//!   `$NARPUSH_SIGNING_KEY`); [`consumer`]: what a consumer of the cache puts in its nix.conf
//!   (`client-config`); [`redact`]: URLs as they may be printed (credentials masked);
//!   [`secrets`]: the key and credentials handed from `exec` to its daemon, out of reach of
//!   same-user processes; [`process_group`]: child process groups signalled whole; [`sync`]: locks that a panic elsewhere does not poison for good.
//!
//! The binary (`main.rs`, `cli/`) only wires these together.

pub mod clock;
pub mod coexist;
pub mod config;
pub mod consumer;
pub mod control;
pub mod daemon;
pub mod default_paths;
pub mod du;
pub mod engine;
pub mod filter;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod gcroots;
pub mod keys;
pub mod layout;
pub mod pins;
pub mod process_group;
pub mod queue;
pub mod random;
pub mod redact;
pub mod repair;
pub mod resign;
pub mod secrets;
pub mod sink;
pub mod store;
pub mod sync;
pub mod trust;
pub mod upstream;
pub mod verify;

/// Sleeps until `at`, or forever without it: a `select!` branch for an optional deadline.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An error and its causes on one line (`outer: cause: root cause`), for logs, the status
/// document and protocol responses, which are all single lines.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
