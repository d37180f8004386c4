//! Secrets given to narpush in its environment — the signing key's text and S3 credentials —
//! and how they stay out of reach of other processes of the same user, which `narpush exec`'s
//! COMMAND is.
//!
//! - **Handed, never inherited**: `exec` takes the variables in [`NAMES`] out of its own
//!   environment ([`Secrets::take_from_environment`], which also overwrites them in the
//!   environment block `/proc/PID/environ` shows) or from a file it deletes
//!   ([`Secrets::take_from_file`]), and writes them into a pipe that is its private daemon's
//!   stdin (`narpush daemon --secrets-from-stdin`), never into a child's environment or a
//!   file. The daemon reads them before anything else and keeps them in memory ([`install`]);
//!   [`var`] is how the key and credential lookups read a variable, handed values first.
//! - **Non-dumpable**: every narpush process calls [`make_non_dumpable`] first, so that same-user
//!   processes cannot read its memory, environment or descriptors through `/proc` (they
//!   become root's) or attach a debugger, and no core dump holds a key.
//!
//! The handed text is one `NAME=VALUE` line per variable, names from [`NAMES`] only.
//!
//! Invariant: no secret value is ever part of a message; errors name the variable, the line
//! number or the file, never the value ([`Secrets`]' `Debug` shows names only).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use narpush_protocol::env;

pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// The variables that are secrets.
pub const NAMES: [&str; 4] = [
    env::SIGNING_KEY,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
];
/// More than any set of keys and credentials takes.
const MAX_TEXT: u64 = 64 * 1024;

/// Secret variables and their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    values: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets line {line}: expected NAME=VALUE with NAME one of {}", NAMES.join(", "))]
    Line { line: usize },
    #[error("cannot read the secrets from {from}")]
    Read {
        from: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secrets file {file} {why}: it must be a regular file of this user that only it can read (chmod 600)"
    )]
    Unsafe { file: String, why: String },
    #[error("cannot delete the secrets file {file} after reading it")]
    Remove {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Parses `NAME=VALUE` lines; blank lines are skipped, empty values ignored.
    pub fn parse(text: &str) -> Result<Secrets, SecretsError> {
        let mut secrets = Secrets::default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = line.split_once('=').and_then(|(name, value)| {
                let name = NAMES.iter().find(|known| **known == name)?;
                Some((*name, value))
            });
            let Some((name, value)) = parsed else {
                return Err(SecretsError::Line { line: index + 1 });
            };
            secrets.set(name, value);
        }
        Ok(secrets)
    }

    /// The text [`Secrets::parse`] reads back.
    pub fn encode(&self) -> String {
        self.values
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect()
    }

    fn set(&mut self, name: &'static str, value: &str) {
        let value = value.trim();
        if !value.is_empty() && !value.contains('\n') {
            self.values.insert(name, value.to_owned());
        }
    }

    /// Adds `other`'s values; `other` wins where both have one.
    pub fn merge(&mut self, other: Secrets) {
        self.values.extend(other.values);
    }

    /// The secret variables of this process's environment, removed from it and overwritten
    /// where `/proc/PID/environ` shows them. Call it while the process has one thread.
    pub fn take_from_environment() -> Secrets {
        let mut secrets = Secrets::default();
        for name in NAMES {
            if let Some(value) = std::env::var_os(name) {
                secrets.set(name, &value.to_string_lossy());
                overwrite_in_environment_block(name);
                std::env::remove_var(name);
            }
        }
        secrets
    }

    /// Reads `file` (refused unless a regular file of this user, mode 0600 or stricter) and
    /// deletes it, so that nothing started later can read it.
    pub fn take_from_file(file: &Path) -> Result<Secrets, SecretsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = file.display().to_string();
        let read_error = |source| SecretsError::Read {
            from: name.clone(),
            source,
        };
        let unsafe_file = |why: String| SecretsError::Unsafe {
            file: name.clone(),
            why,
        };
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(file)
            .map_err(read_error)?;
        let meta = handle.metadata().map_err(read_error)?;
        if !meta.is_file() {
            return Err(unsafe_file("is not a regular file".to_owned()));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(unsafe_file(format!("belongs to uid {}", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(unsafe_file(format!("has mode {:o}", meta.mode() & 0o777)));
        }
        let mut text = String::new();
        handle
            .take(MAX_TEXT)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        std::fs::remove_file(file).map_err(|source| SecretsError::Remove {
            file: name.clone(),
            source,
        })?;
        Secrets::parse(&text)
    }

    /// Reads what `narpush exec` handed over on stdin (up to its end).
    pub fn read_stdin() -> Result<Secrets, SecretsError> {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_TEXT)
            .read_to_string(&mut text)
            .map_err(|source| SecretsError::Read {
                from: "stdin".to_owned(),
                source,
            })?;
        Secrets::parse(&text)
    }
}

