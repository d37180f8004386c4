//! `narpush gc` and `verify` and content-addressed derivations: a realisation and its Nix 2.35
//! build trace entry belong to their output's narinfo, go with it, and stay while it stays.

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The keys of `cache` under `prefix`, relative to it, sorted.
fn keys_under(cache: &Path, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = snapshot(cache)
        .into_keys()
        .map(|p| p.strip_prefix(cache).unwrap().display().to_string())
        .filter(|k| k.starts_with(prefix))
        .collect();
    keys.sort();
    keys
}

fn gc(cache: &Path) -> serde_json::Value {
    let output = run(narpush()
        .args(["gc", "--json", "--older-than", "30d", "--to"])
        .arg(format!("file://{}", cache.display())));
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn gc_keeps_realisations_and_build_trace_entries_with_their_outputs_and_deletes_them_after() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_key) = keygen(dir.path(), "ca-gc-1");
    let cache = dir.path().join("cache");
    let fixture = Fixture::new("ca-gc");
    fixture.build("top");
    upload(&key_file, &cache, &fixture.instantiate("top"));
    let entries = keys_under(&cache, "build-trace-v2/");
    let realisations = keys_under(&cache, "realisations/");
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(!realisations.is_empty());
    // `narpush verify` finds the cache whole: the entries belong to their outputs.
    let verified = run(narpush()
        .args(["verify", "--trusted-key", &public_key, "--to"])
        .arg(format!("file://{}", cache.display())));
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        stderr(&verified)
    );

    // Old, but their outputs are pushed again (their narinfos refreshed): all stay.
    age_everything(&cache, 60 * DAY);
    upload(&key_file, &cache, &fixture.instantiate("top"));
    let report = gc(&cache);
    let deleted: Vec<&str> = report["deleted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(!deleted.iter().any(|k| k.ends_with(".doi")), "{deleted:?}");
    assert_eq!(keys_under(&cache, "build-trace-v2/"), entries);

    // Old and not pushed again: they go with their outputs' narinfos.
    age_everything(&cache, 60 * DAY);
    let report = gc(&cache);
    let deleted: Vec<String> = report["deleted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    for key in entries.iter().chain(&realisations) {
        assert!(deleted.contains(key), "{key} not deleted: {deleted:?}");
    }
    assert!(keys_under(&cache, "build-trace-v2/").is_empty());
    assert!(keys_under(&cache, "realisations/").is_empty());
    assert!(narinfos(&cache).is_empty());
}
