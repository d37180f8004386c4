//! The GitHub Action (`action.yml`): it must parse as YAML with the inputs the docs promise,
//! every `run:` step must be shell that `shellcheck` accepts, with inputs reaching it only
//! through the environment, and its last steps, run here with bash as the runner would
//! run them, must upload a real build and hand the job the consumer's `NIX_CONFIG`, while the
//! command finds the secrets in no environment of its process tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use narpush_e2e::*;

fn action() -> serde_json::Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../action.yml");
    let json = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg("import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)")
            .arg(&file),
    );
    serde_json::from_str(&json).expect("action.yml as JSON")
}

fn steps(action: &serde_json::Value) -> Vec<serde_json::Value> {
    action["runs"]["steps"]
        .as_array()
        .expect("runs.steps")
        .clone()
}

fn step(action: &serde_json::Value, name: &str) -> serde_json::Value {
    steps(action)
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step named {name}"))
}

#[test]
fn action_yml_is_a_composite_action_with_the_documented_inputs() {
    let action = action();
    assert_eq!(action["runs"]["using"], "composite");
    for input in [
        "command",
        "target",
        "signing-key",
        "aws-access-key-id",
        "aws-secret-access-key",
        "aws-session-token",
        "public-url",
        "allow-upload-failures",
    ] {
        assert!(action["inputs"][input].is_object(), "input {input} missing");
    }
    assert_eq!(action["inputs"]["command"]["required"], true);
}

#[test]
fn every_run_step_is_bash_that_shellcheck_accepts_without_expressions_inside() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (index, step) in steps(&action()).iter().enumerate() {
        let Some(script) = step["run"].as_str() else {
            continue;
        };
        assert_eq!(step["shell"], "bash", "step {index} must say shell: bash");
        assert!(
            !script.contains("${{"),
            "step {index} splices an expression into the script; pass it through env:"
        );
        let file = dir.path().join(format!("step-{index}.sh"));
        std::fs::write(
            &file,
            format!("#!/usr/bin/env bash\nset -eo pipefail\n{script}"),
        )
        .unwrap();
        let output = run(Command::new("shellcheck")
            .args(["--shell=bash", "--severity=style"])
            .arg(&file));
        assert!(
            output.status.success(),
            "shellcheck on step {index} ({}):\n{}",
            step["name"],
            String::from_utf8_lossy(&output.stdout)
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} run steps found");
}

/// Runs one step's script with bash and `env`, as the runner does.
fn run_step(
    action: &serde_json::Value,
    name: &str,
    env: &[(&str, String)],
) -> std::process::Output {
    let script = step(action, name)["run"].as_str().expect("run").to_owned();
    let mut bash = command("bash");
    bash.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script]);
    for (key, value) in env {
        bash.env(key, value);
    }
    run(&mut bash)
}

/// Shell lines for COMMAND: the environment blocks of COMMAND, of every process above it and
/// of its parent's other children (exec's private daemon), one variable a line, into the file
/// `environments` of the current directory.
const DUMP_ENVIRONMENTS: &str =
    "{ env; p=$$; while [ \"$p\" -gt 1 ]; do tr '\\0' '\\n' < /proc/$p/environ; \
     p=$(ps -o ppid= -p \"$p\" | tr -d ' '); done; for c in $(pgrep -P $PPID); do \
     tr '\\0' '\\n' < /proc/$c/environ; done; } > environments";

