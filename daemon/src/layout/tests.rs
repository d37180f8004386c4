use super::*;

#[test]
fn keys_are_classified_by_what_they_hold() {
    let hash = "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6";
    assert_eq!(kind_of("nix-cache-info"), ObjectKind::CacheInfo);
    assert_eq!(
        kind_of(&format!("{hash}.narinfo")),
        ObjectKind::NarInfo { hash }
    );
    assert_eq!(kind_of(&format!("{hash}.ls")), ObjectKind::Listing { hash });
    assert_eq!(kind_of("nar/abc.nar.zst"), ObjectKind::Nar);
    assert_eq!(
        kind_of("log/x-top.drv"),
        ObjectKind::Log { drv: "x-top.drv" }
    );
    assert_eq!(
        kind_of("realisations/sha256:00!out.doi"),
        ObjectKind::Realisation
    );
    assert_eq!(
        kind_of(&format!("build-trace-v2/{hash}-x.drv/out.doi")),
        ObjectKind::Realisation
    );
    assert_eq!(
        kind_of("pins/release-1.0"),
        ObjectKind::Pin {
            name: "release-1.0"
        }
    );
    for other in [
        "pins/a/b",
        "index.html",
        "short.narinfo",
        "sub/dir/x.narinfo",
        "log/a/b",
        "build-trace-v2/x.drv/out.doi",
        "build-trace-v2/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x.drv/out",
    ] {
        assert_eq!(kind_of(other), ObjectKind::Other, "{other}");
    }
}

fn path() -> StorePath {
    StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep").unwrap()
}

#[test]
fn only_objects_named_by_their_bytes_are_cached_for_good() {
    let defaults = CacheControl::default();
    let hash = "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6";
    for immutable in ["nar/abc.nar.zst", &format!("{hash}.ls")] {
        assert_eq!(
            defaults.for_key(immutable),
            Some(DEFAULT_IMMUTABLE_CACHE_CONTROL)
        );
    }
    for mutable in [
        &format!("{hash}.narinfo"),
        "nix-cache-info",
        "log/x-top.drv",
        "realisations/sha256:00!out.doi",
        "pins/release",
    ] {
        assert_eq!(
            defaults.for_key(mutable),
            Some(DEFAULT_MUTABLE_CACHE_CONTROL),
            "{mutable}"
        );
    }
    let none = CacheControl {
        immutable: String::new(),
        mutable: String::new(),
    };
    assert_eq!(none.for_key("nar/abc.nar.zst"), None);
}

#[test]
fn keys_are_where_nix_looks() {
    assert_eq!(
        narinfo_key(&path()),
        "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6.narinfo"
    );
    assert_eq!(listing_key(&path()), "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6.ls");
    assert!(matches!(
        kind_of(&listing_key(&path())),
        ObjectKind::Listing { .. }
    ));
    assert_eq!(listing_content_encoding(Compression::Zstd), Some("zstd"));
    assert_eq!(listing_content_encoding(Compression::Xz), Some("xz"));
    assert_eq!(listing_content_encoding(Compression::None), None);
    let drv = StorePath::from_basename("lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv").unwrap();
    assert_eq!(
        log_key(&drv),
        "log/lkb8q51gz5lbr6pf1q7yzyxnim1c6lca-top.drv"
    );
    let hash = Sha256::digest(b"x");
    assert_eq!(
        nar_key_by_file_hash(&hash, Compression::Zstd),
        format!("nar/{}.nar.zst", hash.to_nix32())
    );
}

#[test]
fn streamed_nars_never_share_a_name() {
    let hash = Sha256::digest(b"x");
    let writer = WriterId::random();
    let first = nar_key_unique(&hash, Compression::Xz, writer);
    let second = nar_key_unique(&hash, Compression::Xz, writer);
    assert_ne!(first, second);
    assert!(
        first.starts_with(&format!("nar/{}-", hash.to_nix32())),
        "{first}"
    );
    assert!(first.ends_with(".nar.xz"), "{first}");
    assert!(first.contains(&format!("-{writer}-")), "{first}");
    assert_eq!(
        first.len(),
        "nar/".len() + 52 + 1 + 8 + 1 + 16 + ".nar.xz".len()
    );
}

