//! The daemon's live settings: the checked config plus what it resolves to (the opened sink,
//! the loaded signing keys, the engine's configuration). Built once at start and again on each
//! SIGHUP; a reload that fails keeps the previous settings whole.
//!
//! The embedded default: without `target`, the cache is `file://<state_dir>/cache`; without
//! `secret_key_files`, the key is `<state_dir>/signing-key`, generated on first start (0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::engine::stream::StreamSettings;
use crate::engine::EngineConfig;
use crate::format::signing::SigningKey;
use crate::sink::{Sink, TargetUrl};

pub struct Settings {
    pub config: Config,
    pub target_url: TargetUrl,
    pub public_keys: Vec<String>,
    pub engine: Arc<EngineConfig>,
}

impl Settings {
    pub async fn load(config: Config) -> anyhow::Result<Settings> {
        let target_url = match &config.target {
            Some(url) => url.clone(),
            None => TargetUrl::File {
                dir: config.state_dir.join("cache"),
            },
        };
        let keys = if config.secret_key_files.is_empty() {
            vec![default_key(&config.state_dir.join("signing-key"))?]
        } else {
            config
                .secret_key_files
                .iter()
                .map(|file| SigningKey::load(file))
                .collect::<Result<Vec<_>, _>>()?
        };
        let sink = Sink::open(&target_url, config.request_timeout)
            .await
            .with_context(|| format!("cannot use target {target_url}"))?;
        let engine = EngineConfig::new(
            Arc::new(sink),
            target_url.to_string(),
            Arc::new(keys),
            StreamSettings::new(config.compression, config.compression_level),
            config.jobs,
            config.parallel_requests,
            true,
        );
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
fn default_key(file: &Path) -> anyhow::Result<SigningKey> {
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
