//! Content-addressed derivations end to end: realisations built with the hook (or given to
//! `narpush upload`) land in the cache, signed, after their outputs, and a fresh store with
//! ca-derivations and require-sigs substitutes the derivation from the cache alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use narpush_e2e::daemon::Daemon;
use narpush_e2e::*;

/// The suite's Nix settings with content-addressed derivations enabled.
fn ca_nix_config(extra: &str) -> String {
    format!("{NIX_CONFIG}experimental-features = nix-command ca-derivations\n{extra}")
}

fn nix_with_ca(program: &str, extra_config: &str) -> Command {
    let mut command = command(program);
    command.env("NIX_CONFIG", ca_nix_config(extra_config));
    command
}

struct Fixture {
    _dir: tempfile::TempDir,
    marker: PathBuf,
    nonce: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("may-build");
        std::fs::write(&marker, "").unwrap();
        Fixture {
            _dir: dir,
            marker,
            nonce: unique(name),
        }
    }

    fn args(&self, command: &mut Command) {
        command
            .arg(fixture("ca.nix"))
            .args(["--argstr", "nonce", &self.nonce])
            .args(["--argstr", "marker"])
            .arg(&self.marker);
    }

    /// Builds `attr` in the local store (with ca-derivations) and returns its output path.
    fn build(&self, attr: &str) -> String {
        let mut build = nix_with_ca("nix-build", "");
        build.arg("--no-out-link");
        self.args(&mut build);
        build.args(["-A", attr]);
        run_ok(&mut build).trim().to_owned()
    }

    fn instantiate(&self, attr: &str) -> String {
        let mut instantiate = nix_with_ca("nix-instantiate", "");
        self.args(&mut instantiate);
        instantiate.args(["-A", attr]);
        run_ok(&mut instantiate).trim().to_owned()
    }
}

/// `narpush upload --key KEY --to file://CACHE PATH`, which must succeed.
fn upload(key_file: &Path, cache: &Path, path: &str) {
    run_ok(
        narpush()
            .args(["upload", "--quiet", "--key"])
            .arg(key_file)
            .arg("--to")
            .arg(format!("file://{}", cache.display()))
            .arg(path),
    );
}

/// `nix realisation info --json` of `drv` in the local store: (id, outPath basename, JSON).
fn realisations(drv: &str) -> Vec<(String, String, serde_json::Value)> {
    let json = run_ok(nix_with_ca("nix", "").args(["realisation", "info", "--json", drv]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    list.into_iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_owned();
            let out = r["outPath"].as_str().unwrap().to_owned();
            (id, out, r)
        })
        .collect()
}

/// Checks the cache's `.doi` of a local realisation: Nix's JSON with our signature added, and
/// written after its output's narinfo.
fn assert_published(cache: &Path, local: &(String, String, serde_json::Value), key_name: &str) {
    let (id, out, json) = local;
    let doi = cache.join("realisations").join(format!("{id}.doi"));
    let text =
        std::fs::read_to_string(&doi).unwrap_or_else(|e| panic!("{} missing: {e}", doi.display()));
    let mut published: serde_json::Value = serde_json::from_str(&text).unwrap();
    let signatures = published["signatures"].as_array().unwrap().clone();
    assert!(
        signatures
            .iter()
            .any(|s| s.as_str().unwrap().starts_with(&format!("{key_name}:"))),
        "{id} not signed by {key_name}: {text}"
    );
    published["signatures"] = json["signatures"].clone();
    assert_eq!(&published, json, "{id} differs from the store's");
    let narinfo = cache.join(format!("{}.narinfo", &out[..32]));
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert!(narinfo.exists(), "{out} has no narinfo");
    assert!(
        modified(&narinfo) <= modified(&doi),
        "the realisation of {out} was written before its narinfo"
    );
}

