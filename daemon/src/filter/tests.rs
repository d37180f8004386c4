//! The matcher's rules, each on its own: the name (not the hash) against unanchored patterns,
//! the output name from the deriver (never guessed), the NAR size, their order, and the checks
//! of configured values.

use super::*;
use crate::format::hash::Sha256;

const HASH: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn path(name: &str) -> StorePath {
    StorePath::from_basename(&format!("{HASH}-{name}")).unwrap()
}

fn drv(name: &str) -> StorePath {
    StorePath::from_basename(&format!("zyxwvsrqpnmlkjihgfdcba9876543210-{name}.drv")).unwrap()
}

fn info(name: &str, nar_size: u64, deriver: Option<StorePath>) -> PathInfo {
    PathInfo {
        path: path(name),
        nar_hash: Sha256::digest(name),
        nar_size,
        references: Vec::new(),
        deriver,
        ca: None,
        signatures: Vec::new(),
    }
}

fn filter(exclude: &[&str], outputs: &[&str], max: Option<u64>) -> PushFilter {
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PushFilter::new(&owned(exclude), &owned(outputs), max).unwrap()
}

/// A deriver that knows nothing.
fn no_drv(_: &StorePath) -> Option<&'static [(String, StorePath)]> {
    None
}

#[test]
fn a_pattern_matches_the_name_anywhere_but_never_the_hash() {
    let f = filter(&["doc"], &[], None);
    let reason = f.reason(&info("hello-2.12-doc", 1, None), no_drv);
    assert_eq!(
        reason,
        Some(SkipReason::Excluded {
            pattern: "doc".to_owned()
        })
    );
    assert_eq!(
        f.reason(&info("docbook-xsl", 1, None), no_drv)
            .map(|r| r.kind()),
        Some("excluded")
    );
    assert_eq!(f.reason(&info("hello-2.12", 1, None), no_drv), None);
    // The hash part holds "0123…": a pattern on it does not match the name.
    assert_eq!(
        filter(&["0123"], &[], None).reason(&info("hello", 1, None), no_drv),
        None
    );
    // Anchors are the user's: `-doc$` spares docbook.
    let anchored = filter(&["-doc$"], &[], None);
    assert!(anchored
        .reason(&info("hello-doc", 1, None), no_drv)
        .is_some());
    assert!(anchored
        .reason(&info("hello-docbook", 1, None), no_drv)
        .is_none());
}

#[test]
fn an_output_is_excluded_by_the_name_its_deriver_records_not_by_its_own_name() {
    let deriver = drv("hello");
    let outputs = vec![
        ("out".to_owned(), path("hello")),
        ("man".to_owned(), path("hello-manual")),
    ];
    let f = filter(&[], &["man"], None);
    let known = |_: &StorePath| Some(outputs.as_slice());
    assert_eq!(
        f.reason(&info("hello-manual", 1, Some(deriver.clone())), known),
        Some(SkipReason::ExcludedOutput {
            output: "man".to_owned()
        })
    );
    assert_eq!(
        f.reason(&info("hello", 1, Some(deriver.clone())), known),
        None
    );
    // Named "-man" but recorded as nothing of this deriver: not guessed.
    assert_eq!(f.reason(&info("other-man", 1, Some(deriver)), known), None);
}

#[test]
fn an_output_whose_deriver_is_unknown_or_absent_is_not_excluded_by_output_name() {
    let f = filter(&[], &["doc"], None);
    assert_eq!(f.reason(&info("hello-doc", 1, None), no_drv), None);
    assert_eq!(
        f.reason(&info("hello-doc", 1, Some(drv("hello"))), no_drv),
        None
    );
}

