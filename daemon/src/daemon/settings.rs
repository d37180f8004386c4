//! The daemon's live settings: the checked config plus what it resolves to (the opened sink,
//! the loaded signing keys, the engine's configuration). Built once at start and again on each
//! SIGHUP; a reload that fails keeps the previous settings whole.
//!
//! The embedded default: without `target`, the cache is `file://<state_dir>/cache`; without
//! `secret_key_files` or `$NARPUSH_SIGNING_KEY`, the key is `<state_dir>/signing-key`,
//! generated on first start (0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{check_level, Config};
use crate::engine::EngineConfig;
use crate::format::signing::SigningKey;
use crate::keys::configured_keys;
use crate::sink::{Sink, TargetUrl};

pub struct Settings {
    pub config: Config,
    pub target_url: TargetUrl,
    pub public_keys: Vec<String>,
    pub engine: Arc<EngineConfig>,
}

impl Settings {
    pub async fn load(mut config: Config) -> anyhow::Result<Settings> {
        let target_url = config.target_or_default();
        config.apply_target_params(target_url.params());
        check_level(config.compression, config.compression_level).map_err(|reason| {
            anyhow::anyhow!("target {target_url}: compression-level: {reason}")
        })?;
        let keys = match configured_keys(&[], &config.secret_key_files)? {
            Some((keys, _)) => keys,
            None => vec![default_key(&config.default_key_file())?],
        };
        let sink = Sink::open(&target_url, config.request_timeout)
            .await
            .with_context(|| format!("cannot use target {target_url}"))?;
        let engine = EngineConfig::new(
            Arc::new(sink),
            target_url.to_string(),
            Arc::new(keys),
            config.stream_settings(config.compression, config.compression_level),
            config.jobs,
            config.parallel_requests,
            true,
        )
        .with_upstream(config.upstream())
        .with_refresh_after(config.refresh_after)
        .with_cache_info(config.cache_info());
        Ok(Settings {
            public_keys: engine
                .keys
                .iter()
                .map(|k| k.public_key().to_string())
                .collect(),
            engine: Arc::new(engine),
            target_url,
            config,
        })
    }
}

/// Loads the embedded default key, generating it on first use.
pub fn default_key(file: &Path) -> anyhow::Result<SigningKey> {
    if file.exists() {
        return Ok(SigningKey::load(file)?);
    }
    let key = SigningKey::generate(&format!("{}-1", host_name()))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create the signing key {}", file.display()))?;
    out.write_all(key.to_secret_string().as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write the signing key {}", file.display()))?;
    tracing::warn!(
        file = %file.display(),
        public_key = %key.public_key(),
        "generated a signing key; give the public key to clients (trusted-public-keys)"
    );
    Ok(key)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(':') && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "narpush".to_owned())
}