/// The deriver Nix 2.8 recorded for `out`: for an output with content-addressed inputs, the
/// resolved derivation (inputs replaced by their outputs), which Nix built under its own name.
fn deriver(out: &str) -> String {
    let info = run_ok(nix_with_ca("nix", "").args(["path-info", "--json", out]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info[0]["deriver"].as_str().unwrap().to_owned()
}

/// Checks the cache's Nix 2.35 build trace entry of output `out` (basename) of the resolved
/// derivation `drv`: Nix's JSON (schema build-trace-entry-v3, compact), a structured signature
/// by `public_key` over Nix's fingerprint (checked here with ed25519 directly, not with
/// narpush's code), written after the output's narinfo.
fn assert_build_trace_entry(cache: &Path, drv: &str, out: &str, public_key: &str) {
    use base64::Engine;
    let drv = drv.trim_start_matches("/nix/store/");
    let object = cache.join("build-trace-v2").join(drv).join("out.doi");
    let text = std::fs::read_to_string(&object)
        .unwrap_or_else(|e| panic!("{} missing: {e}", object.display()));
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value.to_string(), text, "not compact, sorted JSON: {text}");
    assert_eq!(value["outPath"], out, "{text}");
    let (key_name, key) = public_key.split_once(':').unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key.try_into().unwrap()).unwrap();
    let fingerprint = format!(
        r#"{{"key":{{"drvPath":"{drv}","outputName":"out"}},"value":{{"outPath":"{out}"}}}}"#
    );
    let signatures = value["signatures"].as_array().unwrap();
    assert_eq!(signatures.len(), 1, "{text}");
    assert_eq!(signatures[0]["keyName"], key_name, "{text}");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signatures[0]["sig"].as_str().unwrap())
        .unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&sig.try_into().unwrap());
    key.verify_strict(fingerprint.as_bytes(), &sig)
        .unwrap_or_else(|e| panic!("{} does not verify: {e}", object.display()));
    let narinfo = cache.join(format!("{}.narinfo", &out[..32]));
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert!(
        modified(&narinfo) <= modified(&object),
        "the build trace entry of {out} was written before its narinfo"
    );
}

