//! gc and pins: pinned closures stay whatever their age, a pin made or moved during a run is
//! honoured, and a pin gc cannot read stops the run.

use super::*;

fn write_pin(cache: &Cache, name: &str, target: &str, age: Duration) {
    cache.write(
        &format!("pins/{name}"),
        &crate::pins::body(&path(target)),
        age,
    );
}

#[tokio::test]
async fn pinned_paths_keep_their_closures_whatever_their_age() {
    let cache = Cache::new();
    cache.add("base", &[], 90 * DAY);
    cache.add("release", &["base"], 90 * DAY);
    cache.add("other", &[], 90 * DAY);
    write_pin(&cache, "v1", "release", 90 * DAY);
    let plan = cache.plan(&policy(30 * DAY)).await;
    assert_eq!(deleted_names(&plan), keys_of(&cache, "other"));
    assert_eq!(plan.summary.live_paths, 2);
    assert_eq!(plan.pinned.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_pin_made_once_the_plan_is_made_is_honoured() {
    let cache = Cache::new();
    cache.add("base", &[], 90 * DAY);
    cache.add("release", &["base"], 90 * DAY);
    // `narpush pin` found the closure whole and wrote its pin after GC's listing.
    let progress = |what: &str| {
        if what == "deleting" && !cache.root().join("pins/v1").exists() {
            write_pin(&cache, "v1", "release", Duration::ZERO);
        }
    };
    let done = collect(&cache.sink(), &policy(30 * DAY), false, &progress)
        .await
        .unwrap();
    for key in [keys_of(&cache, "base"), keys_of(&cache, "release")].concat() {
        assert!(cache.root().join(&key).exists(), "{key} was deleted");
    }
    assert!(done.delete.is_empty(), "{:?}", deleted_names(&done));
    assert_eq!(done.summary.live_paths, 2);
}

#[tokio::test(start_paused = true)]
async fn a_pin_moved_to_another_path_during_the_run_is_honoured() {
    let cache = Cache::new();
    cache.add("old-release", &[], 90 * DAY);
    cache.add("new-release", &[], 90 * DAY);
    write_pin(&cache, "stable", "new-release", 90 * DAY);
    let progress = |what: &str| {
        if what == "deleting" {
            write_pin(&cache, "stable", "old-release", Duration::ZERO);
        }
    };
    collect(&cache.sink(), &policy(30 * DAY), false, &progress)
        .await
        .unwrap();
    assert!(cache
        .root()
        .join(layout::narinfo_key(&path("old-release")))
        .exists());
}

#[tokio::test]
async fn an_unreadable_pin_stops_the_run_before_anything_is_deleted() {
    let cache = Cache::new();
    cache.add("old", &[], 90 * DAY);
    cache.write("pins/broken", "not a pin\n", 90 * DAY);
    let sink = cache.sink();
    let error = collect(&sink, &policy(30 * DAY), false, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GcError::Unreadable { key, .. } if key == "pins/broken"),
        "{error}"
    );
    assert!(cache
        .root()
        .join(layout::narinfo_key(&path("old")))
        .exists());
}

#[tokio::test(start_paused = true)]
async fn a_pin_moved_within_the_same_second_to_a_name_of_the_same_length_is_honoured() {
    let cache = Cache::new();
    cache.add("release-a", &[], 90 * DAY);
    cache.add("release-b", &[], 90 * DAY);
    write_pin(&cache, "stable", "release-a", 90 * DAY);
    // A listing shows the moved pin with the same size and the same whole second.
    let progress = |what: &str| {
        if what == "deleting" {
            write_pin(&cache, "stable", "release-b", 90 * DAY);
        }
    };
    collect(&cache.sink(), &policy(30 * DAY), false, &progress)
        .await
        .unwrap();
    assert!(cache
        .root()
        .join(layout::narinfo_key(&path("release-b")))
        .exists());
}

#[tokio::test]
async fn a_pin_too_big_to_be_one_stops_the_run() {
    let cache = Cache::new();
    cache.add("old", &[], 90 * DAY);
    let huge = format!(
        "StorePath: {}\n{}",
        path("old").to_absolute(),
        "x".repeat(crate::pins::MAX_PIN_BYTES as usize)
    );
    cache.write("pins/huge", &huge, 90 * DAY);
    let error = collect(&cache.sink(), &policy(30 * DAY), false, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GcError::Unreadable { key, reason } if key == "pins/huge" && reason.contains("bytes")),
        "{error}"
    );
}
