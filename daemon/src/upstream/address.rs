//! Where an upstream cache is and which keys count for it: `upstream_caches` entries, as plain
//! URLs (any of `upstream_public_keys` counts) or as `{ url = "...", keys = [...] }` (only these
//! keys count, and only for this cache's narinfos).

use std::path::PathBuf;

use crate::format::signing::VerifyingKey;

/// An upstream cache's address, checked: `https://`, `http://` or `file://`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamUrl {
    /// The base URL, ending in `/`.
    Http(url::Url),
    File(PathBuf),
    /// The simulation's upstream, a bucket in memory.
    #[cfg(feature = "sim")]
    Memory(super::simulated::SimulatedCache),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("'{url}' is not a URL: {reason}")]
    Syntax {
        url: String,
        reason: url::ParseError,
    },
    #[error("'{url}': upstream caches are https://, http:// or file:// URLs, not {scheme}://")]
    Scheme { url: String, scheme: String },
    #[error("'{url}': a file:// URL needs an absolute directory")]
    FilePath { url: String },
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<UpstreamUrl, UpstreamUrlError> {
        let mut url = url::Url::parse(text).map_err(|reason| UpstreamUrlError::Syntax {
            url: crate::redact::url(text),
            reason,
        })?;
        match url.scheme() {
            "http" | "https" => {
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                Ok(UpstreamUrl::Http(url))
            }
            "file" => {
                url.to_file_path()
                    .map(UpstreamUrl::File)
                    .map_err(|()| UpstreamUrlError::FilePath {
                        url: crate::redact::url(text),
                    })
            }
            scheme => Err(UpstreamUrlError::Scheme {
                url: crate::redact::url(text),
                scheme: scheme.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    /// The URL with its credentials masked (`https://user:***@host/`): it is logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamUrl::Http(url) => write!(f, "{}", crate::redact::url(url.as_str())),
            UpstreamUrl::File(dir) => write!(f, "file://{}", dir.display()),
            #[cfg(feature = "sim")]
            UpstreamUrl::Memory(_) => write!(f, "memory://upstream"),
        }
    }
}

/// One configured upstream cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamCache {
    pub url: UpstreamUrl,
    /// The keys whose signatures count on this cache's narinfos; `None`: any upstream key
    /// (`upstream_public_keys`, `--upstream-key`).
    pub keys: Option<Vec<VerifyingKey>>,
}

impl From<UpstreamUrl> for UpstreamCache {
    fn from(url: UpstreamUrl) -> UpstreamCache {
        UpstreamCache { url, keys: None }
    }
}

/// The path of a NAR, as a narinfo's `URL` names it, relative to its cache's root; `None` for
/// anything that could lead outside the cache (an absolute URL, `..`, a query).
pub(super) fn nar_location(url: &str) -> Option<&str> {
    let inside = !url.is_empty()
        && !url.contains([':', '?', '#', '\\'])
        && url
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."));
    inside.then_some(url)
}