/// The derivations the cache has build trace entries for.
fn build_trace_drvs(cache: &Path) -> Vec<String> {
    let mut drvs: Vec<String> = std::fs::read_dir(cache.join("build-trace-v2"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    drvs.sort();
    drvs
}

/// Realises `attr` into a fresh store that substitutes from `cache_url` only, with
/// ca-derivations, requiring signatures by `public_key`. The builders cannot run there.
fn realise_in_fresh_store(
    fixture: &Fixture,
    attr: &str,
    cache_url: &str,
    public_key: &str,
) -> (tempfile::TempDir, Output) {
    std::fs::remove_file(&fixture.marker).ok();
    let store = tempfile::tempdir().unwrap();
    let mut build = nix_with_ca(
        "nix-build",
        &format!(
            "substituters = {cache_url}\ntrusted-public-keys = {public_key}\nrequire-sigs = true\n\
             narinfo-cache-negative-ttl = 0\n"
        ),
    );
    build.arg("--store").arg(store.path()).arg("--no-out-link");
    fixture.args(&mut build);
    build.args(["-A", attr]);
    (store, run(&mut build))
}

fn assert_substituted(output: &Output, store: &Path, drv: &str, out: &str) {
    let log = stderr(output);
    assert!(output.status.success(), "fresh store failed: {log}");
    // Nix says so before running any builder (which could not run there anyway: no marker,
    // and no /bin/sh under the fresh store's root).
    assert!(!log.contains("building '"), "{log}");
    assert!(
        store.join("nix/store").join(out).exists(),
        "{out} not in the fresh store: {log}"
    );
    // The fresh store learnt the realisation from the cache.
    let info = run_ok(nix_with_ca("nix", "").arg("--store").arg(store).args([
        "realisation",
        "info",
        "--json",
        drv,
    ]));
    assert!(info.contains(out), "{info}");
}

#[test]
fn a_ca_derivation_built_with_the_hook_is_substituted_by_a_fresh_store() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("ca-cache");
    let daemon = Daemon::start(&format!("target = \"{}\"", s3.url("ca-cache")), s3.env());
    let fixture = Fixture::new("ca-hook");

    let mut build = nix_with_ca("nix-build", "");
    build
        .arg("--no-out-link")
        .args(["--option", "post-build-hook"])
        .arg(bin("narpush-hook"));
    fixture.args(&mut build);
    build.args(["-A", "top"]);
    for (name, value) in daemon.hook_env() {
        build.env(name, value);
    }
    let built = run(&mut build);
    assert!(built.status.success(), "{}", stderr(&built));
    // The daemon answered each hook in time (finding the outputs took a `nix` process).
    assert!(!stderr(&built).contains("spooled"), "{}", stderr(&built));
    daemon.wait_ok(120);

    let key = daemon.public_key();
    let key_name = key.split(':').next().unwrap();
    let top_drv = fixture.instantiate("top");
    let dep_drv = fixture.instantiate("dep");
    let top = realisations(&top_drv);
    let dep = realisations(&dep_drv);
    assert_eq!((top.len(), dep.len()), (1, 1));
    assert!(
        top[0].2["dependentRealisations"].get(&dep[0].0).is_some(),
        "the top's realisation names the dep's: {:?}",
        top[0].2
    );
    for local in top.iter().chain(&dep) {
        assert_published(&bucket, local, key_name);
    }
    assert_closure_invariant(&bucket);
    // Nix 2.35's form, keyed by resolved derivation: dep has no input derivations (it is
    // its own resolution); top's is the derivation Nix 2.8 resolved it to and built. The
    // unresolved top has none.
    let resolved_top = deriver(&format!("/nix/store/{}", top[0].1));
    assert_ne!(resolved_top, top_drv);
    assert_build_trace_entry(&bucket, &dep_drv, &dep[0].1, &key);
    assert_build_trace_entry(&bucket, &resolved_top, &top[0].1, &key);
    let mut expected = vec![
        dep_drv.trim_start_matches("/nix/store/").to_owned(),
        resolved_top.trim_start_matches("/nix/store/").to_owned(),
    ];
    expected.sort();
    assert_eq!(build_trace_drvs(&bucket), expected);

    let cache_url = format!("file://{}", bucket.display());
    let (store, output) = realise_in_fresh_store(&fixture, "top", &cache_url, &key);
    assert_substituted(&output, store.path(), &top_drv, &top[0].1);
}

#[test]
fn upload_of_a_ca_drv_publishes_its_realisations_and_a_fresh_store_substitutes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_key) = keygen(dir.path(), "ca-upload-1");
    let cache = dir.path().join("cache");
    let fixture = Fixture::new("ca-upload");
    fixture.build("top");
    let top_drv = fixture.instantiate("top");
    let dep_drv = fixture.instantiate("dep");

    let started = Instant::now();
    upload(&key_file, &cache, &top_drv);
    assert!(started.elapsed() < Duration::from_secs(60));
    let top = realisations(&top_drv);
    let dep = realisations(&dep_drv);
    for local in top.iter().chain(&dep) {
        assert_published(&cache, local, "ca-upload-1");
    }
    assert_closure_invariant(&cache);
    // The unresolved top gets no build trace entry; its outputs' derivers are resolved ones.
    assert_build_trace_entry(&cache, &dep_drv, &dep[0].1, &public_key);
    let resolved_top = deriver(&format!("/nix/store/{}", top[0].1));
    assert_build_trace_entry(&cache, &resolved_top, &top[0].1, &public_key);
    assert_eq!(build_trace_drvs(&cache).len(), 2);

    let cache_url = format!("file://{}", cache.display());
    let (store, output) = realise_in_fresh_store(&fixture, "top", &cache_url, &public_key);
    assert_substituted(&output, store.path(), &top_drv, &top[0].1);
}

#[test]
fn upload_of_a_ca_output_path_publishes_its_realisation_found_through_its_deriver() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_key) = keygen(dir.path(), "ca-output-1");
    let cache = dir.path().join("cache");
    let fixture = Fixture::new("ca-output");
    let out = fixture.build("top");
    upload(&key_file, &cache, &out);
    // Nix 2.8 records the resolved derivation (inputs replaced by their outputs) as the
    // deriver of an output with content-addressed inputs: its realisation is the one found.
    let info = run_ok(nix_with_ca("nix", "").args(["path-info", "--json", &out]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let resolved = info[0]["deriver"].as_str().unwrap().to_owned();
    let top_drv = fixture.instantiate("top");
    assert_ne!(resolved, top_drv);
    let top = realisations(&resolved);
    assert_eq!(format!("/nix/store/{}", top[0].1), out);
    for local in top.iter().chain(&realisations(&fixture.instantiate("dep"))) {
        assert_published(&cache, local, "ca-output-1");
    }
    assert_build_trace_entry(&cache, &resolved, &top[0].1, &public_key);
    // With those, a client substitutes the inputs by their realisations, resolves the
    // derivation, and substitutes the resolved one.
    let cache_url = format!("file://{}", cache.display());
    let (store, output) = realise_in_fresh_store(&fixture, "top", &cache_url, &public_key);
    assert_substituted(&output, store.path(), &top_drv, &top[0].1);
}

#[test]
fn without_the_realisations_the_fresh_store_cannot_substitute_and_must_build() {
    // The check above is only meaningful if a fresh store really refuses to build: here the
    // cache has the outputs' narinfos but no realisations.
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_key) = keygen(dir.path(), "ca-control-1");
    let cache = dir.path().join("cache");
    let fixture = Fixture::new("ca-control");
    let out = fixture.build("top");
    upload(&key_file, &cache, &out);
    std::fs::remove_dir_all(cache.join("realisations")).ok();
    let cache_url = format!("file://{}", cache.display());
    let (_store, output) = realise_in_fresh_store(&fixture, "top", &cache_url, &public_key);
    assert!(!output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("building '"),
        "it failed for another reason: {}",
        stderr(&output)
    );
}

