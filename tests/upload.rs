//! `narpush upload` end to end: real Nix builds a closure, the real binary uploads it to a real
//! S3 server (s3s-fs, SigV4 credentials) or a directory, and stock Nix must substitute it with
//! signatures required and verify it.

use std::path::Path;
use std::process::Command;

use narpush_e2e::*;

/// `narpush upload --to TARGET --key SECRET PATH`, without credentials unless the caller adds them.
fn upload(target: &str, secret: &Path, path: &str) -> Command {
    let mut command = narpush();
    command
        .args(["upload", "--to", target, "--key"])
        .arg(secret)
        .arg(path);
    command
}

fn build_closure(nonce: &str, big_mib: &str) -> (String, Vec<String>) {
    let top = nix_build(
        &fixture("closure.nix"),
        &[("nonce", nonce), ("bigMiB", big_mib)],
    )
    .remove(0);
    let closure = closure(std::slice::from_ref(&top));
    (top, closure)
}

#[test]
fn closure_uploaded_to_s3_with_credentials_is_substituted_by_stock_nix_with_require_sigs() {
    let (top, closure) = build_closure("s3-substitute", "70");
    assert!(closure.len() >= 5, "fixture closure: {closure:?}");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let output = run(upload(&s3.url("cache"), &secret, &top).envs(s3.env()));
    assert!(
        output.status.success(),
        "upload failed: {}",
        stderr(&output)
    );

    assert_eq!(
        narinfos(&bucket).len(),
        closure.len(),
        "one narinfo per closure path"
    );
    assert_closure_invariant(&bucket);
    let big_nar = snapshot(&bucket.join("nar"))
        .into_iter()
        .map(|(_, (size, _))| size)
        .max()
        .unwrap();
    assert!(
        big_nar > 64 << 20,
        "the 70 MiB random file went up whole: {big_nar}"
    );

    let cache_url = format!("file://{}", bucket.display());
    let (store, substituted) = substitute(&cache_url, &public, std::slice::from_ref(&top));
    assert!(
        substituted.status.success(),
        "substitution failed: {}",
        stderr(&substituted)
    );
    for path in &closure {
        let copy = store.path().join(path.trim_start_matches('/'));
        assert!(copy.exists(), "{path} was not substituted");
    }
    let verified = run(command("nix")
        .args([
            "store",
            "verify",
            "--store",
            &cache_url,
            "--trusted-public-keys",
            &public,
            "-r",
        ])
        .arg(&top));
    assert!(
        verified.status.success(),
        "nix store verify: {}",
        stderr(&verified)
    );
}

#[test]
fn uploading_the_same_closure_again_writes_no_object() {
    let (top, _) = build_closure("again", "9");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let upload_closure = || run(upload(&s3.url("cache"), &secret, &top).envs(s3.env()));
    assert!(upload_closure().status.success());
    let before = snapshot(&bucket);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = upload_closure();
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        snapshot(&bucket),
        before,
        "the second upload changed the bucket"
    );
}

#[test]
fn wrong_s3_secret_fails_with_a_clear_message_and_writes_nothing() {
    let (top, _) = build_closure("errors", "1");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let output = run(upload(&s3.url("cache"), &secret, &top)
        .env("AWS_ACCESS_KEY_ID", "narpush-test-key")
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("rejected the credentials"), "{message}");
    assert!(
        snapshot(&bucket).is_empty(),
        "files written: {:?}",
        snapshot(&bucket)
    );
}

#[test]
fn missing_s3_credentials_are_named_before_anything_is_sent() {
    let (top, _) = build_closure("errors", "1");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let output = run(&mut upload(&s3.url("cache"), &secret, &top));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no S3 credentials found"),
        "{}",
        stderr(&output)
    );
    assert!(snapshot(&bucket).is_empty());
}

#[test]
fn unreachable_endpoint_fails_with_a_clear_message() {
    let (top, _) = build_closure("errors", "1");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let nobody = free_port();
    let output = run(narpush()
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .args([
            "upload",
            "--to",
            &format!("s3://cache?endpoint=http://{nobody}"),
        ])
        .arg("--key")
        .arg(&secret)
        .arg(&top));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&nobody.to_string()) || message.contains("onnect"),
        "{message}"
    );
    assert!(message.contains("nix-cache-info"), "{message}");
}

#[test]
fn path_outside_the_store_is_rejected_before_any_upload() {
    let cache = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    for bad in [
        "/etc/passwd",
        "/nix/store/../../etc/passwd",
        "/nix/store/not-a-hash-foo",
    ] {
        let output = run(narpush()
            .args([
                "upload",
                "--to",
                &format!("file://{}", cache.path().display()),
                "--key",
            ])
            .arg(&secret)
            .arg(bad));
        assert_eq!(output.status.code(), Some(2), "{bad}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains(bad.rsplit('/').next().unwrap()),
            "{message}"
        );
        assert!(narinfos(cache.path()).is_empty());
    }
}

