//! The README's path for a new user, with the installed binaries: `scripts/install` into a
//! prefix, then `narpush exec -- nix-build …` with no config uploads the build to the embedded
//! default cache, and `narpush client-config`'s lines, given to a fresh store through
//! `NIX_CONFIG`, substitute it with signatures required.
//!
//! Its own test binary, so it runs alone: `cargo nextest run -p narpush-e2e --test install`.
//! It installs the dev-profile build the suite already made (`--debug`, with this target
//! directory as `CARGO_TARGET_DIR`), so only the static hook is compiled: seconds, not the
//! minutes of a release build. The embedded default's state directory (machine-global:
//! `/var/lib/narpush` for root) is moved into a temporary directory with `NARPUSH_STATE_DIR`;
//! "no config" is an empty config file (`NARPUSH_CONFIG=/dev/null`), which gives every default,
//! so a config file on the machine cannot change the result.

use std::path::{Path, PathBuf};
use std::process::Command;

use narpush_e2e::*;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

#[test]
fn installed_binaries_exec_a_build_into_the_default_cache_and_client_config_substitutes_it() {
    let prefix = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // target/debug/narpush → target/
    let target_dir = bin("narpush")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_owned();
    run_ok(
        Command::new(repository().join("scripts/install"))
            .args(["--debug", "--prefix"])
            .arg(prefix.path())
            .env("CARGO_TARGET_DIR", &target_dir),
    );
    let installed = prefix.path().join("bin");
    let ldd = run(Command::new("ldd").arg(installed.join("narpush-hook")));
    assert!(
        String::from_utf8_lossy(&ldd.stdout).contains("statically linked")
            || stderr(&ldd).contains("not a dynamic executable"),
        "the hook is not static: {ldd:?}"
    );

    let expression = format!(
        "derivation {{ name = \"installed\"; nonce = \"{}\"; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo hi > $out\" ]; }}",
        unique("install")
    );
    let user_env = |command: &mut Command| {
        command
            .env("NARPUSH_CONFIG", "/dev/null")
            .env("NARPUSH_STATE_DIR", state.path())
            .env_remove("NARPUSH_SIGNING_KEY")
            .env_remove("NARPUSH_SOCKET")
            .env_remove("NARPUSH_SPOOL_DIR");
    };
    let mut exec = command(installed.join("narpush"));
    user_env(&mut exec);
    let output = run(exec.args([
        "exec",
        "--",
        "nix-build",
        "--no-out-link",
        "-E",
        &expression,
    ]));
    assert!(output.status.success(), "exec: {}", stderr(&output));
    let built = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        state
            .path()
            .join("cache")
            .join(format!("{}.narinfo", hash_part(&built)))
            .exists(),
        "not in the default cache: {}",
        stderr(&output)
    );

    let mut client_config = command(installed.join("narpush"));
    user_env(&mut client_config);
    let lines = run_ok(client_config.arg("client-config"));
    let (store, substituted) = substitute_with_client_config(&lines, std::slice::from_ref(&built));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    assert!(store.path().join(built.trim_start_matches('/')).exists());
}
