//! Realisations (`format::realisation`): `.doi` objects read from a cache and the output of
//! `nix realisation info --json`. Any bytes give realisations or an error, never a panic; a
//! realisation written out (`to_json`, Nix's exact bytes; `to_queue_json`, with its resolved
//! derivation) reads back as itself, and its id
//! prints to text that parses to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::realisation::{DrvOutputId, Realisation};

fuzz_target!(|data: &[u8]| {
    if let Ok(realisation) = Realisation::from_json(data) {
        check(&realisation);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(list) = Realisation::list_from_json(text) {
            list.iter().for_each(check);
        }
        if let Ok(id) = text.parse::<DrvOutputId>() {
            assert_eq!(id.to_string().parse::<DrvOutputId>().ok(), Some(id));
        }
    }
});

fn check(realisation: &Realisation) {
    let json = realisation.to_json();
    let again = Realisation::from_json(json.as_bytes()).expect("written realisation parses");
    // The cache object leaves out the resolved derivation; the queue's form keeps it.
    let without_drv = Realisation {
        drv: None,
        ..realisation.clone()
    };
    assert_eq!(again, without_drv, "from_json(to_json(x)) == x without drv");
    assert_eq!(again.to_json(), json);
    let kept = realisation.to_queue_json();
    let again = Realisation::from_json(kept.as_bytes()).expect("queued realisation parses");
    assert_eq!(&again, realisation, "from_json(to_queue_json(x)) == x");
    let _ = realisation.fingerprint();
}
