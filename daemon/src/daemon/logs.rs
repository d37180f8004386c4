//! Build logs: `log/<drv basename>` in the cache, where `nix log` looks for them.
//!
//! Nix keeps a build's log at `/nix/var/log/nix/drvs/<first 2 chars>/<rest of basename>.bz2`.
//! The log is stored uncompressed in the cache (no `Content-Encoding`, which some Nix versions
//! cannot decode). Best effort by design: a missing or unreadable log is logged and skipped,
//! never a reason to retry or fail the path it belongs to.
//!
//! Memory: a log is held whole while it is uploaded, so one log is uploaded at a time (the
//! caller holds a permit of a one-slot semaphore) and a log larger than the configured limit
//! (`max_build_log_bytes`) once decompressed is skipped, never truncated: at most that many
//! bytes, whatever any build writes.

use std::io::Read;
use std::path::PathBuf;

use bytes::Bytes;

use crate::format::store_path::StorePath;
use crate::layout::{self, content_type};
use crate::sink::Sink;

/// Where Nix keeps build logs.
const LOG_DIR: &str = "/nix/var/log/nix/drvs";

/// The local log file of a derivation.
pub fn log_file(drv: &StorePath) -> PathBuf {
    let basename = drv.basename();
    PathBuf::from(LOG_DIR)
        .join(&basename[..2])
        .join(format!("{}.bz2", &basename[2..]))
}

/// Uploads the log of `drv` unless the cache has it or it is over `limit` bytes uncompressed.
pub async fn upload(sink: &Sink, drv: &StorePath, limit: u64) {
    let key = layout::log_key(drv);
    match sink.exists(&key).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!("cannot check for the build log {key}: {e}");
            return;
        }
    }
    let file = log_file(drv);
    let text = match tokio::task::spawn_blocking(move || read_log(&file, limit)).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            tracing::info!(drv = %drv, "no build log uploaded: {e}");
            return;
        }
        Err(e) => {
            tracing::warn!("log reader failed: {e}");
            return;
        }
    };
    match sink.put(&key, Bytes::from(text), content_type::LOG).await {
        Ok(()) => tracing::info!(key, "uploaded the build log"),
        Err(e) => tracing::warn!("cannot upload the build log: {e}"),
    }
}

/// The decompressed log, or an error if it is larger than `limit` bytes.
fn read_log(file: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let compressed = std::fs::File::open(file)?;
    let mut text = Vec::new();
    bzip2::read::BzDecoder::new(compressed)
        .take(limit.saturating_add(1))
        .read_to_end(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes uncompressed; skipped"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_the_limit_is_skipped_not_truncated() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log.bz2");
        let mut encoder = bzip2::write::BzEncoder::new(
            std::fs::File::create(&file).unwrap(),
            bzip2::Compression::fast(),
        );
        encoder.write_all(&[b'x'; 2000]).unwrap();
        encoder.finish().unwrap();
        assert_eq!(read_log(&file, 2000).unwrap().len(), 2000);
        let error = read_log(&file, 1999).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn log_files_are_found_where_nix_writes_them() {
        let drv = StorePath::from_basename("lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv").unwrap();
        assert_eq!(
            log_file(&drv),
            PathBuf::from("/nix/var/log/nix/drvs/lk/b8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv.bz2")
        );
    }
}
