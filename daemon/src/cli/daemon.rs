//! `narpush daemon`: runs the daemon in the foreground (systemd, a CI job, a terminal).

use std::path::Path;

use super::Outcome;

/// Run the upload daemon: take paths from narpush-hook and `narpush push`, keep them in a
/// durable queue, upload them (closures, signed) and retry until done.
///
/// Config: --config, $NARPUSH_CONFIG or /etc/narpush/narpush.toml (absent: built-in defaults:
/// a directory cache under /var/lib/narpush/cache and a generated signing key).
/// Signing key: `secret_key_files`, else $NARPUSH_SIGNING_KEY (a key's text), else the generated one.
/// Socket: the one systemd passes (socket activation), else `socket` / $NARPUSH_SOCKET.
/// Signals: SIGTERM/SIGINT drain and stop (exit 0); SIGHUP reloads the config file.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DaemonArgs {
    /// Read the signing key and S3 credentials from stdin (NAME=VALUE lines) instead of the
    /// environment: how `narpush exec` hands them to its private daemon.
    #[arg(long, hide = true)]
    secrets_from_stdin: bool,
}

pub fn run(args: &DaemonArgs, config: Option<&Path>) -> anyhow::Result<Outcome> {
    if args.secrets_from_stdin {
        narpush::secrets::install(narpush::secrets::Secrets::read_stdin()?);
    }
    narpush::daemon::run(config.map(Path::to_owned))?;
    Ok(Outcome::Success)
}
