//! The pipeline's GC-root rule on a daemon's real shared state: a root is released only once
//! the queue says the entry is done or gone.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::queue::{NewPath, State};
use narpush_protocol::Source;

fn throttled() -> Failure {
    Failure {
        class: ErrorClass::Transient,
        message: "503 SlowDown".to_owned(),
        retry_after: None,
    }
}

/// A daemon's shared state in `dir`, with an engine that has nothing to do.
async fn shared_in(dir: &std::path::Path) -> Arc<Shared> {
    let config = Config {
        state_dir: dir.join("state"),
        spool_dir: dir.join("spool"),
        gc_roots_dir: dir.join("roots"),
        ..Config::default()
    };
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let queue = Queue::open(&config.state_dir.join("queue")).unwrap();
    let intake = super::super::intake::Intake::open(&config.state_dir, &queue);
    let roots = GcRoots::open(&config.gc_roots_dir).unwrap();
    let settings = super::super::settings::Settings::load(config, None)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (engine, _reports, _task) =
        crate::engine::Engine::start(settings.engine.clone(), stop.clone(), Duration::ZERO);
    Arc::new(Shared::new(
        queue, intake, roots, settings, engine, stop, None,
    ))
}

#[tokio::test]
async fn a_queue_that_cannot_be_read_keeps_the_gc_root_of_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_in(dir.path()).await;
    let path = StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-kept").unwrap();
    let root = dir.path().join("roots").join(path.basename());
    shared
        .roots
        .protect(std::slice::from_ref(&path))
        .await
        .unwrap();
    shared
        .queue
        .enqueue(&[NewPath {
            path: path.clone(),
            source: Source::Push,
            drv: None,
            realisations: Vec::new(),
        }])
        .await
        .unwrap();
    assert_eq!(
        shared
            .queue
            .take_due(now_ms() + 1, 10, 20, true)
            .entries
            .len(),
        1
    );

    // The upload fails while the queue cannot be read (a transient error): the entry is
    // still owed, so its root stays.
    shared.queue.fail_for_test("disk full");
    let mut books = Books::default();
    finish(&shared, &mut books, &path, Some(&throttled()));
    assert!(
        std::fs::symlink_metadata(&root).is_ok(),
        "the root was removed on a read error"
    );
    // Nor does a release that cannot read the queue remove it.
    release_root(&shared.queue, &shared.roots, &path);
    assert!(
        std::fs::symlink_metadata(&root).is_ok(),
        "the root was released on a read error"
    );

    // Open again, the outcome is recorded (pending, to retry): the root still stays.
    shared.queue.reopen().unwrap();
    assert!(books.record_again(&shared.queue, |p| {
        release_root(&shared.queue, &shared.roots, p);
    }));
    assert_eq!(
        shared.queue.get(&path).unwrap().unwrap().state,
        State::Pending
    );
    assert!(std::fs::symlink_metadata(&root).is_ok());

    // Uploaded: the queue says done, and only now is the root released.
    assert_eq!(
        shared
            .queue
            .take_due(now_ms() + 86_400_000, 10, 20, true)
            .entries
            .len(),
        1
    );
    finish(&shared, &mut books, &path, None);
    assert_eq!(shared.queue.get(&path).unwrap().unwrap().state, State::Done);
    assert!(std::fs::symlink_metadata(&root).is_err());
}
