//! Sink URLs, in the syntax `nix copy --to` uses, so users paste what they already know:
//!
//! - `s3://BUCKET?endpoint=…&region=…&profile=…&scheme=…` (an S3-compatible bucket; the whole
//!   bucket is the cache root, as in Nix, where `s3://bucket/prefix` is not supported either);
//! - `file:///DIR` (a plain directory cache).
//!
//! Invariant: a [`TargetUrl`] names a bucket or an absolute directory, and every query
//! parameter it was given was understood; an unknown parameter is an error naming it rather
//! than a setting silently ignored. It holds no credentials: userinfo in an `s3://` URL or in
//! its `endpoint` is refused (S3 credentials come from the AWS chain), and every error and
//! [`Display`](fmt::Display) shows the URL through [`redact::url`].

use std::fmt;
use std::path::PathBuf;

use super::params::CacheParams;
use crate::redact;

/// Where the cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetUrl {
    File {
        dir: PathBuf,
        /// Settings given in the URL (`?compression=…`).
        params: CacheParams,
    },
    S3(S3Location),
}

/// An S3 bucket and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Full endpoint URL (`https://ACCOUNT.r2.cloudflarestorage.com`); `None` means AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub profile: Option<String>,
    /// Send unsigned requests (`anonymous=true`): for servers that accept anonymous writes,
    /// such as a local test server. Never needed for R2 or AWS.
    pub anonymous: bool,
    /// Settings given in the URL (`&compression=…`).
    pub params: CacheParams,
}

/// Nix's default when no `region` is given.
const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetUrlError {
    #[error("target '{url}' is not a URL: {reason}")]
    Syntax { url: String, reason: String },
    #[error(
        "target '{url}' has scheme '{scheme}'; narpush writes to s3://BUCKET?… or file:///DIR"
    )]
    UnsupportedScheme { url: String, scheme: String },
    #[error("target '{url}' names no bucket (expected s3://BUCKET?endpoint=…)")]
    NoBucket { url: String },
    #[error("target '{url}': a key prefix after the bucket is not supported (Nix cannot read it either); use s3://BUCKET")]
    BucketPrefix { url: String },
    #[error(
        "target '{url}': unknown parameter '{name}' (see docs/configuration.md for those narpush and Nix take)"
    )]
    UnknownParameter { url: String, name: String },
    #[error("target '{url}': parameter '{name}': {reason}")]
    BadParameter {
        url: String,
        name: String,
        reason: String,
    },
    #[error("target '{url}': parameter '{name}' must be true or false, not '{value}'")]
    NotABoolean {
        url: String,
        name: String,
        value: String,
    },
    #[error("target '{url}': the directory must be an absolute path (file:///DIR)")]
    RelativeDirectory { url: String },
    #[error(
        "target '{url}': credentials do not belong in the URL (it is shown in logs and status); \
         give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or in the shared credentials \
         file (~/.aws/credentials, AWS_SHARED_CREDENTIALS_FILE; `profile=` picks a section)"
    )]
    Credentials { url: String },
}

impl TargetUrl {
    pub fn parse(input: &str) -> Result<TargetUrl, TargetUrlError> {
        let syntax = |reason: String| TargetUrlError::Syntax {
            url: redact::url(input),
            reason,
        };
        let url = url::Url::parse(input).map_err(|e| syntax(e.to_string()))?;
        match url.scheme() {
            "file" => {
                let mut params = CacheParams::default();
                for (name, value) in url.query_pairs() {
                    if !take_param(&mut params, input, &name, &value, false)? {
                        return Err(TargetUrlError::UnknownParameter {
                            url: redact::url(input),
                            name: name.into_owned(),
                        });
                    }
                }
                let mut path = url.clone();
                path.set_query(None);
                let dir = path
                    .to_file_path()
                    .map_err(|()| TargetUrlError::RelativeDirectory {
                        url: redact::url(input),
                    })?;
                Ok(TargetUrl::File { dir, params })
            }
            "s3" => parse_s3(input, &url).map(TargetUrl::S3),
            other => Err(TargetUrlError::UnsupportedScheme {
                url: redact::url(input),
                scheme: other.to_owned(),
            }),
        }
    }
}

fn parse_s3(input: &str, url: &url::Url) -> Result<S3Location, TargetUrlError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetUrlError::Credentials {
            url: redact::url(input),
        });
    }
    let bucket = url.host_str().unwrap_or_default().to_owned();
    if bucket.is_empty() {
        return Err(TargetUrlError::NoBucket {
            url: redact::url(input),
        });
    }
    if !matches!(url.path(), "" | "/") {
        return Err(TargetUrlError::BucketPrefix {
            url: redact::url(input),
        });
    }
    let mut endpoint = None;
    let mut region = None;
    let mut profile = None;
    let mut scheme = None;
    let mut anonymous = false;
    let mut params = CacheParams::default();
    for (name, value) in url.query_pairs() {
        if take_param(&mut params, input, &name, &value, true)? {
            continue;
        }
        let value = value.into_owned();
        match name.as_ref() {
            "endpoint" => endpoint = Some(value),
            "region" => region = Some(value),
            "profile" => profile = Some(value).filter(|p| !p.is_empty()),
            "scheme" => scheme = Some(value),
            "anonymous" => {
                anonymous = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(TargetUrlError::NotABoolean {
                            url: redact::url(input),
                            name: name.into_owned(),
                            value,
                        })
                    }
                }
            }
            _ => {
                return Err(TargetUrlError::UnknownParameter {
                    url: redact::url(input),
                    name: name.into_owned(),
                })
            }
        }
    }
    // Nix 2.8 takes `endpoint=host:port` plus `scheme=http`; later versions a full URL.
    if endpoint.as_deref().is_some_and(redact::has_userinfo) {
        return Err(TargetUrlError::Credentials {
            url: redact::url(input),
        });
    }
    let endpoint = endpoint.filter(|e| !e.is_empty()).map(|e| {
        if e.contains("://") {
            e
        } else {
            format!("{}://{e}", scheme.as_deref().unwrap_or("https"))
        }
    });
    Ok(S3Location {
        bucket,
        endpoint,
        region: region
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
        profile,
        anonymous,
        params,
    })
}

