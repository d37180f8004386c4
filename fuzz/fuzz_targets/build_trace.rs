//! Build trace entries (`format::build_trace`): Nix 2.35's `build-trace-v2/<drv>/<output>.doi`
//! objects read from a cache, and keyed entries. Any bytes give an entry or an error, never a
//! panic; an entry written out (Nix's exact bytes) reads back as itself, and an object key
//! prints to text that parses to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::build_trace::{BuildTraceEntry, BuildTraceKey};

/// An object key the body is read under when the input does not start with one.
const KEY: &str = "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/out.doi";

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = BuildTraceEntry::from_json(data) {
        check(&entry);
    }
    if let Ok(entry) = BuildTraceEntry::from_object(KEY, data) {
        check(&entry);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // `<object key>\n<body>`: both parsed from the input.
        let (key, body) = text.split_once('\n').unwrap_or((text, ""));
        if let Ok(parsed) = BuildTraceKey::from_object_key(key) {
            assert_eq!(
                BuildTraceKey::from_object_key(&parsed.object_key()).ok(),
                Some(parsed)
            );
            if let Ok(entry) = BuildTraceEntry::from_object(key, body.as_bytes()) {
                check(&entry);
            }
        }
    }
});

fn check(entry: &BuildTraceEntry) {
    let json = entry.to_json();
    let again = BuildTraceEntry::from_json(json.as_bytes()).expect("written entry parses");
    assert_eq!(&again, entry, "from_json(to_json(x)) == x");
    assert_eq!(again.to_json(), json);
    let body = entry.object_body();
    let object = BuildTraceEntry::from_object(&entry.key.object_key(), body.as_bytes())
        .expect("written object parses");
    assert_eq!(&object, entry, "from_object(object_body(x)) == x");
    let _ = entry.fingerprint();
}