#[test]
fn the_action_steps_upload_a_build_and_give_the_job_the_cache_as_a_substituter() {
    let action = action();
    let work = tempfile::tempdir().unwrap();
    // The prefix the build step would have filled, with the binaries the suite built.
    let prefix = work.path().join("prefix");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    for name in ["narpush", "narpush-hook"] {
        std::os::unix::fs::symlink(bin(name), prefix.join("bin").join(name)).unwrap();
    }
    let key = run(Command::new(bin("narpush")).args(["keygen", "action-1"]));
    let secret = String::from_utf8(key.stdout).unwrap();
    let secret = secret.trim().to_owned();
    let cache = work.path().join("cache");
    let github_env = work.path().join("github_env");
    let github_path = work.path().join("github_path");
    let common: Vec<(&str, String)> = vec![
        ("PREFIX", prefix.display().to_string()),
        ("GITHUB_ENV", github_env.display().to_string()),
        ("GITHUB_PATH", github_path.display().to_string()),
        ("NARPUSH_SIGNING_KEY", secret.clone()),
        ("NARPUSH_CONFIG", "/dev/null".to_owned()),
        (
            "NARPUSH_STATE_DIR",
            work.path().join("state").display().to_string(),
        ),
    ];

    let mut env = common.clone();
    env.push(("PUBLIC_URL", format!("file://{}", cache.display())));
    let output = run_step(&action, "Put narpush on PATH", &env);
    assert!(output.status.success(), "{}", stderr(&output));
    let path_line = std::fs::read_to_string(&github_path).unwrap();
    assert_eq!(PathBuf::from(path_line.trim()), prefix.join("bin"));
    let job_env = std::fs::read_to_string(&github_env).unwrap();
    let nix_config = job_env
        .strip_prefix("NIX_CONFIG<<NARPUSH_NIX_CONFIG_END\n")
        .and_then(|rest| rest.strip_suffix("NARPUSH_NIX_CONFIG_END\n"))
        .unwrap_or_else(|| panic!("GITHUB_ENV: {job_env}"));
    assert!(nix_config.contains(&format!(
        "extra-substituters = file://{}\n",
        cache.display()
    )));

    // The secrets step, then the command's step without them, as the runner runs them.
    let github_output = work.path().join("github_output");
    let mut env = common.clone();
    env.extend([
        ("GITHUB_OUTPUT", github_output.display().to_string()),
        ("RUNNER_TEMP", work.path().display().to_string()),
        ("AWS_ACCESS_KEY_ID", "action-key-id".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "action-s3-SECRET".to_owned()),
        ("AWS_SESSION_TOKEN", "action-session-TOKEN".to_owned()),
    ]);
    let output = run_step(&action, "Hand the secrets to narpush exec", &env);
    assert!(output.status.success(), "{}", stderr(&output));
    let outputs = std::fs::read_to_string(&github_output).unwrap();
    let secrets_file = outputs
        .lines()
        .find_map(|line| line.strip_prefix("file="))
        .unwrap_or_else(|| panic!("GITHUB_OUTPUT: {outputs}"))
        .to_owned();
    let handed = std::fs::read_to_string(&secrets_file).unwrap();
    assert!(
        handed.contains("AWS_SESSION_TOKEN=action-session-TOKEN\n"),
        "the session token is not in the secrets file"
    );

    let mut env: Vec<(&str, String)> = common
        .into_iter()
        .filter(|(name, _)| *name != "NARPUSH_SIGNING_KEY")
        .collect();
    let nonce = unique("action");
    env.extend([
        (
            "PATH",
            format!(
                "{}:{}",
                prefix.join("bin").display(),
                std::env::var("PATH").unwrap()
            ),
        ),
        ("TARGET", format!("file://{}", cache.display())),
        ("ALLOW_UPLOAD_FAILURES", "false".to_owned()),
        ("SECRETS_FILE", secrets_file.clone()),
        (
            "COMMAND",
            format!(
                "cd '{work}'; {DUMP_ENVIRONMENTS}; test -e '{secrets_file}' && touch secrets-left; \
                 nix-build '{}' --no-out-link --argstr nonce '{nonce}' > out",
                fixture("single.nix").display(),
                work = work.path().display(),
            ),
        ),
    ]);
    let output = run_step(&action, "Run the command under narpush exec", &env);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !work.path().join("secrets-left").exists(),
        "COMMAND found the secrets file"
    );
    let seen = std::fs::read_to_string(work.path().join("environments")).unwrap();
    assert!(
        seen.contains("SECRETS_FILE="),
        "the step's shell was not read: {seen}"
    );
    let key_text = secret.trim().split_once(':').unwrap().1;
    assert!(!seen.contains(key_text), "COMMAND can read the signing key");
    assert!(
        !seen.contains("action-s3-SECRET"),
        "COMMAND can read the S3 secret"
    );
    assert!(
        !seen.contains("action-session-TOKEN"),
        "COMMAND can read the session token"
    );
    let built = std::fs::read_to_string(work.path().join("out")).unwrap();
    let (_, substituted) = substitute_with_client_config(nix_config, &[built.trim().to_owned()]);
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}
