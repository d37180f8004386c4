//! The daemon's live settings: the checked config plus what it resolves to (the opened sink,
//! the loaded signing keys, the engine's configuration). Built once at start and again on each
//! SIGHUP; a reload that fails keeps the previous settings whole.
//!
//! The embedded default: without `target`, the cache is `file://<state_dir>/cache`; without
//! `secret_key_files` or `$NARPUSH_SIGNING_KEY`, the key is `<state_dir>/signing-key`,
//! generated on first start (0600).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::{check_level, Config};
use crate::engine::EngineConfig;
use crate::format::signing::SigningKey;
use crate::keys::configured_keys;
use crate::layout::WriterId;
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
        let mut stream = config.stream_settings(config.compression, config.compression_level);
        stream.writer = writer_id(&config.state_dir.join(WRITER_ID_FILE))?;
        stream.spill_dir = spill_dir(&config.state_dir.join(SPILL_DIR))?;
        let engine = EngineConfig::new(
            Arc::new(sink),
            target_url.to_string(),
            Arc::new(keys),
            stream,
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

/// Where the daemon keeps its writer id, in its state directory.
pub const WRITER_ID_FILE: &str = "writer-id";

/// The daemon's writer id (see [`WriterId`]), made on first use and kept in `file`, so that
/// after a restart it still knows which unfinished multipart uploads are its own.
pub fn writer_id(file: &Path) -> anyhow::Result<WriterId> {
    match std::fs::read_to_string(file) {
        Ok(text) => WriterId::parse(text.trim()).with_context(|| {
            format!(
                "{} does not hold a writer id (8 nix32 characters); delete it to make a new one",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = WriterId::random();
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(file, format!("{id}\n"))
                .with_context(|| format!("cannot write the writer id {}", file.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the writer id {}", file.display())),
    }
}

/// Where NARs written with one PUT wait for their upload, in the state directory (not `/tmp`,
/// which may be memory); their files have no names there (see [`crate::engine::spill`]).
pub const SPILL_DIR: &str = "tmp";

/// Makes `dir` (readable by the daemon's user only) if it does not exist yet.
fn spill_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create the directory for NARs on their way {}",
                dir.display()
            )
        })?;
    Ok(dir.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state").join(WRITER_ID_FILE);
        let made = writer_id(&file).unwrap();
        assert_eq!(writer_id(&file).unwrap(), made);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{made}\n"));
        std::fs::write(&file, "not an id\n").unwrap();
        let error = format!("{:#}", writer_id(&file).unwrap_err());
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
}
