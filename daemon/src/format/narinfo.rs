//! The `.narinfo` text format and the signature fingerprint derived from it.
//!
//! # What Nix writes (2.8 `NarInfo::to_string`), and what [`NarInfo`]'s `Display` writes
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! URL: nar/<nix32 FileHash>.nar.xz
//! Compression: xz
//! FileHash: sha256:<nix32>        (only if known)
//! FileSize: <decimal>             (only if known)
//! NarHash: sha256:<nix32>
//! NarSize: <decimal>
//! References: <basename> <basename> ...   (sorted bytewise, deduplicated; "References: " when none)
//! Deriver: <hash>-<name>.drv      (optional)
//! System: <system>                (optional)
//! Sig: <keyname>:<base64>         (zero or more, sorted, deduplicated)
//! CA: <content address>           (optional)
//! ```
//!
//! Every line is `Key: value\n` with exactly one space, and the last line ends in `\n` too.
//! Each of these details is a rejection in Nix 2.8 if wrong (`References:` without the space
//! makes it read the next line as references). `Display` writes this order unconditionally;
//! [`NarInfo::validate`] checks the free-text fields hold no line break and the required ones
//! are non-empty, which `Display` cannot report.
//!
//! # What [`NarInfo::parse`] accepts (lenient like Nix, strict where Nix would misread)
//!
//! - Field order is free; unknown keys are ignored; hashes may use any encoding
//!   [`Sha256::parse`] accepts; `Deriver: unknown-deriver` means no deriver; a missing or
//!   empty `Compression` means `bzip2`, as in Nix.
//! - Rejected: no trailing newline, a line without `:`, a known key without the space after
//!   `:` (Nix would read a shifted value), missing `StorePath`/`URL`/`NarHash`/`NarSize`,
//!   an empty `URL`, `NarSize: 0`, a repeated single-valued field (Nix silently keeps the
//!   last one for most; two `References` or `CA` lines it calls corrupt), and references or
//!   a deriver that are not store-path basenames.
//!
//! # Fingerprint (2.8 `ValidPathInfo::fingerprint`)
//!
//! `1;<store path>;sha256:<nix32 NarHash>;<NarSize>;<full reference paths, sorted, comma-joined>`,
//! no trailing newline. Nix refuses to compute it when NarSize is 0, and so does
//! [`NarInfo::fingerprint`].

use std::fmt;
use std::num::ParseIntError;

use thiserror::Error;

use super::hash::{HashError, Sha256};
use super::signing::{SigningKey, VerifyingKey};
use super::store_path::{StorePath, StorePathError};

/// The metadata of one store path in a binary cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Location of the (compressed) NAR, relative to the cache root.
    pub url: String,
    pub compression: String,
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    /// Basename of the deriver, e.g. `<hash>-foo.drv`.
    pub deriver: Option<String>,
    pub system: Option<String>,
    /// `keyname:base64` signatures.
    pub signatures: Vec<String>,
    pub ca: Option<String>,
}

