//! Where the signing keys of a run come from, in one order for every command: key files named
//! on the command line, else `secret_key_files` from the config file, else the secret key text
//! in `$NARPUSH_SIGNING_KEY` (a CI secret need not be written to a file first). When none of
//! them names a key, the caller decides: `upload` refuses, the daemon and `exec` use the
//! embedded default key.
//!
//! Invariant: the variable's value never appears in a message or a log line; an error about it
//! names the variable and the problem only ([`KeyError`] carries no key material).

use std::path::PathBuf;

use narpush_protocol::env;

use crate::format::signing::{KeyError, SigningKey};

/// Where the keys came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Files(Vec<PathBuf>),
    Environment,
}

#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error(transparent)]
    File(#[from] KeyError),
    #[error("${} does not hold a valid secret key", env::SIGNING_KEY)]
    Environment(#[source] KeyError),
}

/// The keys named by `flag_files`, else `config_files`, else `$NARPUSH_SIGNING_KEY`; `None`
/// when nothing names a key.
pub fn configured_keys(
    flag_files: &[PathBuf],
    config_files: &[PathBuf],
) -> Result<Option<(Vec<SigningKey>, KeySource)>, KeySourceError> {
    let files = if flag_files.is_empty() {
        config_files
    } else {
        flag_files
    };
    if !files.is_empty() {
        let keys = files
            .iter()
            .map(|file| SigningKey::load(file))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some((keys, KeySource::Files(files.to_vec()))));
    }
    // Handed over by `narpush exec` (see `secrets`), else the environment's.
    match crate::secrets::var(env::SIGNING_KEY) {
        Some(text) => {
            let key = SigningKey::parse(&text).map_err(KeySourceError::Environment)?;
            Ok(Some((vec![key], KeySource::Environment)))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_win_and_flags_win_over_config() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let key = SigningKey::generate(name).unwrap();
            let file = dir.path().join(name);
            std::fs::write(&file, key.to_secret_string()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            file
        };
        let flag = write("flag-1");
        let config = write("config-1");
        let (keys, source) =
            configured_keys(std::slice::from_ref(&flag), std::slice::from_ref(&config))
                .unwrap()
                .unwrap();
        assert_eq!(keys[0].name(), "flag-1");
        assert_eq!(source, KeySource::Files(vec![flag]));
        let (keys, _) = configured_keys(&[], &[config]).unwrap().unwrap();
        assert_eq!(keys[0].name(), "config-1");
    }

    #[test]
    fn an_invalid_key_in_the_environment_is_named_without_its_text() {
        let error = KeySourceError::Environment(SigningKey::parse("secret-text").unwrap_err());
        let message = crate::error_chain(&error);
        assert!(message.contains(env::SIGNING_KEY), "{message}");
        assert!(!message.contains("secret-text"), "{message}");
    }
}
