//! The head of a `.drv` (`format::derivation`): its outputs and input derivations, read
//! while the hook waits. A `.drv` is read as `derivation_head` reads it (lossy UTF-8; any
//! user's derivation can hold any bytes in its environment). Any bytes give a head or an
//! error, never a panic, and `output_paths` agrees with the head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::format::derivation::{output_paths, parse_head};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(head) = parse_head(&text) else {
        assert!(output_paths(&text).is_err());
        return;
    };
    let with_paths: Vec<_> = head
        .outputs
        .iter()
        .filter_map(|(name, path)| Some((name.clone(), path.clone()?)))
        .collect();
    assert_eq!(output_paths(&text).ok(), Some(with_paths));
    assert_eq!(
        head.has_floating_outputs(),
        head.outputs.iter().any(|(_, path)| path.is_none())
    );
});
