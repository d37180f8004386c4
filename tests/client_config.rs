//! `narpush client-config`: the lines it prints, handed to a fresh store through `NIX_CONFIG`
//! as they are, make stock Nix substitute what narpush uploaded, with signatures required.

use std::path::Path;

use narpush_e2e::*;

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let file = dir.join("narpush.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_file_target_is_its_own_url_and_the_printed_lines_substitute_with_require_sigs() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(dir.path(), "client-config-1");
    let cache = dir.path().join("cache");
    let config = write_config(
        dir.path(),
        &format!(
            "target = \"file://{}\"\nsecret_key_files = [\"{}\"]\n",
            cache.display(),
            secret.display()
        ),
    );
    let path = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("client-config"))],
    )
    .remove(0);
    run_ok(
        narpush()
            .env("NARPUSH_CONFIG", &config)
            .args(["upload", &path]),
    );

    let lines = run_ok(narpush().arg("client-config").arg("--config").arg(&config));
    assert!(
        lines.starts_with(&format!(
            "extra-substituters = file://{}\nextra-trusted-public-keys = {public}\n",
            cache.display()
        )),
        "{lines}"
    );
    assert!(lines.contains("nixConfig"), "no flake block: {lines}");

    let (store, substituted) = substitute_with_client_config(&lines, std::slice::from_ref(&path));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    assert!(store.path().join(path.trim_start_matches('/')).exists());

    // The same lines with another key: the signature check is really on.
    let (_, other_public) = keygen(dir.path(), "someone-else-1");
    let wrong = lines.replace(&public, &other_public);
    let (_, refused) = substitute_with_client_config(&wrong, &[path]);
    assert!(
        !refused.status.success(),
        "substituted without a trusted signature"
    );
}

#[test]
fn an_s3_target_needs_a_public_url_and_the_flag_wins_over_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(dir.path(), "client-config-1");
    let config = write_config(
        dir.path(),
        &format!(
            "target = \"s3://cache?endpoint=http://127.0.0.1:9&region=auto\"\nsecret_key_files = [\"{}\"]\n",
            secret.display()
        ),
    );
    let refused = run(narpush().arg("client-config").arg("--config").arg(&config));
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--public-url"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("public_url"),
        "{}",
        stderr(&refused)
    );

    let given = run_ok(
        narpush()
            .args([
                "client-config",
                "--public-url",
                "https://cache.example.org",
                "--config",
            ])
            .arg(&config),
    );
    assert!(
        given.starts_with(&format!(
            "extra-substituters = https://cache.example.org\nextra-trusted-public-keys = {public}\n"
        )),
        "{given}"
    );

    let with_key = std::fs::read_to_string(&config).unwrap()
        + "public_url = \"https://configured.example.org\"\n";
    std::fs::write(&config, with_key).unwrap();
    let configured = run_ok(narpush().arg("client-config").arg("--config").arg(&config));
    assert!(
        configured.starts_with("extra-substituters = https://configured.example.org\n"),
        "{configured}"
    );
}
