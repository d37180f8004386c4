use super::*;
use crate::upstream::UpstreamUrl;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/narpush/narpush.toml"))
}

#[test]
fn empty_file_gives_the_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.compression, Compression::Zstd);
    assert_eq!(config.compression_level, 3);
    assert_eq!(config.jobs, DEFAULT_JOBS);
    assert_eq!(config.target, None);
    assert!(
        !config.upload_build_logs,
        "logs are published only on request"
    );
}

#[test]
fn all_keys_of_the_cache_writer_are_read() {
    let config = parse(
        r#"
target = "s3://cache?endpoint=http://127.0.0.1:9000&region=auto"
secret_key_files = ["/run/credentials/key"]
compression = "xz"
compression_level = 9
jobs = 8
parallel_requests = 16
"#,
    )
    .unwrap();
    assert!(matches!(config.target, Some(TargetUrl::S3(_))));
    assert_eq!(
        config.secret_key_files,
        vec![PathBuf::from("/run/credentials/key")]
    );
    assert_eq!(config.compression, Compression::Xz);
    assert_eq!(config.compression_level, 9);
    assert_eq!(config.jobs, 8);
    assert_eq!(config.parallel_requests, 16);
}

#[test]
fn unknown_key_is_an_error_naming_the_key_and_file() {
    let err = parse("jbos = 3\n").unwrap_err().to_string();
    assert!(err.contains("jbos"), "{err}");
    assert!(err.contains("/etc/narpush/narpush.toml"), "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn out_of_range_level_and_zero_jobs_name_their_keys() {
    let err = parse("compression = \"zstd\"\ncompression_level = 42\n").unwrap_err();
    assert!(err.to_string().contains("compression_level"), "{err}");
    let err = parse("jobs = 0\n").unwrap_err();
    assert!(err.to_string().contains("'jobs'"), "{err}");
    let err = parse("parallel_requests = 100000000\n").unwrap_err();
    assert!(err.to_string().contains("'parallel_requests'"), "{err}");
}

#[test]
fn daemon_keys_are_read_and_spool_dir_follows_state_dir() {
    let config = parse(
        r#"
state_dir = "/srv/narpush"
batch_window_ms = 50
max_attempts = 3
allowed_uids = [0, 1000]
upload_build_logs = true
upstream_caches = []
write_nar_listing = true
metrics_listen = ""
"#,
    )
    .unwrap();
    assert_eq!(config.state_dir, PathBuf::from("/srv/narpush"));
    if std::env::var_os(env::SPOOL_DIR).is_none() {
        assert_eq!(config.spool_dir, PathBuf::from("/srv/narpush/spool"));
    }
    assert_eq!(config.batch_window, Duration::from_millis(50));
    assert_eq!(config.max_attempts, 3);
    assert_eq!(config.allowed_uids, vec![0, 1000]);
    assert!(config.upload_build_logs);
    assert!(config.write_nar_listing);
    assert_eq!(
        config.stream_settings(Compression::Zstd, 3).listing,
        Some(Compression::None)
    );
}

#[test]
fn listing_settings_of_the_target_url_win_over_the_config_file() {
    let mut config = parse("write_nar_listing = false\n").unwrap();
    assert_eq!(config.stream_settings(Compression::Zstd, 3).listing, None);
    let target = TargetUrl::parse(
        "s3://cache?endpoint=http://127.0.0.1:1&region=x&write-nar-listing=true&ls-compression=zstd",
    )
    .unwrap();
    config.apply_target_params(target.params());
    assert_eq!(
        config.stream_settings(Compression::Zstd, 3).listing,
        Some(Compression::Zstd)
    );
    let mut config = parse("write_nar_listing = true\n").unwrap();
    let target = TargetUrl::parse("file:///srv/cache?write-nar-listing=false").unwrap();
    config.apply_target_params(target.params());
    assert_eq!(config.stream_settings(Compression::Zstd, 3).listing, None);
}

#[test]
fn a_relative_state_dir_is_refused_by_name() {
    let err = parse("state_dir = \"relative\"\n").unwrap_err().to_string();
    assert!(err.contains("state_dir"), "{err}");
}

#[test]
fn upstream_defaults_to_cache_nixos_org_key_alone_and_lists_are_checked() {
    let config = parse("").unwrap();
    assert!(config.upstream_caches.is_empty());
    assert_eq!(
        config
            .upstream_public_keys
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![NIXOS_PUBLIC_KEY.to_owned()]
    );
    let config = parse(
        "upstream_caches = [\"https://cache.nixos.org\", \"file:///srv/c\"]\n\
         upstream_public_keys = []\n",
    )
    .unwrap();
    assert_eq!(config.upstream_caches.len(), 2);
    assert!(config.upstream_public_keys.is_empty());
    let err = parse("upstream_caches = [\"s3://bucket\"]\n").unwrap_err();
    assert!(err.to_string().contains("'upstream_caches'"), "{err}");
    let err = parse("upstream_public_keys = [\"cache.nixos.org-1\"]\n").unwrap_err();
    assert!(err.to_string().contains("'upstream_public_keys'"), "{err}");
}

#[test]
fn an_upstream_cache_may_be_a_table_whose_keys_count_for_it_alone() {
    let company = "company-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    let config = parse(&format!(
        "upstream_caches = [\"https://cache.nixos.org\", \
         {{ url = \"https://cache.example.com\", keys = [\"{company}\"] }}]\n"
    ))
    .unwrap();
    assert_eq!(config.upstream_caches[0].keys, None);
    assert_eq!(
        config.upstream_caches[1].url,
        UpstreamUrl::parse("https://cache.example.com").unwrap()
    );
    let keys: Vec<String> = config.upstream_caches[1]
        .keys
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert_eq!(keys, [company]);
    // Without keys, a table is a plain URL.
    let config = parse("upstream_caches = [{ url = \"file:///srv/c\" }]\n").unwrap();
    assert_eq!(config.upstream_caches[0].keys, None);
    for (bad, says) in [
        ("[{ keys = [] }]", "needs 'url'"),
        ("[{ url = \"file:///c\", keys = [] }]", "'keys' is empty"),
        (
            "[{ url = \"file:///c\", keys = [\"nope\"] }]",
            "'nope' is not a public key",
        ),
        ("[{ url = \"file:///c\", key = [] }]", "unknown key 'key'"),
        ("[{ url = \"s3://b\" }]", "s3://"),
        ("[{ url = 1 }]", "'url' must be a string"),
        (
            "[{ url = \"file:///c\", keys = \"k\" }]",
            "list of public keys",
        ),
        ("[1]", "not integer"),
    ] {
        let err = parse(&format!("upstream_caches = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'upstream_caches'") && err.contains(says),
            "{bad}: {err}"
        );
    }
}

