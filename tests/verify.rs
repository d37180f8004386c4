//! `narpush verify` end to end: real Nix builds uploaded by the real `narpush upload` to a real
//! S3 server (s3s-fs) or a directory, then damaged directly in the bucket's directory; the
//! report names each damage under its kind, and the exit status is 0 whole, 1 problems found,
//! 2 could not read.

use std::path::{Path, PathBuf};
use std::process::Output;

use narpush_e2e::*;
use serde_json::Value;

struct Cache {
    s3: S3Server,
    bucket: PathBuf,
    _keys: tempfile::TempDir,
    secret: PathBuf,
    public: String,
    top: String,
    paths: Vec<String>,
}

/// gc.nix's closure (app → lib → base, app → tool), uploaded whole to a fresh bucket.
fn uploaded(own: &str) -> Cache {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "verify-test-1");
    let top = nix_build(
        &fixture("gc.nix"),
        &[("shared", &unique("verify-shared")), ("own", &unique(own))],
    )
    .remove(0);
    upload(&s3.url("cache"), &s3, &secret, &top, &[]);
    let paths = closure(std::slice::from_ref(&top));
    Cache {
        s3,
        bucket,
        _keys: keys,
        secret,
        public,
        top,
        paths,
    }
}

fn upload(to: &str, s3: &S3Server, secret: &Path, path: &str, extra: &[&str]) {
    let output = run(narpush()
        .args(["upload", "--to", to, "--key"])
        .arg(secret)
        .args(extra)
        .arg(path)
        .envs(s3.env()));
    assert!(output.status.success(), "{}", stderr(&output));
}

impl Cache {
    fn path(&self, suffix: &str) -> &str {
        self.paths.iter().find(|p| p.ends_with(suffix)).unwrap()
    }

    fn narinfo_file(&self, path: &str) -> PathBuf {
        self.bucket.join(format!("{}.narinfo", hash_part(path)))
    }

    fn nar_file(&self, path: &str) -> PathBuf {
        let narinfo = std::fs::read_to_string(self.narinfo_file(path)).unwrap();
        let url = narinfo
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap();
        self.bucket.join(url)
    }

    /// `narpush verify --to <the bucket> --trusted-key <its key> --json` with `args`.
    fn verify(&self, args: &[&str]) -> (Output, Value) {
        let trusted = self.public.clone();
        verify_at(
            &self.s3.url("cache"),
            &self.s3,
            &["--trusted-key", &trusted],
            args,
        )
    }
}

fn verify_at(to: &str, s3: &S3Server, keys: &[&str], args: &[&str]) -> (Output, Value) {
    let output = run(narpush()
        .args(["verify", "--json", "--to", to])
        .args(keys)
        .args(args)
        .envs(s3.env()));
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, report)
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

/// The count of problem `kind` and the keys of its examples.
fn problem(report: &Value, kind: &str) -> (u64, Vec<String>) {
    let finding = &report["problems"][kind];
    let keys = finding["examples"]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {report}"))
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    (finding["count"].as_u64().unwrap(), keys)
}

#[test]
fn a_whole_cache_is_whole_on_s3_and_in_a_directory() {
    let cache = uploaded("verify-whole");
    let (output, report) = cache.verify(&["--grace", "0s", "--nar-hash"]);
    assert_eq!(code(&output), 0, "{}\n{report}", stderr(&output));
    assert_eq!(report["whole"], true);
    assert_eq!(report["problem_count"], 0);
    assert_eq!(report["narinfos"], 4);
    assert_eq!(report["nars"], 4);
    assert_eq!(report["nar_hash_checked"], true);
    assert_eq!(report["keys"]["seen"]["verify-test-1"], 4);
    assert_eq!(report["unchecked_references"]["count"], 0);

    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    upload(&url, &cache.s3, &cache.secret, &cache.top, &[]);
    let (output, report) = verify_at(
        &url,
        &cache.s3,
        &["--trusted-key", &cache.public],
        &["--grace", "0s", "--nar-hash"],
    );
    assert_eq!(code(&output), 0, "{}\n{report}", stderr(&output));
    assert_eq!(report["narinfos"], 4);
    let text = run(narpush()
        .args(["verify", "--grace", "0s", "--to", &url, "--trusted-key"])
        .arg(&cache.public));
    assert_eq!(code(&text), 0);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.lines().any(|line| line == "whole"), "{stdout}");
    assert!(!stdout.contains("NOT whole"), "{stdout}");
}