/// The simulation draws writer ids and NAR names from its seed: the same in every run of a
/// seed, whatever else was drawn between, and still never twice the same name.
#[cfg(feature = "sim")]
#[test]
fn with_a_simulation_seed_writers_and_nar_names_replay_and_stay_unique() {
    let hash = Sha256::digest(b"x");
    let run = |noise: bool| {
        crate::random::seeded::install(Some(42));
        let writer = WriterId::random();
        if noise {
            // Another NAR's name drawn first changes nothing for this one.
            nar_key_unique(&Sha256::digest(b"y"), Compression::Zstd, writer);
        }
        let names = [
            nar_key_unique(&hash, Compression::Zstd, writer),
            nar_key_unique(&hash, Compression::Zstd, writer),
        ];
        crate::random::seeded::install(None);
        (writer, names)
    };
    let (writer, names) = run(false);
    assert_eq!(run(true), (writer, names.clone()));
    assert_ne!(names[0], names[1]);
    assert!(is_streamed_by(&names[0], writer), "{}", names[0]);
}

#[test]
fn streamed_nar_names_are_recognised_and_nothing_else() {
    let hash = Sha256::digest(b"x");
    let writer = WriterId::random();
    for compression in [Compression::Zstd, Compression::Xz, Compression::None] {
        assert!(is_streamed_nar_key(&nar_key_unique(
            &hash,
            compression,
            writer
        )));
    }
    let before_writer_ids = format!("nar/{}-{}.nar.zst", hash.to_nix32(), "2".repeat(16));
    assert!(is_streamed_nar_key(&before_writer_ids));
    let by_file_hash = nar_key_by_file_hash(&hash, Compression::Zstd);
    let unique = nar_key_unique(&hash, Compression::Zstd, writer);
    for other in [
        by_file_hash.as_str(),
        &unique[1..],
        &unique.replace("nar/", "log/"),
        &unique.replace(".nar.zst", ".nar.gz"),
        &unique.replace('-', "_"),
        "nar/",
        "nix-cache-info",
    ] {
        assert!(!is_streamed_nar_key(other), "{other}");
    }
}

#[test]
fn only_a_writers_own_streamed_nars_are_its_own() {
    let hash = Sha256::digest(b"x");
    let ours = WriterId::random();
    let theirs = WriterId::random();
    assert_ne!(ours, theirs);
    let own = nar_key_unique(&hash, Compression::Zstd, ours);
    assert!(is_streamed_by(&own, ours));
    assert!(!is_streamed_by(
        &nar_key_unique(&hash, Compression::Zstd, theirs),
        ours
    ));
    let before_writer_ids = format!("nar/{}-{}.nar.zst", hash.to_nix32(), "2".repeat(16));
    assert!(!is_streamed_by(&before_writer_ids, ours));
    assert!(!is_streamed_by(
        &nar_key_by_file_hash(&hash, Compression::Zstd),
        ours
    ));
    assert_eq!(WriterId::parse(&ours.to_string()), Some(ours));
    for bad in ["", "1234567", "123456789", "eeeeeeee", "0000000!"] {
        assert_eq!(WriterId::parse(bad), None, "{bad}");
    }
}

#[test]
fn nar_keys_stay_under_nar() {
    assert!(is_nar_key("nar/abc.nar.zst"));
    assert!(is_nar_key("nar/sub/abc.nar"));
    for other in [
        "nar/",
        "nar/../secret",
        "nar/./x",
        "nar//x",
        "/nar/x",
        "https://example.org/nar/x",
        "log/x",
    ] {
        assert!(!is_nar_key(other), "{other}");
    }
}

#[test]
fn cache_info_names_the_store_and_the_priority() {
    let info = CacheInfo {
        priority: 41,
        want_mass_query: true,
    };
    assert_eq!(
        nix_cache_info(info),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
    );
}
