//! The configuration file (TOML), read and checked in one pass.
//!
//! Where it comes from: `--config FILE`, else `$NARPUSH_CONFIG`, else
//! `/etc/narpush/narpush.toml`. Only the default location may be absent (then every key takes
//! its default); a file that was named explicitly must exist.
//!
//! Invariant: a [`Config`] holds only checked values. Unknown keys, wrong types and values out
//! of range are errors that name the file and the key; nothing is silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::default_paths::{default_gc_roots_dir, default_state_dir};
use crate::engine::stream::DEFAULT_SINGLE_PUT_MAX;
use crate::engine::DEFAULT_REFRESH_AFTER;
use crate::filter::PushFilter;
use crate::format::compression::Compression;
use crate::format::signing::VerifyingKey;
use crate::layout::{CacheControl, DEFAULT_PRIORITY};
use crate::sink::requests::RequestPrices;
use crate::sink::url::{TargetUrl, TargetUrlError};
use crate::upstream::{Upstream, UpstreamCache, NIXOS_PUBLIC_KEY};

pub use narpush_protocol::defaults::CONFIG as DEFAULT_CONFIG_PATH;
use narpush_protocol::{defaults, env};

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    target: Option<String>,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    gc_roots_dir: Option<PathBuf>,
    secret_key_files: Option<Vec<PathBuf>>,
    compression: Option<String>,
    compression_level: Option<i32>,
    jobs: Option<usize>,
    parallel_requests: Option<usize>,
    batch_window_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_initial_delay_ms: Option<u64>,
    retry_max_delay_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    allowed_uids: Option<Vec<u32>>,
    upstream_caches: Option<Vec<toml::Value>>,
    upstream_public_keys: Option<Vec<String>>,
    own_public_keys: Option<Vec<String>>,
    nar_cache_control: Option<String>,
    narinfo_cache_control: Option<String>,
    refresh_after: Option<String>,
    priority: Option<u32>,
    upload_build_logs: Option<bool>,
    max_build_log_bytes: Option<u64>,
    write_nar_listing: Option<bool>,
    single_put_max_bytes: Option<u64>,
    metrics_listen: Option<String>,
    public_url: Option<String>,
    request_prices: Option<RequestPrices>,
    exclude: Option<Vec<String>>,
    exclude_outputs: Option<Vec<String>>,
    max_nar_bytes: Option<u64>,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    pub target: Option<TargetUrl>,
    pub secret_key_files: Vec<PathBuf>,
    pub compression: Compression,
    pub compression_level: i32,
    /// NARs (above 1 MiB) streamed at once; each holds at most two parts in memory.
    pub jobs: usize,
    /// Small requests (lookups, narinfos, NARs up to 1 MiB) in flight at once.
    pub parallel_requests: usize,
    /// The daemon's socket (`$NARPUSH_SOCKET` wins over this key).
    pub socket: PathBuf,
    /// The queue database and the embedded default cache and key live here.
    pub state_dir: PathBuf,
    /// Where the hook leaves requests the daemon did not take (`$NARPUSH_SPOOL_DIR` wins).
    pub spool_dir: PathBuf,
    /// Where the daemon keeps GC roots for queued paths.
    pub gc_roots_dir: PathBuf,
    /// How long the daemon gathers requests before resolving them together.
    pub batch_window: Duration,
    /// Attempts before a path that keeps failing is marked failed.
    pub max_attempts: u32,
    pub retry_initial_delay: Duration,
    pub retry_max_delay: Duration,
    /// How long one request to the target may wait for its answer before it is retried.
    pub request_timeout: Duration,
    /// Who may enqueue, besides the daemon's own uid.
    pub allowed_uids: Vec<u32>,
    /// Off by default: on a public bucket every build log would be published.
    pub upload_build_logs: bool,
    /// A build log larger than this uncompressed is skipped; one is held whole in memory.
    pub max_build_log_bytes: u64,
    /// Caches asked whether they serve a path before it is uploaded, each with the keys that
    /// count for it.
    pub upstream_caches: Vec<UpstreamCache>,
    /// Keys whose signature makes a path upstream's (on the path in the store, or on an
    /// upstream cache's narinfo).
    pub upstream_public_keys: Vec<VerifyingKey>,
    /// Keys whose signature on a narinfo in the target makes it ours, besides the signing
    /// keys' own: the previous key during a rotation, so nothing is uploaded again.
    pub own_public_keys: Vec<VerifyingKey>,
    /// `Cache-Control` of the objects written to an S3 target (`nar_cache_control`,
    /// `narinfo_cache_control`).
    pub cache_control: CacheControl,
    /// A path found in the cache gets its narinfo rewritten once it is older than this, so
    /// that retention GC sees it as in use.
    pub refresh_after: Duration,
    /// `Priority` in `nix-cache-info` (lower wins; cache.nixos.org has 40).
    pub priority: u32,
    /// `WantMassQuery` in `nix-cache-info` (target URL only: `want-mass-query`).
    pub want_mass_query: bool,
    /// Multipart part size (target URL only: `buffer-size`); `None` is the default.
    pub part_size: Option<u64>,
    /// NARs up to this size go up with one PUT, bigger ones in parts (`single_put_max_bytes`,
    /// `?multipart-upload=`).
    pub single_put_max: u64,
    /// Compress big NARs on several threads (target URL only: `parallel-compression`).
    pub parallel_compression: bool,
    /// The URL consumers substitute from (`client-config`); `None` when unset or empty.
    pub public_url: Option<String>,
    /// Write `<hash>.ls` NAR listings (`write_nar_listing`, `?write-nar-listing=`).
    pub write_nar_listing: bool,
    /// How listings are compressed (target URL only: `ls-compression`).
    pub ls_compression: Compression,
    /// Where `/metrics` is served (Prometheus text format); `None` (the default) serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// What S3 requests cost, for the estimates beside the request counts (`[request_prices]`).
    pub request_prices: RequestPrices,
    /// Paths never uploaded (`exclude`, `exclude_outputs`, `max_nar_bytes`).
    pub filter: PushFilter,
}

