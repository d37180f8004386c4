//! Realisations: which store path a content-addressed derivation's output turned out to be,
//! in the JSON form Nix stores them in a binary cache and signs them.
//!
//! Grammar (Nix 2.4+, `Realisation::toJSON`; a `.doi` object is this JSON, compact):
//!
//! ```text
//! {"dependentRealisations":{"<id>":"<out basename>",…},"id":"<id>","outPath":"<out basename>","signatures":["<name>:<base64>",…]}
//! <id> = sha256:<base16 hash of the derivation modulo its inputs>!<output name>
//! ```
//!
//! Nix's JSON objects keep their keys sorted by bytes, so the keys appear in exactly that
//! order, and `dependentRealisations` and `signatures` are sorted too (they are a map and a
//! set in Nix). The fingerprint a signature covers is the same JSON without `signatures`.
//!
//! Invariants: ids are validated [`DrvOutputId`]s (a sha256 digest and an output name safe in
//! an object key), paths are validated [`StorePath`]s, and [`Realisation::fingerprint`] and
//! [`Realisation::to_json`] render exactly the bytes Nix renders (tested against a
//! realisation Nix 2.8 signed). Parsing accepts `outPath` as a basename (Nix's form) or an
//! absolute store path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::hash::Sha256;
use super::signing::{SigningKey, VerifyingKey};
use super::store_path::StorePath;

#[derive(Debug, thiserror::Error)]
pub enum RealisationError {
    #[error("realisation is not valid JSON: {reason}")]
    Json { reason: String },
    #[error("realisation has no string field '{field}'")]
    MissingField { field: &'static str },
    #[error("'{id}' is not a derivation output id (sha256:<base16>!<output>): {reason}")]
    BadId { id: String, reason: &'static str },
    #[error("realisation field '{field}' has an invalid store path '{value}'")]
    BadPath { field: &'static str, value: String },
}

/// `sha256:<base16 drv hash modulo>!<output>`: one output of one derivation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DrvOutputId {
    pub drv_hash: Sha256,
    pub output: String,
}

impl fmt::Display for DrvOutputId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}!{}", self.drv_hash.to_base16(), self.output)
    }
}

impl FromStr for DrvOutputId {
    type Err = RealisationError;

    fn from_str(id: &str) -> Result<DrvOutputId, RealisationError> {
        let bad = |reason| RealisationError::BadId {
            id: id.to_owned(),
            reason,
        };
        let (hash, output) = id.split_once('!').ok_or_else(|| bad("no '!'"))?;
        let hex = hash
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64)
            .ok_or_else(|| bad("the hash is not sha256:<64 hex digits>"))?;
        let drv_hash = Sha256::parse(hex).map_err(|_| bad("the hash is not hexadecimal"))?;
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b);
        if output.is_empty() || !output.bytes().all(name_byte) {
            return Err(bad(
                "the output name is empty or has characters Nix does not allow",
            ));
        }
        Ok(DrvOutputId {
            drv_hash,
            output: output.to_owned(),
        })
    }
}

/// Nix orders ids as strings; the hex digest has a fixed length, so this is the same order.
impl Ord for DrvOutputId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.drv_hash.0, &self.output).cmp(&(other.drv_hash.0, &other.output))
    }
}

impl PartialOrd for DrvOutputId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One realisation, with the realisations of the derivation outputs its path refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realisation {
    pub id: DrvOutputId,
    pub out_path: StorePath,
    pub signatures: BTreeSet<String>,
    pub dependent_realisations: BTreeMap<DrvOutputId, StorePath>,
    /// The resolved derivation (no input derivations) this is an output of, when known: the
    /// key of its Nix 2.35 build trace entry ([`super::build_trace`]). Not part of Nix 2.8's
    /// JSON; kept in the queue under [`QUEUE_DRV_FIELD`].
    pub drv: Option<StorePath>,
}

/// The field under which [`Realisation::to_queue_json`] keeps [`Realisation::drv`].
pub const QUEUE_DRV_FIELD: &str = "narpushResolvedDrv";

