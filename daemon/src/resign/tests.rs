//! Resigning on a directory cache: what is ours gains the new signature and loses the removed
//! one, what is not ours is left alone, and a second run writes nothing.

use std::collections::BTreeMap;

use super::*;
use crate::format::hash::Sha256;
use crate::format::realisation::DrvOutputId;
use crate::format::store_path::StorePath;
use crate::sink::file::FileSink;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn key(name: &str) -> SigningKey {
    SigningKey::generate(name).unwrap()
}

fn narinfo(name: &str, signer: &SigningKey) -> (String, NarInfo) {
    let store_path =
        StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s{name}-p")).unwrap();
    let mut narinfo = NarInfo {
        store_path: store_path.clone(),
        url: format!("nar/{name}.nar"),
        compression: "none".to_owned(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(name),
        nar_size: 1,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    narinfo.add_signature(signer).unwrap();
    (crate::layout::narinfo_key(&store_path), narinfo)
}

fn options(keys: Vec<SigningKey>, remove: &[&str], own: Vec<VerifyingKey>) -> Options {
    Options {
        keys,
        remove: remove.iter().map(|s| (*s).to_owned()).collect(),
        own_public_keys: own,
        skip_older_than: None,
        dry_run: false,
    }
}

fn write(dir: &std::path::Path, key: &str, body: &str, age: Duration) {
    let file = dir.join(key);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, body).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn signatures_of(dir: &std::path::Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(key)).unwrap();
    let narinfo = NarInfo::parse(&text).unwrap();
    let mut names: Vec<String> = narinfo
        .signatures
        .iter()
        .map(|s| key_name(s).to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_rotation_signs_what_is_ours_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, stranger) = (key("old-1"), key("new-1"), key("stranger-1"));
    let (ours_key, ours) = narinfo("a", &old);
    let (foreign_key, foreign) = narinfo("b", &stranger);
    let (aged_key, aged) = narinfo("c", &old);
    write(dir.path(), &ours_key, &ours.to_string(), DAY);
    write(dir.path(), &foreign_key, &foreign.to_string(), DAY);
    write(dir.path(), &aged_key, &aged.to_string(), 90 * DAY);
    write(dir.path(), "x.narinfo", "not a narinfo", DAY);
    let mut realisation = Realisation {
        id: format!("sha256:{}!out", "ab".repeat(32))
            .parse::<DrvOutputId>()
            .unwrap(),
        out_path: ours.store_path.clone(),
        signatures: BTreeSet::new(),
        dependent_realisations: BTreeMap::new(),
        drv: None,
    };
    realisation.sign(&old);
    let doi = format!("realisations/{}.doi", realisation.id);
    write(dir.path(), &doi, &realisation.to_json(), DAY);

    let sink = Sink::File(FileSink::open(dir.path()).unwrap());
    let mut rotate = options(vec![new.clone()], &["old-1"], vec![old.public_key()]);
    rotate.skip_older_than = Some(30 * DAY);
    let summary = resign(&sink, &rotate, &|_| {}).await.unwrap();
    assert_eq!(summary.narinfos.rewritten, 1);
    assert_eq!(summary.narinfos.not_ours, 1);
    assert_eq!(summary.narinfos.skipped_old, 1);
    assert_eq!(summary.realisations.rewritten, 1);
    assert_eq!(summary.key_names.get("old-1"), Some(&2));
    assert_eq!(summary.key_names.get("stranger-1"), Some(&1));
    assert_eq!(signatures_of(dir.path(), &ours_key), ["new-1"]);
    assert_eq!(signatures_of(dir.path(), &foreign_key), ["stranger-1"]);
    assert_eq!(signatures_of(dir.path(), &aged_key), ["old-1"]);
    let rewritten =
        NarInfo::parse(&std::fs::read_to_string(dir.path().join(&ours_key)).unwrap()).unwrap();
    assert!(rewritten.verify_signature(&new.public_key()));
    let doi_now = Realisation::from_json(&std::fs::read(dir.path().join(&doi)).unwrap()).unwrap();
    assert!(doi_now.verify_signature(&new.public_key()));
    assert!(!doi_now.verify_signature(&old.public_key()));

    // Resumable: a second run finds everything done.
    let again = resign(&sink, &rotate, &|_| {}).await.unwrap();
    assert_eq!(again.narinfos.rewritten, 0);
    assert_eq!(again.narinfos.unchanged, 1);
    assert_eq!(again.realisations.unchanged, 1);
}

#[tokio::test]
async fn adding_a_key_keeps_the_old_signatures_and_a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (key("old-1"), key("new-1"));
    let (narinfo_key, body) = narinfo("a", &old);
    write(dir.path(), &narinfo_key, &body.to_string(), DAY);
    let sink = Sink::File(FileSink::open(dir.path()).unwrap());
    let mut add = options(vec![new.clone()], &[], vec![old.public_key()]);
    add.dry_run = true;
    let dry = resign(&sink, &add, &|_| {}).await.unwrap();
    assert_eq!(dry.narinfos.rewritten, 1);
    assert_eq!(signatures_of(dir.path(), &narinfo_key), ["old-1"]);
    add.dry_run = false;
    resign(&sink, &add, &|_| {}).await.unwrap();
    assert_eq!(signatures_of(dir.path(), &narinfo_key), ["new-1", "old-1"]);
}

