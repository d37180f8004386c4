//! Unit tests of `verify` on a real directory cache written by hand (the end-to-end tests in
//! tests/verify.rs use caches written by `narpush upload`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::report::Kind;
use super::{verify, Options, Report};
use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::format::signing::SigningKey;
use crate::format::store_path::StorePath;
use crate::sink::{Sink, TargetUrl};
use crate::upstream::{Upstream, UpstreamCache, UpstreamUrl};

const HOUR: Duration = Duration::from_secs(3600);

fn path(name: &str) -> StorePath {
    let hash = match name {
        "top" => "00000000000000000000000000000001",
        "lib" => "00000000000000000000000000000002",
        "gone" => "00000000000000000000000000000003",
        "other" => "00000000000000000000000000000004",
        _ => panic!("no path {name}"),
    };
    StorePath::from_basename(&format!("{hash}-{name}")).unwrap()
}

struct Cache {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Cache {
    fn new() -> Cache {
        let cache = Cache {
            dir: tempfile::tempdir().unwrap(),
            key: SigningKey::generate("unit-1").unwrap(),
        };
        cache.write(
            "nix-cache-info",
            b"StoreDir: /nix/store\nWantMassQuery: 1\n",
        );
        cache
    }

    fn write(&self, key: &str, body: &[u8]) {
        let file = self.dir.path().join(key);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, body).unwrap();
    }

    /// A path whose NAR (uncompressed) is `nar` under `url`, signed.
    fn add(&self, name: &str, nar: &[u8], url: &str, references: &[&str]) -> NarInfo {
        let mut narinfo = NarInfo {
            store_path: path(name),
            url: url.to_owned(),
            compression: "none".to_owned(),
            file_hash: Some(Sha256::digest(nar)),
            file_size: Some(nar.len() as u64),
            nar_hash: Sha256::digest(nar),
            nar_size: nar.len() as u64,
            references: references.iter().map(|r| path(r)).collect(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
        };
        narinfo.add_signature(&self.key).unwrap();
        self.write(url, nar);
        self.put_narinfo(&narinfo);
        narinfo
    }

    fn put_narinfo(&self, narinfo: &NarInfo) {
        let key = format!("{}.narinfo", narinfo.store_path.hash_part());
        self.write(&key, narinfo.to_string().as_bytes());
    }

    fn options(&self, now: SystemTime) -> Options {
        Options {
            keys: vec![self.key.public_key()],
            grace: HOUR,
            nar_hash: false,
            upstream: None,
            now,
            settled: Default::default(),
        }
    }

    async fn verify(&self, options: &Options) -> Report {
        let url = TargetUrl::parse(&format!("file://{}", self.dir.path().display())).unwrap();
        let sink = Sink::open_for_reading(&url, Duration::from_secs(5))
            .await
            .unwrap();
        verify(&sink, "test", options, &|_| {}).await.unwrap()
    }
}

/// Two hours from now: everything written by the test is older than the grace period.
fn later() -> SystemTime {
    SystemTime::now() + 2 * HOUR
}

#[tokio::test]
async fn a_whole_cache_is_whole_and_a_problem_is_in_flight_only_while_young() {
    let cache = Cache::new();
    cache.add("lib", b"lib nar", "nar/lib.nar", &[]);
    let mut top = cache.add("top", b"top nar", "nar/top.nar", &["lib", "top"]);
    let drv = format!("{}-top.drv", path("lib").hash_part());
    top.deriver = Some(drv.clone());
    cache.put_narinfo(&top);
    cache.write(&format!("log/{drv}"), b"build log");
    cache.write(&format!("{}.ls", path("top").hash_part()), b"{}");
    let realisation = crate::format::realisation::Realisation {
        id: format!("sha256:{}!out", "1".repeat(64)).parse().unwrap(),
        out_path: path("top"),
        signatures: Default::default(),
        dependent_realisations: Default::default(),
        drv: None,
    };
    cache.write(
        &crate::layout::realisation_key(&realisation.id),
        realisation.to_json().as_bytes(),
    );
    let report = cache.verify(&cache.options(later())).await;
    assert!(report.whole, "{}", report.to_text());
    assert_eq!(report.objects, 8);
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.keys.seen.get("unit-1"), Some(&2));

