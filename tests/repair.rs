//! `narpush verify --repair` end to end: real Nix builds uploaded by the real `narpush
//! upload` to a real S3 server (s3s-fs) or a directory, damaged in the bucket's directory each
//! way an operator meets (a NAR deleted, a NAR truncated, narinfos signed by a foreign key, a
//! reference deleted, what a lifecycle rule deleted by age, an orphan NAR, a path no longer in
//! the local store); `verify` reports each exactly, `--dry-run` changes nothing, and after
//! `--repair` stock Nix substitutes every remaining closure with `require-sigs` and `verify`
//! exits 0, also while a daemon uploads and `gc` runs beside it with a continuous check that
//! no narinfo ever becomes (or appears) broken (that one in `repair/beside_writers.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use narpush_e2e::*;
use serde_json::Value;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// gc.nix's closure (app → lib → base, app → tool): its paths, top first.
struct Closure {
    top: String,
    paths: Vec<String>,
}

impl Closure {
    fn build(name: &str) -> Closure {
        let top = nix_build(
            &fixture("gc.nix"),
            &[
                ("shared", &unique(&format!("{name}-shared"))),
                ("own", &unique(name)),
            ],
        )
        .remove(0);
        let paths = closure(std::slice::from_ref(&top));
        Closure { top, paths }
    }

    fn path(&self, suffix: &str) -> &str {
        self.paths
            .iter()
            .find(|p| p.ends_with(&format!("-narpush-gc-{suffix}")))
            .unwrap()
    }
}

