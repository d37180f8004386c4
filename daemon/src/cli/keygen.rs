//! `narpush keygen NAME`: a new signing key in Nix's own format (`nix key generate-secret`),
//! the secret key on stdout and the public key on stderr, so `narpush keygen n > key` leaves
//! only the secret in the file.

use std::io::Write;

use anyhow::Context;

use super::Outcome;
use narpush::format::signing::SigningKey;

/// Generate a signing key: secret key to stdout, public key to stderr.
///
/// Example: `narpush keygen cache.example.org-1 > /etc/narpush/signing-key` (then `chmod 600`).
/// Put the public key in the consumers' `trusted-public-keys`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Key name, conventionally the cache's host name and a number: `cache.example.org-1`.
    pub name: String,
}

pub fn run(args: &KeygenArgs) -> anyhow::Result<Outcome> {
    let key = SigningKey::generate(&args.name).context("cannot generate a key")?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(key.to_secret_string().as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the secret key to stdout")?;
    eprintln!("{}", key.public_key());
    Ok(Outcome::Success)
}
