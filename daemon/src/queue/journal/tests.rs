//! The journal's contract: records round-trip, what was moved is never replayed, the space is
//! reused once everything is moved, and damage is reported, not skipped in silence.

use super::record::{self, Problem, HEADER, TERMINATOR};
use super::*;
use crate::format::realisation::Realisation;
use crate::format::store_path::StorePath;
use narpush_protocol::Source;

const A: &str = "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep";
const B: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top";
const C: &str = "/nix/store/0c5bkwrqa4rpijr1bfj7qw6fq4iaxwxi-c";
const DRV: &str = "/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-top.drv";

fn new(path: &str) -> NewPath {
    NewPath {
        path: StorePath::from_absolute_path(path).unwrap(),
        source: Source::Hook,
        drv: None,
        realisations: Vec::new(),
    }
}

fn names(paths: &[NewPath]) -> Vec<String> {
    paths.iter().map(|p| p.path.to_absolute()).collect()
}

fn durable(appended: Appended) -> u64 {
    match appended {
        Appended::Durable(seq) => seq,
        Appended::NoRoom => panic!("the journal had no room"),
    }
}

/// Opens the journal in `dir` as a restarted daemon would, given the queue's mark.
fn reopen(dir: &Path, moved: Option<Mark>) -> (Journal, Recovered) {
    Journal::open(&dir.join(FILE_NAME), moved).unwrap()
}

#[test]
fn a_record_round_trips_with_every_field() {
    let realisation = Realisation::from_json(
        br#"{"dependentRealisations":{},"id":"sha256:1f8b4ed94df2e8a4d3bd6df6e5b2e0ff7f8fa6e2c6de5a5c7b4e6bd8e7a8b7c6!out","outPath":"wzvc6ccn1xj0k81dchnwx909za0xxqpx-top","signatures":[]}"#,
    )
    .unwrap();
    let paths = vec![
        NewPath {
            path: StorePath::from_absolute_path(B).unwrap(),
            source: Source::Spool,
            drv: Some(StorePath::from_absolute_path(DRV).unwrap()),
            realisations: vec![realisation.clone()],
        },
        new(A),
    ];
    let bytes = record::encode(7, &paths).unwrap();
    assert_eq!(&bytes[bytes.len() - TERMINATOR..], &[0; TERMINATOR]);
    let scanned = record::scan(&bytes);
    assert!(scanned.problems.is_empty(), "{:?}", scanned.problems);
    assert_eq!(scanned.generation, Some(7));
    assert_eq!(scanned.end as usize, bytes.len() - TERMINATOR);
    let [found] = &scanned.records[..] else {
        panic!("{:?}", scanned.records)
    };
    assert_eq!(found.generation, 7);
    assert_eq!(names(&found.paths), [B, A]);
    assert_eq!(found.paths[0].source, Source::Spool);
    assert_eq!(found.paths[0].drv.as_ref().unwrap().to_absolute(), DRV);
    assert_eq!(found.paths[0].realisations, [realisation]);
    assert_eq!(found.paths[1].drv, None);
}

/// Three records (A, B, C) of generation 1 in a buffer of zeros; their offsets.
fn three_records() -> (Vec<u8>, Vec<usize>) {
    let mut bytes = vec![0u8; 4096];
    let mut offsets = Vec::new();
    let mut at = 0;
    for path in [A, B, C] {
        let record = record::encode(1, &[new(path)]).unwrap();
        bytes[at..at + record.len()].copy_from_slice(&record);
        offsets.push(at);
        at += record.len() - TERMINATOR;
    }
    (bytes, offsets)
}

#[test]
fn a_torn_last_record_is_reported_and_the_ones_before_it_are_kept() {
    let (mut bytes, offsets) = three_records();
    // The last write reached the disk only in part.
    let last = offsets[2];
    bytes[last + HEADER + 3..last + HEADER + 20].fill(0);
    let scanned = record::scan(&bytes);
    assert_eq!(scanned.records.len(), 2);
    assert_eq!(
        scanned.end as usize, last,
        "the next write replaces the torn one"
    );
    assert!(
        matches!(&scanned.problems[..], [Problem::TornTail { offset, .. }] if *offset as usize == last),
        "{:?}",
        scanned.problems
    );
}

#[test]
fn a_length_past_the_end_of_the_file_is_a_torn_tail() {
    let (mut bytes, offsets) = three_records();
    bytes.truncate(offsets[2] + HEADER + 2);
    let scanned = record::scan(&bytes);
    assert_eq!(scanned.records.len(), 2);
    assert!(
        matches!(&scanned.problems[..], [Problem::TornTail { offset, reason }]
            if *offset as usize == offsets[2] && reason.contains("runs past")),
        "{:?}",
        scanned.problems
    );
}