#[test]
fn bad_key_files_are_refused_with_the_reason_and_nothing_is_written() {
    let (top, _) = build_closure("errors", "1");
    let cache = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (good, _) = keygen(keys.path(), "narpush-test-1");
    let secret_text = std::fs::read_to_string(&good).unwrap();

    let world_readable = keys.path().join("world-readable.sk");
    std::fs::write(&world_readable, &secret_text).unwrap();
    set_mode(&world_readable, 0o644);
    let garbage = keys.path().join("garbage.sk");
    std::fs::write(&garbage, "narpush-test-1:not base64 at all!").unwrap();
    set_mode(&garbage, 0o600);
    let missing = keys.path().join("missing.sk");

    for (file, expected) in [
        (&world_readable, "world-readable"),
        (&garbage, "garbage.sk"),
        (&missing, "missing.sk"),
    ] {
        let output = run(narpush()
            .args([
                "upload",
                "--to",
                &format!("file://{}", cache.path().display()),
                "--key",
            ])
            .arg(file)
            .arg(&top));
        assert_eq!(output.status.code(), Some(2));
        let message = stderr(&output);
        assert!(message.contains(expected), "{message}");
        let (_, b64) = secret_text.trim().split_once(':').unwrap();
        assert!(!message.contains(b64), "the key leaked into the message");
        assert!(narinfos(cache.path()).is_empty());
    }
}

#[test]
fn keys_made_by_nix_sign_what_nix_accepts_and_our_public_key_matches_nix() {
    let (top, closure) = build_closure("nix-keys", "1");
    let keys = tempfile::tempdir().unwrap();
    let nix_secret = keys.path().join("nix.sk");
    let generated =
        run_ok(command("nix").args(["key", "generate-secret", "--key-name", "nix-made-1"]));
    // A trailing newline, as users who paste keys leave them.
    std::fs::write(&nix_secret, format!("{generated}\n")).unwrap();
    set_mode(&nix_secret, 0o600);
    let nix_public = run_ok(
        command("sh")
            .arg("-c")
            .arg("nix key convert-secret-to-public < \"$1\"")
            .arg("sh")
            .arg(&nix_secret),
    );

    let (ours, our_public) = keygen(keys.path(), "narpush-made-1");
    let derived = run_ok(
        command("sh")
            .arg("-c")
            .arg("nix key convert-secret-to-public < \"$1\"")
            .arg("sh")
            .arg(&ours),
    );
    assert_eq!(
        derived.trim(),
        our_public,
        "Nix derives our public key from our secret key"
    );

    let cache = tempfile::tempdir().unwrap();
    let output = run(narpush()
        .args([
            "upload",
            "--to",
            &format!("file://{}", cache.path().display()),
        ])
        .arg("--key")
        .arg(&nix_secret)
        .arg("--key")
        .arg(&ours)
        .arg(&top));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(narinfos(cache.path()).len(), closure.len());
    let cache_url = format!("file://{}", cache.path().display());
    for public in [nix_public.trim(), our_public.as_str()] {
        let (_, substituted) = substitute(&cache_url, public, std::slice::from_ref(&top));
        assert!(
            substituted.status.success(),
            "trusting only {public}: {}",
            stderr(&substituted)
        );
    }
}

