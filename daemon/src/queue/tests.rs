//! The queue's contract: what survives a reopen, and how states move.

use super::transitions::{Change, Current};
use super::*;

const A: &str = "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep";
const B: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top";

fn new(path: &str) -> NewPath {
    NewPath {
        path: sp(path),
        source: Source::Hook,
        drv: None,
        realisations: Vec::new(),
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
    let taken = queue.take_due(now_ms() + 1, 10, 5, true).entries;
    assert_eq!((taken[0].state, taken[0].attempts), (State::Uploading, 1));
    let queue = reopened(dir.path(), queue).await;
    let entry = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!(entry.state, State::Pending);
    assert_eq!(
        entry.attempts, 1,
        "a crash during the upload counts the attempt"
    );
}

#[tokio::test]
async fn enqueue_leaves_a_queued_path_alone_and_requeues_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    queue.take_due(now_ms() + 1, 10, 5, true);
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
    let due = queue.take_due(now_ms(), 10, 5, true).entries;
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
    assert_eq!(queue.uploaded().unwrap(), UploadTotals::default());
    let before = now_ms();
    queue.add_uploaded(100, 40).unwrap();
    queue.add_uploaded(50, 20).unwrap();
    let totals = queue.uploaded().unwrap();
    assert_eq!(
        (totals.paths, totals.nar_bytes, totals.stored_bytes),
        (2, 150, 60)
    );
    assert!(totals
        .last_ms
        .is_some_and(|ms| ms >= before && ms <= now_ms()));
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

fn path_n(n: usize) -> String {
    format!("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-p{n}")
}

#[tokio::test]
async fn prune_keeps_the_newest_done_entries_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let extra = 25;
    let all: Vec<NewPath> = (0..MAX_DONE + extra).map(|n| new(&path_n(n))).collect();
    queue.enqueue(&all).await.unwrap();
    // Finished one after another, so the first `extra` are the oldest.
    for (n, item) in all.iter().enumerate() {
        let handle = queue.handle().unwrap();
        queue
            .update(&handle, &item.path.to_absolute(), |current| match current {
                Current::Entry(e) => Change::Put(Entry {
                    state: State::Done,
                    updated_ms: 1_000 + n as u64,
                    ..e
                }),
                _ => Change::Keep,
            })
            .unwrap();
    }
    queue.enqueue(&[new(A)]).await.unwrap();
    assert_eq!(queue.prune(2_000).unwrap(), extra);
    let left = queue.entries().unwrap();
    assert_eq!(left.len(), MAX_DONE + 1, "the cap, and the pending entry");
    assert!(queue.get(&sp(&path_n(extra - 1))).unwrap().is_none());
    assert!(queue.get(&sp(&path_n(extra))).unwrap().is_some());
    assert!(queue.get(&sp(A)).unwrap().is_some());
}

#[tokio::test]
async fn prune_leaves_an_entry_requeued_between_its_read_and_its_removal() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    queue.finish(&sp(A), &Outcome::Done).unwrap();
    queue.finish(&sp(B), &Outcome::Done).unwrap();
    let day_later = now_ms() + DONE_RETENTION.as_millis() as u64 + 1;
    let expired = queue.expired(day_later).unwrap();
    assert_eq!(expired.len(), 2);
    // Another task re-queues A (and the daemon acknowledges it) while prune is between its
    // two phases.
    queue.enqueue(&[new(A)]).await.unwrap();
    assert_eq!(queue.remove_unchanged(&expired).unwrap(), 1);
    assert_eq!(queue.get(&sp(A)).unwrap().unwrap().state, State::Pending);
    assert!(queue.get(&sp(B)).unwrap().is_none());
}

#[tokio::test]
async fn a_corrupt_record_is_skipped_reported_and_replaced_by_retry() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    queue
        .handle()
        .unwrap()
        .paths
        .insert(A.as_bytes(), b"{not json".to_vec())
        .unwrap();
    let scan = queue.scan().unwrap();
    assert_eq!(scan.entries.len(), 1);
    assert_eq!(scan.corrupt.len(), 1);
    assert_eq!(scan.corrupt[0].key, A);
    let taken = queue.take_due(now_ms() + 1, 10, 5, true);
    assert!(taken.error.is_none(), "{:?}", taken.error);
    assert_eq!(taken.entries.len(), 1, "the readable entry still moves");
    assert_eq!(queue.retry(true, &[]).await.unwrap(), 1);
    assert_eq!(queue.get(&sp(A)).unwrap().unwrap().state, State::Pending);
    assert!(queue.scan().unwrap().corrupt.is_empty());
}

