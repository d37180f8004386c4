//! `.ls` NAR listings end to end: real Nix builds trees with awkward names, Nix's own uploader
//! (`nix copy --to 'file://…?write-nar-listing=true'`) writes its listings, and narpush writes
//! its own, by `narpush upload` to a directory and by the daemon to a real S3 server (zstd,
//! `Content-Encoding`). Ours must equal Nix's wherever Nix's is valid JSON, be valid JSON
//! everywhere, be written before its narinfo, be read by stock Nix, and go with its narinfo
//! when `narpush gc` collects it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use narpush_e2e::daemon::Daemon;
use narpush_e2e::*;

/// The closure of listing.nix, built fresh: (top, every path).
fn build_trees(name: &str) -> (String, Vec<String>) {
    let top = nix_build(&fixture("listing.nix"), &[("nonce", &unique(name))]).remove(0);
    let paths = closure(std::slice::from_ref(&top));
    assert_eq!(paths.len(), 5, "{paths:?}");
    (top, paths)
}

/// The store path of listing.nix's output named `narpush-listing-<name>`.
fn path_named<'a>(paths: &'a [String], name: &str) -> &'a str {
    paths
        .iter()
        .find(|p| p.ends_with(&format!("-narpush-listing-{name}")))
        .unwrap_or_else(|| panic!("no {name} in {paths:?}"))
}

/// Nix's own uploader, uncompressed, with listings: the reference.
fn nix_copy_with_listings(dir: &Path, top: &str) {
    run_ok(command("nix").args([
        "copy",
        "--to",
        &format!(
            "file://{}?write-nar-listing=true&compression=none",
            dir.display()
        ),
        top,
    ]));
}

