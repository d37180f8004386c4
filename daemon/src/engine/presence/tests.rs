//! The trust rules of the module doc: on the set itself, and through a running engine (on
//! tokio's paused clock) against a directory cache.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::engine::compress::Compression;
use crate::engine::stream::StreamSettings;
use crate::engine::{Engine, EngineConfig, Report, Reports};
use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::format::signing::{SigningKey, VerifyingKey};
use crate::layout;
use crate::sink::{Sink, TargetUrl};
use crate::store::PathInfo;

fn path(name: &str) -> StorePath {
    StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap()
}

#[test]
fn trust_lasts_known_for_or_refresh_after_if_shorter() {
    assert_eq!(trust_for(Duration::from_secs(24 * 3600)), KNOWN_FOR);
    assert_eq!(trust_for(Duration::from_secs(60)), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_path_is_trusted_until_its_evidence_is_too_old_and_forgotten_on_clear() {
    let dep = path("dep");
    let mut known = KnownPresent::default();
    assert!(!known.contains(&dep));
    known.found(dep.clone(), Duration::from_secs(60));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(known.contains(&dep));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!known.contains(&dep));
    known.found(dep.clone(), Duration::from_secs(60));
    known.clear();
    assert!(!known.contains(&dep));
}

#[tokio::test(start_paused = true)]
async fn the_set_stays_within_its_capacity() {
    let mut known = KnownPresent::default();
    for i in 0..=CAPACITY {
        let name = format!("{:0>32}-p{i}", "");
        known.found(
            StorePath::from_basename(&name).unwrap(),
            Duration::from_secs(60),
        );
    }
    assert!(known.len() <= CAPACITY, "{} paths", known.len());
}

/// A directory cache holding `path` (narinfo signed by `keys`, and its NAR); `path`'s store
/// metadata.
fn cache_with(dir: &Path, path: &StorePath, keys: &[&SigningKey]) -> PathInfo {
    let nar_url = format!("nar/{}.nar", path.hash_part());
    let mut narinfo = NarInfo {
        store_path: path.clone(),
        url: nar_url.clone(),
        compression: "none".to_owned(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 3,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    for key in keys {
        narinfo.add_signature(key).unwrap();
    }
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(dir.join(&nar_url), b"nar").unwrap();
    std::fs::write(dir.join(layout::narinfo_key(path)), narinfo.to_string()).unwrap();
    PathInfo {
        path: path.clone(),
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
        references: Vec::new(),
        deriver: None,
        ca: None,
        signatures: Vec::new(),
    }
}

async fn engine_config(dir: &Path, key: SigningKey, refresh_after: Duration) -> EngineConfig {
    let url = TargetUrl::parse(&format!("file://{}", dir.display())).unwrap();
    let sink = Sink::open(&url, Duration::from_secs(60)).await.unwrap();
    EngineConfig::new(
        Arc::new(sink),
        url.to_string(),
        Arc::new(vec![key]),
        StreamSettings::new(Compression::None, 0),
        1,
        4,
        false,
    )
    .with_refresh_after(refresh_after)
}

/// The reports of one submission of `info` as a top, up to its own end.
async fn push(engine: &Engine, reports: &mut Reports, info: &PathInfo) -> Vec<Report> {
    engine.submit_resolved(vec![info.clone()], vec![info.path.clone()], Vec::new());
    let mut seen = Vec::new();
    loop {
        let report = tokio::time::timeout(Duration::from_secs(3600), reports.recv())
            .await
            .expect("the engine answers")
            .expect("the engine runs");
        let end = matches!(&report, Report::TopDone(top) | Report::TopFailed { top, .. } if *top == info.path);
        seen.push(report);
        if end {
            return seen;
        }
    }
}

fn looked_up(reports: &[Report]) -> bool {
    reports.iter().any(|r| matches!(r, Report::Present(_)))
}

fn done(reports: &[Report]) -> bool {
    matches!(reports.last(), Some(Report::TopDone(_)))
}

#[tokio::test(start_paused = true)]
async fn a_path_pushed_again_and_again_is_looked_up_again_once_its_trust_ends() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate("ours-1").unwrap();
    let info = cache_with(dir.path(), &path("often"), &[&key]);
    let refresh_after = Duration::from_secs(3600);
    let trust = trust_for(refresh_after);
    let config = engine_config(dir.path(), key, refresh_after).await;
    let (engine, mut reports, _task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);

    let first = push(&engine, &mut reports, &info).await;
    assert!(looked_up(&first) && done(&first), "{first:?}");
    let mut last_lookup = Instant::now();
    // Pushed every 5 minutes for twice refresh_after: each push within the trust is answered
    // from it, and the first one after it is looked up.
    let every = Duration::from_secs(300);
    for _ in 0..(2 * refresh_after.as_secs() / every.as_secs()) {
        tokio::time::advance(every).await;
        let reports = push(&engine, &mut reports, &info).await;
        assert!(done(&reports), "{reports:?}");
        let due = last_lookup.elapsed() >= trust;
        assert_eq!(
            looked_up(&reports),
            due,
            "{:?} after the last lookup: {reports:?}",
            last_lookup.elapsed()
        );
        if due {
            last_lookup = Instant::now();
        }
    }

    // Collected from the cache (as `narpush gc` would): once the trust ends, the path is no
    // longer reported done on the engine's memory.
    std::fs::remove_file(dir.path().join(layout::narinfo_key(&info.path))).unwrap();
    tokio::time::advance(trust).await;
    let reports = push(&engine, &mut reports, &info).await;
    assert!(!done(&reports), "{reports:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_signing_key_forgets_what_the_old_key_made_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let old = SigningKey::generate("ours-1").unwrap();
    let new = SigningKey::generate("ours-2").unwrap();
    let info = cache_with(dir.path(), &path("old-key"), &[&old]);
    let refresh_after = Duration::from_secs(3600);
    let config = engine_config(dir.path(), old.clone(), refresh_after).await;
    let (engine, mut reports, _task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);
    let first = push(&engine, &mut reports, &info).await;
    assert!(looked_up(&first) && done(&first), "{first:?}");

    // The same key again (a reload that changed something else): still trusted.
    engine.reconfigure(Arc::new(
        engine_config(dir.path(), old, refresh_after).await,
    ));
    let again = push(&engine, &mut reports, &info).await;
    assert!(!looked_up(&again) && done(&again), "{again:?}");

    // Another key: the narinfo signed by the old one no longer counts, so the path is not
    // done until it is uploaded again (here it cannot be: it is not in the store).
    engine.reconfigure(Arc::new(
        engine_config(dir.path(), new, refresh_after).await,
    ));
    let rekeyed = push(&engine, &mut reports, &info).await;
    assert!(!done(&rekeyed), "{rekeyed:?}");
}

#[tokio::test(start_paused = true)]
async fn other_upstream_trust_forgets_what_the_old_upstreams_served() {
    let target = tempfile::tempdir().unwrap();
    let upstream_dir = tempfile::tempdir().unwrap();
    let ours = SigningKey::generate("ours-1").unwrap();
    let theirs = SigningKey::generate("upstream-1").unwrap();
    let info = cache_with(upstream_dir.path(), &path("upstream"), &[&theirs]);
    let refresh_after = Duration::from_secs(3600);
    let with_upstream = |keys: Vec<VerifyingKey>| {
        let caches =
            vec![crate::upstream::UpstreamUrl::File(upstream_dir.path().to_owned()).into()];
        crate::upstream::Upstream::new(caches, keys)
    };
    let config = engine_config(target.path(), ours.clone(), refresh_after)
        .await
        .with_upstream(with_upstream(vec![theirs.public_key()]));
    let (engine, mut reports, _task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);
    let first = push(&engine, &mut reports, &info).await;
    assert!(
        first.iter().any(|r| matches!(r, Report::Upstream { .. })) && done(&first),
        "{first:?}"
    );

    // The upstream's key is no longer trusted: what it served no longer counts.
    let config = engine_config(target.path(), ours, refresh_after)
        .await
        .with_upstream(with_upstream(Vec::new()));
    engine.reconfigure(Arc::new(config));
    let after = push(&engine, &mut reports, &info).await;
    assert!(!done(&after), "{after:?}");
}
