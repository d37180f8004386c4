//! `narpush verify --repair` and the push filters: what they exclude is never uploaded by a
//! repair either.

use super::*;

/// The push filters hold for repairs too: a broken path they exclude is not uploaded again,
/// is listed as unfixable with the filter's reason (not as repaired), and the run exits 1.
#[test]
fn a_path_the_push_filters_exclude_is_not_uploaded_by_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "repair-filtered-1");
    let a = Closure::build("repair-filtered");
    upload(&url, &[], &secret, &a.top);
    let base_nar = nar_file(dir.path(), a.path("base"));
    std::fs::remove_file(&base_nar).unwrap();
    for file in snapshot(dir.path()).into_keys() {
        set_age(&file, DAY);
    }
    let config = keys.path().join("narpush.toml");
    std::fs::write(&config, "exclude = [\"^narpush-gc-base$\"]\n").unwrap();
    let (output, done) = verify(
        &url,
        &[],
        &[
            "--config",
            config.to_str().unwrap(),
            "--trusted-key",
            &public,
            "--repair",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&output), 1, "{}\n{done}", stderr(&output));
    assert!(!base_nar.exists(), "an excluded path was uploaded: {done}");
    assert!(
        !strings(&done["repair"]["repaired"]).contains(a.path("base")),
        "{done}"
    );
    let why = done["repair"]["unfixable"][a.path("base")]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("push filters"), "{done}");
}