fn listing(cache: &Path, path: &str) -> Vec<u8> {
    let file = cache.join(format!("{}.ls", hash_part(path)));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn parse(bytes: &[u8], what: &str) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not valid JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Compares our listing of every path with Nix's: equal as JSON and byte for byte where Nix's
/// is valid JSON; where Nix wrote raw non-UTF-8 bytes, ours is Nix's with each invalid
/// sequence replaced by U+FFFD (the documented rule). Returns how many of Nix's were invalid.
fn assert_same_listings(ours: &Path, nix: &Path, paths: &[String]) -> usize {
    let mut nix_invalid = 0;
    for path in paths {
        let our_bytes = listing(ours, path);
        let nix_bytes = listing(nix, path);
        let our_json = parse(&our_bytes, &format!("our listing of {path}"));
        match serde_json::from_slice::<serde_json::Value>(&nix_bytes) {
            Ok(nix_json) => {
                assert!(our_json == nix_json, "{path}: the listings differ as JSON");
                assert_same_text(&our_bytes, &nix_bytes, path);
            }
            Err(_) => {
                nix_invalid += 1;
                assert!(std::str::from_utf8(&nix_bytes).is_err(), "{path}");
                // Nix's with each invalid sequence replaced by U+FFFD.
                let nix_replaced = String::from_utf8_lossy(&nix_bytes);
                assert_same_text(&our_bytes, nix_replaced.as_bytes(), path);
            }
        }
    }
    nix_invalid
}

/// Fails at the first byte where `ours` and `nix` differ, showing a little around it (a
/// listing of 2,000 entries is too long to print whole).
fn assert_same_text(ours: &[u8], nix: &[u8], path: &str) {
    let Some(at) = (0..ours.len().max(nix.len())).find(|&i| ours.get(i) != nix.get(i)) else {
        return;
    };
    let around = |bytes: &[u8]| {
        let start = at.saturating_sub(60);
        String::from_utf8_lossy(&bytes[start.min(bytes.len())..(at + 60).min(bytes.len())])
            .into_owned()
    };
    panic!(
        "{path}: our listing differs from Nix's at byte {at}:\n ours: {:?}\n  nix: {:?}",
        around(ours),
        around(nix)
    );
}

fn upload_with_listings(target: &str, secret: &Path, top: &str) -> Command {
    let mut command = narpush();
    command
        .args(["upload", "--no-upstream", "--to", target, "--key"])
        .arg(secret)
        .arg(top);
    command
}

#[test]
fn listings_equal_those_nix_writes_and_are_valid_json_everywhere() {
    let (top, paths) = build_trees("listing-equal");
    let work = tempfile::tempdir().unwrap();
    let nix_cache = work.path().join("nix");
    nix_copy_with_listings(&nix_cache, &top);

    // narpush upload to a directory.
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let ours = work.path().join("ours");
    let target = format!("file://{}?write-nar-listing=true", ours.display());
    let output = run(&mut upload_with_listings(&target, &secret, &top));
    assert!(output.status.success(), "{}", stderr(&output));
    let nix_invalid = assert_same_listings(&ours, &nix_cache, &paths);
    assert_eq!(nix_invalid, 1, "only the latin1 tree has non-UTF-8 names");

    // The listing of the UTF-8 tree holds every case the fixture made.
    let utf8 = path_named(&paths, "utf8");
    let root = &parse(&listing(&ours, utf8), "utf8")["root"];
    assert_eq!(
        root["entries"]["many"]["entries"]
            .as_object()
            .unwrap()
            .len(),
        2000
    );
    let sub = &root["entries"]["sub"]["entries"];
    assert_eq!(sub["exec"]["executable"], true);
    assert_eq!(sub["empty-file"]["size"], 0);
    assert_eq!(sub["empty-dir"]["entries"], serde_json::json!({}));
    assert_eq!(sub["dangling-link"]["target"], "does/not \"exist\"");
    for name in [
        "q\"uote",
        "back\\slash",
        "new\nline",
        "ctl\u{1}\u{1f}\u{7f}",
        "😀",
    ] {
        assert_eq!(sub[name]["type"], "regular", "{name:?}");
    }
    let latin1 = path_named(&paths, "latin1");
    let dir = &parse(&listing(&ours, latin1), "latin1")["root"]["entries"]["dir"]["entries"];
    assert_eq!(dir["caf\u{fffd}"]["size"], 1);
    assert_eq!(dir["\u{fffd}\u{fffd}"]["size"], 2);
    assert_eq!(dir["link-to-latin1"]["target"], "caf\u{fffd}");
}

#[test]
fn daemon_writes_zstd_listings_to_s3_before_narinfos_and_gc_deletes_them_with_them() {
    let (top, paths) = build_trees("listing-s3");
    let work = tempfile::tempdir().unwrap();
    let nix_cache = work.path().join("nix");
    nix_copy_with_listings(&nix_cache, &top);

    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let target = format!("{}&ls-compression=zstd", s3.url("cache"));
    let daemon = Daemon::start(
        &format!("target = \"{target}\"\nwrite_nar_listing = true"),
        s3.env(),
    );
    let watch = ListingWatch::start(bucket.clone());
    let pushed = daemon.client(&["push", &top]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    daemon.wait_ok(120);
    let rounds = watch.finish();
    assert!(rounds > 1, "the watch looked {rounds} time(s)");

    // Stored zstd-compressed, served with the encoding Nix's HTTP client decodes by.
    let decoded = work.path().join("decoded");
    std::fs::create_dir_all(&decoded).unwrap();
    for path in &paths {
        let key = format!("{}.ls", hash_part(path));
        let plain = run_ok(
            command("zstd")
                .args(["-d", "-c", "-q"])
                .arg(bucket.join(&key)),
        );
        std::fs::write(decoded.join(&key), plain).unwrap();
        let (id, secret) = s3.credentials.clone().unwrap();
        let head = run_ok(command("curl").args([
            "-sSf",
            "-I",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            &format!("{id}:{secret}"),
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            &format!("http://{}/cache/{key}", s3.addr),
        ]))
        .to_ascii_lowercase();
        assert!(head.contains("content-encoding: zstd"), "{key}: {head}");
        assert!(
            head.contains("content-type: application/json"),
            "{key}: {head}"
        );
    }
    assert_eq!(assert_same_listings(&decoded, &nix_cache, &paths), 1);

    // Retention GC takes each listing with its narinfo.
    for file in snapshot(&bucket).into_keys() {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(60 * 86400)))
            .unwrap();
    }
    let collected = run(narpush()
        .args([
            "gc",
            "--json",
            "--older-than",
            "30d",
            "--to",
            &s3.url("cache"),
        ])
        .envs(s3.env()));
    assert!(collected.status.success(), "{}", stderr(&collected));
    let report: serde_json::Value = serde_json::from_slice(&collected.stdout).unwrap();
    let deleted: Vec<&str> = report["deleted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for path in &paths {
        for key in [
            format!("{}.ls", hash_part(path)),
            format!("{}.narinfo", hash_part(path)),
        ] {
            assert!(deleted.contains(&key.as_str()), "{key} not in {deleted:?}");
            assert!(!bucket.join(&key).exists(), "{key} is still there");
        }
    }
}

