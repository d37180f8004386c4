use super::*;
use crate::format::realisation::DrvOutputId;

/// Nix 2.35's vectors (see `nix-vectors/README.md`).
const SIMPLE: &str = include_str!("nix-vectors/simple.json");
const WITH_SIGNATURE: &str = include_str!("nix-vectors/with-signature.json");
const WITH_SIGNATURE_UNSTRUCTURED: &str =
    include_str!("nix-vectors/with-signature-unstructured.json");
const UNKEYED_SIMPLE: &str = include_str!("nix-vectors/unkeyed-simple.json");
const UNKEYED_WITH_SIGNATURE: &str = include_str!("nix-vectors/unkeyed-with-signature.json");
const SIMPLE_FINGERPRINT: &str = include_str!("nix-vectors/simple-fingerprint.txt");
const WITH_SIGNATURE_FINGERPRINT: &str = include_str!("nix-vectors/with-signature-fingerprint.txt");
const SIMPLE_SIG: &str = include_str!("nix-vectors/simple-sig.json");
const WITH_SIGNATURE_SIG: &str = include_str!("nix-vectors/with-signature-sig.json");

/// The throwaway key of Nix's `realisation.cc` tests, which made the `*-sig.json` vectors.
const NIX_TEST_KEY: &str = "test-key:tU7tTvLcScf8pmz/eTV0BEtLmRsPpZfKaRcd0nCN+pysBZPHSeg61/u2oc7mIOewfuAY1V1BiX32homTaDJ2Jw==";

fn path(basename: &str) -> StorePath {
    StorePath::from_basename(basename).unwrap()
}

