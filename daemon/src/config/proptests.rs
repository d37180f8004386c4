//! Property tests of the config reader: any text, and TOML made of the real keys with values
//! of any type, give a config or an error naming the problem, never a panic.

use proptest::prelude::*;

use super::*;

const KEYS: [&str; 20] = [
    "target",
    "socket",
    "state_dir",
    "spool_dir",
    "gc_roots_dir",
    "secret_key_files",
    "compression",
    "compression_level",
    "jobs",
    "parallel_requests",
    "batch_window_ms",
    "max_attempts",
    "retry_initial_delay_ms",
    "retry_max_delay_ms",
    "request_timeout_ms",
    "allowed_uids",
    "upstream_caches",
    "upload_build_logs",
    "write_nar_listing",
    "metrics_listen",
];

/// A TOML value of any type, often one near the edge of what a key accepts.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("9223372036854775807".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        ".*".prop_map(|s| format!("{s:?}")),
        Just("\"/abs/path\"".to_owned()),
        Just("\"s3://bucket?endpoint=http://127.0.0.1:1&region=x\"".to_owned()),
        Just("\"zstd\"".to_owned()),
        Just("[0, 4294967295]".to_owned()),
        Just("[\"/a\", 1]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("1.5".to_owned()),
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(&KEYS[..]), toml_value()), 0..8).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".*") {
        let _ = Config::parse(&text, Path::new("/fuzz/narpush.toml"));
    }

    #[test]
    fn real_keys_with_any_values_parse_or_fail(text in config_text()) {
        let _ = Config::parse(&text, Path::new("/fuzz/narpush.toml"));
    }
}
