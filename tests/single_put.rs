//! NARs bigger than one part but within `single_put_max_bytes` go up with one PUT from an
//! unnamed temporary file: under a name of their own, never as a multipart upload, re-read whole
//! when an attempt fails half way, and nothing of them is left behind, not even by a SIGKILL.

use std::path::Path;
use std::time::{Duration, Instant};

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::fault_proxy::{Fault, FaultProxy, Operation};
use narpush_e2e::*;

/// The `nar/…` object a narinfo names, and the narinfo's `FileSize`.
fn nar_of(bucket: &Path, path: &str) -> (String, u64) {
    let narinfo = std::fs::read_to_string(bucket.join(format!("{}.narinfo", hash_part(path))))
        .expect("narinfo");
    let field = |name: &str| {
        narinfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {narinfo}"))
            .to_owned()
    };
    (field("URL: "), field("FileSize: ").parse().unwrap())
}

#[test]
fn a_nar_over_one_part_goes_up_in_one_put_under_a_name_of_its_own_even_after_a_cut_attempt() {
    // 24 MiB of random bytes: three 8 MiB parts if it were streamed in parts.
    let top = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("one-put")), ("size", "24576")],
    )
    .remove(0);
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    // nix-cache-info is there already, so the first PUT is the NAR's.
    std::fs::write(
        bucket.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n",
    )
    .unwrap();
    let proxy = FaultProxy::start(s3.addr);
    proxy.script(Operation::PutObject, Fault::ResetMidBody);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let spill = tempfile::tempdir().unwrap();

    let output = run(narpush()
        .args(["upload", "--to", &proxy.url("cache"), "--key"])
        .arg(&secret)
        .arg(&top)
        .env("TMPDIR", spill.path())
        .envs(s3.env()));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert_eq!(proxy.injected().get(&Fault::ResetMidBody), Some(&1));
    let requests = proxy.requests();
    assert_eq!(
        requests.get(&Operation::CreateMultipartUpload),
        None,
        "{requests:?}"
    );
    let (url, file_size) = nar_of(&bucket, &top);
    assert!(file_size > 16 << 20, "the NAR is only {file_size} bytes");
    let stored = std::fs::metadata(bucket.join(&url)).unwrap().len();
    assert_eq!(stored, file_size, "{url}");
    let narinfo =
        std::fs::read_to_string(bucket.join(format!("{}.narinfo", hash_part(&top)))).unwrap();
    let nar_hash = narinfo
        .lines()
        .find_map(|line| line.strip_prefix("NarHash: sha256:"))
        .unwrap();
    // A name no other upload uses (NarHash, writer id, random), the same for the retried PUT.
    assert!(
        url.starts_with(&format!("nar/{nar_hash}-")) && url.ends_with(".nar.zst"),
        "{url}"
    );
    let nars: Vec<_> = std::fs::read_dir(bucket.join("nar")).unwrap().collect();
    assert_eq!(nars.len(), 1, "{nars:?}");
    let left: Vec<_> = std::fs::read_dir(spill.path()).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");

    let (_, substituted) = substitute(
        &format!("file://{}", bucket.display()),
        &public,
        std::slice::from_ref(&top),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn multipart_upload_true_streams_the_same_nar_in_parts() {
    let top = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("parts")), ("size", "24576")],
    )
    .remove(0);
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let output = run(narpush()
        .args([
            "upload",
            "--to",
            &format!("{}&multipart-upload=true", proxy.url("cache")),
            "--key",
        ])
        .arg(&secret)
        .arg(&top)
        .envs(s3.env()));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    let requests = proxy.requests();
    assert_eq!(
        requests.get(&Operation::CreateMultipartUpload),
        Some(&1),
        "{requests:?}"
    );
    assert_eq!(
        requests.get(&Operation::CompleteMultipartUpload),
        Some(&1),
        "{requests:?}"
    );
    let (_, substituted) = substitute(
        &format!("file://{}", bucket.display()),
        &public,
        std::slice::from_ref(&top),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

/// The open files of `pid` that are unnamed temporary files in `dir`.
fn spill_files(pid: u32, dir: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir) && target.to_string_lossy().ends_with("(deleted)"))
        .count()
}

#[test]
fn kill_9_while_a_nar_waits_in_its_temporary_file_leaves_nothing_and_loses_nothing() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let config = format!("target = \"{}\"\njobs = 1\n", s3.url("cache"));
    let mut daemon = Daemon::start(&config, s3.env());
    let spill_dir = daemon.state.join("tmp");
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("kill-spill")), ("size", "204800")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));

    // Wait until the 200 MiB NAR is being written to its temporary file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while spill_files(daemon.pid(), &spill_dir) == 0 {
        assert!(
            Instant::now() < deadline,
            "no temporary file in {} was ever open:\n{}",
            spill_dir.display(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    daemon.kill_9();
    let left: Vec<_> = std::fs::read_dir(&spill_dir).unwrap().collect();
    assert!(left.is_empty(), "left in {}: {left:?}", spill_dir.display());
    assert!(
        narinfos(&bucket).is_empty(),
        "a narinfo was published before the NAR"
    );

    daemon.spawn();
    daemon.wait_ok(240);
    assert_eq!(spill_files(daemon.pid(), &spill_dir), 0);
    let (_, substituted) = substitute(
        &format!("file://{}", bucket.display()),
        &daemon.public_key(),
        &paths,
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn a_temporary_directory_that_cannot_be_written_is_retried_not_failed() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let config = format!(
        "target = \"{}\"\nretry_initial_delay_ms = 200\nretry_max_delay_ms = 500\n",
        s3.url("cache")
    );
    let daemon = Daemon::start(&config, s3.env());
    // What a full disk would do: the temporary file cannot be made (here: `tmp` is a file).
    let spill_dir = daemon.state.join("tmp");
    std::fs::remove_dir(&spill_dir).unwrap();
    std::fs::write(&spill_dir, "not a directory").unwrap();
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("no-spill")), ("size", "20480")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = daemon.status_json();
        let retrying = status["retrying"].as_array().cloned().unwrap_or_default();
        if retrying.iter().any(|r| r["attempts"].as_u64() >= Some(2)) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "not retried: {status}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["counts"]["failed"], 0, "{status}");
    assert!(
        status
            .to_string()
            .contains("cannot keep the compressed NAR"),
        "{status}"
    );

    std::fs::remove_file(&spill_dir).unwrap();
    daemon.wait_ok(120);
    assert!(spill_dir.is_dir(), "the directory was not made again");
    let (_, substituted) = substitute(
        &format!("file://{}", bucket.display()),
        &daemon.public_key(),
        &paths,
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}