#[test]
fn a_deleted_or_truncated_nar_is_a_problem_and_fresh_damage_is_in_flight() {
    let cache = uploaded("verify-nars");
    let tool = cache.path("-narpush-gc-tool").to_owned();
    let lib = cache.path("-narpush-gc-lib").to_owned();
    std::fs::remove_file(cache.nar_file(&tool)).unwrap();
    let lib_nar = cache.nar_file(&lib);
    let bytes = std::fs::read(&lib_nar).unwrap();
    std::fs::write(&lib_nar, &bytes[..bytes.len() / 2]).unwrap();

    // Just damaged: within the default grace of 1h, in flight.
    let (output, report) = cache.verify(&[]);
    assert_eq!(code(&output), 0, "{report}");
    assert_eq!(report["in_flight"]["count"], 2, "{report}");

    let (output, report) = cache.verify(&["--grace", "0s"]);
    assert_eq!(code(&output), 1, "{report}");
    let narinfo_key = |path: &str| format!("{}.narinfo", hash_part(path));
    assert_eq!(
        problem(&report, "missing_nars"),
        (1, vec![narinfo_key(&tool)])
    );
    assert_eq!(
        problem(&report, "nar_size_mismatches"),
        (1, vec![narinfo_key(&lib)])
    );
    assert_eq!(report["problem_count"], 2);
    assert_eq!(report["whole"], false);

    // Restored to its size with other bytes: only --nar-hash sees it.
    let mut other = bytes.clone();
    let middle = other.len() / 2;
    other[middle] ^= 0xff;
    std::fs::write(&lib_nar, &other).unwrap();
    let (_, report) = cache.verify(&["--grace", "0s"]);
    assert_eq!(problem(&report, "nar_size_mismatches").0, 0, "{report}");
    assert_eq!(problem(&report, "nar_hash_mismatches").0, 0, "{report}");
    let (output, report) = cache.verify(&["--grace", "0s", "--nar-hash"]);
    assert_eq!(code(&output), 1);
    assert_eq!(
        problem(&report, "nar_hash_mismatches"),
        (1, vec![narinfo_key(&lib)]),
        "{report}"
    );
}

