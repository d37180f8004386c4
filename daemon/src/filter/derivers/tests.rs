//! The bounded `.drv` reader: what it reads, and what it refuses, naming the file.

use super::*;

const TWO_OUTPUTS: &str = r#"Derive([("doc","/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x-doc","",""),("out","/nix/store/wzvc6ccn1xj0k81dchnwx909za0xxqpx-x","","")],[],[],"x86_64-linux","/bin/sh",["-c","true"],[("name","x")])"#;

#[test]
fn a_drv_is_read_for_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.drv");
    std::fs::write(&file, TWO_OUTPUTS).unwrap();
    let outputs = read_drv_file(&file).unwrap();
    let names: Vec<&str> = outputs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["doc", "out"]);
}

#[test]
fn an_oversized_drv_is_refused_unread_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.drv");
    // A valid beginning, then more than the bound (sparse: no disk used).
    std::fs::write(&file, TWO_OUTPUTS).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(MAX_DRV_BYTES + 1)
        .unwrap();
    let error = read_drv_file(&file).unwrap_err();
    assert!(matches!(error, DrvReadError::TooBig { .. }), "{error:?}");
    assert!(error.to_string().contains("huge.drv"), "{error}");
    // At the bound exactly, it is read (its head names the outputs).
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(MAX_DRV_BYTES)
        .unwrap();
    assert_eq!(read_drv_file(&file).unwrap().len(), 2);
}

#[test]
fn garbage_a_symlink_or_a_fifo_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.drv");
    std::fs::write(&garbage, b"\xff\xfe not a derivation").unwrap();
    let error = read_drv_file(&garbage).unwrap_err();
    assert!(matches!(error, DrvReadError::NotText { .. }), "{error:?}");
    assert!(error.to_string().contains("garbage.drv"), "{error}");

    let text = dir.path().join("text.drv");
    std::fs::write(&text, "Derive([(oops").unwrap();
    let error = read_drv_file(&text).unwrap_err();
    assert!(matches!(error, DrvReadError::Parse { .. }), "{error:?}");
    assert!(error.to_string().contains("text.drv"), "{error}");

    let good = dir.path().join("good.drv");
    std::fs::write(&good, TWO_OUTPUTS).unwrap();
    let link = dir.path().join("link.drv");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let error = read_drv_file(&link).unwrap_err();
    assert!(
        matches!(error, DrvReadError::Open { .. }) && !error.is_missing(),
        "a symlink is not followed: {error:?}"
    );
    assert!(error.to_string().contains("link.drv"), "{error}");

    let fifo = dir.path().join("fifo.drv");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let error = read_drv_file(&fifo).unwrap_err();
    assert!(matches!(error, DrvReadError::NotAFile { .. }), "{error:?}");
}

#[test]
fn a_missing_drv_is_ordinary() {
    let error = read_drv_file(Path::new("/nonexistent/narpush-test.drv")).unwrap_err();
    assert!(error.is_missing(), "{error:?}");
}
