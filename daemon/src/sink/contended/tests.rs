use super::*;
use crate::format::hash::Sha256;
use crate::format::signing::SigningKey;
use crate::format::store_path::StorePath;

fn path(name: &str) -> StorePath {
    StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap()
}

/// The narinfo of `path` with its NAR at `url` compressed with `compression`, signed by `key`.
fn narinfo(path: &StorePath, url: &str, compression: &str, key: &SigningKey) -> NarInfo {
    let mut narinfo = NarInfo {
        store_path: path.clone(),
        url: url.to_owned(),
        compression: compression.to_owned(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 3,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    narinfo.add_signature(key).unwrap();
    narinfo
}

fn judged(ours: &NarInfo, theirs: Option<&NarInfo>, keys: &[VerifyingKey]) -> Verdict {
    let text = theirs.map(NarInfo::to_string);
    let wanted = Wanted::Narinfo { ours, keys };
    judge(
        ours.to_string().as_bytes(),
        text.as_deref().map(str::as_bytes),
        &wanted,
    )
}

#[test]
fn the_same_bytes_are_ours() {
    let key = SigningKey::generate("ours-1").unwrap();
    let ours = narinfo(&path("a"), "nar/a.nar.zst", "zstd", &key);
    assert_eq!(
        judged(&ours, Some(&ours), &[key.public_key()]),
        Verdict::Ours
    );
    let info = layout::nix_cache_info(layout::CacheInfo {
        priority: 41,
        want_mass_query: true,
    });
    let same = judge(info.as_bytes(), Some(info.as_bytes()), &Wanted::CacheInfo);
    assert_eq!(same, Verdict::Ours);
}

#[test]
fn the_same_path_in_another_compression_will_do_once_its_nar_is_found() {
    let key = SigningKey::generate("ours-1").unwrap();
    let ours = narinfo(&path("a"), "nar/ours.nar.zst", "zstd", &key);
    let theirs = narinfo(&path("a"), "nar/theirs.nar.xz", "xz", &key);
    assert_eq!(
        judged(&ours, Some(&theirs), &[key.public_key()]),
        Verdict::TheirsIfNarAt {
            url: "nar/theirs.nar.xz".to_owned(),
            file_size: None,
        }
    );
}

#[test]
fn a_narinfo_signed_by_an_own_public_key_will_do() {
    let signing = SigningKey::generate("new-1").unwrap();
    let rotated = SigningKey::generate("old-1").unwrap();
    let ours = narinfo(&path("a"), "nar/ours.nar.zst", "zstd", &signing);
    let theirs = narinfo(&path("a"), "nar/theirs.nar.zst", "zstd", &rotated);
    let keys = [signing.public_key(), rotated.public_key()];
    assert_eq!(
        judged(&ours, Some(&theirs), &keys),
        Verdict::TheirsIfNarAt {
            url: "nar/theirs.nar.zst".to_owned(),
            file_size: None,
        }
    );
}

#[test]
fn another_key_another_path_or_other_contents_will_not_do() {
    let key = SigningKey::generate("ours-1").unwrap();
    let stranger = SigningKey::generate("theirs-1").unwrap();
    let keys = [key.public_key()];
    let ours = narinfo(&path("a"), "nar/ours.nar.zst", "zstd", &key);
    let by_stranger = narinfo(&path("a"), "nar/theirs.nar.zst", "zstd", &stranger);
    assert!(matches!(
        judged(&ours, Some(&by_stranger), &keys),
        Verdict::Other(Mismatch::Untrusted { reason }) if reason.contains("ours-1")
    ));
    let other_path = narinfo(&path("b"), "nar/theirs.nar.zst", "zstd", &key);
    assert!(matches!(
        judged(&ours, Some(&other_path), &keys),
        Verdict::Other(Mismatch::Untrusted { reason }) if reason.contains("-b")
    ));
    let mut other_contents = narinfo(&path("a"), "nar/theirs.nar.zst", "zstd", &key);
    other_contents.nar_hash = Sha256::digest(b"another nar");
    other_contents.signatures.clear();
    other_contents.add_signature(&key).unwrap();
    assert!(matches!(
        judged(&ours, Some(&other_contents), &keys),
        Verdict::Other(Mismatch::OtherContents { nar_size: 3, .. })
    ));
    let outside = narinfo(&path("a"), "../elsewhere.nar", "none", &key);
    assert!(matches!(
        judged(&ours, Some(&outside), &keys),
        Verdict::Other(Mismatch::OutsideNar { .. })
    ));
    assert_eq!(judged(&ours, None, &keys), Verdict::Other(Mismatch::Absent));
}

#[test]
fn another_announcement_will_not_do_but_the_same_one_in_other_words_will() {
    let ours = layout::nix_cache_info(layout::CacheInfo {
        priority: 41,
        want_mass_query: true,
    });
    let reordered = "Priority: 41\nStoreDir: /nix/store\nWantMassQuery: 1\n";
    assert_eq!(
        judge(
            ours.as_bytes(),
            Some(reordered.as_bytes()),
            &Wanted::CacheInfo
        ),
        Verdict::Ours
    );
    let other = layout::nix_cache_info(layout::CacheInfo {
        priority: 10,
        want_mass_query: true,
    });
    assert!(matches!(
        judge(ours.as_bytes(), Some(other.as_bytes()), &Wanted::CacheInfo),
        Verdict::Other(Mismatch::OtherCacheInfo { .. })
    ));
}

#[test]
fn a_throttled_key_is_written_again_at_least_a_second_later_and_within_the_cap() {
    for retry_after in [None, Some(Duration::ZERO), Some(Duration::from_millis(300))] {
        let wait = wait_before_writing_again("a.narinfo", retry_after);
        assert!(
            wait >= KEY_WRITE_INTERVAL && wait <= KEY_WRITE_INTERVAL + Duration::from_millis(500)
        );
    }
    let wait = wait_before_writing_again("a.narinfo", Some(Duration::from_secs(3600)));
    assert!(wait >= MAX_THROTTLED_WAIT && wait <= MAX_THROTTLED_WAIT + Duration::from_millis(500));
}
