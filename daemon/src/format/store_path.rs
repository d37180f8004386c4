//! Store paths: `/nix/store/<hash part>-<name>`, validated once at the edge.
//!
//! A [`StorePath`] can only be built by [`StorePath::from_absolute_path`] or
//! [`StorePath::from_basename`], which enforce Nix's rules (2.8 `path.cc`), so every other
//! module may rely on them:
//!
//! | rule | enforced by |
//! |---|---|
//! | absolute form is exactly `/nix/store/<basename>`: no subpath, no trailing slash, no `.`/`..`/empty component | `split_store_dir` |
//! | hash part is 32 nix32 characters, i.e. 20 bytes | `parse_basename` (decoded into `digest`) |
//! | a `-` follows the hash part | `parse_basename` |
//! | name is 1–211 characters from `[A-Za-z0-9+-._?=]` and does not start with `.` | `check_name` |
//!
//! A cache writer never *computes* store paths (they come from the Nix database or daemon);
//! it only validates and prints them, so there is no `makeStorePath` here.
//!
//! [`Display`](std::fmt::Display) prints the absolute path and is the exact inverse of
//! `from_absolute_path`. [`Ord`] is the bytewise order of the basename, which is the order
//! of Nix's `std::set<StorePath>`: narinfo `References` and the signature fingerprint both
//! depend on it.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::nixbase32;

/// The only store directory narpush supports (the one every binary cache client expects).
pub const STORE_DIR: &str = "/nix/store";
/// Length of the nix32 hash part of a basename.
pub const HASH_PART_LEN: usize = 32;
/// Longest name Nix accepts after the `<hash>-`.
pub const MAX_NAME_LEN: usize = 211;

/// A validated store path.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct StorePath {
    /// `<hash part>-<name>`, all ASCII once validated.
    basename: String,
    /// The hash part decoded; a function of `basename`, so the derives stay consistent.
    digest: [u8; 20],
}

/// Why a string is not a store path. Each variant carries the string as given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("'{input}' is not in the Nix store {STORE_DIR}")]
    NotInStore { input: String },
    #[error("'{input}' is not a canonical store path (empty, '.' or '..' component, or a trailing slash)")]
    NotCanonical { input: String },
    #[error("'{input}' is a path inside a store object, not a store path")]
    SubPath { input: String },
    #[error("store path '{input}' is too short to hold a 32-character hash, a '-' and a name")]
    TooShort { input: String },
    #[error("invalid character '{ch}' in the hash part of store path '{input}'")]
    InvalidHashChar { input: String, ch: char },
    #[error("store path '{input}' has no '-' after its 32-character hash part")]
    MissingDash { input: String },
    #[error("invalid character '{ch}' in store path name '{input}'")]
    InvalidNameChar { input: String, ch: char },
    #[error("store path name in '{input}' is {len} characters long; the limit is {MAX_NAME_LEN}")]
    NameTooLong { input: String, len: usize },
    #[error("store path name in '{input}' starts with '.'")]
    NameStartsWithDot { input: String },
}

impl StorePath {
    /// Parses `/nix/store/<hash>-<name>` exactly.
    pub fn from_absolute_path(path: &str) -> Result<StorePath, StorePathError> {
        let basename = split_store_dir(path)?;
        parse_basename(basename, path)
    }

    /// Parses `<hash>-<name>` (as in narinfo `References` and `Deriver`).
    pub fn from_basename(basename: &str) -> Result<StorePath, StorePathError> {
        parse_basename(basename, basename)
    }

    /// The 32 nix32 characters before the `-` (the `.narinfo` object key).
    pub fn hash_part(&self) -> &str {
        &self.basename[..HASH_PART_LEN]
    }

    /// Everything after `<hash>-`.
    pub fn name(&self) -> &str {
        &self.basename[HASH_PART_LEN + 1..]
    }

    /// `<hash>-<name>`.
    pub fn basename(&self) -> &str {
        &self.basename
    }

