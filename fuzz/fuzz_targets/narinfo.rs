//! Narinfos (`format::narinfo`), as read from the target and from upstream caches, and the
//! trust rule applied to them (`trust::trusted_narinfo`). Any bytes give a narinfo or an
//! error, never a panic; what parses prints to text that parses to the same printed text; and
//! a narinfo that validates reads back as itself (up to the order of references and
//! signatures, which printing sorts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::narinfo::NarInfo;
use narpush::format::signing::VerifyingKey;
use narpush::trust::trusted_narinfo;

const KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text) else {
        return;
    };
    let key = VerifyingKey::parse(KEY).expect("the cache.nixos.org key parses");
    let _ = trusted_narinfo(data, &info.store_path, &[key]);
    let _ = info.fingerprint();
    let printed = info.to_string();
    let reparsed = NarInfo::parse(&printed).expect("printed narinfo parses");
    assert_eq!(reparsed.to_string(), printed, "printing is a fixpoint");
    if info.validate().is_ok() {
        assert_eq!(normal(reparsed), normal(info), "parse(print(x)) == x");
    }
});

fn normal(mut info: NarInfo) -> NarInfo {
    info.references.sort();
    info.references.dedup();
    info.signatures.sort();
    info.signatures.dedup();
    info
}