fn take_param(
    params: &mut CacheParams,
    input: &str,
    name: &str,
    value: &str,
    s3: bool,
) -> Result<bool, TargetUrlError> {
    params
        .take(name, value, s3)
        .map_err(|reason| TargetUrlError::BadParameter {
            url: redact::url(input),
            name: name.to_owned(),
            reason,
        })
}

impl TargetUrl {
    /// The cache settings the URL gives.
    pub fn params(&self) -> &CacheParams {
        match self {
            TargetUrl::File { params, .. } => params,
            TargetUrl::S3(s3) => &s3.params,
        }
    }
}

impl fmt::Display for TargetUrl {
    /// A description safe to log: a target URL holds no credentials, and the endpoint is
    /// shown through [`redact::url`] all the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUrl::File { dir, .. } => write!(f, "file://{}", dir.display()),
            TargetUrl::S3(s3) => {
                write!(f, "s3://{}", s3.bucket)?;
                if let Some(endpoint) = &s3.endpoint {
                    write!(f, " at {}", redact::url(endpoint))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r2_url_with_all_parameters_parses() {
        let url = TargetUrl::parse(
            "s3://nix-cache?endpoint=https://acct.r2.cloudflarestorage.com&region=auto&profile=r2",
        )
        .unwrap();
        assert_eq!(
            url,
            TargetUrl::S3(S3Location {
                bucket: "nix-cache".into(),
                endpoint: Some("https://acct.r2.cloudflarestorage.com".into()),
                region: "auto".into(),
                profile: Some("r2".into()),
                anonymous: false,
                params: CacheParams::default(),
            })
        );
    }

    #[test]
    fn nix_2_8_style_endpoint_with_scheme_parameter_becomes_a_full_url() {
        let TargetUrl::S3(s3) =
            TargetUrl::parse("s3://b?endpoint=127.0.0.1:9000&scheme=http").unwrap()
        else {
            panic!("expected s3")
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region, "us-east-1");
    }

    #[test]
    fn file_url_gives_an_absolute_directory() {
        assert_eq!(
            TargetUrl::parse("file:///var/cache/nix").unwrap(),
            TargetUrl::File {
                dir: PathBuf::from("/var/cache/nix"),
                params: CacheParams::default(),
            }
        );
    }

    #[test]
    fn cache_settings_in_the_url_are_kept_and_bad_ones_named() {
        let url = TargetUrl::parse("file:///srv/cache?compression=xz&priority=30").unwrap();
        assert_eq!(url.params().priority, Some(30));
        assert!(
            matches!(url, TargetUrl::File { ref dir, .. } if dir == &PathBuf::from("/srv/cache"))
        );
        let url = TargetUrl::parse("s3://b?endpoint=http://h:1&want-mass-query=false").unwrap();
        assert_eq!(url.params().want_mass_query, Some(false));
        let err = TargetUrl::parse("s3://b?narinfo-compression=xz").unwrap_err();
        assert!(err.to_string().contains("'narinfo-compression'"), "{err}");
    }

    #[test]
    fn credentials_in_an_s3_url_are_refused_without_echoing_the_secret() {
        for input in [
            "s3://AKIAKEY:SECRETvalue@bucket?region=auto",
            "s3://SECRETvalue@bucket",
            "s3://bucket?endpoint=https://user:SECRETvalue@h.example&region=auto",
            "s3://bucket?endpoint=http://SECRETvalue@127.0.0.1:9000",
        ] {
            let error = TargetUrl::parse(input).unwrap_err();
            assert!(
                matches!(error, TargetUrlError::Credentials { .. }),
                "{input}: {error}"
            );
            let message = error.to_string();
            assert!(!message.contains("SECRETvalue"), "{message}");
            assert!(message.contains("AWS_SECRET_ACCESS_KEY"), "{message}");
        }
    }

    #[test]
    fn no_error_about_a_url_echoes_its_password() {
        for input in [
            "s3://u:SECRETvalue@bucket?compresion=zstd",
            "ftp://u:SECRETvalue@host/",
            "s3://u:SECRETvalue@bucket/prefix",
            "s3://bucket?endpoint=https://u:SECRETvalue@h&anonymous=maybe",
            "file://u:SECRETvalue@host/dir",
        ] {
            let message = TargetUrl::parse(input).unwrap_err().to_string();
            assert!(!message.contains("SECRETvalue"), "{message}");
        }
    }

    #[test]
    fn unknown_parameter_is_named() {
        let err = TargetUrl::parse("s3://b?compresion=zstd").unwrap_err();
        assert!(err.to_string().contains("'compresion'"), "{err}");
    }

    #[test]
    fn bucket_prefix_and_foreign_schemes_are_rejected() {
        assert!(matches!(
            TargetUrl::parse("s3://b/prefix").unwrap_err(),
            TargetUrlError::BucketPrefix { .. }
        ));
        assert!(matches!(
            TargetUrl::parse("https://cache.example").unwrap_err(),
            TargetUrlError::UnsupportedScheme { .. }
        ));
        assert!(matches!(
            TargetUrl::parse("not a url").unwrap_err(),
            TargetUrlError::Syntax { .. }
        ));
    }
}

#[cfg(test)]
mod proptests;