fn upload(to: &str, env: &[(&'static str, String)], secret: &Path, path: &str) {
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", to, "--key"])
        .arg(secret)
        .arg(path)
        .envs(env.iter().cloned()));
    assert!(output.status.success(), "{}", stderr(&output));
}

fn narinfo_file(bucket: &Path, path: &str) -> PathBuf {
    bucket.join(format!("{}.narinfo", hash_part(path)))
}

fn narinfo_key(path: &str) -> String {
    format!("{}.narinfo", hash_part(path))
}

fn nar_file(bucket: &Path, path: &str) -> PathBuf {
    let narinfo = std::fs::read_to_string(narinfo_file(bucket, path)).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    bucket.join(url)
}

fn set_age(file: &Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(file)
        .and_then(|f| f.set_modified(SystemTime::now() - age))
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// What a lifecycle rule "delete objects older than `age`" does to a bucket.
fn lifecycle(bucket: &Path, age: Duration) {
    for (file, (_, modified)) in snapshot(bucket) {
        if SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default()
            > age
        {
            std::fs::remove_file(file).unwrap();
        }
    }
}

/// `narpush verify --json --to TO` with `args`.
fn verify(to: &str, env: &[(&'static str, String)], args: &[&str]) -> (Output, Value) {
    let output = run(narpush()
        .args(["verify", "--json", "--to", to])
        .args(args)
        .envs(env.iter().cloned()));
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, report)
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

/// The count of problem `kind`.
fn count(report: &Value, kind: &str) -> u64 {
    report["problems"][kind]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {kind} in {report}"))
}

/// The keys of the examples of problem `kind`, sorted.
fn examples(report: &Value, kind: &str) -> BTreeSet<String> {
    report["problems"][kind]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_damage_is_reported_exactly_then_repaired_and_stock_nix_substitutes_the_rest() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let url = s3.url("cache");
    let env = s3.env();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "repair-test-1");
    let (foreign, _) = keygen(keys.path(), "foreign-1");
    // An upstream cache that serves nothing: references with no narinfo here are problems.
    let upstream = tempfile::tempdir().unwrap();
    let upstream = format!("file://{}", upstream.path().display());

    // a: NARs deleted and truncated, a reference deleted. f: signed by a foreign key.
    // l: its bottom deleted by a lifecycle rule. x: its top and tool no longer in the local
    // store, and tool's NAR deleted: what cannot be made whole.
    let a = Closure::build("repair-a");
    let f = Closure::build("repair-f");
    let l = Closure::build("repair-l");
    let x = Closure::build("repair-x");
    for (closure, key) in [(&a, &secret), (&f, &foreign), (&l, &secret), (&x, &secret)] {
        upload(&url, &env, key, &closure.top);
    }
    std::fs::remove_file(nar_file(&bucket, a.path("tool"))).unwrap();
    let lib_nar = nar_file(&bucket, a.path("lib"));
    let bytes = std::fs::read(&lib_nar).unwrap();
    std::fs::write(&lib_nar, &bytes[..bytes.len() / 2]).unwrap();
    let a_base_nar = nar_file(&bucket, a.path("base"));
    std::fs::remove_file(narinfo_file(&bucket, a.path("base"))).unwrap();
    std::fs::write(bucket.join("nar/orphan.nar.zst"), b"left over").unwrap();
    std::fs::remove_file(nar_file(&bucket, x.path("tool"))).unwrap();
    run_ok(command("nix-store").args(["--delete", &x.top, x.path("tool")]));
    age_everything(&bucket, 2 * DAY);
    for path in [l.path("lib"), l.path("base")] {
        set_age(&nar_file(&bucket, path), 60 * DAY);
        set_age(&narinfo_file(&bucket, path), 60 * DAY);
    }
    lifecycle(&bucket, 30 * DAY);

    let trusted = ["--trusted-key", public.as_str(), "--upstream", &upstream];
    let (output, report) = verify(&url, &env, &[&trusted[..], &["--nar-hash"]].concat());
    assert_eq!(code(&output), 1, "{}\n{report}", stderr(&output));
    assert_eq!(
        examples(&report, "missing_nars"),
        set(&[&narinfo_key(a.path("tool")), &narinfo_key(x.path("tool"))])
    );
    assert_eq!(count(&report, "missing_nars"), 2);
    assert_eq!(
        examples(&report, "nar_size_mismatches"),
        set(&[&narinfo_key(a.path("lib"))])
    );
    assert_eq!(count(&report, "unverified_signatures"), 4, "{report}");
    assert_eq!(report["keys"]["seen"]["foreign-1"], 4);
    // a's lib refers to a's base, l's app to l's lib (l's lib referred to l's base: gone too).
    assert_eq!(
        examples(&report, "missing_references"),
        set(&[&narinfo_key(a.path("lib")), &narinfo_key(l.top.as_str())])
    );
    assert_eq!(count(&report, "missing_references"), 2);
    let orphan = a_base_nar.strip_prefix(&bucket).unwrap().to_str().unwrap();
    assert_eq!(
        examples(&report, "orphan_nars"),
        set(&["nar/orphan.nar.zst", orphan])
    );
    assert_eq!(report["problem_count"], 11, "{report}");

    // The plan, and nothing changed.
    let before = snapshot(&bucket);
    let repair = [
        &trusted[..],
        &["--nar-hash", "--repair", "--delete-broken", "--key"],
        &[secret.to_str().unwrap()],
    ]
    .concat();
    let (output, plan) = verify(&url, &env, &[&repair[..], &["--dry-run"]].concat());
    assert_eq!(code(&output), 1, "{}\n{plan}", stderr(&output));
    assert_eq!(snapshot(&bucket), before, "--dry-run wrote or deleted");
    let repaired = set(&[
        a.path("tool"),
        a.path("lib"),
        a.path("base"),
        l.path("lib"),
        &f.top,
        f.path("lib"),
        f.path("tool"),
        f.path("base"),
    ]);
    assert_eq!(strings(&plan["repair"]["repaired"]), repaired, "{plan}");
    let x_app_nar = nar_file(&bucket, &x.top);
    let x_app_nar = x_app_nar.strip_prefix(&bucket).unwrap().to_str().unwrap();
    assert_eq!(
        strings(&plan["repair"]["deleted"]),
        set(&[
            &narinfo_key(&x.top),
            &narinfo_key(x.path("tool")),
            x_app_nar,
            "nar/orphan.nar.zst",
            orphan,
        ]),
        "{plan}"
    );
    assert!(plan["repair"]["unfixable"][narinfo_key(x.path("tool"))]
        .as_str()
        .unwrap()
        .contains("not valid in the local store"));

    // The NARs the repair replaced (it writes every NAR under a new name, and never over an
    // object another narinfo may name): orphans once it has uploaded, older than the grace.
    let key_of = |file: PathBuf| {
        file.strip_prefix(&bucket)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let mut replaced: BTreeSet<String> = [
        a.path("lib"),
        &f.top,
        f.path("lib"),
        f.path("tool"),
        f.path("base"),
    ]
    .into_iter()
    .map(|path| key_of(nar_file(&bucket, path)))
    .collect();
    replaced.insert(orphan.to_owned());

    let (output, done) = verify(&url, &env, &repair);
    assert_eq!(code(&output), 0, "{}\n{done}", stderr(&output));
    assert_eq!(done["whole"], true);
    assert_eq!(strings(&done["repair"]["repaired"]), repaired, "{done}");
    let mut deleted = replaced.clone();
    deleted.extend(
        [
            &narinfo_key(&x.top),
            &narinfo_key(x.path("tool")),
            x_app_nar,
            "nar/orphan.nar.zst",
        ]
        .map(str::to_owned),
    );
    assert_eq!(strings(&done["repair"]["deleted"]), deleted, "{done}");
    assert!(!narinfo_file(&bucket, &x.top).exists());
    assert!(narinfo_file(&bucket, x.path("lib")).exists());

    let (output, report) = verify(
        &url,
        &env,
        &[&trusted[..], &["--nar-hash", "--grace", "0s"]].concat(),
    );
    assert_eq!(code(&output), 0, "{}\n{report}", stderr(&output));
    assert_closure_invariant(&bucket);
    let cache = format!("file://{}", bucket.display());
    let remaining = [
        a.top.clone(),
        f.top.clone(),
        l.top.clone(),
        x.path("lib").to_owned(),
    ];
    let (_store, output) = substitute(&cache, &public, &remaining);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_directory_cache_is_repaired_and_a_repair_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "repair-dir-1");
    let a = Closure::build("repair-dir");
    upload(&url, &[], &secret, &a.top);
    let lib_nar = nar_file(dir.path(), a.path("lib"));
    let base_nar = nar_file(dir.path(), a.path("base"));
    let bytes = std::fs::read(&lib_nar).unwrap();
    std::fs::write(&lib_nar, &bytes[..100]).unwrap();
    std::fs::remove_file(narinfo_file(dir.path(), a.path("base"))).unwrap();
    // Damage found a day later, so that --delete-broken may take what the repair leaves.
    age_everything(dir.path(), Duration::from_secs(86400));
    let key_of = |file: &Path| {
        file.strip_prefix(dir.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let replaced: BTreeSet<String> = [key_of(&lib_nar), key_of(&base_nar)].into();

    let trusted = ["--trusted-key", public.as_str(), "--grace", "0s"];
    let refused = run(narpush()
        .args(["verify", "--repair", "--to", &url])
        .args(trusted));
    assert_eq!(code(&refused), 2);
    assert!(
        stderr(&refused).contains("--key FILE"),
        "{}",
        stderr(&refused)
    );

    let repair = [
        &trusted[..],
        &["--repair", "--key", secret.to_str().unwrap()],
    ]
    .concat();
    let before = snapshot(dir.path());
    let (output, plan) = verify(&url, &[], &[&repair[..], &["--dry-run"]].concat());
    assert_eq!(code(&output), 1, "{plan}");
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(
        strings(&plan["repair"]["forced"]),
        set(&[a.path("lib")]),
        "{plan}"
    );
    // --delete-broken deletes nothing younger than gc's minimum grace.
    let (output, _) = verify(&url, &[], &[&repair[..], &["--delete-broken"]].concat());
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("--grace"), "{}", stderr(&output));

    // Repaired NARs get new names: the damaged NAR and the one base's narinfo named stay, as
    // orphans, the only problems left.
    let (output, done) = verify(&url, &[], &repair);
    assert_eq!(code(&output), 1, "{}\n{done}", stderr(&output));
    assert_eq!(
        strings(&done["repair"]["repaired"]),
        set(&[a.path("lib"), a.path("base")])
    );
    assert_eq!(done["problem_count"], 2, "{done}");
    let orphans: BTreeSet<String> = done["problems"]["orphan_nars"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|example| example["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(orphans, replaced, "{done}");
    // --delete-broken, with gc's minimum grace, takes them: whole.
    let (output, cleaned) = verify(
        &url,
        &[],
        &[
            "--trusted-key",
            public.as_str(),
            "--grace",
            "15m",
            "--repair",
            "--delete-broken",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&output), 0, "{}\n{cleaned}", stderr(&output));
    assert_eq!(
        strings(&cleaned["repair"]["deleted"]),
        replaced,
        "{cleaned}"
    );
    let (output, report) = verify(&url, &[], &[&trusted[..], &["--nar-hash"]].concat());
    assert_eq!(code(&output), 0, "{report}");
    let (_store, output) = substitute(&url, &public, std::slice::from_ref(&a.top));
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Paths substituted from this very cache carry its signature in the local store, and an
/// upstream cache is configured: an unparseable narinfo (its path known only from a referrer)
/// and a reference that only it named are uploaded again, and repair's own last look, with
/// the default grace, finds the cache whole.
#[test]
fn an_unparseable_narinfo_and_the_reference_only_it_named_are_uploaded_from_a_signed_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "repair-signed-1");
    let a = Closure::build("repair-signed");
    upload(&url, &[], &secret, &a.top);
    let signed = run(std::process::Command::new("nix")
        .args(["store", "sign", "--recursive", "--key-file"])
        .arg(&secret)
        .arg(&a.top));
    assert!(signed.status.success(), "{}", stderr(&signed));
    // lib's narinfo no longer parses (its path is known from app's references), and base,
    // which only lib names, is gone: nothing the scan parsed names base any more.
    std::fs::write(narinfo_file(dir.path(), a.path("lib")), "garbage\n").unwrap();
    std::fs::remove_file(narinfo_file(dir.path(), a.path("base"))).unwrap();
    for file in snapshot(dir.path()).into_keys() {
        set_age(&file, DAY);
    }

    // An upstream cache that serves nothing: with one, the engine skips what an upstream key
    // signed in the local store.
    let upstream = tempfile::tempdir().unwrap();
    std::fs::write(
        upstream.path().join("nix-cache-info"),
        "StoreDir: /nix/store\n",
    )
    .unwrap();
    let upstream = format!("file://{}", upstream.path().display());
    // The default grace (1 h): the damage is older, everything repair writes is younger.
    let (output, done) = verify(
        &url,
        &[],
        &[
            "--trusted-key",
            &public,
            "--upstream",
            &upstream,
            "--repair",
            // The NARs of lib and base, which no narinfo names any more (repaired NARs get
            // new names), are older than the grace: deleted.
            "--delete-broken",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert!(
        narinfo_file(dir.path(), a.path("base")).exists(),
        "base was not uploaded: {done}"
    );
    assert_eq!(code(&output), 0, "{}\n{done}", stderr(&output));
    let (output, report) = verify(&url, &[], &["--trusted-key", &public, "--grace", "0s"]);
    assert_eq!(code(&output), 0, "{report}");
    let (_store, output) = substitute(&url, &public, std::slice::from_ref(&a.top));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[path = "repair/beside_writers.rs"]
mod beside_writers;
#[path = "repair/filtered.rs"]
mod filtered;