/// Looks at a bucket over and over while it is written: a narinfo seen without its `.ls`
/// fails the test (the listing must be written first).
struct ListingWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64, String>>,
}

impl ListingWatch {
    fn start(bucket: PathBuf) -> ListingWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rounds = 0;
            loop {
                let last = stopped.load(Ordering::Relaxed);
                for narinfo in narinfos(&bucket) {
                    if !narinfo.with_extension("ls").exists() {
                        return Err(format!("{} is there without its .ls", narinfo.display()));
                    }
                }
                rounds += 1;
                if last {
                    return Ok(rounds);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        ListingWatch { stop, thread }
    }

    /// Stops watching after one more look; returns how many looks were taken.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join().expect("the watch thread") {
            Ok(rounds) => rounds,
            Err(violation) => panic!("{violation}"),
        }
    }
}

/// `nix store <args>` against `store_url`.
fn nix_store(store_url: &str, args: &[&str]) -> std::process::Output {
    run(command("nix")
        .args(["store", args[0], "--store", store_url])
        .args(&args[1..]))
}

#[test]
fn stock_nix_browses_our_cache_and_reads_files_through_our_listing() {
    let (top, paths) = build_trees("listing-nix-reads");
    let work = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let ours = work.path().join("ours");
    let cache_url = format!("file://{}", ours.display());
    let output = run(&mut upload_with_listings(
        &format!("{cache_url}?write-nar-listing=true"),
        &secret,
        &top,
    ));
    assert!(output.status.success(), "{}", stderr(&output));
    let utf8 = path_named(&paths, "utf8");
    let sub = format!("{utf8}/sub");

    let browsed = nix_store(&cache_url, &["ls", "-l", &sub]);
    assert!(browsed.status.success(), "{}", stderr(&browsed));
    let listed = String::from_utf8_lossy(&browsed.stdout).into_owned();
    for name in ["plain", "exec", "empty-dir", "relative-link -> plain"] {
        assert!(listed.contains(name), "{name} missing from:\n{listed}");
    }

    // Nix 2.8 reads a listing only from its local NAR cache (`local-nar-cache`), where it
    // finds a file's bytes at the listing's narOffset in the NAR beside it. Put our listing
    // (its root, as Nix keeps it there) and the NAR there.
    let local = work.path().join("local-nar-cache");
    std::fs::create_dir_all(&local).unwrap();
    let ours_listing = parse(&listing(&ours, utf8), "utf8");
    let nar = std::process::Command::new("nix-store")
        .args(["--dump", utf8])
        .output()
        .unwrap();
    assert!(nar.status.success());
    std::fs::write(local.join(format!("{}.nar", hash_part(utf8))), &nar.stdout).unwrap();
    let write_root = |root: &serde_json::Value| {
        std::fs::write(
            local.join(format!("{}.ls", hash_part(utf8))),
            serde_json::to_vec(root).unwrap(),
        )
        .unwrap();
    };
    let with_local = format!("{cache_url}?local-nar-cache={}", local.display());
    write_root(&ours_listing["root"]);
    for (file, contents) in [
        ("plain", "plain\n"),
        ("exec", "#!/bin/sh\necho hi\n"),
        ("q\"uote", "q\"uote"),
    ] {
        let cat = nix_store(&with_local, &["cat", &format!("{sub}/{file}")]);
        assert!(cat.status.success(), "{}", stderr(&cat));
        assert_eq!(String::from_utf8_lossy(&cat.stdout), contents, "{file}");
    }
    let browsed_locally = nix_store(&with_local, &["ls", "-l", &sub]);
    assert_eq!(
        String::from_utf8_lossy(&browsed_locally.stdout),
        listed,
        "{}",
        stderr(&browsed_locally)
    );

    // The same read with the offset moved proves that Nix took it from our listing.
    let mut shifted = ours_listing["root"].clone();
    let offset = &mut shifted["entries"]["sub"]["entries"]["plain"]["narOffset"];
    *offset = serde_json::json!(offset.as_u64().unwrap() + 1);
    write_root(&shifted);
    let cat = nix_store(&with_local, &["cat", &format!("{sub}/plain")]);
    assert_ne!(String::from_utf8_lossy(&cat.stdout), "plain\n");
}
