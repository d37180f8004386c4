//! What the local Nix store knows about paths: NarHash, NarSize, references, deriver, CA and
//! signatures, closures, and which store path a command-line argument names.
//!
//! The metadata comes from `nix path-info --json`, one process per batch of paths (never one
//! per path). Its output changed shape across Nix versions, and [`parse_path_info_json`]
//! accepts every shape seen so far:
//!
//! - Nix 2.8–2.18: a JSON array of objects, each with a full `path`;
//! - Nix 2.19–2.32: an object keyed by full path (`null` for an invalid path);
//! - Nix 2.33+ (format v2): keys, `references` and `deriver` may be basenames, and `narHash` /
//!   `ca` may be structured objects instead of strings.
//!
//! Invariant: every [`PathInfo`] handed out has a validated [`StorePath`], a non-zero NarSize
//! and references that are themselves valid store paths; anything else is a [`StoreError`]
//! naming the path and field, never a guess.

use std::path::Path;

use serde_json::Value;
use tokio::process::Command;

use crate::format::hash::Sha256;
use crate::format::nixbase32;
use crate::format::store_path::{StorePath, StorePathError, STORE_DIR};

/// Metadata of one valid store path, as the local store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub ca: Option<String>,
    pub signatures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("'{arg}' is not in the Nix store {STORE_DIR}")]
    OutsideStore { arg: String },
    #[error("'{arg}' does not exist")]
    Missing {
        arg: String,
        #[source]
        source: std::io::Error,
    },
    #[error("'{arg}' is not a valid store path")]
    InvalidStorePath {
        arg: String,
        #[source]
        source: StorePathError,
    },
    #[error("could not run `{command}` (is Nix installed and on PATH?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    TimedOut {
        command: String,
        timeout: std::time::Duration,
    },
    #[error("`{command}` failed: {stderr}")]
    CommandFailed { command: String, stderr: String },
    #[error("unexpected output from `nix path-info --json`: {problem}")]
    UnexpectedJson { problem: String },
    #[error("store path {path}: field '{field}' has an unusable value {value}")]
    BadField {
        path: String,
        field: &'static str,
        value: String,
    },
}

/// Turns a command-line argument into the store path it names: a store path itself, a file
/// inside one (`/nix/store/…-hello/bin/hello`), or a symlink into the store (`./result`).
pub fn resolve_store_path_arg(arg: &str) -> Result<StorePath, StoreError> {
    let in_store = |candidate: &str| -> Option<Result<StorePath, StoreError>> {
        let rest = candidate.strip_prefix(STORE_DIR)?.strip_prefix('/')?;
        let basename = rest.split('/').next().unwrap_or_default();
        Some(
            StorePath::from_basename(basename).map_err(|source| StoreError::InvalidStorePath {
                arg: arg.to_owned(),
                source,
            }),
        )
    };
    if let Some(parsed) = in_store(arg) {
        if !arg.split('/').any(|component| component == "..") {
            return parsed;
        }
    }
    let canonical =
        std::fs::canonicalize(Path::new(arg)).map_err(|source| StoreError::Missing {
            arg: arg.to_owned(),
            source,
        })?;
    match canonical.to_str().and_then(in_store) {
        Some(parsed) => parsed,
        None => Err(StoreError::OutsideStore {
            arg: arg.to_owned(),
        }),
    }
}

/// [`resolve_store_path_arg`] for every argument; the first bad one is the error.
pub fn resolve_store_path_args(args: &[String]) -> Result<Vec<StorePath>, StoreError> {
    args.iter().map(|arg| resolve_store_path_arg(arg)).collect()
}