#[test]
fn a_foreign_signature_fails_until_its_key_is_trusted() {
    let cache = uploaded("verify-keys");
    let keys = tempfile::tempdir().unwrap();
    let (foreign_secret, foreign_public) = keygen(keys.path(), "foreign-1");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    upload(&url, &cache.s3, &foreign_secret, &cache.top, &[]);

    let (output, report) = verify_at(
        &url,
        &cache.s3,
        &["--trusted-key", &cache.public],
        &["--grace", "0s"],
    );
    assert_eq!(code(&output), 1, "{report}");
    assert_eq!(problem(&report, "unverified_signatures").0, 4);
    assert_eq!(report["keys"]["seen"]["foreign-1"], 4);
    assert_eq!(report["keys"]["trusted"][0], "verify-test-1");
    let detail = report["problems"]["unverified_signatures"]["examples"][0]["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains("foreign-1"), "{detail}");

    let (output, report) = verify_at(
        &url,
        &cache.s3,
        &[
            "--trusted-key",
            &cache.public,
            "--trusted-key",
            &foreign_public,
        ],
        &["--grace", "0s"],
    );
    assert_eq!(code(&output), 0, "{report}");

    // The configured signing key's public half counts without any --trusted-key.
    let config = keys.path().join("narpush.toml");
    std::fs::write(
        &config,
        format!("secret_key_files = [\"{}\"]\n", foreign_secret.display()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (output, report) = verify_at(&url, &cache.s3, &["--config", config], &["--grace", "0s"]);
    assert_eq!(code(&output), 0, "{}\n{report}", stderr(&output));
    assert_eq!(report["keys"]["trusted"][0], "foreign-1");
}

#[test]
fn a_reference_not_here_is_unchecked_served_upstream_or_a_problem() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "verify-test-1");
    let top = nix_build(
        &fixture("gc.nix"),
        &[
            ("shared", &unique("verify-up-shared")),
            ("own", &unique("verify-up")),
        ],
    )
    .remove(0);
    let paths = closure(std::slice::from_ref(&top));
    let lib = paths
        .iter()
        .find(|p| p.ends_with("-narpush-gc-lib"))
        .unwrap();
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = format!("file://{}", upstream_dir.path().display());
    upload(&upstream, &s3, &secret, lib, &[]);
    // The target gets what the upstream cache does not serve: app and tool.
    upload(
        &s3.url("cache"),
        &s3,
        &secret,
        &top,
        &["--upstream", &upstream, "--upstream-key", &public],
    );
    let bucket = s3.bucket("cache");
    assert!(!bucket.join(format!("{}.narinfo", hash_part(lib))).exists());
    let trusted = ["--trusted-key", public.as_str()];

    let (output, report) = verify_at(&s3.url("cache"), &s3, &trusted, &["--grace", "0s"]);
    assert_eq!(code(&output), 0, "{report}");
    assert_eq!(report["unchecked_references"]["count"], 1, "{report}");
    assert!(report["unchecked_references"]["examples"][0]["detail"]
        .as_str()
        .unwrap()
        .contains(lib.as_str()));

    let with_upstream = ["--grace", "0s", "--upstream", upstream.as_str()];
    let (output, report) = verify_at(&s3.url("cache"), &s3, &trusted, &with_upstream);
    assert_eq!(code(&output), 0, "{report}");
    assert_eq!(report["upstream_references"]["count"], 1, "{report}");
    assert_eq!(report["unchecked_references"]["count"], 0);

    std::fs::remove_file(
        upstream_dir
            .path()
            .join(format!("{}.narinfo", hash_part(lib))),
    )
    .unwrap();
    let (output, report) = verify_at(&s3.url("cache"), &s3, &trusted, &with_upstream);
    assert_eq!(code(&output), 1, "{report}");
    let (count, _) = problem(&report, "missing_references");
    assert_eq!(count, 1, "{report}");
    let detail = report["problems"]["missing_references"]["examples"][0]["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains(lib.as_str()), "{detail}");
}

#[test]
fn leftovers_unparseable_narinfos_and_broken_pins_are_problems() {
    let cache = uploaded("verify-leftovers");
    let base = cache.path("-narpush-gc-base").to_owned();
    let tool = cache.path("-narpush-gc-tool").to_owned();
    let stray = "0000000000000000000000000000000a";
    let tool_nar = std::fs::read(cache.nar_file(&tool)).unwrap();
    std::fs::write(cache.bucket.join("nar/orphan.nar.zst"), &tool_nar).unwrap();
    std::fs::write(cache.bucket.join(format!("{stray}.ls")), "{}").unwrap();
    std::fs::create_dir_all(cache.bucket.join("log")).unwrap();
    std::fs::write(cache.bucket.join(format!("log/{stray}-x.drv")), "log").unwrap();
    std::fs::create_dir_all(cache.bucket.join("realisations")).unwrap();
    let id = format!("sha256:{}!out", "0".repeat(64));
    std::fs::write(
        cache.bucket.join(format!("realisations/{id}.doi")),
        format!(
            r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"{stray}-gone","signatures":[]}}"#
        ),
    )
    .unwrap();
    // Without its NarHash: unparseable, but its URL still names its NAR (not an orphan).
    let narinfo = std::fs::read_to_string(cache.narinfo_file(&base)).unwrap();
    let damaged: String = narinfo
        .lines()
        .filter(|l| !l.starts_with("NarHash: "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(cache.narinfo_file(&base), damaged).unwrap();
    std::fs::create_dir_all(cache.bucket.join("pins")).unwrap();
    std::fs::write(cache.bucket.join("pins/garbled"), "no store path here\n").unwrap();
    std::fs::write(
        cache.bucket.join("pins/release"),
        format!("StorePath: {}\n", cache.top),
    )
    .unwrap();

    let (output, report) = cache.verify(&["--grace", "0s"]);
    assert_eq!(code(&output), 1, "{report}");
    assert_eq!(
        problem(&report, "orphan_nars"),
        (1, vec!["nar/orphan.nar.zst".to_owned()])
    );
    assert_eq!(report["orphan_nar_bytes"], tool_nar.len() as u64);
    assert_eq!(problem(&report, "listings_without_path").0, 1);
    assert_eq!(
        problem(&report, "logs_without_path"),
        (1, vec![format!("log/{stray}-x.drv")])
    );
    assert_eq!(problem(&report, "realisations_without_path").0, 1);
    assert_eq!(
        problem(&report, "unparseable_narinfos"),
        (1, vec![format!("{}.narinfo", hash_part(&base))])
    );
    // garbled cannot be read; release's closure reaches base, whose narinfo does not parse.
    assert_eq!(
        problem(&report, "broken_pins"),
        (
            2,
            vec!["pins/garbled".to_owned(), "pins/release".to_owned()]
        )
    );
    assert_eq!(report["pins"][1]["path"], cache.top.as_str());
    assert_eq!(report["pins"][1]["whole"], false);
    assert_eq!(report["problem_count"], 7, "{report}");
}

#[test]
fn a_cache_that_cannot_be_read_exits_2() {
    let cache = uploaded("verify-unreadable");
    let port = free_port().port();
    let nowhere = format!("s3://cache?endpoint=http://127.0.0.1:{port}&region=us-east-1");
    let (output, _) = verify_at(
        &nowhere,
        &cache.s3,
        &["--trusted-key", &cache.public],
        &["--grace", "0s"],
    );
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(stderr(&output).contains("cannot"), "{}", stderr(&output));
    let (output, _) = verify_at(
        "file:///nonexistent/cache",
        &cache.s3,
        &["--trusted-key", &cache.public],
        &[],
    );
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(!Path::new("/nonexistent/cache").exists());
    let refused = run(narpush()
        .args(["verify", "--grace", "0s", "--to", &cache.s3.url("cache")])
        .args(["--trusted-key", &cache.public])
        .env("AWS_ACCESS_KEY_ID", "narpush-test-key")
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret"));
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
    assert!(refused.stdout.is_empty(), "no report on what was not read");
    // No key to verify with: nothing is guessed.
    let (output, _) = verify_at(&cache.s3.url("cache"), &cache.s3, &[], &[]);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(stderr(&output).contains("--trusted-key"));
}