#[test]
fn refresh_after_is_a_human_duration() {
    assert_eq!(parse("").unwrap().refresh_after, DEFAULT_REFRESH_AFTER);
    assert_eq!(
        parse("refresh_after = \"12h\"\n").unwrap().refresh_after,
        Duration::from_secs(12 * 3600)
    );
    for bad in ["\"soon\"", "\"0s\""] {
        let err = parse(&format!("refresh_after = {bad}\n")).unwrap_err();
        assert!(err.to_string().contains("'refresh_after'"), "{err}");
    }
}

#[test]
fn public_url_is_checked_and_empty_means_unset() {
    let config = parse("public_url = \"https://cache.example.org\"\n").unwrap();
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://cache.example.org")
    );
    assert_eq!(parse("public_url = \"\"\n").unwrap().public_url, None);
    let err = parse("public_url = \"ftp://x\"\n").unwrap_err().to_string();
    assert!(err.contains("'public_url'") && err.contains("ftp"), "{err}");
}

#[test]
fn bad_target_names_the_key_and_the_reason() {
    let err = parse("target = \"ftp://x\"\n").unwrap_err();
    assert!(err.to_string().contains("'target'"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("ftp"), "{source}");
}

#[test]
fn request_timeout_is_read_and_zero_is_refused() {
    let config = parse("request_timeout_ms = 1500\n").unwrap();
    assert_eq!(config.request_timeout, Duration::from_millis(1500));
    assert_eq!(parse("").unwrap().request_timeout, DEFAULT_REQUEST_TIMEOUT);
    let err = parse("request_timeout_ms = 0\n").unwrap_err();
    assert!(err.to_string().contains("'request_timeout_ms'"), "{err}");
}

#[test]
fn the_build_log_limit_is_configurable_and_not_zero() {
    assert_eq!(parse("").unwrap().max_build_log_bytes, 64 << 20);
    let config = parse("max_build_log_bytes = 4096\n").unwrap();
    assert_eq!(config.max_build_log_bytes, 4096);
    let err = parse("max_build_log_bytes = 0\n").unwrap_err().to_string();
    assert!(err.contains("'max_build_log_bytes'"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn metrics_listen_takes_an_ip_and_port_and_names_a_bad_value() {
    assert_eq!(
        parse("metrics_listen = \"\"\n").unwrap().metrics_listen,
        None
    );
    let config = parse("metrics_listen = \"127.0.0.1:9184\"\n").unwrap();
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9184".parse().unwrap())
    );
    let config = parse("metrics_listen = \"[::1]:9184\"\n").unwrap();
    assert_eq!(config.metrics_listen, Some("[::1]:9184".parse().unwrap()));
    for bad in ["9184", "localhost:9184", "127.0.0.1:99999"] {
        let err = parse(&format!("metrics_listen = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key 'metrics_listen'") && err.contains(&format!("'{bad}'")),
            "{err}"
        );
    }
}

#[test]
fn single_put_max_bytes_is_read_checked_and_overridden_by_multipart_upload() {
    let config = parse("").unwrap();
    assert_eq!(
        config.stream_settings(Compression::Zstd, 3).single_put_max,
        1 << 30
    );
    let mut config = parse("single_put_max_bytes = 0\n").unwrap();
    assert_eq!(
        config.stream_settings(Compression::Zstd, 3).single_put_max,
        0
    );
    let err = parse("single_put_max_bytes = 8589934592\n").unwrap_err();
    assert!(err.to_string().contains("'single_put_max_bytes'"), "{err}");
    assert!(err.to_string().contains("8589934592"), "{err}");
    let target =
        TargetUrl::parse("s3://cache?endpoint=http://127.0.0.1:1&region=x&multipart-upload=false")
            .unwrap();
    config.apply_target_params(target.params());
    assert_eq!(
        config.stream_settings(Compression::Zstd, 3).single_put_max,
        4 << 30
    );
    let target =
        TargetUrl::parse("s3://cache?endpoint=http://127.0.0.1:1&region=x&multipart-upload=true")
            .unwrap();
    config.apply_target_params(target.params());
    assert_eq!(
        config.stream_settings(Compression::Zstd, 3).single_put_max,
        0
    );
}

#[test]
fn a_batch_window_beyond_a_minute_is_refused_naming_key_value_and_range() {
    // A typo (86400000 for 864) would hold every upload back for a day.
    let err = parse("batch_window_ms = 86400000\n")
        .unwrap_err()
        .to_string();
    for part in ["batch_window_ms", "86400000", "0", "60000"] {
        assert!(err.contains(part), "{part} missing: {err}");
    }
    assert_eq!(
        parse("batch_window_ms = 60000\n").unwrap().batch_window,
        Duration::from_secs(60)
    );
    assert_eq!(
        parse("batch_window_ms = 0\n").unwrap().batch_window,
        Duration::ZERO
    );
}

#[test]
fn a_retry_delay_too_short_to_be_a_backoff_is_refused_naming_key_value_and_range() {
    // Zero would retry in a tight loop until every attempt is used up.
    for value in [0, 9] {
        let err = parse(&format!("retry_initial_delay_ms = {value}\n"))
            .unwrap_err()
            .to_string();
        for part in ["retry_initial_delay_ms", &value.to_string(), "10"] {
            assert!(err.contains(part), "{part} missing: {err}");
        }
    }
    let config = parse("retry_initial_delay_ms = 10\nretry_max_delay_ms = 10\n").unwrap();
    assert_eq!(config.retry_initial_delay, Duration::from_millis(10));
}

#[test]
fn own_public_keys_are_parsed_and_a_bad_one_is_named() {
    assert!(parse("").unwrap().own_public_keys.is_empty());
    let old = "cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    let config = parse(&format!("own_public_keys = [\"{old}\"]\n")).unwrap();
    assert_eq!(config.own_public_keys[0].to_string(), old);
    let err = parse("own_public_keys = [\"cache.example.org-1\"]\n").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("'own_public_keys'") && message.contains("'cache.example.org-1'"),
        "{message}"
    );
}

#[test]
fn request_prices_default_to_r2s_and_each_may_be_set_alone() {
    let defaults = parse("").unwrap().request_prices;
    assert_eq!(
        (defaults.class_a_per_million, defaults.class_b_per_million),
        (4.50, 0.36)
    );
    let config = parse("[request_prices]\nclass_a_per_million = 5\n").unwrap();
    assert_eq!(
        (
            config.request_prices.class_a_per_million,
            config.request_prices.class_b_per_million
        ),
        (5.0, 0.36)
    );
}

#[test]
fn request_prices_refuse_unknown_keys_and_negative_prices() {
    let err = parse("[request_prices]\nclass_c_per_million = 1.0\n").unwrap_err();
    assert!(err.to_string().contains("class_c_per_million"), "{err}");
    let err = parse("[request_prices]\nclass_b_per_million = -0.5\n").unwrap_err();
    assert!(err.to_string().contains("'request_prices'"), "{err}");
    assert!(err.to_string().contains("class_b_per_million"), "{err}");
}

#[test]
fn request_prices_refuse_a_huge_price_naming_key_and_value() {
    let err = parse("[request_prices]\nclass_a_per_million = 1e308\n").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("'request_prices'"), "{message}");
    assert!(message.contains("class_a_per_million = 1e308"), "{message}");
    let config = parse("[request_prices]\nclass_a_per_million = 1000000\n").unwrap();
    assert_eq!(config.request_prices.class_a_per_million, 1_000_000.0);
}

#[test]
fn push_filter_keys_are_read_and_the_default_excludes_nothing() {
    assert!(parse("").unwrap().filter.is_off());
    let config = parse(
        r#"
exclude = ["-doc$", "^source-"]
exclude_outputs = ["doc", "debug"]
max_nar_bytes = 1073741824
"#,
    )
    .unwrap();
    let filter = &config.filter;
    assert_eq!(filter.patterns().collect::<Vec<_>>(), ["-doc$", "^source-"]);
    assert_eq!(filter.exclude_outputs(), ["doc", "debug"]);
    assert_eq!(filter.max_nar_bytes(), Some(1 << 30));
}

#[test]
fn a_bad_push_filter_value_is_an_error_naming_its_key_and_the_value() {
    for (text, key, value) in [
        (r#"exclude = ["ok", "(unclosed"]"#, "exclude", "(unclosed"),
        (
            r#"exclude_outputs = ["doc out"]"#,
            "exclude_outputs",
            "doc out",
        ),
        ("max_nar_bytes = 0", "max_nar_bytes", "at least 1"),
    ] {
        let error = parse(text).unwrap_err().to_string();
        assert!(error.contains(&format!("key '{key}'")), "{error}");
        assert!(error.contains(value), "{error}");
    }
}