    std::fs::remove_file(cache.dir.path().join("nar/lib.nar")).unwrap();
    let young = cache.verify(&cache.options(SystemTime::now())).await;
    assert!(young.whole);
    assert_eq!(young.in_flight.count, 1);
    assert_eq!(young.problems.missing_nars.count, 0);
    let old = cache.verify(&cache.options(later())).await;
    assert!(!old.whole);
    assert_eq!(old.exit_code(), 1);
    assert_eq!(old.problems.of(Kind::MissingNars).count, 1);
    assert_eq!(
        old.problems.missing_nars.examples[0].key,
        format!("{}.narinfo", path("lib").hash_part())
    );
    assert!(old.to_text().contains("NOT whole: 1 problem(s)"));
}

#[tokio::test]
async fn a_missing_reference_counts_once_unchecked_or_asked_upstream() {
    let cache = Cache::new();
    cache.add("lib", b"lib nar", "nar/lib.nar", &["gone"]);
    cache.add("top", b"top nar", "nar/top.nar", &["gone", "lib"]);
    cache.write("pins/release", crate::pins::body(&path("top")).as_bytes());
    let report = cache.verify(&cache.options(later())).await;
    assert!(report.whole, "{}", report.to_text());
    assert_eq!(report.unchecked_references.count, 1);
    assert!(
        report.pins[0].whole,
        "a pin over an unchecked reference is not broken"
    );

    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = |dir: &Path| {
        Upstream::new(
            vec![UpstreamCache::from(UpstreamUrl::File(dir.to_owned()))],
            vec![cache.key.public_key()],
        )
    };
    let mut options = cache.options(later());
    options.upstream = Some(upstream(upstream_dir.path()));
    let report = cache.verify(&options).await;
    assert_eq!(report.problems.missing_references.count, 1);
    assert_eq!(report.unchecked_references.count, 0);
    assert_eq!(report.problems.of(Kind::BrokenPins).count, 1);

    let served = Cache {
        dir: upstream_dir,
        key: cache.key.clone(),
    };
    served.add("gone", b"gone nar", "nar/gone.nar", &[]);
    options.upstream = Some(upstream(served.dir.path()));
    let report = cache.verify(&options).await;
    assert!(report.whole, "{}", report.to_text());
    assert_eq!(report.upstream_references.count, 1);
    assert!(
        report.pins[0].whole,
        "a pin over a reference upstream serves is whole"
    );
}

#[tokio::test]
async fn objects_too_big_to_be_metadata_are_problems_and_are_not_read() {
    let cache = Cache::new();
    cache.add("top", b"top nar", "nar/top.nar", &[]);
    let huge = super::MAX_METADATA_BYTES as usize + 1;
    // Sparse: the listing shows the size, reading it would take it all.
    let narinfo = cache
        .dir
        .path()
        .join(format!("{}.narinfo", path("other").hash_part()));
    std::fs::File::create(&narinfo)
        .unwrap()
        .set_len(huge as u64 * 1024)
        .unwrap();
    let realisation = cache
        .dir
        .path()
        .join(format!("realisations/sha256:{}!out.doi", "2".repeat(64)));
    std::fs::create_dir_all(realisation.parent().unwrap()).unwrap();
    std::fs::File::create(&realisation)
        .unwrap()
        .set_len(huge as u64)
        .unwrap();
    let pin = cache.dir.path().join("pins/huge");
    std::fs::create_dir_all(pin.parent().unwrap()).unwrap();
    std::fs::File::create(&pin)
        .unwrap()
        .set_len(crate::pins::MAX_PIN_BYTES + 1)
        .unwrap();
    let report = cache.verify(&cache.options(later())).await;
    assert_eq!(report.problems.of(Kind::UnparseableNarinfos).count, 1);
    assert_eq!(report.problems.of(Kind::RealisationsWithoutPath).count, 1);
    assert_eq!(report.problems.of(Kind::BrokenPins).count, 1);
    assert!(
        report.problems.of(Kind::UnparseableNarinfos).examples[0]
            .detail
            .contains("not read"),
        "{}",
        report.to_text()
    );
}

#[tokio::test]
async fn a_shared_nar_is_checked_against_every_narinfo_naming_it() {
    let cache = Cache::new();
    cache.add("lib", b"shared nar", "nar/shared.nar", &[]);
    let mut top = cache.add("top", b"shared nar", "nar/shared.nar", &[]);
    top.nar_hash = Sha256::digest(b"something else");
    top.signatures.clear();
    top.add_signature(&cache.key).unwrap();
    cache.put_narinfo(&top);
    let mut options = cache.options(later());
    let report = cache.verify(&options).await;
    assert!(report.whole, "sizes agree: only --nar-hash can tell");
    options.nar_hash = true;
    let report = cache.verify(&options).await;
    assert_eq!(report.problems.nar_hash_mismatches.count, 1);
    assert_eq!(
        report.problems.nar_hash_mismatches.examples[0].key,
        format!("{}.narinfo", path("top").hash_part())
    );
}

