//! Whether a narinfo read from a cache may be believed: one rule for every cache narpush reads,
//! upstream caches (with the upstream keys) and its own target (with its own signing keys).
//!
//! A narinfo is trusted when its text parses, it is the narinfo of the store path that was
//! asked for, and one of its signatures verifies with one of the given keys over its
//! fingerprint (path, NarHash, NarSize, references). Anything else is an [`Untrusted`] reason,
//! never a panic: whatever a cache holds costs at most an upload, never a path believed present
//! on someone else's word.

use crate::format::narinfo::{NarInfo, NarInfoError};
use crate::format::signing::VerifyingKey;
use crate::format::store_path::StorePath;

/// Why a narinfo is not believed.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error("it is not UTF-8 text")]
    NotText,
    #[error("it cannot be read")]
    Unreadable(#[source] NarInfoError),
    #[error("it is the narinfo of {found}")]
    OtherPath { found: String },
    #[error("no signature on it verifies with {keys}")]
    Unsigned { keys: String },
}

/// The narinfo in `body`, if it is `path`'s and signed by one of `keys`.
pub fn trusted_narinfo(
    body: &[u8],
    path: &StorePath,
    keys: &[VerifyingKey],
) -> Result<NarInfo, Untrusted> {
    let text = std::str::from_utf8(body).map_err(|_| Untrusted::NotText)?;
    let narinfo = NarInfo::parse(text).map_err(Untrusted::Unreadable)?;
    if narinfo.store_path != *path {
        return Err(Untrusted::OtherPath {
            found: narinfo.store_path.to_absolute(),
        });
    }
    if !keys.iter().any(|key| narinfo.verify_signature(key)) {
        let names: Vec<&str> = keys.iter().map(VerifyingKey::name).collect();
        return Err(Untrusted::Unsigned {
            keys: if names.is_empty() {
                "no key (none is configured)".to_owned()
            } else {
                names.join(", ")
            },
        });
    }
    Ok(narinfo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::Sha256;
    use crate::format::signing::SigningKey;

    fn path(name: &str) -> StorePath {
        StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap()
    }

    fn signed(path: &StorePath, key: &SigningKey) -> String {
        let mut narinfo = NarInfo {
            store_path: path.clone(),
            url: "nar/x.nar.zst".to_owned(),
            compression: "zstd".to_owned(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256::digest(b"nar"),
            nar_size: 3,
            references: Vec::new(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
        };
        narinfo.add_signature(key).unwrap();
        narinfo.to_string()
    }

    #[test]
    fn a_narinfo_signed_by_a_trusted_key_for_the_path_is_trusted() {
        let ours = SigningKey::generate("ours-1").unwrap();
        let text = signed(&path("a"), &ours);
        let narinfo = trusted_narinfo(text.as_bytes(), &path("a"), &[ours.public_key()]).unwrap();
        assert_eq!(narinfo.store_path, path("a"));
    }

    #[test]
    fn anything_else_is_untrusted_with_its_reason() {
        let ours = SigningKey::generate("ours-1").unwrap();
        let theirs = SigningKey::generate("theirs-1").unwrap();
        let keys = [ours.public_key()];
        let by_them = signed(&path("a"), &theirs);
        let error = trusted_narinfo(by_them.as_bytes(), &path("a"), &keys).unwrap_err();
        assert!(matches!(&error, Untrusted::Unsigned { keys } if keys == "ours-1"));
        let other = signed(&path("b"), &ours);
        let error = trusted_narinfo(other.as_bytes(), &path("a"), &keys).unwrap_err();
        assert!(matches!(&error, Untrusted::OtherPath { found } if found.ends_with("-b")));
        // A signature that does not cover what the narinfo now says (NarSize changed).
        let tampered = signed(&path("a"), &ours).replace("NarSize: 3", "NarSize: 4");
        assert!(matches!(
            trusted_narinfo(tampered.as_bytes(), &path("a"), &keys),
            Err(Untrusted::Unsigned { .. })
        ));
        assert!(matches!(
            trusted_narinfo(b"StorePath: nonsense\n", &path("a"), &keys),
            Err(Untrusted::Unreadable(_))
        ));
        assert!(matches!(
            trusted_narinfo(&[0xff, 0xfe], &path("a"), &keys),
            Err(Untrusted::NotText)
        ));
        assert!(matches!(
            trusted_narinfo(signed(&path("a"), &ours).as_bytes(), &path("a"), &[]),
            Err(Untrusted::Unsigned { .. })
        ));
    }
}
