//! Build trace entries (Nix 2.35's realisations): which store path one output of a resolved
//! derivation turned out to be, keyed by that derivation's store path, in the JSON Nix 2.35
//! stores in a binary cache and signs.
//!
//! Grammar (Nix 2.35 `realisation.{hh,cc}`, `binary-cache-store.cc`, schema
//! `build-trace-entry-v3`):
//!
//! ```text
//! object key  = build-trace-v2/<drv basename>/<output name>.doi
//! object body = {"outPath":"<out basename>","signatures":[<signature>,…]}      (compact)
//! entry       = {"key":{"drvPath":"<drv basename>","outputName":"<output>"},"value":<object body>}
//! signature   = {"keyName":"<name>","sig":"<base64 of 64 bytes>"}   (read also: "<name>:<base64>")
//! fingerprint = the entry without "signatures", compact
//! ```
//!
//! Nix's JSON objects keep their keys sorted by bytes and its signatures form a set ordered by
//! key name, then raw signature bytes: [`BuildTraceEntry`] keeps [`Signature`]s in a
//! `BTreeSet` with that order and renders exactly the bytes Nix renders (tested against Nix's
//! own vectors in `build_trace/nix-vectors/`). The derivation of a key is a *resolved* one:
//! it has no input derivations (see docs/protocol.md, "Build trace entries").
//!
//! Invariants: keys are validated [`BuildTraceKey`]s (a `.drv` store path and an output name
//! safe in an object key), paths are validated [`StorePath`]s (basenames, as Nix writes them),
//! and a [`Signature`] always holds 64 bytes.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;

use super::realisation::Realisation;
use super::signing::{SigningKey, VerifyingKey};
use super::store_path::StorePath;

/// Where build trace entries live in a binary cache (Nix's `realisationsPrefix`).
pub const PREFIX: &str = "build-trace-v2/";

#[derive(Debug, thiserror::Error)]
pub enum BuildTraceError {
    #[error("build trace entry is not valid JSON: {reason}")]
    Json { reason: String },
    #[error("build trace entry has no {kind} field '{field}'")]
    MissingField {
        field: &'static str,
        kind: &'static str,
    },
    #[error("build trace field '{field}' has an invalid store path '{value}'")]
    BadPath { field: &'static str, value: String },
    #[error("'{name}' is not an output name Nix allows")]
    BadOutputName { name: String },
    #[error("'{value}' is not a signature ({{keyName, sig}} or name:base64 of 64 bytes)")]
    BadSignature { value: String },
    #[error("'{key}' is not a build trace object key (build-trace-v2/<drv>/<output>.doi)")]
    BadObjectKey { key: String },
}

/// One output of one derivation: what a build trace entry is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildTraceKey {
    pub drv: StorePath,
    pub output: String,
}

impl BuildTraceKey {
    pub fn new(drv: StorePath, output: &str) -> Result<BuildTraceKey, BuildTraceError> {
        if !drv.name().ends_with(".drv") {
            return Err(BuildTraceError::BadPath {
                field: "drvPath",
                value: drv.basename().to_owned(),
            });
        }
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b);
        if output.is_empty() || !output.bytes().all(name_byte) {
            return Err(BuildTraceError::BadOutputName {
                name: output.to_owned(),
            });
        }
        Ok(BuildTraceKey {
            drv,
            output: output.to_owned(),
        })
    }

    /// The cache key of its entry: `build-trace-v2/<drv basename>/<output>.doi`.
    pub fn object_key(&self) -> String {
        format!("{PREFIX}{}/{}.doi", self.drv.basename(), self.output)
    }

    /// The inverse of [`BuildTraceKey::object_key`].
    pub fn from_object_key(key: &str) -> Result<BuildTraceKey, BuildTraceError> {
        let bad = || BuildTraceError::BadObjectKey {
            key: key.to_owned(),
        };
        let rest = key.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (drv, output) = rest
            .strip_suffix(".doi")
            .and_then(|r| r.split_once('/'))
            .ok_or_else(bad)?;
        let drv = StorePath::from_basename(drv).map_err(|_| bad())?;
        BuildTraceKey::new(drv, output).map_err(|_| bad())
    }

    fn to_json(&self) -> String {
        format!(
            "{{\"drvPath\":{},\"outputName\":{}}}",
            json_string(self.drv.basename()),
            json_string(&self.output)
        )
    }
}

/// A detached Ed25519 signature by a named key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    pub key_name: String,
    pub sig: [u8; 64],
}

impl Signature {
    /// Parses the text form `name:base64` (a narinfo's `Sig`, Nix 2.8's realisations).
    pub fn parse_text(text: &str) -> Result<Signature, BuildTraceError> {
        let bad = || BuildTraceError::BadSignature {
            value: text.to_owned(),
        };
        let (name, data) = text.split_once(':').ok_or_else(bad)?;
        Signature::from_parts(name, data).ok_or_else(bad)
    }

    fn from_parts(name: &str, base64: &str) -> Option<Signature> {
        let bytes = BASE64.decode(base64).ok()?;
        (!name.is_empty()).then_some(())?;
        Some(Signature {
            key_name: name.to_owned(),
            sig: bytes.try_into().ok()?,
        })
    }

    fn from_json(value: &Value) -> Result<Signature, BuildTraceError> {
        if let Some(text) = value.as_str() {
            return Signature::parse_text(text);
        }
        let field = |f: &str| value.get(f).and_then(Value::as_str);
        field("keyName")
            .zip(field("sig"))
            .and_then(|(name, sig)| Signature::from_parts(name, sig))
            .ok_or_else(|| BuildTraceError::BadSignature {
                value: value.to_string(),
            })
    }

