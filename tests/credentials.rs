//! Temporary credentials (an access key, a secret and a session token, as STS or R2's
//! temporary credentials hand out) work for every command that talks to the bucket: `upload`,
//! the daemon fed by the hook and by `push`, `pin`, `du`, `gc` and `exec`. Each request goes
//! through the counting proxy in front of s3s-fs, which records its `x-amz-security-token`
//! header: every request of every command must carry the token, from the environment
//! (`AWS_SESSION_TOKEN`) or from a profile (`aws_session_token` in the shared credentials file
//! named by `AWS_SHARED_CREDENTIALS_FILE`, section `AWS_PROFILE`).
//!
//! s3s-fs checks the SigV4 signature (which covers the token header) and accepts any token,
//! so the proxy forwards the header untouched.

use std::path::Path;
use std::process::Command;

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::fault_proxy::FaultProxy;
use narpush_e2e::*;

/// Where the credentials come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    Environment,
    Profile,
}

/// The environment that gives narpush `s3`'s key with `token` from `source`.
fn credentials(
    s3: &S3Server,
    source: Source,
    token: &str,
    dir: &Path,
) -> Vec<(&'static str, String)> {
    let (key, secret) = s3.credentials.clone().expect("a server with credentials");
    match source {
        Source::Environment => vec![
            ("AWS_ACCESS_KEY_ID", key),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_SESSION_TOKEN", token.to_owned()),
        ],
        Source::Profile => {
            let file = dir.join("credentials");
            std::fs::write(
                &file,
                format!(
                    "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
                     [ci]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\
                     aws_session_token = {token}\n"
                ),
            )
            .unwrap();
            vec![
                ("AWS_SHARED_CREDENTIALS_FILE", file.display().to_string()),
                ("AWS_PROFILE", "ci".to_owned()),
            ]
        }
    }
}

/// Checks that the requests `proxy` saw since `seen` carried `token`, at least one of them;
/// returns how many requests it has seen now.
fn assert_token_sent(proxy: &FaultProxy, seen: usize, token: &str, what: &str) -> usize {
    let tokens = proxy.security_tokens();
    let new = &tokens[seen..];
    assert!(!new.is_empty(), "{what} sent no request");
    let without: Vec<&Option<String>> =
        new.iter().filter(|t| t.as_deref() != Some(token)).collect();
    assert!(
        without.is_empty(),
        "{what}: {} of {} request(s) without the session token: {without:?}",
        without.len(),
        new.len()
    );
    tokens.len()
}

fn every_command_sends_the_session_token(source: Source) {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let target = proxy.url("cache");
    let dir = tempfile::tempdir().unwrap();
    let token = unique("session-token");
    let env = credentials(&s3, source, &token, dir.path());
    let narpush = || {
        let mut command = narpush();
        command.envs(env.iter().cloned());
        command
    };
    let (secret, _) = keygen(dir.path(), "narpush-test-1");
    let mut seen = 0;

    let uploaded = single_paths("creds-upload", 1).remove(0);
    run_ok(
        narpush()
            .args(["upload", "--no-upstream", "--to", &target, "--key"])
            .arg(&secret)
            .arg(&uploaded),
    );
    seen = assert_token_sent(&proxy, seen, &token, "upload");

    {
        let daemon = Daemon::start(&format!("target = \"{target}\"\n"), env.clone());
        let nonce = unique("creds-hook");
        let (hooked, build) = build_with_hook(
            &fixture("single.nix"),
            &[("nonce", &nonce)],
            &daemon.hook_env(),
        );
        assert!(build.status.success(), "build: {}", stderr(&build));
        daemon.wait_ok(120);
        let pushed = single_paths("creds-push", 1).remove(0);
        let push = daemon.client(&["push", "--wait", "--timeout", "60", &pushed]);
        assert!(push.status.success(), "push: {}", stderr(&push));
        for path in [&hooked[0], &pushed] {
            assert!(
                bucket.join(format!("{}.narinfo", hash_part(path))).exists(),
                "{path} not uploaded by the daemon:\n{}",
                daemon.log()
            );
        }
    }
    seen = assert_token_sent(&proxy, seen, &token, "the daemon (hook and push)");

    run_ok(narpush().args(["pin", "--to", &target, "creds", &uploaded]));
    seen = assert_token_sent(&proxy, seen, &token, "pin");

    let du = run_ok(narpush().args(["du", "--json", "--to", &target]));
    let du: serde_json::Value = serde_json::from_str(&du).unwrap();
    assert_eq!(du["paths"], 3, "{du}");
    seen = assert_token_sent(&proxy, seen, &token, "du");

    run_ok(narpush().args(["gc", "--older-than", "30d", "--to", &target]));
    seen = assert_token_sent(&proxy, seen, &token, "gc");

    let state = tempfile::tempdir().unwrap();
    let build_line = format!(
        "nix-build '{}' --no-out-link --argstr nonce '{}'",
        fixture("single.nix").display(),
        unique("creds-exec")
    );
    let exec: &mut Command = &mut narpush();
    let built = run_ok(exec.env("NARPUSH_STATE_DIR", state.path()).args([
        "exec",
        "--to",
        &target,
        "--",
        "sh",
        "-c",
        &build_line,
    ]));
    assert!(bucket
        .join(format!("{}.narinfo", hash_part(built.trim())))
        .exists());
    assert_token_sent(&proxy, seen, &token, "exec");
}

#[test]
fn a_session_token_from_the_environment_is_sent_by_every_command() {
    every_command_sends_the_session_token(Source::Environment);
}

#[test]
fn a_session_token_from_a_profile_is_sent_by_every_command() {
    every_command_sends_the_session_token(Source::Profile);
}
