//! Our NAR serializer against the real thing: each test builds a tree in a temporary
//! directory and requires `narpush::format::nar::dump` to produce exactly the bytes of
//! `nix-store --dump` for it.
//!
//! These tests need `nix-store` on `PATH` and fail (they do not skip) without it: a NAR
//! writer that was never compared with Nix proves nothing.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use narpush::format::nar;

fn nix_store_dump(path: &Path) -> Vec<u8> {
    let output = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .env("NIX_CONFIG", "build-users-group =\nsandbox = false")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`nix-store` is not on PATH: these tests compare our NAR output with real Nix \
             and must not be skipped; install Nix (e.g. `apt-get install nix-bin`)"
        ),
        Err(e) => panic!("cannot run `nix-store --dump {}`: {e}", path.display()),
    };
    assert!(
        output.status.success(),
        "`nix-store --dump {}` failed ({}): {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn our_dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let written = nar::dump(path, &mut out)
        .unwrap_or_else(|e| panic!("dumping {} failed: {e}", path.display()));
    assert_eq!(written, out.len() as u64, "returned byte count");
    out
}

/// Compares with Nix, reporting the first differing offset instead of two huge arrays.
fn assert_matches_nix(path: &Path) {
    let expected = nix_store_dump(path);
    let got = our_dump(path);
    if got != expected {
        let at = got.iter().zip(&expected).position(|(a, b)| a != b);
        let at = at.unwrap_or(got.len().min(expected.len()));
        let window = |v: &[u8]| v[at.saturating_sub(16)..(at + 32).min(v.len())].to_vec();
        panic!(
            "NAR of {} differs from nix-store --dump at byte {at} (ours {} bytes, Nix {} bytes)\n\
             ours: {:02x?}\n nix: {:02x?}",
            path.display(),
            got.len(),
            expected.len(),
            window(&got),
            window(&expected),
        );
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift64), so a failure reproduces.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    (dir, root)
}

#[test]
fn a_lone_regular_file_matches_nix() {
    let (_dir, root) = scratch();
    write_file(&root, b"hello\n", 0o644);
    assert_matches_nix(&root);
    assert_eq!(our_dump(&root).len(), 120);
}

#[test]
fn a_lone_executable_file_matches_nix() {
    let (_dir, root) = scratch();
    write_file(&root, b"#!/bin/sh\nexit 0\n", 0o755);
    assert_matches_nix(&root);
}

#[test]
fn a_lone_symlink_is_archived_not_followed() {
    let (dir, root) = scratch();
    write_file(&dir.path().join("target"), b"not to be read", 0o644);
    symlink("target", &root).unwrap();
    assert_matches_nix(&root);
}

#[test]
fn an_empty_file_matches_nix() {
    let (_dir, root) = scratch();
    write_file(&root, b"", 0o644);
    assert_matches_nix(&root);
    assert_eq!(our_dump(&root).len(), 112);
}

#[test]
fn an_empty_directory_matches_nix() {
    let (_dir, root) = scratch();
    fs::create_dir(&root).unwrap();
    assert_matches_nix(&root);
}

#[test]
fn only_the_owner_execute_bit_makes_a_file_executable() {
    let (_dir, root) = scratch();
    fs::create_dir(&root).unwrap();
    for (name, mode) in [
        ("plain", 0o644),
        ("owner-x", 0o744),
        ("all-x", 0o755),
        ("group-and-other-x", 0o655),
        ("only-owner-x", 0o100),
        ("setuid", 0o4755),
        ("read-only", 0o444),
    ] {
        write_file(&root.join(name), name.as_bytes(), mode);
    }
    assert_matches_nix(&root);
}

