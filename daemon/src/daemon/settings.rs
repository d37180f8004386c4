//! The daemon's live settings: the checked config plus what it resolves to (the opened sink,
//! the loaded signing keys, the engine's configuration). Built once at start and again on each
//! SIGHUP; a reload that fails keeps the previous settings whole.
//!
//! The embedded default: without `target`, the cache is `file://<state_dir>/cache`; without
//! `secret_key_files` or `$NARPUSH_SIGNING_KEY`, the key is `<state_dir>/signing-key`,
//! generated on first start (0600).
//!
//! Small files the daemon makes in its state directory (the signing key, `writer-id`) are
//! written whole or not at all: into a temporary file, synced, then renamed (or linked, for
//! the key, which is never replaced) into place; a failure removes the temporary file, so a
//! full disk never leaves an empty key or id that would stop every later start.

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
    /// `writer`: the writer id this process uses already (on a reload), kept when the file
    /// that should hold it is missing.
    pub async fn load(mut config: Config, writer: Option<WriterId>) -> anyhow::Result<Settings> {
        let target_url = config.target_or_default();
        config.apply_target_params(target_url.params());
        check_level(config.compression, config.compression_level).map_err(|reason| {
            anyhow::anyhow!("target {target_url}: compression-level: {reason}")
        })?;
        let keys = match configured_keys(&[], &config.secret_key_files)? {
            Some((keys, _)) => keys,
            None => vec![default_key(&config.default_key_file())?],
        };
        let mut sink = Sink::open(&target_url, config.request_timeout)
            .await
            .with_context(|| format!("cannot use target {target_url}"))?;
        sink.set_cache_control(config.cache_control.clone());
        let mut stream = config.stream_settings(config.compression, config.compression_level);
        stream.writer = writer_id(&config.state_dir.join(WRITER_ID_FILE), writer)?;
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
        .with_own_public_keys(&config.own_public_keys)
        .with_filter(config.filter.clone())
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
/// after a restart it still knows which unfinished multipart uploads are its own. When the
/// file is missing, `current` (the id this process uses already) or a new id is saved; when
/// that fails (a full disk), the error is logged and the id used unsaved for now:
/// [`super::state_files`] saves it later. A file that does not hold an id is an error.
pub fn writer_id(file: &Path, current: Option<WriterId>) -> anyhow::Result<WriterId> {
    match std::fs::read_to_string(file) {
        Ok(text) => WriterId::parse(text.trim()).with_context(|| {
            format!(
                "{} does not hold a writer id (8 nix32 characters); delete it to make a new one",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = current.unwrap_or_else(WriterId::random);
            if let Err(e) = save_writer_id(file, id) {
                tracing::error!(
                    "{e:#}; using the writer id {id} unsaved until it can be saved (if the \
                     daemon stops before, the bucket's lifecycle rule removes the multipart \
                     uploads it leaves unfinished)"
                );
            }
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the writer id {}", file.display())),
    }
}

/// Saves `id` in `file` (whole, or not at all).
pub fn save_writer_id(file: &Path, id: WriterId) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_whole(file, format!("{id}\n").as_bytes(), 0o644, Place::Replace)
        .with_context(|| format!("cannot write the writer id {}", file.display()))
}

/// How [`write_whole`] puts the finished file in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Rename over whatever is there.
    Replace,
    /// Fail if the file exists.
    New,
}

/// Writes `bytes` to `file` through a temporary file beside it (mode `mode`), synced before
/// it is put in place and its directory synced after; on failure the temporary file is
/// removed and `file` is as it was.
fn write_whole(file: &Path, bytes: &[u8], mode: u32, place: Place) -> std::io::Result<()> {
    let name = file
        .file_name()
        .map_or_else(|| "file".into(), |name| name.to_string_lossy().into_owned());
    let temporary = file.with_file_name(format!(".{name}.tmp"));
    // A temporary file left by a kill may have another mode: never write into it.
    let _ = std::fs::remove_file(&temporary);
    let written = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        match place {
            Place::Replace => std::fs::rename(&temporary, file)?,
            Place::New => {
                std::fs::hard_link(&temporary, file)?;
                std::fs::remove_file(&temporary)?;
            }
        }
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Where NARs written with one PUT wait for their upload, in the state directory (not `/tmp`,
/// which may be memory); their files have no names there (see [`crate::sink::spill`]).
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
    write_whole(file, key.to_secret_string().as_bytes(), 0o600, Place::New)
        .with_context(|| format!("cannot create the signing key {}", file.display()))?;
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
        let made = writer_id(&file, None).unwrap();
        assert_eq!(writer_id(&file, None).unwrap(), made);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{made}\n"));
        std::fs::write(&file, "not an id\n").unwrap();
        let error = format!("{:#}", writer_id(&file, None).unwrap_err());
        assert!(error.contains(&file.display().to_string()), "{error}");
    }

    #[test]
    fn a_writer_id_that_cannot_be_saved_is_used_unsaved_and_saved_later() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(WRITER_ID_FILE);
        // A directory where the temporary file goes: the id cannot be written.
        let blocker = dir.path().join(format!(".{WRITER_ID_FILE}.tmp"));
        std::fs::create_dir(&blocker).unwrap();
        let current = WriterId::random();
        assert_eq!(writer_id(&file, Some(current)).unwrap(), current);
        assert!(!file.exists());
        std::fs::remove_dir(&blocker).unwrap();
        save_writer_id(&file, current).unwrap();
        assert_eq!(writer_id(&file, None).unwrap(), current);
    }

    #[test]
    fn a_small_file_that_cannot_be_put_in_place_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signing-key");
        std::fs::write(&file, "the old key").unwrap();
        let error = write_whole(&file, b"a new key", 0o600, Place::New).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "the old key");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("signing-key")]);

        write_whole(&file, b"replaced", 0o644, Place::Replace).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "replaced");
    }
}
