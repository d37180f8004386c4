//! Signing and verifying keys (`format::signing`) in Nix's `name:base64` form, read from key
//! files, `$NARPUSH_SIGNING_KEY` and `upstream_public_keys`. Any text gives a key or an error,
//! never a panic, and an error never quotes the key's data; a key prints to text that parses
//! to the same key; a secret key's own public key verifies what it signs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::signing::{SigningKey, VerifyingKey};

const FINGERPRINT: &str = "1;/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x;sha256:0;1;";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SigningKey::parse(text) {
        Ok(key) => {
            let again = SigningKey::parse(&key.to_secret_string()).expect("printed key parses");
            assert_eq!(again.to_secret_string(), key.to_secret_string());
            let public = key.public_key();
            assert!(public.verify(FINGERPRINT, &key.sign(FINGERPRINT)));
        }
        Err(error) => {
            // Errors name the key (its name is no secret), never its data.
            if let Some((name, secret)) = text.trim().split_once(':') {
                let message = error.to_string().replace(name, "");
                // Key data: base64, longer than any word of a message.
                let base64 = |b: u8| b.is_ascii_alphanumeric() || b"+/=".contains(&b);
                if secret.len() >= 12 && secret.bytes().all(base64) {
                    assert!(
                        !message.contains(secret),
                        "an error quotes the key: {message}"
                    );
                }
            }
        }
    }
    if let Ok(key) = VerifyingKey::parse(text) {
        let printed = key.to_string();
        let again = VerifyingKey::parse(&printed).expect("printed key parses");
        assert_eq!(again.to_string(), printed);
    }
});
