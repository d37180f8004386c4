//! Store paths, hashes and nix32 (`format::{store_path, hash, nixbase32}`), the edge every
//! path from a request, a narinfo or Nix crosses. Any text gives a value or an error, never a
//! panic; what parses prints back exactly (store paths, nix32) or to a form that parses to
//! the same value (hashes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::hash::Sha256;
use narpush::format::nixbase32;
use narpush::format::store_path::StorePath;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = StorePath::from_absolute_path(text) {
        assert_eq!(path.to_string(), text);
        assert_eq!(path.to_absolute(), text);
        assert_eq!(nixbase32::encode(&path.digest()), path.hash_part());
    }
    if let Ok(path) = StorePath::from_basename(text) {
        assert_eq!(path.basename(), text);
        assert_eq!(format!("{}-{}", path.hash_part(), path.name()), text);
        assert_eq!(StorePath::from_absolute_path(&path.to_absolute()), Ok(path));
    }
    if let Ok(bytes) = nixbase32::decode(text) {
        assert_eq!(bytes.len(), nixbase32::decoded_len(text.len()));
        // Callers decode fixed lengths (32, 52); at the lengths `encode` writes, decoding is
        // its exact inverse. (A length no byte count encodes to, such as "0", is accepted
        // when its extra bits are zero.)
        if nixbase32::encoded_len(bytes.len()) == text.len() {
            assert_eq!(
                nixbase32::encode(&bytes),
                text,
                "decode is encode's inverse"
            );
        }
    }
    if let Ok(hash) = Sha256::parse(text) {
        for form in [
            hash.to_string(),
            hash.to_base16(),
            hash.to_nix32(),
            hash.to_sri(),
        ] {
            assert_eq!(Sha256::parse(&form).ok(), Some(hash), "{form}");
        }
    }
});