impl Realisation {
    /// Parses one realisation object (a `.doi` file, or an element of
    /// `nix realisation info --json`).
    pub fn from_json_value(value: &Value) -> Result<Realisation, RealisationError> {
        let field = |field: &'static str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .ok_or(RealisationError::MissingField { field })
        };
        let id = field("id")?.parse()?;
        let out_path = parse_path("outPath", field("outPath")?)?;
        let mut signatures = BTreeSet::new();
        if let Some(list) = value.get("signatures").and_then(Value::as_array) {
            for sig in list {
                let sig = sig.as_str().ok_or(RealisationError::MissingField {
                    field: "signatures",
                })?;
                signatures.insert(sig.to_owned());
            }
        }
        let mut dependent_realisations = BTreeMap::new();
        if let Some(map) = value
            .get("dependentRealisations")
            .and_then(Value::as_object)
        {
            for (dep_id, dep_path) in map {
                let dep_path = dep_path.as_str().ok_or(RealisationError::MissingField {
                    field: "dependentRealisations",
                })?;
                dependent_realisations.insert(
                    dep_id.parse()?,
                    parse_path("dependentRealisations", dep_path)?,
                );
            }
        }
        // narpush's own field (queue records only): a bad value costs the build trace entry,
        // never the realisation.
        let drv = value
            .get(QUEUE_DRV_FIELD)
            .and_then(Value::as_str)
            .and_then(|drv| parse_path(QUEUE_DRV_FIELD, drv).ok());
        Ok(Realisation {
            id,
            out_path,
            signatures,
            dependent_realisations,
            drv,
        })
    }

    /// Parses a `.doi` object's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Realisation, RealisationError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| RealisationError::Json {
            reason: e.to_string(),
        })?;
        Realisation::from_json_value(&value)
    }

    /// Parses the output of `nix realisation info --json` (an array of realisations).
    pub fn list_from_json(text: &str) -> Result<Vec<Realisation>, RealisationError> {
        let value: Value = serde_json::from_str(text).map_err(|e| RealisationError::Json {
            reason: e.to_string(),
        })?;
        let Value::Array(items) = value else {
            return Err(RealisationError::Json {
                reason: "expected an array of realisations".to_owned(),
            });
        };
        items.iter().map(Realisation::from_json_value).collect()
    }

    /// What a signature covers: the JSON without `signatures`.
    pub fn fingerprint(&self) -> String {
        let mut out = String::from("{");
        self.write_common_fields(&mut out);
        out.push('}');
        out
    }

    /// The `.doi` object, byte for byte as Nix writes it.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        self.write_common_fields(&mut out);
        out.push_str(",\"signatures\":[");
        let sigs: Vec<String> = self.signatures.iter().map(|s| json_string(s)).collect();
        out.push_str(&sigs.join(","));
        out.push_str("]}");
        out
    }

    /// What the queue keeps: [`Realisation::to_json`] with [`Realisation::drv`] added (read
    /// back by [`Realisation::from_json`]).
    pub fn to_queue_json(&self) -> String {
        let json = self.to_json();
        match &self.drv {
            Some(drv) => format!(
                "{},{}:{}}}",
                &json[..json.len() - 1],
                json_string(QUEUE_DRV_FIELD),
                json_string(drv.basename())
            ),
            None => json,
        }
    }

    fn write_common_fields(&self, out: &mut String) {
        out.push_str("\"dependentRealisations\":{");
        let deps: Vec<String> = self
            .dependent_realisations
            .iter()
            .map(|(id, path)| {
                format!(
                    "{}:{}",
                    json_string(&id.to_string()),
                    json_string(path.basename())
                )
            })
            .collect();
        out.push_str(&deps.join(","));
        out.push_str("},\"id\":");
        out.push_str(&json_string(&self.id.to_string()));
        out.push_str(",\"outPath\":");
        out.push_str(&json_string(self.out_path.basename()));
    }

    /// Adds `key`'s signature (kept once).
    pub fn sign(&mut self, key: &SigningKey) {
        let signature = key.sign(&self.fingerprint());
        self.signatures.insert(signature);
    }

    /// Whether a signature under `key`'s name is valid.
    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        let fingerprint = self.fingerprint();
        self.signatures
            .iter()
            .any(|sig| key.verify(&fingerprint, sig))
    }
}

fn parse_path(field: &'static str, value: &str) -> Result<StorePath, RealisationError> {
    let parsed = if value.starts_with('/') {
        StorePath::from_absolute_path(value)
    } else {
        StorePath::from_basename(value)
    };
    parsed.map_err(|_| RealisationError::BadPath {
        field,
        value: value.to_owned(),
    })
}

/// A JSON string literal; ids, basenames and signatures need no escaping, but this is exact
/// for any text.
fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
#[path = "realisation/tests.rs"]
mod tests;
