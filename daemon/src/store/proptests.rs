//! Property tests of the `nix path-info --json` reader: any text, any JSON value, and objects
//! with the right keys and arbitrary values, in both shapes (array and object keyed by path),
//! give path infos or an error, never a panic.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".*".prop_map(Value::String),
        Just(json!("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep")),
        Just(json!(
            "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
        )),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".*", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: [&str; 10] = [
    "path",
    "narHash",
    "narSize",
    "references",
    "deriver",
    "ca",
    "signatures",
    "valid",
    "algorithm",
    "hash",
];

fn entry() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(&KEYS[..]), any_json()), 0..10).prop_map(|pairs| {
        let mut map = Map::new();
        for (key, value) in pairs {
            map.insert(key.to_owned(), value);
        }
        Value::Object(map)
    })
}

fn path_info_json() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep".to_owned()),
        ".*",
    ];
    prop_oneof![
        prop::collection::vec(entry(), 0..4).prop_map(|e| Value::Array(e).to_string()),
        prop::collection::vec((path, entry()), 0..4)
            .prop_map(|e| Value::Object(e.into_iter().collect()).to_string()),
        any_json().prop_map(|v| v.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".*") {
        let _ = parse_path_info_json(&text);
    }

    #[test]
    fn path_info_shaped_json_parses_or_fails(json in path_info_json()) {
        let _ = parse_path_info_json(&json);
    }
}