static HANDED: OnceLock<Secrets> = OnceLock::new();

/// Makes `secrets` what [`var`] answers for this process; only the first call counts.
pub fn install(secrets: Secrets) {
    let _ = HANDED.set(secrets);
}

/// The secret variable `name`: its handed value when secrets were installed, else the
/// environment's (empty counts as unset).
pub fn var(name: &str) -> Option<String> {
    match HANDED.get() {
        Some(secrets) => secrets.get(name).map(str::to_owned),
        None => std::env::var(name).ok().filter(|v| !v.trim().is_empty()),
    }
}

/// Whether secrets were handed to this process (then the environment is not read for them).
pub fn handed() -> Option<&'static Secrets> {
    HANDED.get()
}

/// `prctl(PR_SET_DUMPABLE, 0)`: see the module doc. Kept across threads, reset by `execve`.
pub fn make_non_dumpable() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// `prctl(PR_GET_DUMPABLE)`.
pub fn is_dumpable() -> nix::Result<bool> {
    nix::sys::prctl::get_dumpable()
}

/// Overwrites the value of `name` with NUL bytes in the environment block, where the kernel
/// reads `/proc/PID/environ` from; `remove_var` alone only unlinks the entry.
fn overwrite_in_environment_block(name: &str) {
    let prefix = format!("{name}=");
    // SAFETY: called while the process has one thread (exec's start, before any runtime,
    // thread or child), so nothing reads or changes the environment meanwhile. `environ` is
    // null or a null-terminated array of pointers to NUL-terminated strings that stay valid
    // until the environment is changed; only bytes before each string's NUL are written, so
    // every string stays terminated ("NAME=" followed by NULs).
    #[allow(unsafe_code)]
    unsafe {
        let mut entry = nix::libc::environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry);
            let length = text.to_bytes().len();
            if text.to_bytes().starts_with(prefix.as_bytes()) {
                let value = (*entry).add(prefix.len());
                std::ptr::write_bytes(value, 0, length - prefix.len());
            }
            entry = entry.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_names_are_refused_without_their_value() {
        let secrets =
            Secrets::parse("NARPUSH_SIGNING_KEY=k-1:abc=\n\nAWS_ACCESS_KEY_ID=id\n").unwrap();
        assert_eq!(secrets.get(env::SIGNING_KEY), Some("k-1:abc="));
        assert_eq!(Secrets::parse(&secrets.encode()).unwrap(), secrets);
        let error = Secrets::parse("HOME=/root\nAWS_SECRET=hunter2\n").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(!format!("{secrets:?}").contains("abc"), "{secrets:?}");
    }

    #[test]
    fn a_secrets_file_is_read_once_and_deleted_and_a_readable_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "AWS_SECRET_ACCESS_KEY=s3cr3t\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Secrets::take_from_file(&file).unwrap_err();
        assert!(error.to_string().contains("mode 644"), "{error}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secrets = Secrets::take_from_file(&file).unwrap();
        assert_eq!(secrets.get(AWS_SECRET_ACCESS_KEY), Some("s3cr3t"));
        assert!(!file.exists(), "the secrets file is still there");
    }

    #[test]
    fn a_process_that_holds_secrets_is_not_dumpable() {
        make_non_dumpable().unwrap();
        assert!(!is_dumpable().unwrap());
    }
}