/// The `doc` output of a real two-output derivation instantiated into the store (not built:
/// only its `.drv` is needed), with its deriver.
fn instantiated_doc() -> (StorePath, StorePath) {
    let expression = r#"derivation {
        name = "narpush-filter-test";
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" "echo > $out; echo > $doc" ];
        outputs = [ "out" "doc" ];
    }"#;
    let run = |command: &mut std::process::Command| {
        let out = command.output().expect("nix runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let drv = run(std::process::Command::new("nix-instantiate").args(["-E", expression]));
    let drv = StorePath::from_absolute_path(drv.trim()).unwrap();
    let outputs = run(std::process::Command::new("nix-store")
        .args(["-q", "--outputs"])
        .arg(drv.to_absolute()));
    let doc = outputs
        .lines()
        .find(|line| line.ends_with("-doc"))
        .expect("a doc output");
    (StorePath::from_absolute_path(doc).unwrap(), drv)
}

#[tokio::test]
async fn derivers_are_read_from_the_store_and_one_missing_excludes_nothing() {
    let f = filter(&[], &["doc"], None);
    let (doc, deriver) = instantiated_doc();
    let mut doc_info = info("any", 1, Some(deriver));
    doc_info.path = doc.clone();
    let excluded = f.excluded(std::slice::from_ref(&doc_info)).await;
    assert_eq!(
        excluded.get(&doc).map(SkipReason::kind),
        Some("excluded_output"),
        "the deriver in the store names it `doc`"
    );
    // Not in the store: unknown, not excluded (unreadable ones: see `derivers`' tests).
    let missing = info("hello-doc", 1, Some(drv("narpush-test-never-built")));
    assert!(f.excluded(&[missing]).await.is_empty());
}

#[test]
fn a_nar_bigger_than_the_limit_is_excluded_and_one_at_the_limit_is_not() {
    let f = filter(&[], &[], Some(1000));
    assert_eq!(f.reason(&info("big", 1000, None), no_drv), None);
    assert_eq!(
        f.reason(&info("big", 1001, None), no_drv),
        Some(SkipReason::TooBig {
            nar_size: 1001,
            max_nar_bytes: 1000
        })
    );
}

#[test]
fn the_first_rule_that_applies_is_the_reason_and_the_deriver_is_read_only_when_needed() {
    let f = filter(&["big"], &["out"], Some(10));
    let mut asked = false;
    let reason = f.reason(&info("big", 100, Some(drv("big"))), |_| {
        asked = true;
        None
    });
    assert_eq!(reason.map(|r| r.kind()), Some("excluded"));
    assert!(!asked, "a pattern decides before the deriver is read");
    let mut asked = false;
    let without_outputs = filter(&[], &[], Some(10));
    assert_eq!(
        without_outputs.reason(&info("small", 1, Some(drv("small"))), |_| {
            asked = true;
            None
        }),
        None
    );
    assert!(!asked, "no exclude_outputs: no deriver is read");
}

#[test]
fn referrers_are_skipped_for_the_path_at_the_bottom_of_the_chain() {
    let own = SkipReason::ExcludedOutput {
        output: "doc".to_owned(),
    };
    let needs = own.for_referrers_of(&path("hello-doc"));
    assert_eq!(needs.kind(), "needs_skipped");
    assert_eq!(needs.for_referrers_of(&path("middle")), needs);
    let text = needs.to_string();
    assert!(text.contains(&path("hello-doc").to_absolute()), "{text}");
    assert!(text.contains("output 'doc'"), "{text}");
}

#[test]
fn bad_values_are_refused_naming_them() {
    let error = PushFilter::new(&["(unclosed".to_owned()], &[], None).unwrap_err();
    assert!(matches!(&error, FilterError::BadPattern { pattern, .. } if pattern == "(unclosed"));
    assert!(error.to_string().contains("'(unclosed'"), "{error}");
    for name in ["", "a b", "doc/x"] {
        assert_eq!(
            PushFilter::new(&[], &[name.to_owned()], None).unwrap_err(),
            FilterError::BadOutputName {
                name: name.to_owned()
            }
        );
    }
    assert_eq!(
        PushFilter::new(&[], &[], Some(0)).unwrap_err(),
        FilterError::ZeroMaxNarBytes
    );
}

#[test]
fn added_values_join_without_duplicates_and_the_default_excludes_nothing() {
    assert!(PushFilter::default().is_off());
    let mut f = filter(&["-doc$"], &["doc"], Some(5));
    f.add_exclude("-doc$").unwrap();
    f.add_exclude("-man$").unwrap();
    f.add_exclude_output("doc").unwrap();
    f.set_max_nar_bytes(7).unwrap();
    assert_eq!(f.patterns().collect::<Vec<_>>(), ["-doc$", "-man$"]);
    assert_eq!(f.exclude_outputs(), ["doc"]);
    assert_eq!(f.max_nar_bytes(), Some(7));
    assert_ne!(f, PushFilter::default());
}

#[test]
fn a_doc_output_over_the_size_limit_is_too_big_before_its_deriver_is_read() {
    let outputs = vec![("doc".to_owned(), path("hello-doc"))];
    let f = filter(&[], &["doc"], Some(10));
    let mut asked = false;
    let reason = f.reason(&info("hello-doc", 100, Some(drv("hello"))), |_| {
        asked = true;
        Some(outputs.as_slice())
    });
    assert_eq!(reason.map(|r| r.kind()), Some("too_big"));
    assert!(!asked, "the size decides before the deriver is read");
    assert_eq!(
        f.reason(&info("hello-doc", 5, Some(drv("hello"))), |_| Some(
            outputs.as_slice()
        ))
        .map(|r| r.kind()),
        Some("excluded_output")
    );
}