/// Metadata of `paths` (and, with `closure`, of everything they reference, recursively),
/// sorted by path. An invalid path is an error naming it.
pub async fn query_path_infos(
    paths: &[StorePath],
    closure: bool,
) -> Result<Vec<PathInfo>, StoreError> {
    // Bounded so the argument list stays far below the kernel's limit.
    const PATHS_PER_PROCESS: usize = 1000;
    let mut infos = Vec::with_capacity(paths.len());
    for batch in paths.chunks(PATHS_PER_PROCESS) {
        let mut args = vec![
            "--extra-experimental-features".to_owned(),
            "nix-command".to_owned(),
            "path-info".to_owned(),
            "--json".to_owned(),
            // An invalid path would otherwise send Nix to every substituter first (seconds of
            // network retries when they are unreachable) before it says so.
            "--option".to_owned(),
            "substitute".to_owned(),
            "false".to_owned(),
        ];
        if closure {
            args.push("--recursive".to_owned());
        }
        args.push("--".to_owned());
        args.extend(batch.iter().map(StorePath::to_absolute));
        let stdout = run_nix("nix", &args).await?;
        infos.extend(parse_path_info_json(&stdout)?);
    }
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    infos.dedup_by(|a, b| a.path == b.path);
    Ok(infos)
}

/// The path a failed `nix path-info` names as not valid (`error: path '…' is not valid`).
pub fn invalid_path_in(error: &StoreError) -> Option<StorePath> {
    let StoreError::CommandFailed { stderr, .. } = error else {
        return None;
    };
    stderr.lines().find_map(|line| {
        let quoted = line.strip_suffix("' is not valid")?;
        let path = &quoted[quoted.find("path '")? + "path '".len()..];
        StorePath::from_absolute_path(path).ok()
    })
}

/// Runs a Nix command with fixed arguments (no shell) and returns its stdout.
pub async fn run_nix(program: &str, args: &[String]) -> Result<String, StoreError> {
    run_command(program, args, NIX_TIMEOUT).await
}

/// The longest a `nix` command may run; then it is killed and the batch fails as transient
/// (a hung nix-daemon must not hold the queue forever).
pub const NIX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `program` to completion within `timeout`. The child runs in a process group of its
/// own, and the whole group is killed when the future is dropped before the child finished
/// (the timeout, or a shutdown that stops waiting for it): nothing it started is left behind.
async fn run_command(
    program: &str,
    args: &[String],
    timeout: std::time::Duration,
) -> Result<String, StoreError> {
    // The command as people read it: its options, and how many paths follow `--`.
    let options: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|arg| *arg != "--")
        .collect();
    let paths = args.len().saturating_sub(options.len() + 1);
    let command = format!("{program} {} ({paths} path(s))", options.join(" "));
    let spawn_error = |source| StoreError::Spawn {
        command: command.clone(),
        source,
    };
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let leader = child.id().and_then(crate::process_group::led_by);
    let running = child.wait_with_output();
    tokio::pin!(running);
    // Declared after `running`, so dropped before it: the group is killed while its leader is
    // not yet reaped, and so while its id cannot name another group.
    let mut group = GroupKiller(leader);
    let output = tokio::time::timeout(timeout, &mut running)
        .await
        .map_err(|_| StoreError::TimedOut {
            command: command.clone(),
            timeout,
        })?
        .map_err(spawn_error)?;
    group.0 = None;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(StoreError::CommandFailed { command, stderr });
    }
    String::from_utf8(output.stdout).map_err(|_| StoreError::UnexpectedJson {
        problem: format!("`{command}` printed invalid UTF-8"),
    })
}

/// Kills the process group it names (SIGKILL) when dropped; `None` once the leader finished.
struct GroupKiller(Option<nix::unistd::Pid>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            crate::process_group::kill(group);
        }
    }
}

/// Parses `nix path-info --json` output of any Nix version (see the module doc).
pub fn parse_path_info_json(json: &str) -> Result<Vec<PathInfo>, StoreError> {
    let value: Value = serde_json::from_str(json).map_err(|e| StoreError::UnexpectedJson {
        problem: e.to_string(),
    })?;
    match value {
        Value::Array(entries) => entries
            .iter()
            .map(|entry| {
                let path = entry.get("path").and_then(Value::as_str).ok_or_else(|| {
                    StoreError::UnexpectedJson {
                        problem: "array entry without a \"path\" string".to_owned(),
                    }
                })?;
                parse_entry(path, entry)
            })
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(path, entry)| parse_entry(path, entry))
            .collect(),
        other => Err(StoreError::UnexpectedJson {
            problem: format!("expected an array or object, got {other}"),
        }),
    }
}

