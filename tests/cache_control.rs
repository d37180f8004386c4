//! `Cache-Control` on every object an S3 target gets, as the server receives it (through the
//! proxy): NARs and listings cached for good, narinfos, `nix-cache-info` and pins briefly, and
//! both as configured.

use std::path::Path;

use narpush_e2e::fault_proxy::FaultProxy;
use narpush_e2e::*;

/// Uploads `top`'s closure through a fresh proxy with `config`, and pins it; returns what each
/// write said.
fn writes(config: &str, target_params: &str, top: &str) -> Vec<(String, Option<String>)> {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(s3.addr);
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(dir.path(), "narpush-test-1");
    let config_file = dir.path().join("narpush.toml");
    std::fs::write(&config_file, config).unwrap();
    let target = format!("{}{target_params}", proxy.url("cache"));
    let upload = run(narpush()
        .arg("--config")
        .arg(&config_file)
        .args(["upload", "--no-upstream", "--to", &target, "--key"])
        .arg(&secret)
        .arg(top)
        .envs(s3.env()));
    assert!(upload.status.success(), "{}", stderr(&upload));
    let pin = run(narpush()
        .arg("--config")
        .arg(&config_file)
        .args(["pin", "--to", &target, "release", top])
        .envs(s3.env()));
    assert!(pin.status.success(), "{}", stderr(&pin));
    proxy.cache_controls()
}

fn header_of<'a>(writes: &'a [(String, Option<String>)], key: &str) -> Option<&'a str> {
    writes
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} was not written: {writes:?}"))
        .1
        .as_deref()
}

fn is_immutable_kind(key: &str) -> bool {
    key.starts_with("nar/") || Path::new(key).extension().is_some_and(|e| e == "ls")
}

#[test]
fn every_object_carries_its_cache_control() {
    let top = nix_build(
        &fixture("gc.nix"),
        &[("shared", &unique("cc-shared")), ("own", &unique("cc-own"))],
    )
    .remove(0);
    let writes = writes("write_nar_listing = true\n", "", &top);
    assert!(writes.iter().any(|(k, _)| k.starts_with("nar/")));
    assert!(writes.iter().any(|(k, _)| k.ends_with(".ls")));
    assert!(writes.iter().any(|(k, _)| k.ends_with(".narinfo")));
    for (key, header) in &writes {
        let expected = if is_immutable_kind(key) {
            "public, max-age=31536000, immutable"
        } else {
            "public, max-age=300"
        };
        assert_eq!(header.as_deref(), Some(expected), "{key}");
    }
    assert_eq!(
        header_of(&writes, "nix-cache-info"),
        Some("public, max-age=300")
    );
    assert_eq!(
        header_of(&writes, "pins/release"),
        Some("public, max-age=300")
    );
}

#[test]
fn cache_control_is_configurable_and_streamed_nars_carry_it_too() {
    // Over one part (8 MiB) of random bytes: streamed in parts.
    let top = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("cc-parts")), ("size", "12288")],
    )
    .remove(0);
    let writes = writes(
        "nar_cache_control = \"\"\nnarinfo_cache_control = \"no-cache\"\n",
        "&multipart-upload=true",
        &top,
    );
    let streamed = writes
        .iter()
        .filter(|(k, _)| k.starts_with("nar/") && k.contains('-'))
        .count();
    assert_eq!(streamed, 1, "{writes:?}");
    let nars: Vec<_> = writes
        .iter()
        .filter(|(k, _)| k.starts_with("nar/"))
        .collect();
    assert!(!nars.is_empty());
    for (key, header) in nars {
        assert_eq!(header, &None, "{key}");
    }
    for (key, header) in writes.iter().filter(|(k, _)| !is_immutable_kind(k)) {
        assert_eq!(header.as_deref(), Some("no-cache"), "{key}");
    }
}

#[test]
fn a_header_value_with_a_line_break_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("narpush.toml");
    std::fs::write(&config_file, "narinfo_cache_control = \"a\\nb\"\n").unwrap();
    let output = run(narpush().arg("--config").arg(&config_file).args([
        "pin",
        "--list",
        "--to",
        "file:///nonexistent-narpush-cache",
    ]));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("narinfo_cache_control"),
        "{}",
        stderr(&output)
    );
}
