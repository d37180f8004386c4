//! gc and Nix 2.35's build trace entries: they go with their output's narinfo, as realisations do.

use super::*;

/// Writes the build trace entry of `name`'s output, keyed by `name.drv`, as Nix 2.35 would.
fn add_build_trace_entry(cache: &Cache, name: &str, age: Duration) -> String {
    use crate::format::build_trace::{BuildTraceEntry, BuildTraceKey};
    let entry = BuildTraceEntry {
        key: BuildTraceKey::new(path(&format!("{name}.drv")), "out").unwrap(),
        out_path: path(name),
        signatures: Default::default(),
    };
    let key = layout::build_trace_key(&entry.key);
    cache.write(&key, &entry.object_body(), age);
    key
}

#[tokio::test]
async fn build_trace_entries_go_with_their_outputs_after_their_narinfos() {
    let cache = Cache::new();
    cache.add("ca-kept", &[], DAY);
    cache.add("ca-old", &[], 60 * DAY);
    add_build_trace_entry(&cache, "ca-kept", 60 * DAY);
    let old = add_build_trace_entry(&cache, "ca-old", 60 * DAY);
    add_build_trace_entry(&cache, "ca-in-flight", Duration::from_secs(60));
    let unreadable = format!("build-trace-v2/{}/out.doi", path("x.drv").basename());
    cache.write(&unreadable, "{", 60 * DAY);

    let plan = cache.plan(&policy(30 * DAY)).await;
    let mut expected = keys_of(&cache, "ca-old");
    expected.push(old.clone());
    expected.sort();
    assert_eq!(deleted_names(&plan), expected);
    assert_eq!(plan.summary.deleted_by_kind.realisations.objects, 1);
    // Deleted only once its output's narinfo is (rule G of coexist).
    assert_eq!(
        plan.named_by.get(&old),
        Some(&vec![layout::narinfo_key(&path("ca-old"))])
    );
}