#[tokio::test]
async fn an_entry_out_of_attempts_is_failed_instead_of_started() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    for attempt in 1..=2 {
        let taken = queue.take_due(now_ms() + 1, 10, 2, true).entries;
        assert_eq!(taken.len(), 1, "attempt {attempt}");
        // A crash during the upload: the next process requeues it, the attempt counted.
        queue.requeue_uploading(Interrupted::Crash).unwrap();
    }
    assert!(queue.take_due(now_ms() + 1, 10, 2, true).entries.is_empty());
    let entry = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!((entry.state, entry.attempts), (State::Failed, 2));
    assert!(entry
        .last_error
        .unwrap()
        .contains("gave up after 2 attempts"));
}

#[tokio::test]
async fn a_shutdown_gives_the_attempt_back() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    queue.take_due(now_ms() + 1, 10, 2, true);
    queue.requeue_uploading(Interrupted::Shutdown).unwrap();
    let entry = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!((entry.state, entry.attempts), (State::Pending, 0));
}

#[tokio::test]
async fn a_reopened_queue_keeps_what_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A)]).await.unwrap();
    queue.reopen().unwrap();
    assert!(!queue.is_broken());
    queue.enqueue(&[new(B)]).await.unwrap();
    assert_eq!(queue.entries().unwrap().len(), 2);
}

fn realisation(n: u8, out: &str) -> Realisation {
    Realisation {
        id: crate::format::realisation::DrvOutputId {
            drv_hash: crate::format::hash::Sha256([n; 32]),
            output: "out".to_owned(),
        },
        out_path: sp(out),
        signatures: Default::default(),
        dependent_realisations: Default::default(),
        drv: None,
    }
}

#[tokio::test]
async fn realisations_survive_a_reopen_and_a_second_request_adds_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut first = new(B);
    first.realisations = vec![realisation(1, B)];
    queue.enqueue(&[first.clone()]).await.unwrap();
    // The hook runs for the resolved and then the original derivation of one output.
    let mut second = new(B);
    second.realisations = vec![realisation(1, B), realisation(2, B)];
    queue.enqueue(&[second]).await.unwrap();
    let queue = reopened(dir.path(), queue).await;
    let entry = queue.get(&sp(B)).unwrap().unwrap();
    assert_eq!(
        entry.realisations,
        vec![realisation(1, B), realisation(2, B)]
    );
}

#[test]
fn a_record_written_before_realisations_existed_still_decodes() {
    let old = format!(
        r#"{{"path":"{A}","state":"pending","attempts":0,"next_attempt_ms":1,"last_error":null,"arrived_ms":1,"source":"hook","drv":null,"updated_ms":1}}"#
    );
    let entry = record::decode(A, old.as_bytes()).unwrap();
    assert!(entry.realisations.is_empty());
    let encoded = String::from_utf8(record::encode(&entry).unwrap()).unwrap();
    assert_eq!(
        encoded, old,
        "an entry without realisations is stored as before"
    );
}

#[tokio::test]
async fn journaled_paths_are_queued_with_the_mark_so_a_restart_does_not_replay_them() {
    use super::journal::{Appended, Journal, FILE_NAME};
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("queue");
    let journal_path = dir.path().join(FILE_NAME);
    let queue = Queue::open(&queue_dir).unwrap();
    assert_eq!(queue.journal_mark().unwrap(), None);
    let (journal, _) = Journal::open(&journal_path, None).unwrap();
    assert!(matches!(
        journal.append(&[new(A)]).await.unwrap(),
        Appended::Durable(_)
    ));
    let taken = journal.take().unwrap();
    let mark = taken.mark;
    queue.record_journaled(&taken.paths, mark).unwrap();
    journal.written(taken);
    queue.flush().await.unwrap();
    journal.checkpointed();
    // The path is uploaded before the daemon dies; the journal still holds its record.
    let started = queue.take_due(now_ms() + 1, 10, 5, true).entries;
    assert_eq!(started.len(), 1);
    queue.finish(&sp(A), &Outcome::Done).unwrap();
    drop(journal);
    let queue = reopened(&queue_dir, queue).await;
    assert_eq!(queue.journal_mark().unwrap(), Some(mark));
    let (journal, recovered) = Journal::open(&journal_path, queue.journal_mark().unwrap()).unwrap();
    assert_eq!(recovered.records, 0);
    assert!(journal.take().is_none());
    assert_eq!(queue.get(&sp(A)).unwrap().unwrap().state, State::Done);
}