    /// The 20 bytes the hash part encodes.
    pub fn digest(&self) -> [u8; 20] {
        self.digest
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{}", self.basename)
    }
}

/// Returns the basename of `/nix/store/<basename>`, rejecting anything else.
fn split_store_dir(path: &str) -> Result<&str, StorePathError> {
    let rest = path
        .strip_prefix(STORE_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| StorePathError::NotInStore {
            input: path.to_owned(),
        })?;
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(StorePathError::NotCanonical {
            input: path.to_owned(),
        });
    }
    if rest.contains('/') {
        return Err(StorePathError::SubPath {
            input: path.to_owned(),
        });
    }
    Ok(rest)
}

/// Validates `basename`; errors quote `input` (the caller's whole string).
fn parse_basename(basename: &str, input: &str) -> Result<StorePath, StorePathError> {
    let err_input = || input.to_owned();
    // Check the hash characters before slicing: a non-ASCII character among the first 32
    // would otherwise put the `HASH_PART_LEN` byte offset inside a UTF-8 sequence.
    let mut hash_chars = 0;
    for ch in basename.chars().take(HASH_PART_LEN) {
        if !nixbase32::is_valid_char(ch) {
            return Err(StorePathError::InvalidHashChar {
                input: err_input(),
                ch,
            });
        }
        hash_chars += 1;
    }
    if hash_chars < HASH_PART_LEN || basename.len() < HASH_PART_LEN + 2 {
        return Err(StorePathError::TooShort { input: err_input() });
    }
    let (hash, dash_and_name) = basename.split_at(HASH_PART_LEN);
    let name = dash_and_name
        .strip_prefix('-')
        .ok_or_else(|| StorePathError::MissingDash { input: err_input() })?;
    check_name(name, input)?;

    // 32 valid digits are exactly 160 bits, so this always yields 20 bytes; the fallback
    // error keeps the function panic-free without an `expect`.
    let digest = nixbase32::decode(hash)
        .ok()
        .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
        .ok_or_else(|| StorePathError::TooShort { input: err_input() })?;
    Ok(StorePath {
        basename: basename.to_owned(),
        digest,
    })
}

fn check_name(name: &str, input: &str) -> Result<(), StorePathError> {
    if let Some(ch) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(StorePathError::InvalidNameChar {
            input: input.to_owned(),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong {
            input: input.to_owned(),
            len: name.len(),
        });
    }
    if name.starts_with('.') {
        return Err(StorePathError::NameStartsWithDot {
            input: input.to_owned(),
        });
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

/// The absolute path; `from_absolute_path(&p.to_string()) == Ok(p)`.
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}", self.basename)
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorePath::from_absolute_path(s)
    }
}

