//! NAR serializer unit tests: golden bytes from Nix 2.8 and the error paths a real tree
//! cannot easily reach. Byte-for-byte comparison with `nix-store --dump` lives in
//! `tests/nar_matches_nix_store_dump.rs`.

use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};

fn dump_to_vec(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let n = dump(path, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn hex_rows(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(8)
        .map(|row| row.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

#[test]
fn hello_file_matches_the_120_byte_golden_nar() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    write_file(&file, b"hello\n", 0o644);
    let nar = dump_to_vec(&file);
    let expected = [
        "0d00000000000000",
        "6e69782d61726368",
        "6976652d31000000",
        "0100000000000000",
        "2800000000000000",
        "0400000000000000",
        "7479706500000000",
        "0700000000000000",
        "726567756c617200",
        "0800000000000000",
        "636f6e74656e7473",
        "0600000000000000",
        "68656c6c6f0a0000",
        "0100000000000000",
        "2900000000000000",
    ];
    assert_eq!(hex_rows(&nar), expected);
    assert_eq!(
        crate::format::hash::Sha256::digest(&nar).to_base16(),
        "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
    );
}

#[test]
fn empty_file_is_112_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty");
    write_file(&file, b"", 0o644);
    assert_eq!(dump_to_vec(&file).len(), 112);
}

#[test]
fn content_offsets_match_the_nix_listing_example() {
    // §1.4: { bin/ { hello (exe, 18 bytes) }, link -> "ref", ref (51 bytes) }
    // Nix 2.8 listed narOffset 400 for bin/hello and 832 for ref.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    let hello = b"#!/bin/sh\necho hi\n";
    let reference = [b'R'; 51];
    write_file(&root.join("bin/hello"), hello, 0o755);
    write_file(&root.join("ref"), &reference, 0o644);
    symlink("ref", root.join("link")).unwrap();
    let nar = dump_to_vec(&root);
    assert_eq!(&nar[400..418], hello);
    assert_eq!(&nar[392..400], &18u64.to_le_bytes());
    assert_eq!(&nar[832..883], &reference);
    assert_eq!(&nar[824..832], &51u64.to_le_bytes());
}

#[test]
fn the_listing_comes_from_the_same_pass_and_matches_the_nix_example() {
    // §1.4's tree again: Nix 2.8 listed it with exactly these offsets and this key order.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    write_file(&root.join("bin/hello"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&root.join("ref"), &[b'R'; 51], 0o644);
    symlink("ref", root.join("link")).unwrap();
    let mut nar = Vec::new();
    let (written, listing) = dump_with_listing(&root, &mut nar).unwrap();
    assert_eq!(
        nar,
        dump_to_vec(&root),
        "the NAR is the same with a listing"
    );
    assert_eq!(written, nar.len() as u64);
    assert_eq!(
        String::from_utf8(listing).unwrap(),
        concat!(
            r#"{"version":1,"root":{"type":"directory","entries":{"#,
            r#""bin":{"type":"directory","entries":{"hello":{"type":"regular","size":18,"executable":true,"narOffset":400}}},"#,
            r#""link":{"type":"symlink","target":"ref"},"#,
            r#""ref":{"type":"regular","size":51,"narOffset":832}}}}"#
        )
    );
}

#[test]
fn listing_offsets_point_at_each_file_contents_in_the_nar() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("d/e")).unwrap();
    for (i, name) in ["a", "d/b", "d/e/c", "d/e/empty", "z"].iter().enumerate() {
        write_file(&root.join(name), &vec![b'0' + i as u8; i * 13], 0o644);
    }
    let mut nar = Vec::new();
    let (_, listing) = dump_with_listing(&root, &mut nar).unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    let mut seen = 0;
    let mut stack = vec![&listing["root"]];
    while let Some(node) = stack.pop() {
        match node["type"].as_str().unwrap() {
            "directory" => stack.extend(node["entries"].as_object().unwrap().values()),
            "regular" => {
                let offset = node["narOffset"].as_u64().unwrap() as usize;
                let size = node["size"].as_u64().unwrap() as usize;
                assert_eq!(&nar[offset - 8..offset], &(size as u64).to_le_bytes());
                let contents = &nar[offset..offset + size];
                assert!(contents
                    .iter()
                    .all(|&b| b == contents.first().copied().unwrap_or(0)));
                seen += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(seen, 5);
}

#[test]
fn tokens_have_the_sizes_in_the_reference() {
    let sizes = [
        (&b"nix-archive-1"[..], 24),
        (b"(", 16),
        (b"entry", 16),
        (b"contents", 16),
        (b"directory", 24),
        (b"executable", 24),
        (b"", 8),
    ];
    for (token, size) in sizes {
        let mut buf = Vec::new();
        push_str(&mut buf, token);
        assert_eq!(buf.len(), size, "{token:?}");
    }
    assert_eq!(padding_len(0), 0);
    assert_eq!(padding_len(1), 7);
    assert_eq!(padding_len(8), 0);
}

#[test]
fn names_a_nar_cannot_hold_are_rejected() {
    let dir = Path::new("/some/dir");
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        let name = OsStr::from_bytes(bad);
        match check_entry_name(dir, name) {
            Err(NarError::InvalidEntryName { dir: d, name: n }) => {
                assert_eq!((d.as_path(), n.as_os_str()), (dir, name));
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    for good in [&b"..."[..], b".a", b"\xff\xfe", b"a b"] {
        check_entry_name(dir, OsStr::from_bytes(good)).unwrap();
    }
}

#[test]
fn a_file_yielding_fewer_bytes_than_its_metadata_is_an_error() {
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    let err = copy_exact(Path::new("/f"), &mut &b"abc"[..], 5, &mut buf, &mut out);
    match err {
        Err(CopyError::Nar(NarError::FileShrank {
            expected: 5,
            actual: 3,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_file_yielding_more_bytes_than_its_metadata_is_an_error() {
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    let err = copy_exact(
        Path::new("/f"),
        &mut &b"abcdefgh"[..],
        5,
        &mut buf,
        &mut out,
    );
    match err {
        Err(CopyError::Nar(e @ NarError::FileGrew { expected: 5, .. })) => {
            assert!(e.to_string().contains("'/f' grew"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    out.clear();
    let exact = copy_exact(Path::new("/f"), &mut &b"abcde"[..], 5, &mut buf, &mut out);
    assert!(exact.is_ok());
    assert_eq!(out, b"abcde");
}

#[test]
fn a_failing_writer_is_reported_as_a_write_error() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    write_file(&file, b"data", 0o644);
    match dump(&file, &mut Broken) {
        Err(NarError::Write { root, source }) => {
            assert_eq!(root, file);
            assert_eq!(source.kind(), io::ErrorKind::BrokenPipe);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_path_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = dump(&missing, &mut Vec::new()).unwrap_err();
    assert!(matches!(&err, NarError::Io { path, .. } if *path == missing));
    assert_eq!(
        err.to_string(),
        format!("cannot read '{}'", missing.display())
    );
}
