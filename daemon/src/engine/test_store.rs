//! Test support: real store paths for engine tests that must stream a NAR.

use crate::format::store_path::StorePath;
use crate::store::PathInfo;

/// A path added to the real store (`nix-store --add`) holding one small file named `name`,
/// with its metadata as the engine reads it.
pub(crate) async fn add(name: &str, contents: &[u8]) -> PathInfo {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, contents).unwrap();
    let out = std::process::Command::new("nix-store")
        .arg("--add")
        .arg(&file)
        .output()
        .expect("nix-store runs");
    assert!(
        out.status.success(),
        "nix-store --add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path =
        StorePath::from_absolute_path(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    crate::store::query_path_infos(&[path], false)
        .await
        .unwrap()
        .remove(0)
}
