//! The record format's damage cases: a garbled length is corruption of that record only.

use super::*;
use crate::format::store_path::StorePath;

const A: &str = "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep";
const B: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top";
const C: &str = "/nix/store/0c5bkwrqa4rpijr1bfj7qw6fq4iaxwxi-c";

fn new(path: &str) -> NewPath {
    NewPath {
        path: StorePath::from_absolute_path(path).unwrap(),
        source: Source::Hook,
        drv: None,
        realisations: Vec::new(),
    }
}

fn kept(scanned: &Scanned) -> Vec<String> {
    scanned
        .records
        .iter()
        .flat_map(|r| r.paths.iter().map(|p| p.path.to_absolute()))
        .collect()
}

/// Three records (A, B, C) of generation 1 in a buffer of zeros; their offsets.
fn three_records() -> (Vec<u8>, Vec<usize>) {
    let mut bytes = vec![0u8; 4096];
    let mut offsets = Vec::new();
    let mut at = 0;
    for path in [A, B, C] {
        let record = encode(1, &[new(path)]).unwrap();
        bytes[at..at + record.len()].copy_from_slice(&record);
        offsets.push(at);
        at += record.len() - TERMINATOR;
    }
    (bytes, offsets)
}

/// Where a record's length field lies, from its start.
const LENGTH_AT: usize = 8;

#[test]
fn a_corrupt_length_in_the_middle_loses_only_its_own_record() {
    for garbled in [1u32, 7, 3000, u32::MAX] {
        let (mut bytes, offsets) = three_records();
        let at = offsets[1] + LENGTH_AT;
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&(length ^ garbled).to_le_bytes());
        let scanned = scan(&bytes);
        assert_eq!(kept(&scanned), [A, C], "length ^ {garbled}");
        assert!(
            matches!(&scanned.problems[..], [Problem::Corrupt { offset, .. }] if *offset as usize == offsets[1]),
            "length ^ {garbled}: {:?}",
            scanned.problems
        );
    }
}

#[test]
fn a_garbled_generation_or_marker_in_the_middle_loses_only_its_own_record() {
    for (at, what) in [(12, "generation"), (0, "marker"), (4, "header checksum")] {
        let (mut bytes, offsets) = three_records();
        bytes[offsets[1] + at] ^= 0x10;
        let scanned = scan(&bytes);
        assert_eq!(kept(&scanned), [A, C], "{what}");
        assert!(
            matches!(&scanned.problems[..], [Problem::Corrupt { offset, .. }] if *offset as usize == offsets[1]),
            "{what}: {:?}",
            scanned.problems
        );
    }
}

#[test]
fn a_zeroed_marker_in_the_middle_is_not_taken_for_the_end() {
    let (mut bytes, offsets) = three_records();
    bytes[offsets[1]..offsets[1] + 4].fill(0);
    let scanned = scan(&bytes);
    assert_eq!(kept(&scanned), [A, C]);
    assert_eq!(
        scanned.end as usize,
        offsets[2] + encode(1, &[new(C)]).unwrap().len() - TERMINATOR
    );
}

#[test]
fn records_of_an_older_generation_behind_a_damaged_one_are_not_read() {
    let mut bytes = vec![0u8; 4096];
    let old: Vec<u8> = [A, B, C]
        .iter()
        .flat_map(|p| {
            let mut r = encode(1, &[new(p)]).unwrap();
            r.truncate(r.len() - TERMINATOR);
            r
        })
        .collect();
    bytes[..old.len()].copy_from_slice(&old);
    // The journal started over: generation 2's first record, torn over generation 1's.
    let record = encode(2, &[new(B)]).unwrap();
    bytes[..record.len()].copy_from_slice(&record);
    bytes[HEADER + 2] ^= 0x01;
    let scanned = scan(&bytes);
    assert!(scanned.records.is_empty(), "{:?}", kept(&scanned));
    assert!(
        matches!(&scanned.problems[..], [Problem::TornTail { offset: 0, .. }]),
        "{:?}",
        scanned.problems
    );
}

/// A body whose serialisation fails.
struct Unserialisable;

impl serde::Serialize for Unserialisable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("no"))
    }
}

#[test]
fn a_body_that_cannot_be_serialised_is_an_error_not_an_empty_record() {
    assert!(encode_body(1, &Unserialisable).is_err());
}