/// Why a narinfo could not be parsed, validated or fingerprinted.
#[derive(Debug, Error)]
pub enum NarInfoError {
    #[error("narinfo does not end with a newline")]
    MissingTrailingNewline,
    #[error("narinfo line {line_number} has no ':': '{line}'")]
    MalformedLine { line_number: usize, line: String },
    #[error("narinfo line {line_number} lacks the space after '{field}:': '{line}'")]
    MissingSpace {
        field: &'static str,
        line_number: usize,
        line: String,
    },
    #[error("narinfo has no {field} field")]
    MissingField { field: &'static str },
    #[error("narinfo field {field} is empty")]
    EmptyField { field: &'static str },
    #[error("narinfo has more than one {field} field")]
    DuplicateField { field: &'static str },
    #[error("narinfo field {field} contains a line break: {value:?}")]
    LineBreak { field: &'static str, value: String },
    #[error("narinfo field {field} holds an invalid store path '{value}'")]
    InvalidStorePath {
        field: &'static str,
        value: String,
        #[source]
        source: StorePathError,
    },
    #[error("narinfo field {field} holds an invalid hash '{value}'")]
    InvalidHash {
        field: &'static str,
        value: String,
        #[source]
        source: HashError,
    },
    #[error("narinfo field {field} holds an invalid number '{value}'")]
    InvalidNumber {
        field: &'static str,
        value: String,
        #[source]
        source: ParseIntError,
    },
    #[error("NarSize of {store_path} is 0, so it has no valid fingerprint")]
    ZeroNarSize { store_path: String },
}

/// The keys this module interprets; any other key is ignored.
const KNOWN_FIELDS: [&str; 12] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
];

/// Raw values per known key, before conversion; `set` rejects repeats.
#[derive(Default)]
struct RawFields<'a> {
    single: Vec<(&'static str, &'a str)>,
    sigs: Vec<&'a str>,
}

impl<'a> RawFields<'a> {
    fn set(&mut self, field: &'static str, value: &'a str) -> Result<(), NarInfoError> {
        if field == "Sig" {
            self.sigs.push(value);
        } else if self.get(field).is_some() {
            return Err(NarInfoError::DuplicateField { field });
        } else {
            self.single.push((field, value));
        }
        Ok(())
    }

    fn get(&self, field: &str) -> Option<&'a str> {
        self.single
            .iter()
            .find(|(f, _)| *f == field)
            .map(|&(_, value)| value)
    }

    fn require(&self, field: &'static str) -> Result<&'a str, NarInfoError> {
        self.get(field).ok_or(NarInfoError::MissingField { field })
    }
}

impl NarInfo {
    /// Parses narinfo text; see the module documentation for what is accepted.
    pub fn parse(s: &str) -> Result<NarInfo, NarInfoError> {
        let body = s
            .strip_suffix('\n')
            .ok_or(NarInfoError::MissingTrailingNewline)?;
        let mut raw = RawFields::default();
        for (index, line) in body.split('\n').enumerate() {
            let malformed = || NarInfoError::MalformedLine {
                line_number: index + 1,
                line: line.to_owned(),
            };
            let (key, rest) = line.split_once(':').ok_or_else(malformed)?;
            let Some(&field) = KNOWN_FIELDS.iter().find(|&&f| f == key) else {
                continue;
            };
            let value = rest.strip_prefix(' ').ok_or(NarInfoError::MissingSpace {
                field,
                line_number: index + 1,
                line: line.to_owned(),
            })?;
            raw.set(field, value)?;
        }
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &RawFields<'_>) -> Result<NarInfo, NarInfoError> {
        let store_path = parse_store_path("StorePath", raw.require("StorePath")?, true)?;
        let url = raw.require("URL")?;
        if url.is_empty() {
            return Err(NarInfoError::EmptyField { field: "URL" });
        }
        let nar_size = parse_number("NarSize", raw.require("NarSize")?)?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize {
                store_path: store_path.to_string(),
            });
        }
        let references = raw
            .get("References")
            .unwrap_or("")
            .split(' ')
            .filter(|r| !r.is_empty())
            .map(|r| parse_store_path("References", r, false))
            .collect::<Result<Vec<_>, _>>()?;
        let deriver = match raw.get("Deriver") {
            None | Some("unknown-deriver") => None,
            Some(d) => Some(parse_store_path("Deriver", d, false)?.basename().to_owned()),
        };
        Ok(NarInfo {
            store_path,
            url: url.to_owned(),
            compression: match raw.get("Compression") {
                None | Some("") => "bzip2".to_owned(),
                Some(c) => c.to_owned(),
            },
            file_hash: raw
                .get("FileHash")
                .map(|h| parse_hash("FileHash", h))
                .transpose()?,
            file_size: raw
                .get("FileSize")
                .map(|n| parse_number("FileSize", n))
                .transpose()?,
            nar_hash: parse_hash("NarHash", raw.require("NarHash")?)?,
            nar_size,
            references,
            deriver,
            system: raw.get("System").map(str::to_owned),
            signatures: raw.sigs.iter().map(|&s| s.to_owned()).collect(),
            ca: raw.get("CA").filter(|ca| !ca.is_empty()).map(str::to_owned),
        })
    }

