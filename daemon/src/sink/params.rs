//! The query parameters of a target URL that are settings of the cache rather than of the
//! connection: those Nix's binary cache stores take (`nix copy --to 'URL?compression=xz&…'`),
//! each honoured with Nix's meaning or refused with the reason it has none here, so a URL that
//! works with `nix copy --to` works with narpush.
//!
//! Invariant: a [`CacheParams`] holds only values narpush acts upon; a parameter that would
//! silently change nothing, where Nix would change something, is an error naming it.

use std::path::PathBuf;

use crate::format::compression::Compression;

/// The largest `single_put_max_bytes`: a PUT carries at most 5 GiB, and a NAR of 4 GiB stays
/// below that compressed, incompressible data included.
pub const SINGLE_PUT_MAX_LIMIT: u64 = 4 << 30;

/// Settings a target URL gives; `None` leaves the config's (or the default) in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheParams {
    pub compression: Option<Compression>,
    pub compression_level: Option<i32>,
    /// `parallel-compression`: compress big NARs on several threads.
    pub parallel_compression: Option<bool>,
    /// `secret-key`: a signing key file.
    pub secret_key: Option<PathBuf>,
    /// `priority` in `nix-cache-info`.
    pub priority: Option<u32>,
    /// `want-mass-query` in `nix-cache-info`.
    pub want_mass_query: Option<bool>,
    /// `buffer-size`: the part size of multipart uploads (S3 only).
    pub part_size: Option<u64>,
    /// `write-nar-listing`: write `<hash>.ls` beside each narinfo.
    pub write_nar_listing: Option<bool>,
    /// `ls-compression`: how listings are compressed (S3 only; `Content-Encoding` says so).
    pub ls_compression: Option<Compression>,
    /// `multipart-upload`: `true` streams every NAR over one part in parts, `false` writes
    /// every NAR up to the largest `single_put_max_bytes` with one PUT (S3 only).
    pub single_put_max: Option<u64>,
}

/// S3 requires every part but the last to be at least this big.
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Parameters that only affect reading a cache, which Nix ignores when writing too.
const READ_ONLY: &[&str] = &[
    "local-nar-cache",
    "path-info-cache-size",
    "trusted",
    "system-features",
];

impl CacheParams {
    /// Takes one parameter; `Ok(false)` when `name` is not a cache parameter (the caller may
    /// know it as a connection parameter), an error with the reason when it cannot be honoured.
    pub fn take(&mut self, name: &str, value: &str, s3: bool) -> Result<bool, String> {
        match name {
            "compression" => {
                self.compression = Some(value.parse::<Compression>().map_err(|e| e.to_string())?);
            }
            "compression-level" => self.compression_level = Some(number(value)?),
            "parallel-compression" => self.parallel_compression = Some(boolean(value)?),
            "secret-key" => {
                if value.is_empty() {
                    return Err("names no file".to_owned());
                }
                self.secret_key = Some(PathBuf::from(value));
            }
            "priority" => self.priority = Some(number(value)?),
            "want-mass-query" => self.want_mass_query = Some(boolean(value)?),
            "write-nar-listing" => self.write_nar_listing = Some(boolean(value)?),
            "ls-compression" => {
                // Nix's default, the empty value, means uncompressed.
                let compression = match value {
                    "" => Compression::None,
                    other => other.parse::<Compression>().map_err(|e| e.to_string())?,
                };
                if compression != Compression::None && !s3 {
                    return Err(format!(
                        "'{value}': only S3 targets compress listings (a directory cache has no \
                         Content-Encoding to tell clients)"
                    ));
                }
                self.ls_compression = Some(compression);
            }
            "narinfo-compression" | "log-compression" => {
                if !value.is_empty() {
                    return Err(format!(
                        "narpush writes {} uncompressed (leave it empty)",
                        if name == "narinfo-compression" {
                            "narinfos"
                        } else {
                            "build logs"
                        }
                    ));
                }
            }
            "index-debug-info" => {
                if boolean(value)? {
                    return Err("narpush does not write debuginfo indexes".to_owned());
                }
            }
            "multipart-upload" if s3 => {
                self.single_put_max = Some(match boolean(value)? {
                    true => 0,
                    false => SINGLE_PUT_MAX_LIMIT,
                });
            }
            "buffer-size" if s3 => {
                let size: u64 = number(value)?;
                if size < MIN_PART_SIZE {
                    return Err(format!(
                        "parts must be at least {MIN_PART_SIZE} bytes (5 MiB)"
                    ));
                }
                self.part_size = Some(size);
            }
            "multipart-upload" | "buffer-size" => {
                return Err("only S3 targets upload in parts".to_owned());
            }
            _ if READ_ONLY.contains(&name) => {}
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("must be true or false, not '{value}'")),
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("must be a whole number, not '{value}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_parameters_are_honoured_or_refused_with_a_reason() {
        let mut params = CacheParams::default();
        for (name, value) in [
            ("compression", "xz"),
            ("compression-level", "9"),
            ("parallel-compression", "false"),
            ("secret-key", "/etc/nix/key"),
            ("priority", "30"),
            ("want-mass-query", "false"),
            ("write-nar-listing", "true"),
            ("ls-compression", "zstd"),
            ("index-debug-info", "false"),
            ("multipart-upload", "true"),
            ("buffer-size", "16777216"),
            ("local-nar-cache", "/tmp/x"),
        ] {
            assert_eq!(params.take(name, value, true), Ok(true), "{name}");
        }
        assert_eq!(
            params,
            CacheParams {
                compression: Some(Compression::Xz),
                compression_level: Some(9),
                parallel_compression: Some(false),
                secret_key: Some(PathBuf::from("/etc/nix/key")),
                priority: Some(30),
                want_mass_query: Some(false),
                part_size: Some(16 << 20),
                write_nar_listing: Some(true),
                ls_compression: Some(Compression::Zstd),
                single_put_max: Some(0),
            }
        );
        let mut params = CacheParams::default();
        assert_eq!(params.take("multipart-upload", "false", true), Ok(true));
        assert_eq!(params.single_put_max, Some(SINGLE_PUT_MAX_LIMIT));
        for (value, s3, expected) in [
            ("", false, Compression::None),
            ("none", false, Compression::None),
            ("xz", true, Compression::Xz),
        ] {
            let mut params = CacheParams::default();
            assert_eq!(params.take("ls-compression", value, s3), Ok(true));
            assert_eq!(params.ls_compression, Some(expected), "{value}");
        }
        assert_eq!(params.take("endpoint", "x", true), Ok(false));
        for (name, value, s3, reason) in [
            ("write-nar-listing", "yes", true, "true or false"),
            ("ls-compression", "br", true, "unknown compression 'br'"),
            ("ls-compression", "zstd", false, "only S3"),
            ("narinfo-compression", "xz", true, "narinfos"),
            ("log-compression", "br", false, "logs"),
            ("multipart-upload", "maybe", true, "true or false"),
            ("buffer-size", "1024", true, "5 MiB"),
            ("buffer-size", "16777216", false, "only S3"),
            ("compression", "br", true, "br"),
            ("priority", "high", true, "whole number"),
        ] {
            let error = CacheParams::default().take(name, value, s3).unwrap_err();
            assert!(error.contains(reason), "{name}={value}: {error}");
        }
    }
}
