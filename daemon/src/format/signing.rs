//! Ed25519 signing and verifying keys in Nix's `name:base64` format.
//!
//! # Formats (Nix 2.8 `crypto.cc`)
//!
//! - Secret key: `<name>:<base64(seed ‖ public key)>`, 32 + 32 bytes, standard alphabet
//!   with padding (88 characters). `nix key generate-secret` and
//!   `nix-store --generate-binary-cache-key` write it without a trailing newline; humans
//!   often add one, so [`SigningKey::parse`] trims surrounding whitespace.
//! - Public key: `<name>:<base64(32 bytes)>`, the value of `trusted-public-keys`.
//! - Signature: `<name>:<base64(64-byte pure Ed25519 signature over the fingerprint)>`.
//!
//! # Invariants and where they are enforced
//!
//! | rule | enforced by |
//! |---|---|
//! | name non-empty, split at the first `:` | `split_key` |
//! | secret key decodes to exactly 64 bytes whose second half is the seed's public key | [`SigningKey::parse`] (`from_keypair_bytes`) |
//! | public key decodes to 32 bytes that are a valid curve point | [`VerifyingKey::parse`] |
//! | a key file readable or writable by "other" is refused | [`SigningKey::load`] → [`KeyError::TooPermissive`] |
//! | generated names contain no `:` or whitespace (they could not be parsed back) | [`SigningKey::generate`] |
//! | no error message or `Debug` output contains secret key material | every [`KeyError`] variant carries only the key name, a path, a length or a mode; the base64 decoder's own error (which quotes a byte of its input) is dropped |
//!
//! Signatures are verified with `verify_strict`, which like libsodium rejects
//! non-canonical and small-order encodings.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use thiserror::Error;

/// Longest key file [`SigningKey::load`] reads.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// A named Ed25519 secret key. `Debug` shows the name and public key only.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

/// A named Ed25519 public key, as listed in `trusted-public-keys`. `Debug` and `Display`
/// both print `name:base64`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

/// Why a key could not be loaded, parsed or generated. No variant holds key material.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("key has no ':' separating its name from its base64 data")]
    MissingColon,
    #[error("key has an empty name before the ':'")]
    EmptyName,
    #[error("key name '{name}' must be non-empty and contain no ':' or whitespace")]
    InvalidName { name: String },
    #[error("{kind} key '{name}' is not valid base64")]
    InvalidBase64 { name: String, kind: KeyKind },
    #[error("{kind} key '{name}' decodes to {actual} bytes; expected {expected}")]
    WrongLength {
        name: String,
        kind: KeyKind,
        expected: usize,
        actual: usize,
    },
    #[error("secret key '{name}' is corrupt: its public half does not match its seed")]
    MismatchedPublicKey { name: String },
    #[error("public key '{name}' is not a valid Ed25519 point")]
    InvalidPublicKey { name: String },
    #[error("cannot read key file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file '{}' is world-readable or world-writable (mode {mode:04o}); \
         run `chmod 600 {}` and keep it private", path.display(), path.display()
    )]
    TooPermissive { path: PathBuf, mode: u32 },
    #[error("invalid key in file '{}'", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
}

/// Which half of a key pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Secret,
    Public,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret => "secret",
            KeyKind::Public => "public",
        })
    }
}

impl SigningKey {
    /// Parses `name:base64(seed ‖ public key)`, ignoring surrounding whitespace.
    pub fn parse(s: &str) -> Result<SigningKey, KeyError> {
        let (name, data) = split_key(s)?;
        let mut bytes = decode_exact(name, data, KeyKind::Secret, 64)?;
        let result = <&[u8; 64]>::try_from(bytes.as_slice())
            .ok()
            .and_then(|pair| ed25519_dalek::SigningKey::from_keypair_bytes(pair).ok());
        // Best effort: do not leave a copy of the seed in freed memory.
        bytes.fill(0);
        let key = result.ok_or_else(|| KeyError::MismatchedPublicKey {
            name: name.to_owned(),
        })?;
        Ok(SigningKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads and parses a key file, refusing one that "other" users may read or write.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let read_error = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        // Check the opened file, not the path, so a swap between check and read is harmless.
        let mode = file.metadata().map_err(read_error)?.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(KeyError::TooPermissive {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let mut text = String::new();
        // A key file is about 100 bytes; the cap keeps a wrong path (a log, a disk image)
        // from being read whole. Anything cut off fails to parse as a key anyway.
        file.take(MAX_KEY_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        let parsed = SigningKey::parse(&text);
        // Best effort, as in `parse`.
        let mut bytes = text.into_bytes();
        bytes.fill(0);
        parsed.map_err(|source| KeyError::InFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Generates a fresh key from the operating system's random number generator.
    pub fn generate(name: &str) -> Result<SigningKey, KeyError> {
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(KeyError::InvalidName {
                name: name.to_owned(),
            });
        }
        Ok(SigningKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
        })
    }

    /// `name:base64(seed ‖ public key)` without a newline, as `nix key generate-secret` prints.
    pub fn to_secret_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> VerifyingKey {
        VerifyingKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `fingerprint` and returns the narinfo `Sig` value `name:base64(signature)`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let signature = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(signature.to_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field(
                "public_key",
                &BASE64.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Parses `name:base64(32 bytes)`, ignoring surrounding whitespace.
    pub fn parse(s: &str) -> Result<VerifyingKey, KeyError> {
        let (name, data) = split_key(s)?;
        let bytes = decode_exact(name, data, KeyKind::Public, 32)?;
        let invalid = || KeyError::InvalidPublicKey {
            name: name.to_owned(),
        };
        let array = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| invalid())?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&array).map_err(|_| invalid())?;
        Ok(VerifyingKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` (`name:base64`) is this key's signature of `fingerprint`. A signature
    /// under another key name, or one that is malformed, is simply not valid.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, data)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(data) else {
            return false;
        };
        let Ok(array) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&array);
        self.key
            .verify_strict(fingerprint.as_bytes(), &signature)
            .is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

/// `name:base64`, the `trusted-public-keys` form.
impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

fn split_key(s: &str) -> Result<(&str, &str), KeyError> {
    let (name, data) = s.trim().split_once(':').ok_or(KeyError::MissingColon)?;
    if name.is_empty() {
        return Err(KeyError::EmptyName);
    }
    Ok((name, data))
}

fn decode_exact(
    name: &str,
    data: &str,
    kind: KeyKind,
    expected: usize,
) -> Result<Vec<u8>, KeyError> {
    let mut bytes = BASE64.decode(data).map_err(|_| KeyError::InvalidBase64 {
        name: name.to_owned(),
        kind,
    })?;
    if bytes.len() != expected {
        let actual = bytes.len();
        bytes.fill(0);
        return Err(KeyError::WrongLength {
            name: name.to_owned(),
            kind,
            expected,
            actual,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
