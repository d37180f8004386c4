//! `narpush verify --repair` beside writers: a damaged bucket repaired while a daemon uploads
//! fresh builds and `gc` collects old closures, with a continuous check that no narinfo ever
//! becomes (or appears) broken; afterwards `verify` exits 0 and stock Nix substitutes every
//! remaining closure.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use narpush_e2e::cache_watch::check_narinfo;
use narpush_e2e::daemon::{build_with_hook, Daemon};

use super::*;

/// Narinfos that break the closure invariant (their NAR, its size or hash, or a reference).
fn broken_narinfos(
    bucket: &Path,
    hashed: &mut HashMap<PathBuf, (u64, String)>,
) -> BTreeSet<PathBuf> {
    let mut broken = BTreeSet::new();
    for narinfo in narinfos(bucket) {
        let Ok(text) = std::fs::read_to_string(&narinfo) else {
            continue;
        };
        if check_narinfo(bucket, &narinfo, &text, hashed).is_err() {
            broken.insert(narinfo);
        }
    }
    broken
}

#[test]
fn a_repair_beside_a_daemon_and_gc_never_breaks_anything_more() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let url = s3.url("cache");
    let env = s3.env();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "repair-beside-1");
    let a = Closure::build("repair-beside-a");
    let x = Closure::build("repair-beside-x");
    let old = Closure::build("repair-beside-old");
    for closure in [&a, &x, &old] {
        upload(&url, &env, &secret, &closure.top);
    }
    std::fs::remove_file(nar_file(&bucket, a.path("tool"))).unwrap();
    let lib_nar = nar_file(&bucket, a.path("lib"));
    let bytes = std::fs::read(&lib_nar).unwrap();
    std::fs::write(&lib_nar, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(nar_file(&bucket, x.path("tool"))).unwrap();
    run_ok(command("nix-store").args(["--delete", &x.top, x.path("tool")]));
    age_everything(&bucket, 2 * DAY);
    // What gc collects: old's closure, 60 days old.
    for path in &old.paths {
        set_age(&nar_file(&bucket, path), 60 * DAY);
        set_age(&narinfo_file(&bucket, path), 60 * DAY);
    }

    // Broken narinfos may be repaired or deleted, never added to.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let (stop, bucket) = (stop.clone(), bucket.clone());
        std::thread::spawn(move || {
            let mut hashed = HashMap::new();
            let mut broken = broken_narinfos(&bucket, &mut hashed);
            let initially = broken.len();
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = broken_narinfos(&bucket, &mut hashed);
                let new: Vec<&PathBuf> = now.difference(&broken).collect();
                assert!(new.is_empty(), "newly broken: {new:?}");
                broken = now;
                rounds += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (initially, rounds)
        })
    };

    let daemon = Daemon::start(
        &format!(
            "target = \"{url}\"\nsecret_key_files = [\"{}\"]\n",
            secret.display()
        ),
        env.clone(),
    );
    let builds = {
        let hook = daemon.hook_env();
        std::thread::spawn(move || {
            let mut tops = Vec::new();
            for n in 0..3 {
                let (paths, output) = build_with_hook(
                    &fixture("gc.nix"),
                    &[
                        ("shared", &unique(&format!("repair-beside-new-shared-{n}"))),
                        ("own", &unique(&format!("repair-beside-new-{n}"))),
                    ],
                    &hook,
                );
                assert!(output.status.success(), "{}", stderr(&output));
                tops.extend(paths);
            }
            tops
        })
    };
    let gc = {
        let (url, env) = (url.clone(), env.clone());
        std::thread::spawn(move || {
            run(narpush()
                .args(["gc", "--older-than", "30d", "--to", &url])
                .envs(env))
        })
    };
    let trusted = ["--trusted-key", public.as_str()];
    let repair = [
        &trusted[..],
        &[
            "--repair",
            "--delete-broken",
            "--key",
            secret.to_str().unwrap(),
        ],
    ]
    .concat();
    let (output, done) = verify(&url, &env, &repair);
    assert_eq!(code(&output), 0, "{}\n{done}", stderr(&output));
    let gc = gc.join().unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert!(
        !narinfo_file(&bucket, &old.top).exists(),
        "gc collected beside the repair"
    );
    assert!(!narinfo_file(&bucket, &x.top).exists(), "x's top deleted");
    assert_eq!(
        strings(&done["repair"]["repaired"]),
        set(&[a.path("tool"), a.path("lib")]),
        "{done}"
    );
    let new_tops = builds.join().unwrap();
    daemon.wait_ok(60);
    stop.store(true, Ordering::Relaxed);
    let (initially, rounds) = watch.join().expect("no narinfo became broken");
    assert!(initially >= 3, "the bucket started damaged: {initially}");
    assert!(rounds > 5, "checked {rounds} times");

    let (output, report) = verify(
        &url,
        &env,
        &[&trusted[..], &["--nar-hash", "--grace", "0s"]].concat(),
    );
    assert_eq!(code(&output), 0, "{}\n{report}", stderr(&output));
    let cache = format!("file://{}", bucket.display());
    let mut remaining = new_tops;
    remaining.extend([a.top.clone(), x.path("lib").to_owned()]);
    let (_store, output) = substitute(&cache, &public, &remaining);
    assert!(output.status.success(), "{}", stderr(&output));
}