/// A full disk during sled's snapshot leaves an empty `snap.<lsn>.generating` file, and sled
/// 0.34 then refuses to open the database ("Read corrupted data") at every start: the queue
/// was unusable until someone deleted the file by hand (seen in scripts/soak).
#[tokio::test]
async fn an_unfinished_sled_snapshot_left_by_a_full_disk_does_not_stop_the_queue_opening() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    queue.flush().await.unwrap();
    drop(queue);
    std::fs::write(dir.path().join("snap.0000000000080000.generating"), b"").unwrap();
    // sled's flusher lets go of its file lock a moment after the last handle.
    let mut opened = Queue::open(dir.path());
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        opened = Queue::open(dir.path());
    }
    let queue = opened.unwrap_or_else(|e| {
        panic!(
            "the queue does not open beside an unfinished snapshot: {}",
            crate::error_chain(&e)
        )
    });
    let pending: Vec<String> = queue
        .scan()
        .unwrap()
        .entries
        .into_iter()
        .map(|entry| entry.path.to_absolute())
        .collect();
    assert_eq!(pending, vec![A.to_owned(), B.to_owned()]);
}

#[tokio::test]
async fn a_fatal_stop_counts_the_attempt_only_of_a_path_uploading_alone() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    assert_eq!(queue.take_due(now_ms() + 1, 10, 3, true).entries.len(), 2);
    queue
        .requeue_uploading(Interrupted::Fatal("the engine task panicked".into()))
        .unwrap();
    for path in [A, B] {
        let entry = queue.get(&sp(path)).unwrap().unwrap();
        assert_eq!((entry.state, entry.attempts), (State::Pending, 0), "{path}");
        assert!(quarantine::is_suspect(&entry), "{entry:?}");
    }

    // Quarantine: one suspect alone, and none while the engine holds something.
    assert!(queue
        .take_due(now_ms() + 1, 10, 3, false)
        .entries
        .is_empty());
    let taken = queue.take_due(now_ms() + 1, 10, 3, true);
    assert_eq!((taken.entries.len(), taken.suspects), (1, 2));
    let alone = taken.entries[0].path.clone();
    queue
        .requeue_uploading(Interrupted::Fatal("the engine task panicked".into()))
        .unwrap();
    let entry = queue.get(&alone).unwrap().unwrap();
    assert_eq!(entry.attempts, 1, "alone, the attempt counts");
    assert!(quarantine::is_suspect(&entry), "{entry:?}");

    // Once every suspect had an attempt alone, batches start again.
    let other = if alone == sp(A) { sp(B) } else { sp(A) };
    let taken = queue.take_due(now_ms() + 1, 10, 3, true);
    assert_eq!(taken.entries[0].path, alone, "the oldest suspect first");
    queue.finish(&alone, &Outcome::Done).unwrap();
    let taken = queue.take_due(now_ms() + 1, 10, 3, true);
    assert_eq!(taken.entries[0].path, other);
    queue.finish(&other, &Outcome::Done).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    let taken = queue.take_due(now_ms() + 1, 10, 3, false);
    assert_eq!((taken.entries.len(), taken.suspects), (2, 0));
}

#[tokio::test]
async fn a_skipped_entry_is_finished_with_its_reason_across_a_reopen_and_pruned_like_done() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.enqueue(&[new(A), new(B)]).await.unwrap();
    let record = SkipRecord {
        kind: "excluded_output".to_owned(),
        reason: "it is output 'doc' of its derivation (exclude_outputs)".to_owned(),
    };
    queue
        .finish(&sp(A), &Outcome::Skipped(record.clone()))
        .unwrap();
    let queue = reopened(dir.path(), queue).await;
    let entry = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!(entry.state, State::Skipped);
    assert!(entry.state.is_finished());
    assert_eq!(entry.skipped.as_deref(), Some(&record));
    assert_eq!(entry.last_error, None, "skipped is not failed");
    assert!(
        queue
            .take_due(now_ms(), 10, 5, true)
            .entries
            .iter()
            .all(|e| e.path == sp(B)),
        "a skipped entry is never taken again"
    );
    // Requested again (the filters may have changed): queued afresh, the reason gone.
    queue.enqueue(&[new(A)]).await.unwrap();
    let again = queue.get(&sp(A)).unwrap().unwrap();
    assert_eq!((again.state, again.skipped), (State::Pending, None));
    queue.finish(&sp(A), &Outcome::Skipped(record)).unwrap();
    let day_later = now_ms() + DONE_RETENTION.as_millis() as u64 + 1;
    assert_eq!(queue.prune(day_later).unwrap(), 1);
    assert!(queue.get(&sp(A)).unwrap().is_none());
}