    /// References sorted bytewise and deduplicated, as Nix's `std::set` yields them.
    pub fn sorted_references(&self) -> Vec<&StorePath> {
        let mut refs: Vec<&StorePath> = self.references.iter().collect();
        refs.sort();
        refs.dedup();
        refs
    }

    /// The string a `Sig` signs.
    pub fn fingerprint(&self) -> Result<String, NarInfoError> {
        if self.nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize {
                store_path: self.store_path.to_string(),
            });
        }
        Ok(fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        ))
    }

    /// Signs the fingerprint with `key` and adds the `Sig` (once: signing is deterministic).
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), NarInfoError> {
        let sig = key.sign(&self.fingerprint()?);
        if !self.signatures.contains(&sig) {
            self.signatures.push(sig);
        }
        Ok(())
    }

    /// Whether any `Sig` under `key`'s name is a valid signature of the fingerprint.
    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        let Ok(fingerprint) = self.fingerprint() else {
            return false;
        };
        self.signatures
            .iter()
            .any(|sig| key.verify(&fingerprint, sig))
    }

    /// Checks what `Display` cannot report: required text is non-empty, no field would
    /// break a line, NarSize is known. When this passes, `parse(&self.to_string())`
    /// yields `self` up to the order of references and signatures.
    pub fn validate(&self) -> Result<(), NarInfoError> {
        if self.url.is_empty() {
            return Err(NarInfoError::EmptyField { field: "URL" });
        }
        if self.nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize {
                store_path: self.store_path.to_string(),
            });
        }
        let texts = [
            ("URL", Some(&self.url)),
            ("Compression", Some(&self.compression)),
            ("Deriver", self.deriver.as_ref()),
            ("System", self.system.as_ref()),
            ("CA", self.ca.as_ref()),
        ];
        let sigs = self.signatures.iter().map(|s| ("Sig", Some(s)));
        for (field, value) in texts.into_iter().chain(sigs) {
            if let Some(value) = value.filter(|v| v.contains(['\n', '\r'])) {
                return Err(NarInfoError::LineBreak {
                    field,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Exactly Nix's layout; see the module documentation.
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(hash) = &self.file_hash {
            writeln!(f, "FileHash: {hash}")?;
        }
        if let Some(size) = self.file_size {
            writeln!(f, "FileSize: {size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        f.write_str("References: ")?;
        for (i, reference) in self.sorted_references().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(reference.basename())?;
        }
        f.write_str("\n")?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {deriver}")?;
        }
        if let Some(system) = &self.system {
            writeln!(f, "System: {system}")?;
        }
        let mut sigs: Vec<&String> = self.signatures.iter().collect();
        sigs.sort();
        sigs.dedup();
        for sig in sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

fn parse_store_path(
    field: &'static str,
    value: &str,
    absolute: bool,
) -> Result<StorePath, NarInfoError> {
    let parsed = if absolute {
        StorePath::from_absolute_path(value)
    } else {
        StorePath::from_basename(value)
    };
    parsed.map_err(|source| NarInfoError::InvalidStorePath {
        field,
        value: value.to_owned(),
        source,
    })
}

fn parse_hash(field: &'static str, value: &str) -> Result<Sha256, NarInfoError> {
    Sha256::parse(value).map_err(|source| NarInfoError::InvalidHash {
        field,
        value: value.to_owned(),
        source,
    })
}

fn parse_number(field: &'static str, value: &str) -> Result<u64, NarInfoError> {
    value.parse().map_err(|source| NarInfoError::InvalidNumber {
        field,
        value: value.to_owned(),
        source,
    })
}

/// The string a `Sig` signs: `1;<path>;<NarHash>;<NarSize>;<references>`, the references as
/// absolute paths, sorted and deduplicated as Nix's `std::set` yields them.
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &Sha256,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<&StorePath> = references.iter().collect();
    refs.sort();
    refs.dedup();
    let refs: Vec<String> = refs.into_iter().map(StorePath::to_absolute).collect();
    format!("1;{path};{nar_hash};{nar_size};{}", refs.join(","))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
