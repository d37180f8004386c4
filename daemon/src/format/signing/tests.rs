//! Key parsing, loading and signing tests, including the promise that no error or `Debug`
//! output ever contains secret key material.

use super::*;
use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;

/// A fixed key pair (seed = 32 × 0x07) so failures are reproducible.
fn fixed_key() -> SigningKey {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    SigningKey::parse(&format!("test-1:{}", BASE64.encode(key.to_keypair_bytes()))).unwrap()
}

fn key_file(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing-key");
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

/// Every error message in the chain, joined.
fn chain(err: &KeyError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[test]
fn generated_key_survives_the_secret_string_round_trip() {
    let key = SigningKey::generate("cache.example.org-1").unwrap();
    let text = key.to_secret_string();
    assert!(text.starts_with("cache.example.org-1:"));
    assert_eq!(text.len(), "cache.example.org-1:".len() + 88);
    let parsed = SigningKey::parse(&text).unwrap();
    assert_eq!(parsed.public_key(), key.public_key());
    assert_eq!(parsed.name(), "cache.example.org-1");
}

#[test]
fn public_key_display_round_trips() {
    let public = fixed_key().public_key();
    let text = public.to_string();
    assert_eq!(text.len(), "test-1:".len() + 44);
    assert_eq!(VerifyingKey::parse(&text).unwrap(), public);
    assert_eq!(VerifyingKey::parse(&format!(" {text}\n")).unwrap(), public);
}

#[test]
fn key_with_a_trailing_newline_loads() {
    let text = format!("{}\n", fixed_key().to_secret_string());
    let (_dir, path) = key_file(&text, 0o600);
    let loaded = SigningKey::load(&path).unwrap();
    assert_eq!(loaded.public_key(), fixed_key().public_key());
}

#[test]
fn malformed_keys_give_distinct_errors() {
    let good = fixed_key().to_secret_string();
    let (_, b64) = good.split_once(':').unwrap();
    let other = SigningKey::generate("test-1").unwrap().to_secret_string();
    // Seed of one key, public half of another.
    let mismatched = {
        let mut raw = BASE64.decode(b64).unwrap();
        let foreign = BASE64.decode(other.split_once(':').unwrap().1).unwrap();
        raw[32..].copy_from_slice(&foreign[32..]);
        format!("test-1:{}", BASE64.encode(raw))
    };
    let truncated = format!(
        "test-1:{}",
        BASE64.encode(&BASE64.decode(b64).unwrap()[..48])
    );

    assert!(matches!(
        SigningKey::parse(b64),
        Err(KeyError::MissingColon)
    ));
    assert!(matches!(
        SigningKey::parse(&format!(":{b64}")),
        Err(KeyError::EmptyName)
    ));
    assert!(matches!(
        SigningKey::parse(&format!("test-1:{}!", &b64[..87])),
        Err(KeyError::InvalidBase64 {
            kind: KeyKind::Secret,
            ..
        })
    ));
    assert!(matches!(
        SigningKey::parse(&truncated),
        Err(KeyError::WrongLength {
            expected: 64,
            actual: 48,
            ..
        })
    ));
    assert!(matches!(
        SigningKey::parse(&mismatched),
        Err(KeyError::MismatchedPublicKey { .. })
    ));
    assert!(matches!(
        VerifyingKey::parse(&good),
        Err(KeyError::WrongLength {
            kind: KeyKind::Public,
            expected: 32,
            actual: 64,
            ..
        })
    ));
}

#[test]
fn error_messages_never_contain_key_material() {
    let good = fixed_key().to_secret_string();
    let (_, b64) = good.split_once(':').unwrap();
    let mut errors = vec![
        SigningKey::parse(b64).unwrap_err(),
        SigningKey::parse(&format!("test-1:{}!", &b64[..87])).unwrap_err(),
        SigningKey::parse(&format!("test-1:{}", &b64[..64])).unwrap_err(),
        SigningKey::parse(&format!("test-1:{}A", &b64[..84])).unwrap_err(),
        SigningKey::parse(&format!("test-1:{}", &b64.replace('A', "B"))).unwrap_err(),
    ];
    let (_dir, path) = key_file(&format!("test-1:{}", &b64[..64]), 0o600);
    errors.push(SigningKey::load(&path).unwrap_err());
    let (_dir2, path2) = key_file(&good, 0o644);
    errors.push(SigningKey::load(&path2).unwrap_err());

    for err in &errors {
        let text = format!("{} {err:?}", chain(err));
        for window in b64.as_bytes().windows(8) {
            let needle = std::str::from_utf8(window).unwrap();
            assert!(!text.contains(needle), "{text:?} leaks {needle:?}");
        }
    }
    let debug = format!("{:?}", fixed_key());
    assert!(!debug.contains(&b64[..43]), "{debug}");
    assert!(debug.contains(&fixed_key().public_key().to_string()["test-1:".len()..]));
}

#[test]
fn world_readable_key_file_is_refused_and_private_one_loads() {
    let text = fixed_key().to_secret_string();
    let (_dir, path) = key_file(&text, 0o644);
    let err = SigningKey::load(&path).unwrap_err();
    assert!(matches!(err, KeyError::TooPermissive { mode: 0o644, .. }));
    let message = err.to_string();
    assert!(
        message.contains("world-readable") && message.contains("chmod 600"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(SigningKey::load(&path).unwrap().name(), "test-1");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(SigningKey::load(&path).is_ok());
}

#[test]
fn missing_key_file_names_the_path() {
    let err = SigningKey::load(Path::new("/nonexistent/narpush-key")).unwrap_err();
    assert!(matches!(err, KeyError::Read { .. }));
    assert_eq!(
        err.to_string(),
        "cannot read key file '/nonexistent/narpush-key'"
    );
}

#[test]
fn generate_rejects_names_that_would_not_parse_back() {
    for name in ["", "a:b", "a b", "a\n"] {
        assert!(
            matches!(
                SigningKey::generate(name),
                Err(KeyError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn several_keys_sign_one_narinfo_and_each_verifies() {
    let mut info = NarInfo {
        store_path: StorePath::from_basename("gzdb5s0g38fn1wbbpf59ln6najdlyzv1-probe-a").unwrap(),
        url: "nar/x.nar.zst".into(),
        compression: "zstd".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 120,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    let keys: Vec<SigningKey> = ["a-1", "b-1", "c-1"]
        .iter()
        .map(|n| SigningKey::generate(n).unwrap())
        .collect();
    for key in &keys {
        info.add_signature(key).unwrap();
    }
    let reparsed = NarInfo::parse(&info.to_string()).unwrap();
    for key in &keys {
        assert!(
            reparsed.verify_signature(&key.public_key()),
            "{}",
            key.name()
        );
    }
    let stranger = SigningKey::generate("a-1").unwrap();
    assert!(!reparsed.verify_signature(&stranger.public_key()));
}

#[test]
fn signatures_are_deterministic_and_checked_by_name() {
    let key = fixed_key();
    let sig = key.sign("1;fingerprint");
    assert_eq!(sig, key.sign("1;fingerprint"));
    assert_eq!(sig.len(), "test-1:".len() + 88);
    let public = key.public_key();
    assert!(public.verify("1;fingerprint", &sig));
    assert!(!public.verify("1;fingerprinT", &sig));
    assert!(!public.verify("1;fingerprint", &sig.replacen("test-1", "test-2", 1)));
    assert!(!public.verify("1;fingerprint", "test-1:not-base64"));
    assert!(!public.verify("1;fingerprint", "no colon"));
}
