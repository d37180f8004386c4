//! `narpush upload` as a pipeline stage: paths from standard input (`nix-build … | narpush
//! upload --stdin`), the signing key from `$NARPUSH_SIGNING_KEY` instead of a file, and
//! `--quiet`. Real Nix builds, the real binary, and stock Nix substituting with signatures
//! required.

use std::io::Write;
use std::process::Stdio;

use narpush_e2e::*;

/// The text of a fresh secret key (as `nix key generate-secret` prints it) and its public key.
fn key_text(name: &str) -> (String, String) {
    let output = run(std::process::Command::new(bin("narpush")).args(["keygen", name]));
    assert!(output.status.success(), "keygen: {output:?}");
    (
        String::from_utf8(output.stdout).expect("UTF-8 key"),
        String::from_utf8(output.stderr)
            .expect("UTF-8 key")
            .trim()
            .to_owned(),
    )
}

#[test]
fn nix_build_piped_into_upload_stdin_with_the_key_from_the_environment_is_substituted() {
    let (secret, public) = key_text("stdin-test-1");
    let cache = tempfile::tempdir().unwrap();
    let cache_url = format!("file://{}", cache.path().display());
    let nonce = unique("stdin");

    // nix-build prints one output path per line; narpush reads them from the pipe.
    let mut build = command("nix-build")
        .arg(fixture("closure.nix"))
        .arg(fixture("single.nix"))
        .args(["--no-out-link", "--argstr", "nonce", &nonce])
        .args(["--argstr", "bigMiB", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("nix-build");
    let upload = narpush()
        .args(["upload", "--stdin", "--quiet", "--to", &cache_url])
        .env("NARPUSH_SIGNING_KEY", &secret)
        .stdin(build.stdout.take().expect("piped stdout"))
        .output()
        .expect("narpush upload");
    assert!(build.wait().unwrap().success(), "nix-build failed");
    assert!(upload.status.success(), "upload: {}", stderr(&upload));
    assert_eq!(stderr(&upload), "", "--quiet printed something");
    assert!(
        !stderr(&upload).contains(secret.trim()),
        "the key appeared in the output"
    );

    let tops = nix_build(&fixture("single.nix"), &[("nonce", &nonce)]);
    let closure_top = nix_build(
        &fixture("closure.nix"),
        &[("nonce", &nonce), ("bigMiB", "1")],
    );
    let all = [closure_top, tops].concat();
    assert_eq!(narinfos(cache.path()).len(), closure(&all).len());
    assert_closure_invariant(cache.path());
    let (_, substituted) = substitute(&cache_url, &public, &all);
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn paths_on_one_line_separated_by_spaces_are_all_uploaded() {
    let (secret, public) = key_text("stdin-test-1");
    let cache = tempfile::tempdir().unwrap();
    let cache_url = format!("file://{}", cache.path().display());
    let a = nix_build(&fixture("single.nix"), &[("nonce", &unique("one-line-a"))]).remove(0);
    let b = nix_build(&fixture("single.nix"), &[("nonce", &unique("one-line-b"))]).remove(0);

    let mut upload = narpush()
        .args(["upload", "--stdin", "--to", &cache_url])
        .env("NARPUSH_SIGNING_KEY", &secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narpush upload");
    write!(upload.stdin.take().unwrap(), "  {a}\t{b} \n\n").unwrap();
    let output = upload.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("uploaded 2 path(s)"),
        "{}",
        stderr(&output)
    );
    let (_, substituted) = substitute(&cache_url, &public, &[a, b]);
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn an_invalid_key_in_the_environment_is_named_without_showing_it_and_nothing_is_written() {
    let cache = tempfile::tempdir().unwrap();
    let path = nix_build(&fixture("single.nix"), &[("nonce", &unique("bad-env-key"))]).remove(0);
    let not_a_key = "ci-cache-1:c2VjcmV0LWJ1dC1ub3QtYS1rZXk=";
    let output = run(narpush()
        .args(["upload", "--to"])
        .arg(format!("file://{}", cache.path().display()))
        .arg(&path)
        .env("NARPUSH_SIGNING_KEY", not_a_key));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("NARPUSH_SIGNING_KEY"), "{message}");
    assert!(
        !message.contains("c2VjcmV0"),
        "the key text leaked: {message}"
    );
    assert!(snapshot(cache.path()).is_empty());
}

#[test]
fn upload_stdin_with_nothing_on_standard_input_says_so() {
    let output = run(narpush()
        .args([
            "upload",
            "--stdin",
            "--to",
            "file:///nonexistent-narpush-cache",
        ])
        .env("NARPUSH_SIGNING_KEY", key_text("stdin-test-1").0));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no paths on standard input"),
        "{}",
        stderr(&output)
    );
}
