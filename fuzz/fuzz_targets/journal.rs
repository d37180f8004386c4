//! The intake journal's record reader (`queue::journal::record::scan`), which reads a file
//! that a crash, a full disk or a bad sector may have left in any state. Any bytes give
//! records and problems, never a panic; every record lies inside the bytes, in order, in one
//! generation; and the paths of each record, written again, read back the same.
//!
//! The first byte chooses how the rest is used: as the journal's bytes, or as the payload of
//! a record with a valid checksum (so the fuzzer reaches the payload decoder, which a random
//! checksum would almost never let it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use narpush::fuzzing::journal::{encode, frame, scan, Problem, TERMINATOR};
use narpush::queue::NewPath;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        record_with_payload(u64::from(mode >> 1), rest)
    };
    check(&bytes);
});

fn record_with_payload(generation: u64, payload: &[u8]) -> Vec<u8> {
    frame(generation, payload)
}

fn check(bytes: &[u8]) {
    let scanned = scan(bytes);
    let len = bytes.len() as u64;
    assert!(scanned.end <= len, "the end lies inside the journal");
    let mut previous = 0;
    for found in &scanned.records {
        assert!(
            found.end > previous && found.end <= len,
            "records in order, inside"
        );
        assert_eq!(Some(found.generation), scanned.generation, "one generation");
        previous = found.end;
        let written = encode(found.generation, &found.paths).expect("read paths serialise again");
        let again = scan(&written);
        assert!(again.problems.is_empty(), "{:?}", again.problems);
        assert_eq!(again.records.len(), 1);
        assert_eq!(again.end as usize, written.len() - TERMINATOR);
        same_paths(&again.records[0].paths, &found.paths);
    }
    assert!(
        scanned.end >= previous,
        "the next write goes after every record"
    );
    for problem in &scanned.problems {
        let (Problem::TornTail { offset, .. } | Problem::Corrupt { offset, .. }) = problem;
        assert!(*offset < len, "a problem lies inside the journal");
    }
}

fn same_paths(read: &[NewPath], written: &[NewPath]) {
    assert_eq!(read.len(), written.len());
    for (a, b) in read.iter().zip(written) {
        assert_eq!(a.path, b.path);
        assert_eq!(a.source, b.source);
        assert_eq!(a.drv, b.drv);
        assert_eq!(a.realisations, b.realisations);
    }
}