#[test]
fn xz_directory_cache_is_substituted_by_stock_nix() {
    let (top, closure) = build_closure("xz-dir", "1");
    let cache = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let output = run(narpush()
        .args(["upload", "--compression", "xz", "--jobs", "2"])
        .args([
            "--to",
            &format!("file://{}", cache.path().display()),
            "--key",
        ])
        .arg(&secret)
        .arg(&top));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(narinfos(cache.path()).len(), closure.len());
    assert!(snapshot(cache.path())
        .keys()
        .any(|p| p.to_string_lossy().ends_with(".nar.xz")));
    let (_, substituted) = substitute(
        &format!("file://{}", cache.path().display()),
        &public,
        std::slice::from_ref(&top),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn no_closure_does_not_publish_a_path_whose_references_are_missing() {
    let (top, _) = build_closure("no-closure", "1");
    let cache = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let output = run(narpush()
        .args(["upload", "--no-closure"])
        .args([
            "--to",
            &format!("file://{}", cache.path().display()),
            "--key",
        ])
        .arg(&secret)
        .arg(&top));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is neither in the cache nor upstream"),
        "{}",
        stderr(&output)
    );
    assert!(narinfos(cache.path()).is_empty());
}

#[test]
fn a_nar_that_does_not_match_the_store_record_is_aborted_and_never_published() {
    let s3 = S3Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    // The store copy is changed behind Nix's back: other bytes of the same size (20 MB: in
    // parts with `multipart-upload=true`), or a file that grew or shrank (2 MB: compressed on
    // one thread, where zstd holds the stream to the size it was told and would fail first),
    // so the NAR narpush reads no longer matches the store's record.
    type Tamper = fn(&mut Vec<u8>);
    let tampers: [(&str, &str, Tamper); 3] = [
        ("flipped", "20000", |bytes| bytes[0] ^= 0xff),
        ("grown", "2000", |bytes| bytes.extend_from_slice(&[7; 1000])),
        ("shrunk", "2000", |bytes| bytes.truncate(bytes.len() - 1)),
    ];
    for (tamper, size_kib, change) in tampers {
        let top = nix_build(
            &fixture("single.nix"),
            &[
                ("nonce", &format!("{tamper}-{}", std::process::id())),
                ("size", size_kib),
            ],
        )
        .remove(0);
        let data = Path::new(&top).join("data");
        let mut bytes = std::fs::read(&data).unwrap();
        change(&mut bytes);
        set_mode(Path::new(&top), 0o755);
        set_mode(&data, 0o644);
        std::fs::write(&data, &bytes).unwrap();

        // Checked before its one PUT (by default), or sent in parts that are then aborted
        // (`multipart-upload=true`): either way no object is left.
        for (mode, parameters) in [("whole", ""), ("parts", "&multipart-upload=true")] {
            let bucket_name = format!("{tamper}-{mode}");
            let bucket = s3.bucket(&bucket_name);
            let target = format!("{}{parameters}", s3.url(&bucket_name));
            let output = run(upload(&target, &secret, &top).envs(s3.env()));
            let message = stderr(&output);
            assert_eq!(output.status.code(), Some(1), "{bucket_name}: {message}");
            assert!(
                message.contains("does not match the store's record"),
                "{bucket_name}: {message}"
            );
            assert!(
                narinfos(&bucket).is_empty(),
                "{bucket_name}: a narinfo was published"
            );
            let nars: Vec<_> = snapshot(&bucket)
                .into_keys()
                .filter(|p| p.to_string_lossy().contains(".nar"))
                .collect();
            assert!(
                nars.is_empty(),
                "NAR objects left in {bucket_name}: {nars:?}"
            );
        }
        let _ = run(command("nix-store").args(["--delete", &top]));
    }
}

#[test]
fn a_nix_copy_url_with_cache_settings_works_and_nix_cache_info_follows_priority() {
    let (top, closure) = build_closure(&unique("url-params"), "1");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let cache = tempfile::tempdir().unwrap();
    // What `nix copy --to` takes: the key and the settings in the URL, no --key.
    let url = format!(
        "file://{}?compression=xz&compression-level=2&parallel-compression=true&priority=30\
         &want-mass-query=true&write-nar-listing=false&secret-key={}",
        cache.path().display(),
        secret.display()
    );
    let output = run(narpush().args(["upload", "--no-upstream", "--to", &url, &top]));
    assert!(output.status.success(), "{}", stderr(&output));
    let info = std::fs::read_to_string(cache.path().join("nix-cache-info")).unwrap();
    assert!(info.contains("Priority: 30\n"), "{info}");
    for narinfo in narinfos(cache.path()) {
        let text = std::fs::read_to_string(&narinfo).unwrap();
        assert!(text.contains("Compression: xz\n"), "{text}");
    }
    assert_eq!(narinfos(cache.path()).len(), closure.len());
    let cache_url = format!("file://{}", cache.path().display());
    let (_store, substituted) = substitute(&cache_url, &public, std::slice::from_ref(&top));
    assert!(substituted.status.success(), "{}", stderr(&substituted));

    // Another priority (here from the config file's `priority`) rewrites nix-cache-info.
    let config = keys.path().join("narpush.toml");
    std::fs::write(&config, "priority = 45\n").unwrap();
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", &cache_url, "--key"])
        .arg(&secret)
        .arg(&top)
        .env("NARPUSH_CONFIG", &config));
    assert!(output.status.success(), "{}", stderr(&output));
    let info = std::fs::read_to_string(cache.path().join("nix-cache-info")).unwrap();
    assert!(info.contains("Priority: 45\n"), "{info}");

    // A setting narpush cannot honour is refused by name before anything is written.
    let refused = run(narpush()
        .args(["upload", "--no-upstream", "--key"])
        .arg(&secret)
        .args(["--to", &format!("{cache_url}?narinfo-compression=xz"), &top]));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("'narinfo-compression'"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn the_closure_invariant_check_catches_a_nar_whose_bytes_changed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (secret, _) = keygen(dir.path(), "check");
    let path = nix_build(&fixture("single.nix"), &[("nonce", &unique("check"))]).remove(0);
    run_ok(&mut upload(
        &format!("file://{}", cache.display()),
        &secret,
        &path,
    ));
    assert_closure_invariant(&cache);
    // Same size, one byte different: only the hashes can tell.
    let nar = snapshot(&cache.join("nar"))
        .into_keys()
        .next()
        .expect("a NAR");
    let mut bytes = std::fs::read(&nar).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&nar, bytes).unwrap();
    let caught = std::panic::catch_unwind(|| assert_closure_invariant(&cache));
    assert!(caught.is_err(), "a changed NAR passed the check");
}
