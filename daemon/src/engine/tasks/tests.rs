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
use crate::format::narinfo::NarInfo;
use crate::format::signing::SigningKey;
use crate::layout;
use crate::sink::{Sink, TargetUrl};

fn modified(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

#[tokio::test]
async fn a_nar_with_the_bytes_of_one_under_collection_gets_a_name_of_its_own_and_no_wait() {
    let info = crate::engine::test_store::add(
        "narpush-settle-test",
        b"the same bytes as a NAR that gc is about to delete\n",
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    // The NAR as an earlier writer left it, named by its FileHash as Nix names NARs, 40 days
    // ago: gc has listed it as garbage and is about to delete it (rule U6's case).
    let old_key = format!("nar/{}.nar", info.nar_hash.to_nix32());
    let old_file = cache.path().join(&old_key);
    std::fs::create_dir_all(old_file.parent().unwrap()).unwrap();
    let mut nar = Vec::new();
    crate::format::nar::dump(Path::new(&info.path.to_absolute()), &mut nar).unwrap();
    std::fs::write(&old_file, &nar).unwrap();
    let old = SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old_file)
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
    // gc's delete, allowed by a HEAD before the upload, lands now.
    std::fs::remove_file(&old_file).unwrap();

    assert!(matches!(end, Report::TopDone(_)), "{end:?}");
    assert!(
        took < crate::coexist::STORED_SETTLE,
        "the narinfo waited {took:?} for a look (U6) at a NAR no one else could have named"
    );
    let narinfo_file = cache.path().join(layout::narinfo_key(&info.path));
    let narinfo = NarInfo::parse(&std::fs::read_to_string(&narinfo_file).unwrap()).unwrap();
    assert_ne!(
        narinfo.url, old_key,
        "the NAR was written under the shared name"
    );
    assert!(
        !layout::is_named_by_file_hash(&narinfo.url),
        "{} is a name other uploads may write",
        narinfo.url
    );
    assert!(
        cache.path().join(&narinfo.url).exists(),
        "the narinfo names {}, which the collection of the old NAR took",
        narinfo.url
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
    let requests = tokio::sync::Semaphore::new(1);
    let mut slot = super::Slot::take(&requests).await;
    let refreshed = super::refresh(&sink, key, found(), &slow, &mut slot)
        .await
        .unwrap();
    assert_eq!(refreshed, None, "a refresh was written past the bound");
    assert_eq!(modified(&narinfo), Some(old));
    // Within the bound: written, and looked at again S later.
    let refreshed = super::refresh(&sink, key, found(), &Check::begin(), &mut slot)
        .await
        .unwrap();
    assert_eq!(refreshed, Some(Lookup::Present));
    assert_ne!(modified(&narinfo), Some(old));
}

#[tokio::test(start_paused = true)]
async fn a_lookup_gives_its_request_slot_back_while_it_waits_to_look_again() {
    // One slot for two lookups: the second may send its requests while the first waits out
    // S (U1's wait for a young narinfo), instead of waiting S behind it.
    let requests = tokio::sync::Semaphore::new(1);
    let mut first = super::Slot::take(&requests).await;
    assert_eq!(requests.available_permits(), 0);
    let started = Instant::now();
    let waiting = first.sleep(crate::coexist::REFRESH_SETTLE);
    let second = async {
        let _slot = super::Slot::take(&requests).await;
        Instant::now() - started
    };
    let ((), took) = tokio::join!(waiting, second);
    assert!(
        took < crate::coexist::REFRESH_SETTLE,
        "the second lookup waited {took:?} for the first one's wait"
    );
    assert_eq!(
        requests.available_permits(),
        0,
        "the first holds a slot again"
    );
    drop(first);
    assert_eq!(requests.available_permits(), 1);
}
