//! The pipeline's books across a queue reopen: the reopen puts entries the engine still holds
//! back to `pending`, and taking them again must neither hand them over twice nor leave room
//! in the engine counted for reports that never come.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::engine::{Engine, StubCommands};
use crate::queue::{NewPath, State};
use narpush_protocol::Source;

/// A daemon's shared state in `dir`, with an engine the test plays itself.
async fn shared_in(dir: &std::path::Path) -> (Arc<Shared>, StubCommands) {
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
    let (engine, commands) = Engine::stub();
    let shared = Shared::new(queue, intake, roots, settings, engine, stop, None);
    (Arc::new(shared), commands)
}

/// Plays the engine as it behaves: one report per distinct path it holds, however often the
/// path is submitted meanwhile.
#[derive(Default)]
struct OnceEngine {
    held: Vec<StorePath>,
    seen: HashSet<StorePath>,
}

impl OnceEngine {
    fn take(&mut self, commands: &mut StubCommands) {
        for top in commands.submitted() {
            if self.seen.insert(top.clone()) {
                self.held.push(top);
            }
        }
    }

    fn reports(&mut self) -> Vec<Report> {
        self.seen.clear();
        self.held.drain(..).map(Report::TopDone).collect()
    }
}

async fn enqueue(queue: &Queue, name: &str) -> StorePath {
    let path =
        StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap();
    queue
        .enqueue(&[NewPath {
            path: path.clone(),
            source: Source::Push,
            drv: None,
            realisations: Vec::new(),
        }])
        .await
        .unwrap();
    path
}

#[tokio::test]
async fn entries_taken_again_after_a_reopen_are_counted_in_the_engine_once() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, mut commands) = shared_in(dir.path()).await;
    let mut books = Books::default();
    let mut admission = Admission::default();
    let mut engine = OnceEngine::default();
    for name in ["one", "two", "three"] {
        enqueue(&shared.queue, name).await;
    }
    take_due(&shared, &mut books, &mut admission).await;
    engine.take(&mut commands);
    assert_eq!(engine.held.len(), 3);

    // The state disk fills while the engine uploads: the queue breaks, and the next take
    // reopens it, which puts the three back to `pending`.
    shared.queue.fail_for_test("disk full");
    take_due(&shared, &mut books, &mut admission).await;
    assert!(!shared.queue.is_broken());
    engine.take(&mut commands);

    for report in engine.reports() {
        on_report(&shared, &mut books, &mut admission, report);
    }
    assert_eq!(
        admission.in_engine(),
        0,
        "every path the engine held was reported on"
    );
    for entry in shared.queue.entries().unwrap() {
        assert_eq!(entry.state, State::Done, "{}", entry.path);
    }

    let four = enqueue(&shared.queue, "four").await;
    take_due(&shared, &mut books, &mut admission).await;
    assert_eq!(commands.submitted(), vec![four]);
    assert_eq!(admission.in_engine(), 1);
}
