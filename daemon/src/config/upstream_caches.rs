//! `upstream_caches` entries: a URL string, or a table `{ url = "...", keys = ["name:base64"] }`
//! whose keys are the only ones that count for that cache's narinfos.

use crate::format::signing::VerifyingKey;
use crate::upstream::{UpstreamCache, UpstreamUrl};

/// One entry of `upstream_caches`, checked; the reason names the entry's problem.
pub(super) fn upstream_cache(entry: &toml::Value) -> Result<UpstreamCache, String> {
    match entry {
        toml::Value::String(url) => Ok(parse_url(url)?.into()),
        toml::Value::Table(table) => {
            if let Some(unknown) = table.keys().find(|k| !matches!(k.as_str(), "url" | "keys")) {
                return Err(format!(
                    "unknown key '{unknown}' in a cache table (it takes url and keys)"
                ));
            }
            let url = match table.get("url") {
                Some(toml::Value::String(url)) => parse_url(url)?,
                Some(other) => {
                    return Err(format!("'url' must be a string, not {}", other.type_str()))
                }
                None => return Err("a cache table needs 'url'".to_owned()),
            };
            let keys = match table.get("keys") {
                None => None,
                Some(toml::Value::Array(keys)) if keys.is_empty() => {
                    return Err(format!(
                        "{url}: 'keys' is empty, so nothing from this cache would count; \
                         name its keys, or remove 'keys' to use upstream_public_keys"
                    ))
                }
                Some(toml::Value::Array(keys)) => Some(
                    keys.iter()
                        .map(|key| match key {
                            toml::Value::String(text) => VerifyingKey::parse(text)
                                .map_err(|e| format!("{url}: '{text}' is not a public key: {e}")),
                            other => Err(format!(
                                "{url}: keys are strings like \"name:base64\", not {}",
                                other.type_str()
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(other) => {
                    return Err(format!(
                        "{url}: 'keys' must be a list of public keys, not {}",
                        other.type_str()
                    ))
                }
            };
            Ok(UpstreamCache { url, keys })
        }
        other => Err(format!(
            "an entry is a URL or a table {{ url = \"...\", keys = [...] }}, not {}",
            other.type_str()
        )),
    }
}

fn parse_url(text: &str) -> Result<UpstreamUrl, String> {
    UpstreamUrl::parse(text).map_err(|e| e.to_string())
}
