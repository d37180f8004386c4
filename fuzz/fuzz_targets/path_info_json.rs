//! `nix path-info --json` output of any Nix version (`store::parse_path_info_json`): any text
//! gives path infos or an error, never a panic, and every path info it gives is usable (a
//! NarSize above 0, so a fingerprint exists).
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::narinfo::fingerprint;
use narpush::store::parse_path_info_json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(infos) = parse_path_info_json(text) else {
        return;
    };
    for info in infos {
        assert!(info.nar_size > 0);
        let _ = fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references);
    }
});