#[tokio::test]
async fn without_own_keys_nothing_is_ours() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (key("old-1"), key("new-1"));
    let (narinfo_key, body) = narinfo("a", &old);
    write(dir.path(), &narinfo_key, &body.to_string(), DAY);
    let sink = Sink::File(FileSink::open(dir.path()).unwrap());
    let summary = resign(&sink, &options(vec![new], &[], Vec::new()), &|_| {})
        .await
        .unwrap();
    assert_eq!(summary.narinfos.not_ours, 1);
    assert_eq!(signatures_of(dir.path(), &narinfo_key), ["old-1"]);
}

#[tokio::test]
async fn removing_the_signing_key_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::File(FileSink::open(dir.path()).unwrap());
    let new = key("new-1");
    let error = resign(&sink, &options(vec![new], &["new-1"], Vec::new()), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, ResignError::RemovingOwnKey { name } if name == "new-1"));
}

#[tokio::test]
async fn a_new_key_under_the_old_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::File(FileSink::open(dir.path()).unwrap());
    let (old, new) = (key("cache-1"), key("cache-1"));
    let error = resign(
        &sink,
        &options(vec![new], &[], vec![old.public_key()]),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ResignError::KeyNameReused { name } if name == "cache-1"));
}

#[tokio::test]
async fn a_rotation_resigns_build_trace_entries_too() {
    use crate::format::build_trace::{BuildTraceEntry, BuildTraceKey};
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (key("old-1"), key("new-1"));
    let (ours_key, ours) = narinfo("a", &old);
    // Its output's narinfo is there: the entry is not withdrawn as an orphan.
    write(dir.path(), &ours_key, &ours.to_string(), DAY);
    let drv = StorePath::from_basename(&format!("{}-a.drv", ours.store_path.hash_part())).unwrap();
    let mut entry = BuildTraceEntry {
        key: BuildTraceKey::new(drv, "out").unwrap(),
        out_path: ours.store_path.clone(),
        signatures: BTreeSet::new(),
    };
    entry.sign(&old);
    let object = entry.key.object_key();
    write(dir.path(), &object, &entry.object_body(), DAY);

    let sink = Sink::File(FileSink::open(dir.path()).unwrap());
    let rotate = options(vec![new.clone()], &["old-1"], vec![old.public_key()]);
    let summary = resign(&sink, &rotate, &|_| {}).await.unwrap();
    assert_eq!(summary.realisations.rewritten, 1);
    let body = std::fs::read(dir.path().join(&object)).unwrap();
    let now = BuildTraceEntry::from_object(&object, &body).unwrap();
    assert!(now.verify_signature(&new.public_key()));
    assert!(!now.verify_signature(&old.public_key()));
    assert_eq!(now.signatures.len(), 1);
    assert_eq!(String::from_utf8(body).unwrap(), now.object_body());
}