fn key() -> BuildTraceKey {
    BuildTraceKey::new(path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv"), "foo").unwrap()
}

/// Nix's `simple` and `withSignature` test values, built here from their parts.
fn simple() -> BuildTraceEntry {
    BuildTraceEntry {
        key: key(),
        out_path: path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"),
        signatures: BTreeSet::new(),
    }
}

fn with_signature() -> BuildTraceEntry {
    BuildTraceEntry {
        key: key(),
        out_path: path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv"),
        signatures: [Signature {
            key_name: "asdf".to_owned(),
            sig: [0; 64],
        }]
        .into(),
    }
}

/// A vector's bytes, compact: Nix's tests compare JSON values, and its JSON keeps keys sorted,
/// as serde_json's `Value` does.
fn compact(vector: &str) -> String {
    serde_json::from_str::<Value>(vector).unwrap().to_string()
}

#[test]
fn nix_keyed_vectors_parse_to_their_values() {
    assert_eq!(
        BuildTraceEntry::from_json(SIMPLE.as_bytes()).unwrap(),
        simple()
    );
    assert_eq!(
        BuildTraceEntry::from_json(WITH_SIGNATURE.as_bytes()).unwrap(),
        with_signature()
    );
}

#[test]
fn the_older_string_signatures_are_read_too() {
    assert_eq!(
        BuildTraceEntry::from_json(WITH_SIGNATURE_UNSTRUCTURED.as_bytes()).unwrap(),
        with_signature()
    );
}

#[test]
fn keyed_json_is_nix_json_byte_for_byte() {
    assert_eq!(simple().to_json(), compact(SIMPLE));
    assert_eq!(with_signature().to_json(), compact(WITH_SIGNATURE));
}

#[test]
fn the_cache_object_is_the_unkeyed_vector_compact() {
    assert_eq!(simple().object_body(), compact(UNKEYED_SIMPLE));
    assert_eq!(
        with_signature().object_body(),
        compact(UNKEYED_WITH_SIGNATURE)
    );
    // And reads back under its key.
    let entry = with_signature();
    let object_key = entry.key.object_key();
    assert_eq!(
        object_key,
        "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/foo.doi"
    );
    let read = BuildTraceEntry::from_object(&object_key, UNKEYED_WITH_SIGNATURE.as_bytes());
    assert_eq!(read.unwrap(), entry);
}

#[test]
fn fingerprints_are_nix_bytes_exactly() {
    assert_eq!(simple().fingerprint(), SIMPLE_FINGERPRINT);
    assert_eq!(with_signature().fingerprint(), WITH_SIGNATURE_FINGERPRINT);
}

#[test]
fn our_signatures_are_the_ones_nix_made_and_verify() {
    let secret = SigningKey::parse(NIX_TEST_KEY).unwrap();
    let public = secret.public_key();
    for (entry, vector) in [
        (simple(), SIMPLE_SIG),
        (with_signature(), WITH_SIGNATURE_SIG),
    ] {
        let nix_sig = Signature::from_json(&serde_json::from_str(vector).unwrap()).unwrap();
        let mut ours = entry.clone();
        ours.signatures.clear();
        ours.sign(&secret);
        assert_eq!(ours.signatures, BTreeSet::from([nix_sig.clone()]));
        assert_eq!(ours.signatures.first().unwrap().to_json(), compact(vector));
        assert!(ours.verify_signature(&public));
        // Nix's signature verifies on the vector's entry.
        let mut theirs = entry;
        theirs.signatures = BTreeSet::from([nix_sig]);
        assert!(theirs.verify_signature(&public));
    }
}

#[test]
fn a_signature_does_not_verify_for_another_output_path_or_key() {
    let secret = SigningKey::parse(NIX_TEST_KEY).unwrap();
    let mut entry = simple();
    entry.sign(&secret);
    let other_key = SigningKey::generate("test-key").unwrap().public_key();
    assert!(!entry.verify_signature(&other_key));
    entry.out_path = path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar");
    assert!(!entry.verify_signature(&secret.public_key()));
}

#[test]
fn signatures_are_ordered_by_key_name_then_bytes() {
    let sig = |name: &str, byte: u8| Signature {
        key_name: name.to_owned(),
        sig: [byte; 64],
    };
    let mut entry = simple();
    entry.signatures = [sig("b", 0), sig("a", 0xff), sig("a", 1)].into();
    let names: Vec<(String, u8)> = entry
        .signatures
        .iter()
        .map(|s| (s.key_name.clone(), s.sig[0]))
        .collect();
    assert_eq!(
        names,
        [("a".into(), 1), ("a".into(), 0xff), ("b".into(), 0)]
    );
}

#[test]
fn object_keys_round_trip_and_others_are_refused() {
    let key = key();
    // Nix 2.35.2, binary-cache-store.cc, makeRealisationPath: the drv's whole basename, the
    // output name, ".doi", nothing escaped.
    assert_eq!(
        key.object_key(),
        "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/foo.doi"
    );
    assert_eq!(
        BuildTraceKey::from_object_key(&key.object_key()).unwrap(),
        key
    );
    for bad in [
        "realisations/sha256:00!out.doi",
        "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/foo",
        "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar/foo.doi",
        "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/a/b.doi",
        "build-trace-v2/short-bar.drv/foo.doi",
        "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/.doi",
    ] {
        assert!(
            matches!(
                BuildTraceKey::from_object_key(bad),
                Err(BuildTraceError::BadObjectKey { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn output_of_object_names_the_out_path_or_nothing() {
    let object_key = key().object_key();
    assert_eq!(
        output_of_object(&object_key, UNKEYED_SIMPLE.as_bytes()),
        Some(path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"))
    );
    assert_eq!(output_of_object(&object_key, b"{\"outPath\":3}"), None);
    assert_eq!(output_of_object(&object_key, b"not json"), None);
    assert_eq!(
        output_of_object("realisations/x.doi", UNKEYED_SIMPLE.as_bytes()),
        None
    );
}

#[test]
fn malformed_entries_are_errors_naming_what_is_wrong() {
    let bad_sig = r#"{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":[{"keyName":"k","sig":"AAAA"}]}"#;
    let error = BuildTraceEntry::from_object(&key().object_key(), bad_sig.as_bytes());
    assert!(
        matches!(&error, Err(BuildTraceError::BadSignature { value }) if value.contains("AAAA")),
        "{error:?}"
    );
    let absolute = r#"{"outPath":"/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#;
    let error = BuildTraceEntry::from_object(&key().object_key(), absolute.as_bytes());
    assert!(
        matches!(
            &error,
            Err(BuildTraceError::BadPath {
                field: "outPath",
                ..
            })
        ),
        "{error:?}"
    );
    // Nix reads an entry without signatures as unsigned.
    let unsigned = r#"{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#;
    let entry = BuildTraceEntry::from_object(&key().object_key(), unsigned.as_bytes()).unwrap();
    assert_eq!(entry, simple());
}

#[test]
fn a_realisation_with_its_resolved_derivation_makes_an_unsigned_entry() {
    let realisation = Realisation {
        id: DrvOutputId {
            drv_hash: crate::format::hash::Sha256([7; 32]),
            output: "foo".to_owned(),
        },
        out_path: path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"),
        signatures: ["k:sig".to_owned()].into(),
        dependent_realisations: Default::default(),
        drv: Some(path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv")),
    };
    assert_eq!(
        BuildTraceEntry::of_realisation(&realisation),
        Some(simple())
    );
    let unknown = Realisation {
        drv: None,
        ..realisation
    };
    assert_eq!(BuildTraceEntry::of_realisation(&unknown), None);
}

#[test]
fn either_form_of_realisation_object_names_its_output() {
    let object_key = key().object_key();
    let out = path("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo");
    assert_eq!(
        output_of_realisation_object(&object_key, UNKEYED_SIMPLE.as_bytes()),
        Some(out.clone())
    );
    let old = format!(
        r#"{{"dependentRealisations":{{}},"id":"sha256:{}!out","outPath":"{}","signatures":[]}}"#,
        "00".repeat(32),
        out.basename()
    );
    assert_eq!(
        output_of_realisation_object("realisations/sha256:00!out.doi", old.as_bytes()),
        Some(out)
    );
    assert_eq!(output_of_realisation_object(&object_key, b"{}"), None);
    assert_eq!(
        output_of_realisation_object("realisations/x.doi", UNKEYED_SIMPLE.as_bytes()),
        None
    );
}