#[test]
fn relative_absolute_and_dangling_symlinks_match_nix() {
    let (_dir, root) = scratch();
    fs::create_dir_all(root.join("sub")).unwrap();
    write_file(&root.join("sub/file"), b"x", 0o644);
    symlink("sub/file", root.join("relative")).unwrap();
    symlink("../sub/file", root.join("sub/up")).unwrap();
    symlink("/etc/hostname", root.join("absolute")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("sub", root.join("to-directory")).unwrap();
    symlink("relative", root.join("to-symlink")).unwrap();
    symlink(
        OsStr::from_bytes(b"caf\xc3\xa9-\xff"),
        root.join("odd-target"),
    )
    .unwrap();
    symlink("x".repeat(1000), root.join("long-target")).unwrap();
    assert_matches_nix(&root);
}

#[test]
fn forty_levels_of_nesting_match_nix() {
    let (_dir, root) = scratch();
    let mut deepest = root.clone();
    for level in 0..40 {
        deepest.push(format!("d{level}"));
    }
    fs::create_dir_all(&deepest).unwrap();
    write_file(&deepest.join("leaf"), b"bottom", 0o644);
    write_file(&root.join("d0/top"), b"top", 0o644);
    assert_matches_nix(&root);
}

#[test]
fn entries_are_sorted_by_raw_bytes_not_by_locale() {
    let (_dir, root) = scratch();
    fs::create_dir(&root).unwrap();
    let names: [&[u8]; 12] = [
        b"B",
        b"a",
        b"_",
        "é".as_bytes(),
        b"\xff\xfe",
        b"A",
        b"a.b",
        b"a-b",
        b"aa",
        b"Z",
        b"~",
        b"1",
    ];
    for name in names {
        write_file(&root.join(OsStr::from_bytes(name)), name, 0o644);
    }
    assert_matches_nix(&root);
}

#[test]
fn a_file_larger_than_every_buffer_matches_nix() {
    let (_dir, root) = scratch();
    let data = pseudo_random(3 * 1024 * 1024 + 7);
    assert!(data.len() > nar::CONTENT_BUF_SIZE * 40);
    write_file(&root, &data, 0o644);
    assert_matches_nix(&root);
}

#[test]
fn every_padding_length_matches_nix() {
    let (_dir, root) = scratch();
    fs::create_dir(&root).unwrap();
    for len in 0..=17 {
        let name = "n".repeat(len.max(1));
        write_file(
            &root.join(format!("{name}{len}")),
            &pseudo_random(len),
            0o644,
        );
    }
    assert_matches_nix(&root);
}

#[test]
fn a_combined_tricky_tree_matches_nix() {
    let (_dir, root) = scratch();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("share/empty")).unwrap();
    fs::create_dir_all(root.join(OsStr::from_bytes(b"lib\xff/deeper/still"))).unwrap();
    write_file(&root.join("bin/hello"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&root.join("bin/.hidden"), b"", 0o600);
    write_file(&root.join("share/data"), &pseudo_random(70_000), 0o644);
    write_file(
        &root.join(OsStr::from_bytes(b"lib\xff/deeper/still/\xe9t\xe9")),
        b"latin-1",
        0o644,
    );
    symlink("../bin/hello", root.join("share/hello")).unwrap();
    symlink("/nix/store/nonexistent-path", root.join("share/store-link")).unwrap();
    fs::hard_link(root.join("bin/hello"), root.join("bin/hello-again")).unwrap();
    for i in 0..300 {
        write_file(&root.join(format!("share/f{i:03}")), &[i as u8], 0o644);
    }
    assert_matches_nix(&root);
}

#[test]
fn a_fifo_is_an_unsupported_file_type_naming_the_file() {
    let (_dir, root) = scratch();
    fs::create_dir(&root).unwrap();
    write_file(&root.join("before"), b"fine", 0o644);
    let fifo = root.join("pipe");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo failed");
    match nar::dump(&root, &mut Vec::new()) {
        Err(nar::NarError::UnsupportedFileType { path, kind }) => {
            assert_eq!(path, fifo);
            assert_eq!(kind, "FIFO");
        }
        other => panic!("expected UnsupportedFileType, got {other:?}"),
    }
    let err = nar::dump(&fifo, &mut Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("'{}' is a FIFO, which a NAR cannot contain", fifo.display())
    );
}

#[test]
fn a_socket_is_an_unsupported_file_type_naming_the_file() {
    let (_dir, root) = scratch();
    fs::create_dir(&root).unwrap();
    let socket = root.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    match nar::dump(&root, &mut Vec::new()) {
        Err(nar::NarError::UnsupportedFileType { path, kind }) => {
            assert_eq!((path, kind), (socket, "socket"));
        }
        other => panic!("expected UnsupportedFileType, got {other:?}"),
    }
}
