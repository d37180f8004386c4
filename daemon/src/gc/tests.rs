//! The collection rules on a directory cache whose objects are aged by hand.

use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::time::SystemTime;

use super::*;
use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::layout;
use crate::sink::file::FileSink;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn path(name: &str) -> StorePath {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let hash: String = (0..32)
        .map(|i| alphabet[(name.as_bytes()[i % name.len()] as usize + i * 7) % 32] as char)
        .collect();
    StorePath::from_basename(&format!("{hash}-{name}")).unwrap()
}

struct Cache {
    dir: tempfile::TempDir,
    now: SystemTime,
}

impl Cache {
    fn new() -> Cache {
        Cache {
            dir: tempfile::tempdir().unwrap(),
            now: SystemTime::now(),
        }
    }

    fn write(&self, key: &str, body: &str, age: Duration) {
        let file = self.dir.path().join(key);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, body).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(self.now - age)
            .unwrap();
    }

    /// A path with its narinfo, NAR, listing and log, all of age `age`.
    fn add(&self, name: &str, references: &[&str], age: Duration) {
        self.add_with_nar(name, &format!("nar/{name}.nar.zst"), references, age);
    }

    /// A path whose NAR is at `nar` (NARs named by their FileHash are shared by paths with
    /// the same bytes), with its narinfo, listing and log, all of age `age`.
    fn add_with_nar(&self, name: &str, nar: &str, references: &[&str], age: Duration) {
        let store_path = path(name);
        let nar = nar.to_owned();
        let narinfo = NarInfo {
            store_path: store_path.clone(),
            url: nar.clone(),
            compression: "zstd".to_owned(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256::digest(name),
            nar_size: 100,
            references: references.iter().map(|r| path(r)).collect(),
            deriver: Some(format!("{}-{name}.drv", &store_path.hash_part())),
            system: None,
            signatures: Vec::new(),
            ca: None,
        };
        self.write(&layout::narinfo_key(&store_path), &narinfo.to_string(), age);
        self.write(&nar, "nar bytes", age);
        self.write(&format!("{}.ls", store_path.hash_part()), "{}", age);
        self.write(
            &format!("log/{}-{name}.drv", store_path.hash_part()),
            "log",
            age,
        );
    }

    fn sink(&self) -> Sink {
        Sink::File(FileSink::open(self.dir.path()).unwrap())
    }

    async fn plan(&self, policy: &Policy) -> Plan {
        let sink = self.sink();
        let objects = sink.list().await.unwrap();
        plan(&sink, policy, objects, self.now, &|_| {})
            .await
            .unwrap()
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

fn policy(older_than: Duration) -> Policy {
    Policy {
        older_than,
        grace: Duration::from_secs(3600),
        keep: Vec::new(),
    }
}

fn deleted_names(plan: &Plan) -> Vec<String> {
    let mut keys: Vec<String> = plan.delete.iter().map(|o| o.key.clone()).collect();
    keys.sort();
    keys
}

fn keys_of(cache: &Cache, name: &str) -> Vec<String> {
    let store_path = path(name);
    let hash = store_path.hash_part();
    let _ = cache;
    let mut keys = vec![
        format!("{hash}.narinfo"),
        format!("nar/{name}.nar.zst"),
        format!("{hash}.ls"),
        format!("log/{hash}-{name}.drv"),
    ];
    keys.sort();
    keys
}

#[tokio::test]
async fn old_paths_go_and_everything_a_young_path_needs_stays() {
    let cache = Cache::new();
    cache.write("nix-cache-info", "StoreDir: /nix/store\n", 100 * DAY);
    cache.write("index.html", "not ours", 100 * DAY);
    cache.add("shared", &[], 60 * DAY);
    cache.add("deep", &[], 60 * DAY);
    cache.add("old-top", &["shared", "old-only"], 60 * DAY);
    cache.add("old-only", &[], 60 * DAY);
    cache.add("new-dep", &["deep"], 60 * DAY);
    cache.add("new-top", &["shared", "new-dep", "new-top"], DAY);

    let plan = cache.plan(&policy(30 * DAY)).await;
    let mut expected = [keys_of(&cache, "old-top"), keys_of(&cache, "old-only")].concat();
    expected.sort();
    assert_eq!(deleted_names(&plan), expected);
    // narinfos are deleted before anything else.
    assert!(plan.delete[..2].iter().all(|o| o.key.ends_with(".narinfo")));
    assert_eq!(plan.summary.live_paths, 4);
    assert_eq!(plan.summary.deleted_by_kind.narinfos.objects, 2);
    assert_eq!(plan.summary.deleted_by_kind.nars.objects, 2);
    assert_eq!(plan.summary.deleted_by_kind.logs.objects, 2);
    assert_eq!(plan.summary.deleted_by_kind.listings.objects, 2);
    assert_eq!(plan.summary.deleted.objects, 8);
    // 4 live paths × 4 objects, nix-cache-info and the unknown file.
    assert_eq!(plan.summary.kept.objects, 18);
}

#[tokio::test]
async fn kept_paths_keep_their_closures_whatever_their_age() {
    let cache = Cache::new();
    cache.add("dep", &[], 60 * DAY);
    cache.add("top", &["dep"], 60 * DAY);
    let mut kept = policy(30 * DAY);
    kept.keep.push(path("top"));
    assert!(cache.plan(&kept).await.delete.is_empty());
    assert_eq!(cache.plan(&policy(30 * DAY)).await.delete.len(), 8);
}

#[tokio::test]
async fn unreferenced_objects_younger_than_the_grace_period_stay() {
    let cache = Cache::new();
    // A NAR being published right now: its narinfo is not there yet.
    cache.write("nar/in-flight.nar.zst", "bytes", Duration::from_secs(60));
    cache.write("nar/abandoned.nar.zst", "bytes", 2 * DAY);
    cache.write("log/abandoned.drv", "log", 2 * DAY);
    let plan = cache.plan(&policy(30 * DAY)).await;
    assert_eq!(
        deleted_names(&plan),
        vec!["log/abandoned.drv", "nar/abandoned.nar.zst"]
    );
}

#[tokio::test]
async fn an_unreadable_root_stops_the_run_before_anything_is_deleted() {
    let cache = Cache::new();
    cache.add("old", &[], 60 * DAY);
    let broken = path("broken");
    cache.write(&layout::narinfo_key(&broken), "StorePath: nonsense\n", DAY);
    let sink = cache.sink();
    let error = collect(&sink, &policy(30 * DAY), false, &|_| {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&layout::narinfo_key(&broken)),
        "{error}"
    );
    assert!(cache
        .root()
        .join(layout::narinfo_key(&path("old")))
        .exists());
}

#[tokio::test(start_paused = true)]
async fn collect_deletes_the_plan_and_a_dry_run_deletes_nothing() {
    let cache = Cache::new();
    cache.add("old", &[], 60 * DAY);
    cache.add("young", &[], DAY);
    let sink = cache.sink();
    let dry = collect(&sink, &policy(30 * DAY), true, &|_| {})
        .await
        .unwrap();
    assert_eq!(dry.delete.len(), 4);
    assert!(cache
        .root()
        .join(layout::narinfo_key(&path("old")))
        .exists());
    let done = collect(&sink, &policy(30 * DAY), false, &|_| {})
        .await
        .unwrap();
    assert_eq!(deleted_names(&done), deleted_names(&dry));
    for key in keys_of(&cache, "old") {
        assert!(!cache.root().join(&key).exists(), "{key} is still there");
    }
    for key in keys_of(&cache, "young") {
        assert!(cache.root().join(&key).exists(), "{key} was deleted");
    }
}

#[test]
fn an_age_limit_below_refresh_after_plus_grace_is_refused() {
    let error = check_policy(&policy(DAY), DAY).unwrap_err().to_string();
    assert!(error.contains("refresh_after"), "{error}");
    assert!(check_policy(&policy(2 * DAY), DAY).is_ok());
}

/// Writes the realisation of `name`'s output (depending on those of `deps`) as Nix would.
fn add_realisation(cache: &Cache, n: u8, name: &str, deps: &[(u8, &str)], age: Duration) -> String {
    use crate::format::realisation::{DrvOutputId, Realisation};
    let id = |n: u8| DrvOutputId {
        drv_hash: Sha256([n; 32]),
        output: "out".to_owned(),
    };
    let realisation = Realisation {
        id: id(n),
        out_path: path(name),
        signatures: Default::default(),
        dependent_realisations: deps.iter().map(|(d, p)| (id(*d), path(p))).collect(),
        drv: None,
    };
    let key = layout::realisation_key(&realisation.id);
    cache.write(&key, &realisation.to_json(), age);
    key
}

#[tokio::test]
async fn realisations_go_with_their_outputs_and_stay_with_kept_ones() {
    let cache = Cache::new();
    cache.add("ca-dep", &[], 60 * DAY);
    cache.add("ca-top", &["ca-dep"], DAY);
    cache.add("ca-old", &[], 60 * DAY);
    add_realisation(&cache, 1, "ca-dep", &[], 60 * DAY);
    add_realisation(&cache, 2, "ca-top", &[(1, "ca-dep")], 60 * DAY);
    let old = add_realisation(&cache, 3, "ca-old", &[], 60 * DAY);
    // Written just now for a path whose narinfo is not there yet: within the grace period.
    add_realisation(&cache, 4, "ca-in-flight", &[], Duration::from_secs(60));
    cache.write("realisations/sha256:unreadable!out.doi", "{", 60 * DAY);

    let plan = cache.plan(&policy(30 * DAY)).await;
    let mut expected = keys_of(&cache, "ca-old");
    expected.push(old);
    expected.sort();
    assert_eq!(deleted_names(&plan), expected);
    assert_eq!(plan.summary.deleted_by_kind.realisations.objects, 1);
}

#[tokio::test(start_paused = true)]
async fn a_nar_written_again_after_the_listing_stays_with_the_narinfo_that_names_it() {
    let cache = Cache::new();
    cache.add("old", &[], 60 * DAY);
    let shared_nar = "nar/old.nar.zst";
    // Once the plan is made, an uploader builds "twin", whose NAR has the same bytes as old's:
    // it writes the NAR again under the same name and publishes twin's narinfo.
    let progress = |what: &str| {
        if what == "deleting" {
            cache.add_with_nar("twin", shared_nar, &[], Duration::ZERO);
        }
    };
    collect(&cache.sink(), &policy(30 * DAY), false, &progress)
        .await
        .unwrap();
    assert!(!cache
        .root()
        .join(layout::narinfo_key(&path("old")))
        .exists());
    assert!(cache
        .root()
        .join(layout::narinfo_key(&path("twin")))
        .exists());
    assert!(
        cache.root().join(shared_nar).exists(),
        "the NAR of a narinfo published during the collection was deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_narinfo_written_back_by_a_refresh_keeps_its_nar() {
    let cache = Cache::new();
    cache.add("old", &[], 60 * DAY);
    let realisation = add_realisation(&cache, 1, "old", &[], 60 * DAY);
    let narinfo = cache.root().join(layout::narinfo_key(&path("old")));
    let body = std::fs::read(&narinfo).unwrap();
    // An uploader found "old" just before its narinfo went, and writes it back (a refresh)
    // once it is gone, before the collection deletes the NAR.
    let progress = |what: &str| {
        if what.starts_with("deleting NARs") {
            assert!(!narinfo.exists());
            std::fs::write(&narinfo, &body).unwrap();
        }
    };
    let done = collect(&cache.sink(), &policy(30 * DAY), false, &progress)
        .await
        .unwrap();
    assert!(narinfo.exists());
    for key in [keys_of(&cache, "old"), vec![realisation]].concat() {
        assert!(cache.root().join(&key).exists(), "{key} was deleted");
    }
    assert_eq!(done.summary.deleted_by_kind.narinfos.objects, 1);
    assert_eq!(done.summary.deleted_by_kind.nars.objects, 0);
    assert_eq!(
        deleted_names(&done),
        vec![layout::narinfo_key(&path("old"))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_narinfo_written_back_by_a_refresh_keeps_the_narinfos_it_references() {
    // Seed 5052 of the simulation: "top" and "dep" are old; an uploader looked "top" up just
    // before its delete landed, and its refresh writes it back after it: "dep" (and top's
    // NAR) must stay, or the narinfo written back names a reference that is gone.
    let cache = Cache::new();
    cache.add("dep", &[], 60 * DAY);
    cache.add("top", &["dep"], 60 * DAY);
    let top = cache.root().join(layout::narinfo_key(&path("top")));
    let body = std::fs::read(&top).unwrap();
    let written_back = std::sync::atomic::AtomicBool::new(false);
    let progress = |what: &str| {
        if what.starts_with("deleting narinfos: layer 2") && !written_back.swap(true, SeqCst) {
            assert!(!top.exists());
            std::fs::write(&top, &body).unwrap();
        }
    };
    let done = collect(&cache.sink(), &policy(30 * DAY), false, &progress)
        .await
        .unwrap();
    assert!(
        written_back.load(SeqCst),
        "gc deleted no layer before dep's"
    );
    for key in [keys_of(&cache, "top"), keys_of(&cache, "dep")].concat() {
        assert!(cache.root().join(&key).exists(), "{key} was deleted");
    }
    // The plan made again keeps the narinfo written back as a root.
    assert!(done.delete.is_empty(), "{:?}", deleted_names(&done));
}

#[tokio::test(start_paused = true)]
async fn gc_looks_at_the_next_layer_only_once_a_late_write_back_has_landed() {
    // The refresh lands 3 s after the delete of "top": within the bound of rule U2 (sent
    // within W of a lookup begun before the delete, landing within W + 1 s), so gc waits for
    // it (G7) before it looks at "dep".
    let cache = Cache::new();
    cache.add("dep", &[], 60 * DAY);
    cache.add("top", &["dep"], 60 * DAY);
    let top = cache.root().join(layout::narinfo_key(&path("top")));
    let body = std::fs::read(&top).unwrap();
    let watched = top.clone();
    let refresh = tokio::spawn(async move {
        while watched.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::fs::write(&watched, &body).unwrap();
    });
    collect(&cache.sink(), &policy(30 * DAY), false, &|_| {})
        .await
        .unwrap();
    refresh.await.unwrap();
    for key in [keys_of(&cache, "top"), keys_of(&cache, "dep")].concat() {
        assert!(cache.root().join(&key).exists(), "{key} was deleted");
    }
}

#[path = "pin_tests.rs"]
mod pins;

#[path = "build_trace_tests.rs"]
mod build_trace_entries;

#[tokio::test]
async fn a_realisation_too_big_to_be_one_is_kept_and_not_read() {
    let cache = Cache::new();
    cache.add("old", &[], 60 * DAY);
    // A realisation of old's output, padded past what one can be: read, it would go with
    // its output; kept, it was not read.
    let key = add_realisation(&cache, 3, "old", &[], 60 * DAY);
    let file = cache.root().join(&key);
    let mut body = std::fs::read_to_string(&file).unwrap();
    body.push_str(&" ".repeat(crate::upstream::MAX_NARINFO * 4));
    cache.write(&key, &body, 60 * DAY);
    let plan = cache.plan(&policy(30 * DAY)).await;
    assert!(deleted_names(&plan).contains(&layout::narinfo_key(&path("old"))));
    assert!(!deleted_names(&plan).contains(&key), "read, it would go");
}
