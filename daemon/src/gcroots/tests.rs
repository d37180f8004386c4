use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use super::*;

/// What the recording file system saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Symlink(String),
    Remove(String),
    SyncStart,
    SyncEnd,
    /// Written by the test when `protect` returned (where the daemon would acknowledge).
    Returned(String),
}

/// The real file system, with every call logged; syncs can be made slow or to fail.
#[derive(Clone, Default)]
struct Recording {
    log: Arc<Mutex<Vec<Op>>>,
    fail_syncs: Arc<AtomicBool>,
    slow_syncs: bool,
}

impl Recording {
    fn push(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }

    fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }
}

fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

impl RootFs for Recording {
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        RealFs.symlink(target, link)?;
        self.push(Op::Symlink(name_of(link)));
        Ok(())
    }

    fn remove(&self, link: &Path) -> io::Result<()> {
        RealFs.remove(link)?;
        self.push(Op::Remove(name_of(link)));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.push(Op::SyncStart);
        if self.slow_syncs {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        RealFs.sync_dir(dir)?;
        self.push(Op::SyncEnd);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
}

fn path(n: usize) -> StorePath {
    StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn{n:03}-p")).unwrap()
}

fn roots(dir: &Path, fs: &Recording) -> GcRoots {
    GcRoots::open_with(&dir.join("narpush"), Box::new(fs.clone())).unwrap()
}

#[tokio::test]
async fn roots_are_symlinks_into_the_store_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let roots = GcRoots::open(&dir.path().join("narpush")).unwrap();
    let path = StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep").unwrap();
    roots.protect(std::slice::from_ref(&path)).await.unwrap();
    roots.protect(std::slice::from_ref(&path)).await.unwrap();
    let link = dir
        .path()
        .join("narpush/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(path.to_absolute())
    );
    roots.remove(&path).unwrap();
    roots.remove(&path).unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err());
}

