//! Rule U6 of the GC–uploader protocol ([`crate::coexist`]) on a running engine: tokio's paused
//! clock, a directory cache, and a path added to the real store (`nix-store --add`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::coexist::{Check, DELETE_WINDOW};
use crate::engine::compress::Compression;
use crate::engine::graph::Lookup;
use crate::engine::stream::StreamSettings;
use crate::engine::{Engine, EngineConfig, Report};
use crate::format::signing::SigningKey;
use crate::format::store_path::StorePath;
use crate::layout;
use crate::sink::{Sink, TargetUrl};
use crate::store::PathInfo;

/// A path in the real store holding one small file: its NAR is named by its FileHash.
async fn store_path_with(contents: &[u8]) -> PathInfo {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("narpush-settle-test");
    std::fs::write(&file, contents).unwrap();
    let out = std::process::Command::new("nix-store")
        .arg("--add")
        .arg(&file)
        .output()
        .expect("nix-store runs");
    assert!(
        out.status.success(),
        "nix-store --add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path =
        StorePath::from_absolute_path(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    crate::store::query_path_infos(&[path], false)
        .await
        .unwrap()
        .remove(0)
}

fn modified(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

#[tokio::test]
async fn a_nar_collected_just_after_it_was_stored_again_is_stored_once_more_before_its_narinfo() {
    let info = store_path_with(b"the same bytes as a NAR that gc is about to delete\n").await;
    let cache = tempfile::tempdir().unwrap();
    // The NAR as an earlier path with the same bytes left it, 40 days ago: gc has listed it
    // as garbage, and its HEAD (unchanged) comes just before the uploader stores it again.
    let nar_key = layout::nar_key_by_file_hash(&info.nar_hash, Compression::None);
    let nar_file = cache.path().join(&nar_key);
    std::fs::create_dir_all(nar_file.parent().unwrap()).unwrap();
    let mut nar = Vec::new();
    crate::format::nar::dump(Path::new(&info.path.to_absolute()), &mut nar).unwrap();
    std::fs::write(&nar_file, &nar).unwrap();
    let old = SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&nar_file)
        .unwrap()
        .set_modified(old)
        .unwrap();

    tokio::time::pause();
    let url = TargetUrl::parse(&format!("file://{}", cache.path().display())).unwrap();
    let sink = Sink::open(&url, Duration::from_secs(60)).await.unwrap();
    let config = EngineConfig::new(
        Arc::new(sink),
        url.to_string(),
        Arc::new(vec![SigningKey::generate("ours-1").unwrap()]),
        StreamSettings::new(Compression::None, 0),
        1,
        4,
        false,
    );
    let (engine, mut reports, _task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);

    // gc's delete, allowed by that HEAD, lands 1 s after the uploader's PUT: inside the
    // bound of the protocol (the HEAD's start + W to send it, + W + 1 s to land).
    let watched = nar_file.clone();
    let gc = tokio::spawn(async move {
        while modified(&watched) == Some(old) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::remove_file(&watched).expect("the NAR stored again is there to delete");
    });

    let started = tokio::time::Instant::now();
    engine.submit_resolved(vec![info.clone()], vec![info.path.clone()], Vec::new());
    let end = loop {
        let report = tokio::time::timeout(Duration::from_secs(3600), reports.recv())
            .await
            .expect("the engine answers")
            .expect("the engine runs");
        if matches!(&report, Report::TopDone(_) | Report::TopFailed { .. }) {
            break report;
        }
    };
    let took = started.elapsed();
    tokio::time::timeout(Duration::from_secs(60), gc)
        .await
        .expect("gc deleted the NAR")
        .unwrap();
    tokio::time::sleep(crate::coexist::REFRESH_SETTLE).await;

    assert!(matches!(end, Report::TopDone(_)), "{end:?}");
    let narinfo = cache.path().join(layout::narinfo_key(&info.path));
    assert!(narinfo.exists(), "the narinfo was not published");
    assert!(
        nar_file.exists(),
        "the narinfo was published, {took:?} after the push, while gc deleted its NAR"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_is_written_only_within_the_bound_of_its_lookup() {
    let cache = tempfile::tempdir().unwrap();
    let key = "0000000000000000000000000000000a.narinfo";
    let (narinfo, nar) = (cache.path().join(key), cache.path().join("nar/a.nar"));
    std::fs::create_dir_all(nar.parent().unwrap()).unwrap();
    std::fs::write(&nar, b"nar").unwrap();
    std::fs::write(&narinfo, b"as found").unwrap();
    let old = SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&narinfo)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let url = TargetUrl::parse(&format!("file://{}", cache.path().display())).unwrap();
    let sink = Sink::open(&url, Duration::from_secs(60)).await.unwrap();
    let found = || super::Found {
        body: bytes::Bytes::from_static(b"as found"),
        modified: old,
        nar_key: "nar/a.nar".to_owned(),
    };
    // A lookup that began longer than W ago: a collection may have deleted the narinfo and
    // gone on to what it references, no longer waiting for a write-back (rule G7).
    let slow = Check::began_at(Instant::now() - DELETE_WINDOW);
    let refreshed = super::refresh(&sink, key, found(), &slow).await.unwrap();
    assert_eq!(refreshed, None, "a refresh was written past the bound");
    assert_eq!(modified(&narinfo), Some(old));
    // Within the bound: written, and looked at again S later.
    let refreshed = super::refresh(&sink, key, found(), &Check::begin())
        .await
        .unwrap();
    assert_eq!(refreshed, Some(Lookup::Present));
    assert_ne!(modified(&narinfo), Some(old));
}