fn parse_entry(path: &str, entry: &Value) -> Result<PathInfo, StoreError> {
    let store_path = parse_path_field(path, "path", path)?;
    let bad = |field: &'static str, value: &Value| StoreError::BadField {
        path: path.to_owned(),
        field,
        value: value.to_string(),
    };
    // Nix 2.8 reports an invalid path as `{"path": …, "valid": false}`, 2.19+ as `null`.
    if entry.is_null() || entry.get("valid") == Some(&Value::Bool(false)) {
        return Err(StoreError::CommandFailed {
            command: "nix path-info".to_owned(),
            stderr: format!("path '{path}' is not valid"),
        });
    }
    let nar_hash_value = entry.get("narHash").unwrap_or(&Value::Null);
    let nar_hash =
        parse_hash_value(nar_hash_value).ok_or_else(|| bad("narHash", nar_hash_value))?;
    let nar_size_value = entry.get("narSize").unwrap_or(&Value::Null);
    let nar_size = nar_size_value
        .as_u64()
        .filter(|size| *size > 0)
        .ok_or_else(|| bad("narSize", nar_size_value))?;
    let references = match entry.get("references") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(refs)) => refs
            .iter()
            .map(|r| {
                r.as_str()
                    .ok_or_else(|| bad("references", r))
                    .and_then(|s| parse_path_field(path, "references", s))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("references", other)),
    };
    let deriver = match entry.get("deriver") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_path_field(path, "deriver", s)?),
        Some(other) => return Err(bad("deriver", other)),
    };
    let ca = match entry.get("ca") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(structured) => {
            Some(render_structured_ca(structured).ok_or_else(|| bad("ca", structured))?)
        }
    };
    let signatures = match entry.get("signatures") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(sigs)) => sigs
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("signatures", s))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("signatures", other)),
    };
    Ok(PathInfo {
        path: store_path,
        nar_hash,
        nar_size,
        references,
        deriver,
        ca,
        signatures,
    })
}

/// A store path as path-info prints it: absolute (up to 2.32) or a basename (v2 format).
fn parse_path_field(
    owner: &str,
    field: &'static str,
    value: &str,
) -> Result<StorePath, StoreError> {
    let parsed = if value.starts_with('/') {
        StorePath::from_absolute_path(value)
    } else {
        StorePath::from_basename(value)
    };
    parsed.map_err(|_| StoreError::BadField {
        path: owner.to_owned(),
        field,
        value: value.to_owned(),
    })
}

/// A hash as a string (`sha256-…` SRI, `sha256:…`) or as the v2 object
/// `{"algorithm": "sha256", "format": …, "hash": …}`.
fn parse_hash_value(value: &Value) -> Option<Sha256> {
    match value {
        Value::String(s) => Sha256::parse(s).ok(),
        Value::Object(fields) => {
            let algorithm = fields.get("algorithm").and_then(Value::as_str)?;
            let hash = fields.get("hash").and_then(Value::as_str)?;
            if algorithm != "sha256" {
                return None;
            }
            Sha256::parse(&format!("sha256:{hash}"))
                .ok()
                .or_else(|| Sha256::parse(&format!("sha256-{hash}")).ok())
        }
        _ => None,
    }
}

/// Renders a v2 structured content address (`{"method": "nar", "hash": {…}}`) in the string
/// form a narinfo's `CA:` line carries (`fixed:r:sha256:<nix32>`).
fn render_structured_ca(value: &Value) -> Option<String> {
    let method = value.get("method").and_then(Value::as_str)?;
    let hash = parse_hash_value(value.get("hash")?)?;
    let digest = nixbase32::encode(&hash.0);
    match method {
        "nar" => Some(format!("fixed:r:sha256:{digest}")),
        "flat" => Some(format!("fixed:sha256:{digest}")),
        "text" => Some(format!("text:sha256:{digest}")),
        _ => None,
    }
}

mod realisations;
#[cfg(feature = "sim")]
pub mod simulated;
pub use realisations::{
    derivation_head, expand_derivations, realisations_of, realisations_of_outputs,
    DerivationRealisations, RealisationQueryError,
};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