#[tokio::test]
async fn unsigned_narinfos_orphans_and_pins_are_reported() {
    let cache = Cache::new();
    cache.add("lib", b"lib nar", "nar/lib.nar", &[]);
    cache.add("top", b"top nar", "nar/top.nar", &["lib"]);
    let mut other = cache.add("other", b"other nar", "nar/other.nar", &[]);
    other.signatures = vec![SigningKey::generate("stranger-1")
        .unwrap()
        .sign(&other.fingerprint().unwrap())];
    cache.put_narinfo(&other);
    cache.write("nar/stray.nar", b"12345");
    cache.write(
        "pins/release",
        format!("StorePath: {}\n", path("top")).as_bytes(),
    );
    let report = cache.verify(&cache.options(later())).await;
    assert_eq!(report.problems.unverified_signatures.count, 1);
    assert!(report.problems.unverified_signatures.examples[0]
        .detail
        .contains("stranger-1"));
    assert_eq!(report.keys.seen.get("stranger-1"), Some(&1));
    assert_eq!(report.problems.orphan_nars.count, 1);
    assert_eq!(report.orphan_nar_bytes, 5);
    assert!(report.pins[0].whole);
    assert_eq!(report.problem_count, 2);

    std::fs::remove_file(cache.dir.path().join("nar/lib.nar")).unwrap();
    let report = cache.verify(&cache.options(later())).await;
    assert!(!report.pins[0].whole);
    assert_eq!(report.problems.broken_pins.count, 1);
    assert!(report.problems.broken_pins.examples[0]
        .detail
        .contains(&path("lib").to_absolute()));
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_is_a_read_failure_not_a_problem() {
    let cache = Cache::new();
    cache.add("top", b"top nar", "nar/top.nar", &["gone"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let mut options = cache.options(later());
    options.upstream = Some(Upstream::new(
        vec![UpstreamCache::from(
            UpstreamUrl::parse(&format!("http://{address}")).unwrap(),
        )],
        vec![cache.key.public_key()],
    ));
    let url = TargetUrl::parse(&format!("file://{}", cache.dir.path().display())).unwrap();
    let sink = Sink::open_for_reading(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let error = verify(&sink, "test", &options, &|_| {}).await.unwrap_err();
    assert!(
        matches!(&error, super::VerifyError::UpstreamUnreachable { caches } if caches.contains(&address.to_string())),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_or_foreign_cache_description_is_a_problem() {
    let cache = Cache::new();
    cache.add("top", b"top nar", "nar/top.nar", &[]);
    cache.write("nix-cache-info", b"StoreDir: /gnu/store\n");
    let report = cache.verify(&cache.options(later())).await;
    assert_eq!(report.problems.of(Kind::CacheInfo).count, 1);
    assert!(
        report.to_text().contains("/gnu/store"),
        "{}",
        report.to_text()
    );
    std::fs::remove_file(cache.dir.path().join("nix-cache-info")).unwrap();
    let report = cache.verify(&cache.options(later())).await;
    assert_eq!(report.exit_code(), 1);
    assert!(report.problems.of(Kind::CacheInfo).examples[0]
        .detail
        .contains("missing"));
}

#[tokio::test]
async fn a_settled_narinfo_is_never_in_flight_nor_is_its_nar() {
    // `verify --repair`'s last look: what it just wrote is young, but a break in it is its own.
    let cache = Cache::new();
    cache.add("lib", b"lib nar", "nar/lib.nar", &[]);
    cache.add("top", b"top nar", "nar/top.nar", &["lib", "top"]);
    std::fs::remove_file(
        cache
            .dir
            .path()
            .join(format!("{}.narinfo", path("lib").hash_part())),
    )
    .unwrap();
    std::fs::write(cache.dir.path().join("nar/top.nar"), b"truncated").unwrap();
    let young = cache.verify(&cache.options(SystemTime::now())).await;
    assert!(young.whole, "{}", young.to_text());

    let mut settled = cache.options(SystemTime::now());
    settled.settled = [format!("{}.narinfo", path("top").hash_part())].into();
    let report = cache.verify(&settled).await;
    assert!(!report.whole);
    assert_eq!(report.problems.of(Kind::NarSizeMismatches).count, 1);
    assert_eq!(report.exit_code(), 1);
}