#[test]
fn a_corrupt_record_in_the_middle_is_reported_and_the_ones_after_it_are_kept() {
    let (mut bytes, offsets) = three_records();
    bytes[offsets[1] + HEADER + 5] ^= 0x55;
    let scanned = record::scan(&bytes);
    let kept: Vec<String> = scanned
        .records
        .iter()
        .flat_map(|r| names(&r.paths))
        .collect();
    assert_eq!(kept, [A, C]);
    assert!(
        matches!(&scanned.problems[..], [Problem::Corrupt { offset, .. }] if *offset as usize == offsets[1]),
        "{:?}",
        scanned.problems
    );
}

#[test]
fn an_intact_record_whose_paths_do_not_decode_is_reported_as_corrupt() {
    let payload = br#"[{"path":"/tmp/not-in-the-store","source":"hook","drv":null}]"#;
    let mut bytes = record::frame(1, payload);
    bytes.resize(256, 0);
    let scanned = record::scan(&bytes);
    assert!(scanned.records.is_empty());
    assert!(
        matches!(&scanned.problems[..], [Problem::Corrupt { offset: 0, reason }] if reason.contains("do not decode")),
        "{:?}",
        scanned.problems
    );
}

#[tokio::test]
async fn appended_records_survive_a_reopen_until_they_are_marked_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovered) = reopen(dir.path(), None);
    assert_eq!(recovered.records, 0);
    assert_eq!(
        std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
        JOURNAL_SIZE
    );
    assert_eq!(durable(journal.append(&[new(A)]).await.unwrap()), 1);
    assert_eq!(durable(journal.append(&[new(B)]).await.unwrap()), 2);
    drop(journal);

    // Nothing moved: both come back, in order.
    let (journal, recovered) = reopen(dir.path(), None);
    assert_eq!(recovered.records, 2);
    let taken = journal.take().unwrap();
    assert_eq!(names(&taken.paths), [A, B]);
    assert_eq!(taken.seq, 2);
    assert!(journal.take().is_none());

    // The first one moved: only the second comes back.
    let (first, _) = reopen(dir.path(), None);
    let first_mark = {
        let mut writer = lock(&first.writer);
        writer.pending.remove(0).mark
    };
    let (journal, recovered) = reopen(dir.path(), Some(first_mark));
    assert_eq!(recovered.records, 1);
    assert_eq!(names(&journal.take().unwrap().paths), [B]);

    // Both moved: nothing comes back, and the next record starts a new generation at 0.
    let (journal, recovered) = reopen(dir.path(), Some(taken.mark));
    assert_eq!(recovered.records, 0);
    assert!(journal.take().is_none());
    assert_eq!(
        journal.head(),
        Mark {
            generation: taken.mark.generation + 1,
            end: 0
        }
    );
}

#[tokio::test]
async fn once_everything_is_moved_the_space_is_reused_and_old_records_never_return() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), None);
    for path in [A, B, A] {
        durable(journal.append(&[new(path)]).await.unwrap());
    }
    let old = journal.take().unwrap();
    let old_mark = old.mark;
    journal.written(old);
    journal.checkpointed();
    let restarted = journal.head();
    assert_eq!(
        restarted,
        Mark {
            generation: old_mark.generation + 1,
            end: 0
        }
    );
    // The old records are no longer read at all, not even without the queue's mark.
    let (_, unmarked) = reopen(dir.path(), None);
    assert_eq!(unmarked.records, 0);
    // A shorter record now lies over the start of the old ones.
    durable(journal.append(&[new(B)]).await.unwrap());
    drop(journal);
    // The daemon died before moving it: the queue's mark is still the old generation's.
    let (journal, recovered) = reopen(dir.path(), Some(old_mark));
    assert_eq!(recovered.records, 1);
    assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
    let taken = journal.take().unwrap();
    assert_eq!(names(&taken.paths), [B]);
    assert_eq!(taken.mark.generation, restarted.generation);
}

#[tokio::test]
async fn a_move_that_raced_with_an_append_does_not_reset_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), None);
    durable(journal.append(&[new(A)]).await.unwrap());
    let taken = journal.take().unwrap();
    durable(journal.append(&[new(B)]).await.unwrap());
    journal.written(taken);
    journal.checkpointed();
    assert_ne!(journal.head().end, 0, "B is not moved yet");
    let rest = journal.take().unwrap();
    assert_eq!(names(&rest.paths), [B]);
    journal.written(rest);
    assert_ne!(journal.head().end, 0, "B is not flushed in the queue yet");
    journal.checkpointed();
    assert_eq!(journal.head().end, 0);
}

#[tokio::test]
async fn what_could_not_be_moved_is_put_back_ahead_of_newer_records() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), None);
    durable(journal.append(&[new(A)]).await.unwrap());
    let taken = journal.take().unwrap();
    durable(journal.append(&[new(B)]).await.unwrap());
    journal.put_back(taken);
    let again = journal.take().unwrap();
    assert_eq!(names(&again.paths), [A, B]);
    assert_eq!(again.seq, 2);
}