/// Bytewise order of the basename, as in Nix's `std::set<StorePath>`.
impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.basename.as_bytes().cmp(other.basename.as_bytes())
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL: &str = "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin";
    const HASH: &str = "syd87l2rxw8cbsxmxl853h0r6pdwhwjr";

    /// Checks that an error is the expected variant.
    type IsExpected = fn(&StorePathError) -> bool;

    #[test]
    fn absolute_path_splits_into_hash_part_and_name() {
        let p = StorePath::from_absolute_path(CURL).unwrap();
        assert_eq!(p.hash_part(), HASH);
        assert_eq!(p.name(), "curl-7.82.0-bin");
        assert_eq!(p.basename(), &CURL[11..]);
        assert_eq!(p.to_absolute(), CURL);
        assert_eq!(nixbase32::encode(&p.digest()), HASH);
    }

    #[test]
    fn display_is_the_inverse_of_parsing() {
        for path in [
            CURL,
            "/nix/store/00000000000000000000000000000000-a+b-c._?=D9",
        ] {
            let p: StorePath = path.parse().unwrap();
            assert_eq!(p.to_string(), path);
            assert_eq!(StorePath::from_absolute_path(&p.to_string()).unwrap(), p);
            assert_eq!(StorePath::from_basename(p.basename()).unwrap(), p);
        }
    }

    #[test]
    fn paths_outside_the_store_or_not_canonical_are_rejected() {
        let cases: [(&str, IsExpected); 8] = [
            ("/tmp/x", |e| matches!(e, StorePathError::NotInStore { .. })),
            ("/nix/store", |e| {
                matches!(e, StorePathError::NotInStore { .. })
            }),
            ("/nix/storex/a", |e| {
                matches!(e, StorePathError::NotInStore { .. })
            }),
            ("nix/store/a", |e| {
                matches!(e, StorePathError::NotInStore { .. })
            }),
            ("/nix/store/", |e| {
                matches!(e, StorePathError::NotCanonical { .. })
            }),
            ("/nix/store/../etc", |e| {
                matches!(e, StorePathError::NotCanonical { .. })
            }),
            (
                "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin/",
                |e| matches!(e, StorePathError::NotCanonical { .. }),
            ),
            (
                "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin/bin/curl",
                |e| matches!(e, StorePathError::SubPath { .. }),
            ),
        ];
        for (input, expected) in cases {
            let err = StorePath::from_absolute_path(input).unwrap_err();
            assert!(expected(&err), "{input}: {err:?}");
            assert!(err.to_string().contains(input), "{err}");
        }
        assert_eq!(
            StorePath::from_absolute_path("/tmp/x")
                .unwrap_err()
                .to_string(),
            "'/tmp/x' is not in the Nix store /nix/store"
        );
    }

    #[test]
    fn malformed_basenames_say_what_is_wrong() {
        let long = format!("{HASH}-{}", "a".repeat(212));
        let max = format!("{HASH}-{}", "a".repeat(211));
        assert!(StorePath::from_basename(&max).is_ok());
        let cases: Vec<(String, StorePathError)> = vec![
            (
                format!("{HASH}-"),
                StorePathError::TooShort {
                    input: format!("{HASH}-"),
                },
            ),
            (
                "abc".into(),
                StorePathError::TooShort {
                    input: "abc".into(),
                },
            ),
            (
                format!("{}e-x", &HASH[..31]),
                StorePathError::InvalidHashChar {
                    input: format!("{}e-x", &HASH[..31]),
                    ch: 'e',
                },
            ),
            (
                format!("é{}-x", &HASH[..31]),
                StorePathError::InvalidHashChar {
                    input: format!("é{}-x", &HASH[..31]),
                    ch: 'é',
                },
            ),
            (
                format!("{HASH}_x"),
                StorePathError::MissingDash {
                    input: format!("{HASH}_x"),
                },
            ),
            (
                format!("{HASH}-café"),
                StorePathError::InvalidNameChar {
                    input: format!("{HASH}-café"),
                    ch: 'é',
                },
            ),
            (
                format!("{HASH}-a b"),
                StorePathError::InvalidNameChar {
                    input: format!("{HASH}-a b"),
                    ch: ' ',
                },
            ),
            (
                long.clone(),
                StorePathError::NameTooLong {
                    input: long,
                    len: 212,
                },
            ),
            (
                format!("{HASH}-.x"),
                StorePathError::NameStartsWithDot {
                    input: format!("{HASH}-.x"),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(StorePath::from_basename(&input), Err(expected), "{input}");
        }
        let err = StorePath::from_basename(&format!("{HASH}-café")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid character 'é' in store path name '{HASH}-café'")
        );
    }

    #[test]
    fn ordering_is_bytewise_on_the_basename() {
        let mut paths: Vec<StorePath> = [
            "yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n",
            "0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
            "j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12",
            "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
            "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-Glibc",
            "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-_glibc",
        ]
        .iter()
        .map(|b| StorePath::from_basename(b).unwrap())
        .collect();
        paths.sort();
        let mut expected: Vec<&str> = paths.iter().map(StorePath::basename).collect();
        expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let got: Vec<&str> = paths.iter().map(StorePath::basename).collect();
        assert_eq!(got, expected);
        assert_eq!(got[1], "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-Glibc");
        assert_eq!(got[2], "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-_glibc");
    }
}