pub const DEFAULT_JOBS: usize = 2;
pub const DEFAULT_PARALLEL_REQUESTS: usize = 128;
/// More than this is a typo, not a setting: each unit costs a task and a connection.
pub(crate) const MAX_CONCURRENCY: usize = 1024;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_BUILD_LOG_BYTES: u64 = 64 << 20;

impl Default for Config {
    fn default() -> Config {
        Config {
            source: None,
            target: None,
            secret_key_files: Vec::new(),
            compression: Compression::Zstd,
            compression_level: Compression::Zstd.default_level(),
            jobs: DEFAULT_JOBS,
            parallel_requests: DEFAULT_PARALLEL_REQUESTS,
            socket: env::path(env::SOCKET).unwrap_or_else(|| PathBuf::from(defaults::SOCKET)),
            state_dir: default_state_dir(),
            spool_dir: env::path(env::SPOOL_DIR)
                .unwrap_or_else(|| PathBuf::from(defaults::SPOOL_DIR)),
            gc_roots_dir: default_gc_roots_dir(),
            batch_window: Duration::from_millis(500),
            max_attempts: 20,
            retry_initial_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(15 * 60),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            allowed_uids: vec![0],
            upstream_caches: Vec::new(),
            upstream_public_keys: VerifyingKey::parse(NIXOS_PUBLIC_KEY).into_iter().collect(),
            own_public_keys: Vec::new(),
            cache_control: CacheControl::default(),
            refresh_after: DEFAULT_REFRESH_AFTER,
            priority: DEFAULT_PRIORITY,
            want_mass_query: true,
            part_size: None,
            single_put_max: DEFAULT_SINGLE_PUT_MAX,
            parallel_compression: true,
            upload_build_logs: false,
            max_build_log_bytes: DEFAULT_MAX_BUILD_LOG_BYTES,
            public_url: None,
            write_nar_listing: false,
            ls_compression: Compression::None,
            metrics_listen: None,
            request_prices: RequestPrices::default(),
            filter: PushFilter::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: key '{key}': {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("config file {path}: key 'target'")]
    Target {
        path: PathBuf,
        #[source]
        source: TargetUrlError,
    },
}

impl Config {
    /// Loads the file named by `explicit` (the `--config` flag), `$NARPUSH_CONFIG`, or the
    /// default location.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = env::path(env::CONFIG);
        match explicit.map(Path::to_owned).or(from_env) {
            Some(path) => Config::load_file(&path),
            None => match std::fs::metadata(DEFAULT_CONFIG_PATH) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
                _ => Config::load_file(Path::new(DEFAULT_CONFIG_PATH)),
            },
        }
    }

    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned() + &location(text, e.span()),
        })?;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        let defaults = Config::default();
        let target = raw
            .target
            .map(|t| TargetUrl::parse(&t))
            .transpose()
            .map_err(|source| ConfigError::Target {
                path: path.to_owned(),
                source,
            })?;
        let compression = match raw.compression {
            Some(name) => name
                .parse::<Compression>()
                .map_err(|e| invalid("compression", e.to_string()))?,
            None => defaults.compression,
        };
        let compression_level = raw
            .compression_level
            .unwrap_or_else(|| compression.default_level());
        check_level(compression, compression_level).map_err(|r| invalid("compression_level", r))?;
        let jobs =
            check_concurrency(raw.jobs.unwrap_or(defaults.jobs)).map_err(|r| invalid("jobs", r))?;
        let parallel_requests =
            check_concurrency(raw.parallel_requests.unwrap_or(defaults.parallel_requests))
                .map_err(|r| invalid("parallel_requests", r))?;
        let batch_window = raw
            .batch_window_ms
            .map(check_batch_window)
            .transpose()
            .map_err(|r| invalid("batch_window_ms", r))?
            .unwrap_or(defaults.batch_window);
        let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
        if max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1".to_owned()));
        }
        let retry_initial_delay = raw
            .retry_initial_delay_ms
            .map(check_retry_initial_delay)
            .transpose()
            .map_err(|r| invalid("retry_initial_delay_ms", r))?
            .unwrap_or(defaults.retry_initial_delay);
        let retry_max_delay = raw
            .retry_max_delay_ms
            .map_or(defaults.retry_max_delay, Duration::from_millis);
        if retry_max_delay < retry_initial_delay {
            return Err(invalid(
                "retry_max_delay_ms",
                "must not be below retry_initial_delay_ms".to_owned(),
            ));
        }
        let upstream_caches = raw
            .upstream_caches
            .unwrap_or_default()
            .iter()
            .map(upstream_caches::upstream_cache)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|r| invalid("upstream_caches", r))?;
        let upstream_public_keys = match raw.upstream_public_keys {
            Some(keys) => keys
                .iter()
                .map(|key| {
                    VerifyingKey::parse(key)
                        .map_err(|e| format!("'{key}' is not a public key: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|r| invalid("upstream_public_keys", r))?,
            None => defaults.upstream_public_keys.clone(),
        };
        let own_public_keys = raw
            .own_public_keys
            .unwrap_or_default()
            .iter()
            .map(|key| {
                VerifyingKey::parse(key).map_err(|e| format!("'{key}' is not a public key: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|r| invalid("own_public_keys", r))?;
        let refresh_after = match raw.refresh_after {
            Some(text) => humantime::parse_duration(&text)
                .map_err(|e| format!("'{text}' is not a duration like \"1d\" or \"12h\": {e}"))
                .and_then(|d| {
                    if d.is_zero() {
                        Err("must be more than 0".to_owned())
                    } else {
                        Ok(d)
                    }
                })
                .map_err(|r| invalid("refresh_after", r))?,
            None => defaults.refresh_after,
        };
        let request_timeout = match raw.request_timeout_ms {
            Some(0) => {
                return Err(invalid(
                    "request_timeout_ms",
                    "must be at least 1".to_owned(),
                ))
            }
            Some(ms) => Duration::from_millis(ms),
            None => defaults.request_timeout,
        };
        let max_build_log_bytes = match raw.max_build_log_bytes {
            Some(0) => {
                return Err(invalid(
                    "max_build_log_bytes",
                    "must be at least 1".to_owned(),
                ))
            }
            Some(bytes) => bytes,
            None => defaults.max_build_log_bytes,
        };
        let state_dir = match (env::path(env::STATE_DIR), raw.state_dir) {
            (Some(from_env), _) => from_env,
            (None, configured) => absolute("state_dir", configured, &defaults.state_dir)
                .map_err(|r| invalid("state_dir", r))?,
        };
        let spool_dir = match (env::path(env::SPOOL_DIR), raw.spool_dir) {
            (Some(from_env), _) => from_env,
            (None, Some(configured)) => absolute("spool_dir", Some(configured), &state_dir)
                .map_err(|r| invalid("spool_dir", r))?,
            (None, None) => state_dir.join("spool"),
        };
        let socket = match (env::path(env::SOCKET), raw.socket) {
            (Some(from_env), _) => from_env,
            (None, configured) => absolute("socket", configured, &defaults.socket)
                .map_err(|r| invalid("socket", r))?,
        };
        let filter = check_filter(raw.exclude, raw.exclude_outputs, raw.max_nar_bytes)
            .map_err(|(key, reason)| invalid(key, reason))?;
        Ok(Config {
            filter,
            source: Some(path.to_owned()),
            target,
            secret_key_files: raw.secret_key_files.unwrap_or_default(),
            compression,
            compression_level,
            jobs,
            parallel_requests,
            socket,
            spool_dir,
            gc_roots_dir: absolute("gc_roots_dir", raw.gc_roots_dir, &defaults.gc_roots_dir)
                .map_err(|r| invalid("gc_roots_dir", r))?,
            state_dir,
            batch_window,
            max_attempts,
            retry_initial_delay,
            retry_max_delay,
            request_timeout,
            allowed_uids: raw.allowed_uids.unwrap_or(defaults.allowed_uids),
            upload_build_logs: raw.upload_build_logs.unwrap_or(defaults.upload_build_logs),
            max_build_log_bytes,
            upstream_caches,
            upstream_public_keys,
            own_public_keys,
            cache_control: CacheControl {
                immutable: check_header(raw.nar_cache_control, &defaults.cache_control.immutable)
                    .map_err(|r| invalid("nar_cache_control", r))?,
                mutable: check_header(raw.narinfo_cache_control, &defaults.cache_control.mutable)
                    .map_err(|r| invalid("narinfo_cache_control", r))?,
            },
            refresh_after,
            public_url: check_public_url(raw.public_url).map_err(|r| invalid("public_url", r))?,
            metrics_listen: check_listen_address(raw.metrics_listen)
                .map_err(|r| invalid("metrics_listen", r))?,
            request_prices: check_request_prices(raw.request_prices)
                .map_err(|r| invalid("request_prices", r))?,
            priority: raw.priority.unwrap_or(defaults.priority),
            write_nar_listing: raw.write_nar_listing.unwrap_or(defaults.write_nar_listing),
            single_put_max: check_single_put_max(
                raw.single_put_max_bytes.unwrap_or(defaults.single_put_max),
            )
            .map_err(|r| invalid("single_put_max_bytes", r))?,
            ..defaults
        })
    }

    /// The upstream filter these settings describe.
    pub fn upstream(&self) -> Upstream {
        Upstream::new(
            self.upstream_caches.clone(),
            self.upstream_public_keys.clone(),
        )
    }
}

mod checks;
mod derived;
mod upstream_caches;
use checks::{
    absolute, check_batch_window, check_filter, check_header, check_listen_address,
    check_public_url, check_request_prices, check_retry_initial_delay, check_single_put_max,
    location,
};
pub use checks::{check_concurrency, check_level};

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