    /// The text form `name:base64`.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.key_name, BASE64.encode(self.sig))
    }

    fn to_json(&self) -> String {
        format!(
            "{{\"keyName\":{},\"sig\":{}}}",
            json_string(&self.key_name),
            json_string(&BASE64.encode(self.sig))
        )
    }
}

/// One build trace entry: a key, the output path it was built to, and signatures of both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildTraceEntry {
    pub key: BuildTraceKey,
    pub out_path: StorePath,
    pub signatures: BTreeSet<Signature>,
}

impl BuildTraceEntry {
    /// The entry for a Nix 2.8 realisation whose resolved derivation is known, unsigned (its
    /// 2.8 signatures cover other bytes). `None` when the derivation is not known.
    pub fn of_realisation(realisation: &Realisation) -> Option<BuildTraceEntry> {
        let drv = realisation.drv.clone()?;
        let key = BuildTraceKey::new(drv, &realisation.id.output).ok()?;
        Some(BuildTraceEntry {
            key,
            out_path: realisation.out_path.clone(),
            signatures: BTreeSet::new(),
        })
    }

    /// Parses a keyed entry (`{"key":…,"value":…}`).
    pub fn from_json(bytes: &[u8]) -> Result<BuildTraceEntry, BuildTraceError> {
        let value = parse_json(bytes)?;
        let key = value.get("key").ok_or(BuildTraceError::MissingField {
            field: "key",
            kind: "object",
        })?;
        let drv = path_field(key, "drvPath")?;
        let output = string_field(key, "outputName")?;
        let key = BuildTraceKey::new(drv, output)?;
        let body = value.get("value").ok_or(BuildTraceError::MissingField {
            field: "value",
            kind: "object",
        })?;
        BuildTraceEntry::from_value(key, body)
    }

    /// Parses a cache object: its key says which derivation output it is about, its body
    /// (`{"outPath":…,"signatures":[…]}`) the rest.
    pub fn from_object(key: &str, body: &[u8]) -> Result<BuildTraceEntry, BuildTraceError> {
        let key = BuildTraceKey::from_object_key(key)?;
        BuildTraceEntry::from_value(key, &parse_json(body)?)
    }

    fn from_value(key: BuildTraceKey, body: &Value) -> Result<BuildTraceEntry, BuildTraceError> {
        let out_path = path_field(body, "outPath")?;
        let mut signatures = BTreeSet::new();
        // Nix reads an entry without signatures as unsigned.
        if let Some(list) = body.get("signatures") {
            let list = list.as_array().ok_or(BuildTraceError::MissingField {
                field: "signatures",
                kind: "array",
            })?;
            for sig in list {
                signatures.insert(Signature::from_json(sig)?);
            }
        }
        Ok(BuildTraceEntry {
            key,
            out_path,
            signatures,
        })
    }

    /// The cache object's body, byte for byte as Nix 2.35 writes it.
    pub fn object_body(&self) -> String {
        let sigs: Vec<String> = self.signatures.iter().map(Signature::to_json).collect();
        format!(
            "{{\"outPath\":{},\"signatures\":[{}]}}",
            json_string(self.out_path.basename()),
            sigs.join(",")
        )
    }

    /// The keyed entry, compact.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"key\":{},\"value\":{}}}",
            self.key.to_json(),
            self.object_body()
        )
    }

    /// What a signature covers: the keyed entry without `signatures`.
    pub fn fingerprint(&self) -> String {
        format!(
            "{{\"key\":{},\"value\":{{\"outPath\":{}}}}}",
            self.key.to_json(),
            json_string(self.out_path.basename())
        )
    }

    /// Adds `key`'s signature (a set: kept once).
    pub fn sign(&mut self, key: &SigningKey) {
        let text = key.sign(&self.fingerprint());
        let signature = Signature::parse_text(&text).expect("a signing key makes valid signatures");
        self.signatures.insert(signature);
    }

    /// Whether a signature under `key`'s name is valid.
    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        let fingerprint = self.fingerprint();
        self.signatures
            .iter()
            .any(|sig| key.verify(&fingerprint, &sig.to_text()))
    }
}

/// The output path a cache object under [`PREFIX`] names, for `gc`, `verify` and `du`;
/// `None` when the key or the body is not a build trace entry.
pub fn output_of_object(key: &str, body: &[u8]) -> Option<StorePath> {
    BuildTraceEntry::from_object(key, body)
        .ok()
        .map(|e| e.out_path)
}

/// The output path of any realisation object of a cache (what `layout` classifies as a
/// realisation): a build trace entry under [`PREFIX`], a Nix 2.8 `realisations/` object
/// otherwise. `None` when it cannot be read.
pub fn output_of_realisation_object(key: &str, body: &[u8]) -> Option<StorePath> {
    if key.starts_with(PREFIX) {
        output_of_object(key, body)
    } else {
        Realisation::from_json(body).ok().map(|r| r.out_path)
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, BuildTraceError> {
    serde_json::from_slice(bytes).map_err(|e| BuildTraceError::Json {
        reason: e.to_string(),
    })
}

fn string_field<'a>(value: &'a Value, field: &'static str) -> Result<&'a str, BuildTraceError> {
    value
        .get(field)
        .and_then(Value::as_str)
        .ok_or(BuildTraceError::MissingField {
            field,
            kind: "string",
        })
}

/// A store path field: a basename, as Nix's `store-path-v1` JSON writes it.
fn path_field(value: &Value, field: &'static str) -> Result<StorePath, BuildTraceError> {
    let text = string_field(value, field)?;
    StorePath::from_basename(text).map_err(|_| BuildTraceError::BadPath {
        field,
        value: text.to_owned(),
    })
}

/// A JSON string literal, escaped as serde_json (and Nix, for the text that can occur here)
/// escapes it.
fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
#[path = "build_trace/tests.rs"]
mod tests;