#[tokio::test]
async fn a_full_journal_refuses_without_writing_until_it_is_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), None);
    let many: Vec<NewPath> = (0..2000).map(|_| new(A)).collect();
    let mut appended = 0;
    while let Appended::Durable(_) = journal.append(&many).await.unwrap() {
        appended += 1;
        assert!(appended < 1000, "the journal never filled");
    }
    let head = journal.head();
    assert_eq!(journal.append(&many).await.unwrap(), Appended::NoRoom);
    assert_eq!(journal.head(), head, "a refused record writes nothing");
    assert!(journal.past_half());
    let taken = journal.take().unwrap();
    assert_eq!(taken.paths.len(), appended * many.len());
    journal.written(taken);
    journal.checkpointed();
    assert!(!journal.past_half());
    durable(journal.append(&many).await.unwrap());
}

#[tokio::test]
async fn a_torn_record_on_disk_is_reported_with_its_offset_and_the_rest_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), None);
    durable(journal.append(&[new(A)]).await.unwrap());
    let torn_at = journal.head().end;
    durable(journal.append(&[new(B)]).await.unwrap());
    drop(journal);
    let file = OpenOptions::new()
        .write(true)
        .open(dir.path().join(FILE_NAME))
        .unwrap();
    file.write_all_at(&[0xff; 8], torn_at + HEADER as u64 + 4)
        .unwrap();
    let (journal, recovered) = reopen(dir.path(), None);
    assert_eq!(recovered.records, 1);
    assert_eq!(
        recovered.problems,
        [Problem::TornTail {
            offset: torn_at,
            reason: "its payload checksum does not match".to_owned()
        }]
    );
    assert_eq!(names(&journal.take().unwrap().paths), [A]);
    // The next write goes where the torn one was.
    assert_eq!(journal.head().end, torn_at);
}

#[tokio::test]
async fn what_the_queue_lost_before_its_checkpoint_is_moved_again_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = reopen(dir.path(), None);
    durable(journal.append(&[new(A)]).await.unwrap());
    journal.written(journal.take().unwrap());
    durable(journal.append(&[new(B)]).await.unwrap());
    journal.written(journal.take().unwrap());
    durable(journal.append(&[new(C)]).await.unwrap());
    assert!(journal.has_unchecked());
    journal.rewind();
    assert!(!journal.has_unchecked());
    let again = journal.take().unwrap();
    assert_eq!(names(&again.paths), [A, B, C]);
    assert_eq!(again.seq, 3);
}

fn fails_first_sync(file: &File) -> io::Result<()> {
    static FAILED: AtomicBool = AtomicBool::new(false);
    if FAILED.swap(true, Ordering::SeqCst) {
        file.sync_data()
    } else {
        Err(io::Error::from_raw_os_error(5))
    }
}

#[tokio::test]
async fn no_record_written_before_a_failed_sync_or_after_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _) = reopen(dir.path(), None);
    journal.sync_data = fails_first_sync;
    // Two appends wrote their records; the first to sync covers both, and its sync fails.
    journal.write(&[new(A)]).unwrap().unwrap();
    journal.write(&[new(B)]).unwrap().unwrap();
    assert!(matches!(
        journal.sync().await,
        Err(JournalError::Sync { source, .. }) if source.raw_os_error() == Some(5)
    ));
    // The second append's sync would return 0 now (Linux reports the error once).
    assert!(matches!(
        journal.sync().await,
        Err(JournalError::Unsynced { .. })
    ));
    assert!(journal.has_failed());
    assert!(matches!(
        journal.append(&[new(C)]).await,
        Err(JournalError::Failed { .. })
    ));
}

/// A record as narpush wrote it before the header checksum (see `legacy`).
fn legacy_record(generation: u64, path: &str) -> Vec<u8> {
    let payload = format!(r#"[{{"path":"{path}","source":"hook","drv":null}}]"#);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&generation.to_le_bytes());
    crc.update(payload.as_bytes());
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

#[tokio::test]
async fn a_journal_written_before_the_upgrade_is_replayed_and_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = [legacy_record(4, A), legacy_record(4, B)].concat();
    let first_end = legacy_record(4, A).len() as u64;
    bytes.resize(JOURNAL_SIZE as usize, 0);
    std::fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
    // The queue holds the first record already.
    let moved = Mark {
        generation: 4,
        end: first_end,
    };
    let (journal, recovered) = reopen(dir.path(), Some(moved));
    assert_eq!((recovered.records, &recovered.problems[..]), (1, &[][..]));
    assert_eq!(names(&journal.take().unwrap().paths), [B]);
    // Appended behind the legacy records, in the current layout, and read back after them.
    durable(journal.append(&[new(C)]).await.unwrap());
    drop(journal);
    let (journal, recovered) = reopen(dir.path(), Some(moved));
    assert_eq!((recovered.records, &recovered.problems[..]), (2, &[][..]));
    assert_eq!(names(&journal.take().unwrap().paths), [B, C]);
}
