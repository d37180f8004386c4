//! Transitions under concurrency: a change that no longer applies leaves the record as the
//! other writer made it, and no transition ever removes an entry it did not mean to.

use super::super::*;
use super::{added, finished, renewed, retried, Change, Current};

fn new(n: usize) -> NewPath {
    NewPath {
        path: path(n),
        source: Source::Hook,
        drv: None,
        realisations: Vec::new(),
    }
}

fn path(n: usize) -> StorePath {
    StorePath::from_absolute_path(&format!("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-p{n}"))
        .unwrap()
}

/// A queue of `count` entries, all `failed`.
async fn all_failed(count: usize) -> (tempfile::TempDir, Queue, Vec<NewPath>) {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let paths: Vec<NewPath> = (0..count).map(new).collect();
    queue.enqueue(&paths).await.unwrap();
    for item in &paths {
        let outcome = Outcome::Failed {
            error: "gone".into(),
        };
        queue.finish(&item.path, &outcome).unwrap();
    }
    (dir, queue, paths)
}

/// Every entry is there and pending; none was lost.
fn assert_all_pending(queue: &Queue, count: usize) {
    let scan = queue.scan().unwrap();
    assert!(scan.corrupt.is_empty(), "{:?}", scan.corrupt);
    assert_eq!(
        scan.entries.len(),
        count,
        "{} of {count} entries were lost",
        count - scan.entries.len()
    );
    let not_pending = scan
        .entries
        .iter()
        .filter(|e| e.state != State::Pending)
        .count();
    assert_eq!(not_pending, 0, "entries not pending");
}

const MANY: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_retries_of_everything_lose_no_entry() {
    let (_dir, queue, _) = all_failed(MANY).await;
    let first = tokio::spawn({
        let queue = queue.clone();
        async move { queue.retry(true, &[]).await.unwrap() }
    });
    let second = tokio::spawn({
        let queue = queue.clone();
        async move { queue.retry(true, &[]).await.unwrap() }
    });
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_all_pending(&queue, MANY);
    assert_eq!(first + second, MANY, "each entry is retried exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_beside_an_enqueue_of_the_same_paths_loses_no_entry() {
    let (_dir, queue, paths) = all_failed(MANY).await;
    let retry = tokio::spawn({
        let queue = queue.clone();
        async move { queue.retry(true, &[]).await.unwrap() }
    });
    let enqueue = tokio::spawn({
        let queue = queue.clone();
        async move { queue.enqueue(&paths).await.unwrap() }
    });
    retry.await.unwrap();
    enqueue.await.unwrap();
    assert_all_pending(&queue, MANY);
}

#[tokio::test]
async fn finishing_an_entry_whose_record_is_corrupt_leaves_the_record_for_retry() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let key = path(1).to_absolute();
    queue.enqueue(&[new(1)]).await.unwrap();
    queue
        .handle()
        .unwrap()
        .paths
        .insert(key.as_bytes(), b"{not json".to_vec())
        .unwrap();
    queue.finish(&path(1), &Outcome::Done).unwrap();
    let scan = queue.scan().unwrap();
    assert_eq!(
        scan.corrupt
            .iter()
            .map(|c| c.key.as_str())
            .collect::<Vec<_>>(),
        [key.as_str()],
        "the record stays, shown by status and replaced by retry"
    );
}

fn entry(state: State) -> Entry {
    Entry {
        path: path(1),
        state,
        attempts: 3,
        next_attempt_ms: 10,
        last_error: Some("503".into()),
        arrived_ms: 1,
        source: Source::Hook,
        drv: None,
        updated_ms: 5,
        realisations: Vec::new(),
        skipped: None,
    }
}

const OTHER_STATES: [State; 3] = [State::Pending, State::Uploading, State::Done];

#[test]
fn retry_does_not_apply_to_an_entry_that_is_not_failed_nor_to_a_missing_or_corrupt_one() {
    for state in OTHER_STATES {
        assert_eq!(retried(Current::Entry(entry(state)), 99), Change::Keep);
    }
    assert_eq!(retried(Current::Absent, 99), Change::Keep);
    assert_eq!(retried(Current::Corrupt, 99), Change::Keep);
    let Change::Put(put) = retried(Current::Entry(entry(State::Failed)), 99) else {
        panic!("a failed entry is retried")
    };
    assert_eq!(
        (put.state, put.attempts, put.last_error),
        (State::Pending, 0, None)
    );
}

#[test]
fn finish_does_not_apply_to_a_missing_or_corrupt_record() {
    for outcome in [
        Outcome::Done,
        Outcome::Failed { error: "x".into() },
        Outcome::RetryAt {
            at_ms: 1,
            error: "x".into(),
        },
    ] {
        assert_eq!(finished(Current::Absent, &outcome, 9), Change::Keep);
        assert_eq!(finished(Current::Corrupt, &outcome, 9), Change::Keep);
        assert!(matches!(
            finished(Current::Entry(entry(State::Uploading)), &outcome, 9),
            Change::Put(_)
        ));
    }
}

#[test]
fn enqueue_does_not_touch_a_queued_entry_unless_it_brings_new_realisations() {
    for state in [State::Pending, State::Uploading] {
        assert_eq!(
            added(Current::Entry(entry(state)), &new(1), 9),
            Change::Keep
        );
    }
    for current in [
        Current::Absent,
        Current::Corrupt,
        Current::Entry(entry(State::Done)),
        Current::Entry(entry(State::Failed)),
    ] {
        let Change::Put(put) = added(current, &new(1), 9) else {
            panic!("a fresh entry")
        };
        assert_eq!(
            (put.state, put.attempts, put.arrived_ms),
            (State::Pending, 0, 9)
        );
    }
}

#[test]
fn a_corrupt_record_is_renewed_only_while_it_is_still_corrupt() {
    for state in [State::Pending, State::Uploading, State::Done, State::Failed] {
        assert_eq!(
            renewed(Current::Entry(entry(state)), &path(1), 9),
            Change::Keep
        );
    }
    assert_eq!(renewed(Current::Absent, &path(1), 9), Change::Keep);
    assert!(matches!(
        renewed(Current::Corrupt, &path(1), 9),
        Change::Put(Entry {
            state: State::Pending,
            ..
        })
    ));
}

#[tokio::test]
async fn an_update_that_does_not_apply_leaves_the_record_byte_for_byte() {
    let (_dir, queue, _) = all_failed(1).await;
    let handle = queue.handle().unwrap();
    let key = path(0).to_absolute();
    let before = handle.paths.get(key.as_bytes()).unwrap();
    let changed = queue.update(&handle, &key, |_| Change::Keep).unwrap();
    assert!(!changed);
    assert_eq!(handle.paths.get(key.as_bytes()).unwrap(), before);
    let absent = path(7).to_absolute();
    assert!(!queue.update(&handle, &absent, |_| Change::Keep).unwrap());
    assert!(handle.paths.get(absent.as_bytes()).unwrap().is_none());
}
