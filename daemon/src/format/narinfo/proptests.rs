//! Property tests: any text gives a narinfo or an error, never a panic; so does text made of
//! the known fields with arbitrary or almost-right values; and what parses prints back to text
//! that parses to the same narinfo.

use proptest::prelude::*;

use super::*;

const FIELDS: [&str; 13] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
    "Unknown",
];

/// Values that are right, nearly right, or anything.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep".to_owned()),
        Just("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep".to_owned()),
        Just("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".to_owned()),
        Just("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_owned()),
        Just("18446744073709551616".to_owned()),
        "[0-9]{1,20}",
        "[0-9a-z]{0,60}",
        ".*",
    ]
}

fn narinfo_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        (prop::sample::select(&FIELDS[..]), value()).prop_map(|(f, v)| format!("{f}: {v}")),
        (prop::sample::select(&FIELDS[..]), value()).prop_map(|(f, v)| format!("{f}:{v}")),
        "[^\n]*",
    ];
    (prop::collection::vec(line, 0..14), any::<bool>()).prop_map(|(lines, newline)| {
        let mut text = lines.join("\n");
        if newline {
            text.push('\n');
        }
        text
    })
}

/// A valid narinfo with some of its values swapped for arbitrary ones, and lines dropped.
fn mutated_narinfo() -> impl Strategy<Value = String> {
    let valid = [
        (
            "StorePath",
            "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep",
        ),
        (
            "URL",
            "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst",
        ),
        ("Compression", "zstd"),
        (
            "FileHash",
            "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ),
        ("FileSize", "100"),
        (
            "NarHash",
            "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ),
        ("NarSize", "120"),
        ("References", "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep"),
        ("Deriver", "lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-dep.drv"),
    ];
    prop::collection::vec(
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(None)),
            2 => value().prop_map(|v| Some(Some(v))),
        ],
        valid.len(),
    )
    .prop_map(move |changes| {
        let mut text = String::new();
        for ((field, good), change) in valid.iter().zip(changes) {
            match change {
                None => text.push_str(&format!("{field}: {good}\n")),
                Some(None) => {}
                Some(Some(value)) => text.push_str(&format!("{field}: {value}\n")),
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".*") {
        let _ = NarInfo::parse(&text);
    }

    #[test]
    fn mutated_narinfos_parse_or_fail_and_round_trip(text in mutated_narinfo()) {
        if let Ok(info) = NarInfo::parse(&text) {
            let _ = info.validate();
            let _ = info.fingerprint();
            let printed = info.to_string();
            let reparsed = NarInfo::parse(&printed).map(|i| i.to_string());
            prop_assert_eq!(reparsed.ok(), Some(printed));
        }
    }

    #[test]
    fn field_shaped_text_parses_or_fails_and_round_trips(text in narinfo_text()) {
        if let Ok(info) = NarInfo::parse(&text) {
            let _ = info.validate();
            let _ = info.fingerprint();
            let printed = info.to_string();
            let reparsed = NarInfo::parse(&printed).map(|i| i.to_string());
            prop_assert_eq!(reparsed.ok(), Some(printed));
        }
    }
}