#[tokio::test]
async fn protect_returns_only_after_a_sync_of_the_directory_that_began_after_its_links() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Recording::default();
    let roots = roots(dir.path(), &fs);
    let (a, b) = (path(1), path(2));
    roots.protect(&[a.clone(), b.clone()]).await.unwrap();
    fs.push(Op::Returned("ab".to_owned()));
    assert_eq!(
        fs.ops(),
        vec![
            Op::Symlink(a.basename().to_owned()),
            Op::Symlink(b.basename().to_owned()),
            Op::SyncStart,
            Op::SyncEnd,
            Op::Returned("ab".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_protects_share_directory_syncs_and_each_waits_for_one_after_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Recording {
        slow_syncs: true,
        ..Recording::default()
    };
    let roots = roots(dir.path(), &fs);
    let callers = 32;
    let tasks: Vec<_> = (0..callers)
        .map(|n| {
            let (roots, fs) = (roots.clone(), fs.clone());
            tokio::spawn(async move {
                roots.protect(&[path(n)]).await.unwrap();
                fs.push(Op::Returned(path(n).basename().to_owned()));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let ops = fs.ops();
    let syncs = ops.iter().filter(|op| **op == Op::SyncStart).count();
    assert!(syncs < callers / 2, "{syncs} syncs for {callers} callers");
    for n in 0..callers {
        let name = path(n).basename().to_owned();
        let made = ops.iter().position(|op| *op == Op::Symlink(name.clone()));
        let returned = ops.iter().position(|op| *op == Op::Returned(name.clone()));
        let (made, returned) = (made.unwrap(), returned.unwrap());
        // A sync that started after the link and ended before the return.
        let covered = ops[made..returned]
            .iter()
            .position(|op| *op == Op::SyncStart)
            .is_some_and(|start| ops[made + start..returned].contains(&Op::SyncEnd));
        assert!(covered, "{name} returned without a sync after it: {ops:?}");
    }
}

#[tokio::test]
async fn a_failed_sync_fails_every_root_it_covered_even_when_the_next_sync_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Recording::default();
    let roots = roots(dir.path(), &fs);
    // Two requests made their links; the sync that covers both fails.
    roots.create(&path(1)).unwrap();
    let first = roots.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
    roots.create(&path(2)).unwrap();
    let second = roots.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
    fs.fail_syncs.store(true, Ordering::SeqCst);
    assert!(roots.sync_through(first).await.is_err());
    // The disk works again (and Linux would report success for the failed writeback now).
    fs.fail_syncs.store(false, Ordering::SeqCst);
    let error = roots.sync_through(second).await.unwrap_err();
    assert!(matches!(error, GcRootError::Poisoned { .. }), "{error}");
    assert!(
        !fs.ops().contains(&Op::SyncEnd),
        "no sync may stand in for the failed one: {:?}",
        fs.ops()
    );
}

#[tokio::test]
async fn reconcile_makes_missing_roots_of_owed_paths_and_removes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Recording::default();
    let roots = roots(dir.path(), &fs);
    roots.protect(&[path(2), path(3)]).await.unwrap();
    std::fs::write(dir.path().join("narpush/README"), "not a root").unwrap();
    fs.log.lock().unwrap().clear();

    let owed: HashSet<StorePath> = [path(1), path(2)].into_iter().collect();
    let done = roots.reconcile(&owed, true).await.unwrap();
    assert_eq!(
        done,
        Reconciled {
            created: 1,
            removed: 1
        }
    );
    assert_eq!(
        fs.ops(),
        vec![
            Op::Symlink(path(1).basename().to_owned()),
            Op::SyncStart,
            Op::SyncEnd,
            Op::Remove(path(3).basename().to_owned()),
        ]
    );
    let mut names = RealFs.list(&dir.path().join("narpush")).unwrap();
    names.sort();
    let mut expected = vec![
        "README".to_owned(),
        path(1).basename().to_owned(),
        path(2).basename().to_owned(),
    ];
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn a_root_released_while_its_path_was_queued_again_is_made_again_durably() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Recording::default();
    let roots = roots(dir.path(), &fs);
    let link = dir.path().join("narpush").join(path(1).basename());
    // A new request takes the root, which exists already from the upload ending now.
    roots.protect(&[path(1)]).await.unwrap();
    // The pipeline read the entry as done before the request reached the queue.
    assert!(roots.release_if(&path(1), || true).unwrap());
    assert!(std::fs::symlink_metadata(&link).is_err());
    // The request is written into the queue: its root is made again, and synced.
    fs.log.lock().unwrap().clear();
    assert_eq!(roots.ensure(&[path(1)]).await.unwrap(), 1);
    assert_eq!(
        fs.ops(),
        vec![
            Op::Symlink(path(1).basename().to_owned()),
            Op::SyncStart,
            Op::SyncEnd
        ]
    );
    // Read after the request was queued, the entry is owed: the root stays.
    assert!(!roots.release_if(&path(1), || false).unwrap());
    assert!(std::fs::symlink_metadata(&link).is_ok());
    // Nothing to make again: no sync.
    assert_eq!(roots.ensure(&[path(1)]).await.unwrap(), 0);
    assert_eq!(fs.ops().len(), 3);
}

#[tokio::test]
async fn after_a_failed_sync_a_request_again_for_the_same_root_is_refused_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Recording::default();
    let roots = roots(dir.path(), &fs);
    fs.fail_syncs.store(true, Ordering::SeqCst);
    roots.protect(&[path(1)]).await.unwrap_err();
    // The disk answers again; a fresh fsync would return 0 though the link may be lost.
    fs.fail_syncs.store(false, Ordering::SeqCst);
    let error = roots.protect(&[path(1)]).await.unwrap_err();
    let chain = crate::error_chain(&error);
    assert!(
        chain.contains(&dir.path().join("narpush").display().to_string()),
        "{chain}"
    );
    assert!(chain.contains("restart"), "{chain}");
    // So are other paths, and the roots made again after a release.
    roots.protect(&[path(2)]).await.unwrap_err();
    roots.remove(&path(1)).unwrap();
    roots.ensure(&[path(1)]).await.unwrap_err();
}
