//! A failed sync of sled's log: nothing unsynced is acknowledged until the database is reopened.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::super::journal::Mark;
use super::super::*;

fn new(path: &str) -> NewPath {
    NewPath {
        path: StorePath::from_absolute_path(path).unwrap(),
        source: Source::Hook,
        drv: None,
        realisations: Vec::new(),
    }
}

const A: &str = "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep";
const B: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top";
const C: &str = "/nix/store/0c5bkwrqa4rpijr1bfj7qw6fq4iaxwxi-c";

fn fails_first_sync(file: &File) -> io::Result<()> {
    static FAILED: AtomicBool = AtomicBool::new(false);
    if FAILED.swap(true, Ordering::SeqCst) {
        file.sync_data()
    } else {
        Err(io::Error::from_raw_os_error(5))
    }
}

#[tokio::test]
async fn after_a_failed_sync_nothing_is_acknowledged_until_the_database_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.set_sync_for_test(fails_first_sync);
    // Two requests are written, both waiting for one flush; its sync fails.
    let mark = |end| Mark { generation: 1, end };
    queue.record_journaled(&[new(A)], mark(10)).unwrap();
    queue.record_journaled(&[new(B)], mark(20)).unwrap();
    assert!(matches!(queue.flush().await, Err(QueueError::Sync { .. })));
    // The other waiter: a second sync would return 0, yet its write may be lost.
    assert!(matches!(
        queue.flush().await,
        Err(QueueError::Unsynced { .. })
    ));
    assert!(matches!(
        queue.enqueue(&[new(C)]).await,
        Err(QueueError::Unsynced { .. })
    ));
    assert!(queue.is_broken());
    queue.reopen().unwrap();
    queue.enqueue(&[new(C)]).await.unwrap();
    assert!(queue
        .get(&StorePath::from_absolute_path(C).unwrap())
        .unwrap()
        .is_some());
}