#[test]
fn a_spooled_ca_request_waits_while_nix_cannot_answer_and_is_queued_once_it_can() {
    let fixture = Fixture::new("ca-spool-retry");
    let out = fixture.build("dep");
    let drv = fixture.instantiate("dep");
    // A `nix` that fails `nix realisation info` as while the nix-daemon restarts, as long as
    // `down` exists.
    let bin_dir = tempfile::tempdir().unwrap();
    let down = bin_dir.path().join("down");
    std::fs::write(&down, "").unwrap();
    let real_nix = run_ok(Command::new("sh").args(["-c", "command -v nix"]));
    let wrapper = bin_dir.path().join("nix");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then for arg; do if [ \"$arg\" = realisation ]; then \
             echo \"error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': \
             Connection refused\" >&2; exit 1; fi; done; fi\nexec '{}' \"$@\"\n",
            down.display(),
            real_nix.trim()
        ),
    )
    .unwrap();
    set_mode(&wrapper, 0o755);
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let daemon = Daemon::start(
        "retry_initial_delay_ms = 100\nretry_max_delay_ms = 400\nmax_attempts = 1000",
        vec![("PATH", path), ("NIX_CONFIG", ca_nix_config(""))],
    );
    let temporary = daemon.spool.join(".1-1.request.tmp");
    std::fs::write(
        &temporary,
        format!("narpush 1 enqueue\nsource hook\ndrv {drv}\nend\n"),
    )
    .unwrap();
    std::fs::rename(&temporary, daemon.spool.join("1-1.request")).unwrap();

    // Tried, failed, and tried again: the file stays, nothing is rejected.
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.log().matches("will try again").count() < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.spooled().len(), 1, "{}", daemon.log());
    assert!(!daemon.spool.join("rejected").exists(), "{}", daemon.log());

    std::fs::remove_file(&down).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.spooled().is_empty() {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.wait_ok(60);
    let cache = daemon.state.join("cache");
    assert!(
        cache.join(format!("{}.narinfo", hash_part(&out))).exists(),
        "{}",
        daemon.log()
    );
    let key = daemon.public_key();
    for local in realisations(&drv) {
        assert_published(&cache, &local, key.split(':').next().unwrap());
    }
}

#[test]
fn upload_without_the_closure_looks_a_realisations_dependency_up_instead_of_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_key) = keygen(dir.path(), "ca-no-closure-1");
    let cache = dir.path().join("cache");
    let fixture = Fixture::new("ca-no-closure");
    fixture.build("top");
    let top_drv = fixture.instantiate("top");
    let dep_drv = fixture.instantiate("dep");
    let dep = realisations(&dep_drv);
    // The dependency's output is in the cache, its realisation is not (uploaded before
    // realisations were, or by another tool).
    upload(&key_file, &cache, &format!("/nix/store/{}", dep[0].1));
    std::fs::remove_dir_all(cache.join("realisations")).unwrap();

    // Without --no-closure's dependency in the upload, the engine never looks its output up
    // on its own: it must not wait for it.
    let mut upload = narpush();
    upload
        .args(["upload", "--quiet", "--no-closure", "--key"])
        .arg(&key_file)
        .arg("--to")
        .arg(format!("file://{}", cache.display()))
        .arg(&top_drv)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = upload.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("upload --no-closure still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let top = realisations(&top_drv);
    for local in top.iter().chain(&dep) {
        assert_published(&cache, local, "ca-no-closure-1");
    }
    let cache_url = format!("file://{}", cache.display());
    let (store, output) = realise_in_fresh_store(&fixture, "top", &cache_url, &public_key);
    assert_substituted(&output, store.path(), &top_drv, &top[0].1);
}

#[path = "realisations/gc.rs"]
mod gc;
