//! The queue's contract: what survives a reopen, and how states move.

use super::*;

const A: &str = "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep";
const B: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top";

fn new(path: &str) -> NewPath {
    NewPath {
        path: sp(path),
        source: Source::Hook,
        drv: None,
    }
}

fn sp(path: &str) -> StorePath {
    StorePath::from_absolute_path(path).unwrap()
}

async fn reopened(dir: &Path, queue: Queue) -> Queue {
    queue.flush().await.unwrap();
    drop(queue);
    // sled releases its file lock when the last handle (the flusher's) goes away.
    for _ in 0..100 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Ok(queue) = Queue::open(dir) {
            return queue;
        }
    }
    panic!("the queue could not be reopened");
}

#[tokio::test]
async fn enqueued_paths_survive_a_reopen_as_pending() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    let queue = reopened(dir.path(), queue).await;
    let entries = queue.entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e.state == State::Pending && e.source == Source::Hook));
}

#[tokio::test]
async fn uploading_entries_return_to_pending_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    let taken = queue.take_due(now_ms() + 1, 10).unwrap();
    assert_eq!(taken[0].state, State::Uploading);
    let queue = reopened(dir.path(), queue).await;
    assert_eq!(queue.get(&sp(A)).unwrap().unwrap().state, State::Pending);
}

#[tokio::test]
async fn enqueue_leaves_a_queued_path_alone_and_requeues_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    queue
        .finish(
            &sp(A),
            &Outcome::RetryAt {
                at_ms: u64::MAX,
                error: "503".into(),
            },
        )
        .unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    let entry = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!((entry.attempts, entry.next_attempt_ms), (1, u64::MAX));

    queue.finish(&sp(A), &Outcome::Done).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    let entry = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!((entry.state, entry.attempts), (State::Pending, 0));
}

#[tokio::test]
async fn only_due_entries_are_taken_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    queue.enqueue(&[new(B)]).await.unwrap();
    queue
        .finish(
            &sp(B),
            &Outcome::RetryAt {
                at_ms: now_ms() + 60_000,
                error: "x".into(),
            },
        )
        .unwrap();
    let due = queue.take_due(now_ms(), 10).unwrap();
    assert_eq!(
        due.iter().map(|e| e.path.to_absolute()).collect::<Vec<_>>(),
        vec![A]
    );
    assert!(queue.next_due_ms().unwrap().unwrap() > now_ms());
}

#[tokio::test]
async fn retry_requeues_failed_entries_and_resets_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    queue
        .finish(
            &sp(A),
            &Outcome::Failed {
                error: "gone".into(),
            },
        )
        .unwrap();
    queue
        .finish(
            &sp(B),
            &Outcome::Failed {
                error: "gone".into(),
            },
        )
        .unwrap();
    assert_eq!(queue.retry(false, &[sp(A)]).await.unwrap(), 1);
    assert_eq!(queue.get(&sp(A)).unwrap().unwrap().state, State::Pending);
    assert_eq!(queue.get(&sp(B)).unwrap().unwrap().state, State::Failed);
    assert_eq!(queue.retry(true, &[]).await.unwrap(), 1);
}

#[tokio::test]
async fn prune_drops_old_done_entries_only() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    queue.finish(&sp(A), &Outcome::Done).unwrap();
    let day_later = now_ms() + DONE_RETENTION.as_millis() as u64 + 1;
    assert_eq!(queue.prune(day_later).unwrap(), 1);
    assert!(queue.get(&sp(A)).unwrap().is_none());
    assert!(queue.get(&sp(B)).unwrap().is_some());
}

#[tokio::test]
async fn upload_counters_accumulate() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.add_uploaded(2, 100).unwrap();
    queue.add_uploaded(1, 50).unwrap();
    assert_eq!(queue.uploaded().unwrap(), (3, 150));
}

#[tokio::test]
async fn concurrent_enqueues_share_flushes_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-p{i}");
            queue.enqueue(&[new(&path)]).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(queue.entries().unwrap().len(), 32);
}
