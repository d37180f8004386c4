//! The config file (`config::Config::parse`, TOML, checked in one pass). Any text gives a
//! checked config or an error naming the key, never a panic; a config that parses holds only
//! checked values, and the settings derived from it (the target URL's parameters applied, the
//! stream settings, `nix-cache-info`) are computed without a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use narpush::config::{check_concurrency, check_level, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::parse(text, Path::new("/etc/narpush/fuzz.toml")) else {
        return;
    };
    assert!(check_level(config.compression, config.compression_level).is_ok());
    assert!(check_concurrency(config.jobs).is_ok());
    assert!(check_concurrency(config.parallel_requests).is_ok());
    assert!(config.max_attempts >= 1);
    assert!(config.retry_max_delay >= config.retry_initial_delay);
    let target = config.target_or_default();
    config.apply_target_params(target.params());
    // The daemon and `upload` check the level again once the URL's parameters apply.
    let _ = check_level(config.compression, config.compression_level);
    let _ = config.stream_settings(config.compression, config.compression_level);
    let _ = config.cache_info();
});
