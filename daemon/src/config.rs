//! The configuration file (TOML), read and checked in one pass.
//!
//! Where it comes from: `--config FILE`, else `$NARPUSH_CONFIG`, else
//! `/etc/narpush/narpush.toml`. Only the default location may be absent (then every key takes
//! its default); a file that was named explicitly must exist.
//!
//! Invariant: a [`Config`] holds only checked values. Unknown keys, wrong types and values out
//! of range are errors that name the file and the key; nothing is silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::target::url::{TargetUrl, TargetUrlError};
use crate::upload::compress::Compression;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/narpush/narpush.toml";
pub const CONFIG_ENV: &str = "NARPUSH_CONFIG";

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    target: Option<String>,
    secret_key_files: Option<Vec<PathBuf>>,
    compression: Option<String>,
    compression_level: Option<i32>,
    jobs: Option<usize>,
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
    /// Paths uploaded at once.
    pub jobs: usize,
}

pub const DEFAULT_JOBS: usize = 4;

impl Default for Config {
    fn default() -> Config {
        Config {
            source: None,
            target: None,
            secret_key_files: Vec::new(),
            compression: Compression::Zstd,
            compression_level: Compression::Zstd.default_level(),
            jobs: DEFAULT_JOBS,
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
        let from_env = std::env::var_os(CONFIG_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
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
        let jobs = raw.jobs.unwrap_or(defaults.jobs);
        if jobs == 0 {
            return Err(invalid("jobs", "must be at least 1".to_owned()));
        }
        Ok(Config {
            source: Some(path.to_owned()),
            target,
            secret_key_files: raw.secret_key_files.unwrap_or_default(),
            compression,
            compression_level,
            jobs,
        })
    }
}

/// Checks a compression level against what the method accepts.
pub fn check_level(compression: Compression, level: i32) -> Result<(), String> {
    let range = compression.level_range();
    if range.contains(&level) {
        Ok(())
    } else {
        Err(format!(
            "{level} is outside {}..={} for {compression}",
            range.start(),
            range.end()
        ))
    }
}

/// " (line N)" for an error span, so a person can find the bad key.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/narpush/narpush.toml"))
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.compression, Compression::Zstd);
        assert_eq!(config.compression_level, 3);
        assert_eq!(config.jobs, DEFAULT_JOBS);
        assert_eq!(config.target, None);
    }

    #[test]
    fn all_keys_of_the_cache_writer_are_read() {
        let config = parse(
            r#"
target = "s3://cache?endpoint=http://127.0.0.1:9000&region=auto"
secret_key_files = ["/run/credentials/key"]
compression = "xz"
compression_level = 9
jobs = 8
"#,
        )
        .unwrap();
        assert!(matches!(config.target, Some(TargetUrl::S3(_))));
        assert_eq!(
            config.secret_key_files,
            vec![PathBuf::from("/run/credentials/key")]
        );
        assert_eq!(config.compression, Compression::Xz);
        assert_eq!(config.compression_level, 9);
        assert_eq!(config.jobs, 8);
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key_and_file() {
        let err = parse("jbos = 3\n").unwrap_err().to_string();
        assert!(err.contains("jbos"), "{err}");
        assert!(err.contains("/etc/narpush/narpush.toml"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn out_of_range_level_and_zero_jobs_name_their_keys() {
        let err = parse("compression = \"zstd\"\ncompression_level = 42\n").unwrap_err();
        assert!(err.to_string().contains("compression_level"), "{err}");
        let err = parse("jobs = 0\n").unwrap_err();
        assert!(err.to_string().contains("'jobs'"), "{err}");
    }

    #[test]
    fn bad_target_names_the_key_and_the_reason() {
        let err = parse("target = \"ftp://x\"\n").unwrap_err();
        assert!(err.to_string().contains("'target'"), "{err}");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("ftp"), "{source}");
    }
}
