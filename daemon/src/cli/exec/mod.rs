//! `narpush exec -- COMMAND…`: run COMMAND with every path it builds uploaded, then wait for
//! the uploads, like `cachix watch-exec`: one line in a CI job.
//!
//! The order of a run: take the secrets out of the environment ([`narpush::secrets`]) → check
//! the settings (target, keys) → catch SIGTERM, SIGINT and SIGHUP ([`signals`]) → start a
//! private daemon ([`private_daemon`]; the secrets go to it over a pipe) → write a hook wrapper
//! that points `narpush-hook` at it and register it as `post-build-hook` for COMMAND through
//! `NIX_CONFIG` → run COMMAND in a process group of its own ([`command`]: the signals are passed
//! on to the whole group, so the processes COMMAND started get them too; on a terminal the
//! group is in the foreground while it runs and Ctrl-Z stops exec with it, see [`foreground`])
//! → wait until the daemon is idle ([`drain`]; a signal now stops the wait) → report, stop the
//! daemon.
//!
//! Invariant: the private daemon and its GC roots never outlive exec, whatever signal comes
//! when (short of SIGKILL): before COMMAND starts, a signal stops the daemon and exec exits
//! with 128+N; later, the daemon is stopped once the wait ends.
//!
//! Exit status: COMMAND's (128+N when a signal N ended it); when COMMAND succeeded but uploads
//! failed or were cut short, 1, unless `--allow-upload-failures`; 2 when nothing was run
//! because the settings are unusable.

/// `eprintln!` that never panics: after a hangup stderr may be a terminal that is gone, and
/// exec must still stop its daemon.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod builds;
mod command;
mod drain;
mod foreground;
mod private_daemon;
mod signals;

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use nix::sys::signal::Signal;

use command::Event;
use signals::StopSignals;

use super::filter_args::FilterArgs;
use super::Outcome;
use drain::Drained;
use narpush::config::Config;
use narpush::daemon::settings::default_key;
use narpush::daemon::status::StatusReport;
use narpush::format::signing::SigningKey;
use narpush::keys::configured_keys;
use narpush::process_group;
use narpush::secrets::{self, Secrets};
use narpush::sink::TargetUrl;
use private_daemon::{Overrides, PrivateDaemon};

/// Run COMMAND with narpush-hook registered, upload everything it builds, wait for the uploads.
///
/// A private daemon (its own socket and queue in a temporary directory) takes the builds;
/// `post-build-hook` is added to NIX_CONFIG for COMMAND. With nix-daemon, Nix runs the hook
/// only for users in `trusted-users`; exec warns when COMMAND built paths but none arrived.
///
/// Target and key: --to/--key, else the config file, else $NARPUSH_SIGNING_KEY for the key,
/// else the embedded default cache and key (file://<state_dir>/cache, <state_dir>/signing-key;
/// state_dir is /var/lib/narpush for root, ~/.local/share/narpush for others), which
/// `narpush client-config` then prints for consumers.
///
/// Secrets: $NARPUSH_SIGNING_KEY and the AWS credentials (or --secrets-file) are taken out of
/// the environment before COMMAND starts and handed to the private daemon over a pipe, so
/// COMMAND finds them neither in its environment nor in /proc/PID/environ of exec or the daemon.
///
/// Push filters (--exclude, --exclude-output, --max-nar-bytes) go to the private daemon with
/// the config's; what they keep out is listed as skipped, which is not a failure.
///
/// Exit status: COMMAND's; 1 if COMMAND succeeded but uploads failed (0 with
/// --allow-upload-failures); 2 if nothing was run (bad settings). COMMAND runs in a process
/// group of its own: SIGINT/SIGTERM/SIGHUP while it runs go to that whole group (COMMAND and
/// the processes it started; Ctrl-C on a terminal reaches it directly, Ctrl-Z stops exec
/// too, `fg` continues both), and the uploads of what it built still finish; a signal while
/// exec waits for the uploads stops the wait and reports what is left; one before COMMAND
/// starts stops exec (128+N).
///
/// Example: narpush exec --to 's3://cache?endpoint=…&region=auto' -- nix build .#default
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ExecArgs {
    /// Where to upload (s3://BUCKET?endpoint=…, file:///DIR). Default: `target` from the config
    /// file, else the embedded default cache.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,

    /// Secret signing key file; repeat to sign with several. Default: `secret_key_files`, else
    /// $NARPUSH_SIGNING_KEY, else the embedded default key (generated on first use).
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,

    /// Exit with COMMAND's status even when uploads failed (they are still reported).
    #[arg(long)]
    allow_upload_failures: bool,

    /// Read NARPUSH_SIGNING_KEY, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_SESSION_TOKEN from FILE (NAME=VALUE lines; mode 0600, yours), then delete it: for CI,
    /// where COMMAND runs as the same user and must not find them. Values in FILE win over
    /// the environment's.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,

    #[command(flatten)]
    filters: FilterArgs,

    /// The command to run, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

pub fn run(args: ExecArgs, config_path: Option<&Path>) -> anyhow::Result<Outcome> {
    // First, while this process has one thread: see narpush::secrets.
    let mut secrets = Secrets::take_from_environment();
    if let Some(file) = &args.secrets_file {
        secrets.merge(Secrets::take_from_file(file)?);
    }
    narpush::secrets::install(secrets.clone());
    let config = Config::load(config_path)?;
    let overrides = overrides(&args, &config)?;
    let hook = find_hook()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_with_daemon(args, config, overrides, secrets, hook))
}

/// Starts the private daemon, runs COMMAND, waits for the uploads, stops the daemon. A
/// signal at any moment stops the daemon and removes its roots (see [`signals`]).
async fn run_with_daemon(
    args: ExecArgs,
    config: Config,
    overrides: Overrides,
    secrets: Secrets,
    hook: PathBuf,
) -> anyhow::Result<Outcome> {
    let mut signals = StopSignals::new().context("cannot catch signals")?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut starting = tokio::task::spawn_blocking({
        let cancelled = cancelled.clone();
        move || PrivateDaemon::start(&config, overrides, &secrets, &cancelled)
    });
    let daemon = tokio::select! {
        started = &mut starting => started.context("the private daemon's start failed")??,
        signal = signals.recv() => {
            // The start gives up at its next look and drops (kills) the daemon it started.
            cancelled.store(true, Ordering::SeqCst);
            let _ = starting.await;
            say!("narpush: {signal} before COMMAND started: stopped");
            return Ok(Outcome::Code(signal_code(signal)));
        }
    };
    let result = match write_hook_wrapper(&daemon, &hook) {
        Ok(wrapper) => supervise(&args, &daemon, &wrapper, &mut signals).await,
        Err(e) => Err(e),
    };
    tokio::task::spawn_blocking(move || daemon.stop())
        .await
        .context("cannot stop the private daemon")?;
    result
}

/// The exit status of a process ended by `signal`.
fn signal_code(signal: Signal) -> u8 {
    u8::try_from(128 + signal as i32).unwrap_or(1)
}

/// What the private daemon must be told besides the user's configuration.
fn overrides(args: &ExecArgs, config: &Config) -> anyhow::Result<Overrides> {
    let target = match &args.to {
        Some(url) => {
            TargetUrl::parse(url)?;
            Some(url.clone())
        }
        None if config.target.is_none() => {
            let default = config.target_or_default();
            if let TargetUrl::File { dir, .. } = &default {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the cache {}", dir.display()))?;
            }
            Some(default.to_string())
        }
        None => None,
    };
    let key_files = if args.keys.is_empty() {
        match configured_keys(&[], &config.secret_key_files)? {
            Some(_) => None,
            None => {
                let file = config.default_key_file();
                std::fs::create_dir_all(&config.state_dir)
                    .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
                default_key(&file)?;
                Some(vec![file])
            }
        }
    } else {
        let files = args
            .keys
            .iter()
            .map(std::path::absolute)
            .collect::<Result<Vec<_>, _>>()
            .context("cannot resolve a --key path")?;
        for file in &files {
            SigningKey::load(file)?;
        }
        Some(files)
    };
    let filter = if args.filters.exclude.is_empty()
        && args.filters.exclude_outputs.is_empty()
        && args.filters.max_nar_bytes.is_none()
    {
        None
    } else {
        let mut filter = config.filter.clone();
        args.filters.apply(&mut filter)?;
        Some(filter)
    };
    Ok(Overrides {
        target,
        key_files,
        filter,
    })
}

/// `narpush-hook` beside this binary (an install puts both in one directory), else on PATH.
fn find_hook() -> anyhow::Result<PathBuf> {
    const HOOK: &str = "narpush-hook";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(HOOK)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(HOOK));
    beside
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
        .context("cannot find narpush-hook beside narpush or on PATH (install both)")
}

/// A script that runs the hook with the private daemon's socket and spool, so it works where
/// nix-daemon runs the hook in its own environment too.
fn write_hook_wrapper(daemon: &PrivateDaemon, hook: &Path) -> anyhow::Result<PathBuf> {
    let file = daemon.dir().join("post-build-hook");
    let text = format!(
        "#!/bin/sh\n# Written by `narpush exec` for one run: hands builds to its private daemon.\n\
         NARPUSH_SOCKET={} NARPUSH_SPOOL_DIR={} exec {}\n",
        shell_quote(&daemon.socket),
        shell_quote(&daemon.spool),
        shell_quote(hook)
    );
    std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", file.display()))?;
    Ok(file)
}

/// A path as one single-quoted shell word.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// `NIX_CONFIG` as it was, with our `post-build-hook` after it (later lines win).
fn nix_config_with_hook(wrapper: &Path) -> String {
    let mut text = std::env::var("NIX_CONFIG").unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("post-build-hook = {}\n", wrapper.display()));
    text
}

async fn supervise(
    args: &ExecArgs,
    daemon: &PrivateDaemon,
    wrapper: &Path,
    signals: &mut StopSignals,
) -> anyhow::Result<Outcome> {
    let started = SystemTime::now();
    let program = &args.command[0];
    let mut command = std::process::Command::new(program);
    command
        .args(&args.command[1..])
        .env("NIX_CONFIG", nix_config_with_hook(wrapper));
    for name in secrets::NAMES {
        command.env_remove(name);
    }
    let mut running = command::spawn(&mut command)
        .with_context(|| format!("cannot run {}", Path::new(program).display()))?;
    let group = running.pid;
    let interactive = std::io::stdin().is_terminal();
    let mut terminal = foreground::hand_over(group);
    let command_code = loop {
        tokio::select! {
            event = running.next() => match event {
                Event::Ended(code) => break code,
                // Ctrl-Z (see `command`); a stop undone meanwhile (COMMAND read the terminal
                // before it was lent and was continued then) is not one.
                Event::Stopped if interactive && running.is_stopped() => {
                    drop(terminal.take());
                    foreground::stop_self();
                    terminal = foreground::hand_over(group);
                    process_group::signal(group, Signal::SIGCONT);
                }
                Event::Stopped => {}
            },
            signal = signals.recv() => process_group::signal(group, signal),
        }
    };
    drop(terminal);
    let drained = drain::wait_until_idle(daemon, signals).await?;
    let uploads_ok = report(&drained, daemon, started);
    let code = match (command_code, uploads_ok || args.allow_upload_failures) {
        (0, false) => 1,
        (code, _) => code,
    };
    Ok(Outcome::Code(u8::try_from(code).unwrap_or(1)))
}

/// Prints what happened to the uploads; true when everything that arrived was uploaded.
fn report(drained: &Drained, daemon: &PrivateDaemon, started: SystemTime) -> bool {
    let (status, interrupted) = match drained {
        Drained::Idle(status) => (status, false),
        Drained::Interrupted(status) => (status, true),
    };
    for failed in &status.failed {
        say!("narpush: FAILED {}: {}", failed.path, failed.error);
    }
    for skipped in &status.skipped.paths {
        say!("narpush: skipped {}: {}", skipped.path, skipped.reason);
    }
    if interrupted {
        say!(
            "narpush: interrupted: {} path(s) not uploaded ({} pending, {} uploading)",
            status.counts.pending + status.counts.uploading,
            status.counts.pending,
            status.counts.uploading
        );
    }
    let arrived = arrived(status) || daemon.spooled_requests() > 0;
    let built = builds::logs_written_since(Path::new(builds::LOG_DIR), started);
    if !arrived && built > 0 {
        say!(
            "narpush: warning: {built} derivation(s) were built while COMMAND ran, but Nix \
             handed narpush nothing: it did not run the post-build-hook. With nix-daemon, a \
             post-build-hook set in NIX_CONFIG counts only for users in `trusted-users` \
             (nix.conf), or register narpush-hook system-wide."
        );
    }
    say!(
        "narpush: {} path(s) uploaded to {} ({} failed, {} skipped)",
        status.uploaded.paths,
        status.target,
        status.failed.len(),
        status.counts.skipped
    );
    say!("narpush: {}", status.requests);
    status.failed.is_empty() && !interrupted
}

fn arrived(status: &StatusReport) -> bool {
    let c = &status.counts;
    c.pending + c.uploading + c.done + c.failed + c.skipped > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_keeps_any_path_one_word() {
        assert_eq!(shell_quote(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell_quote(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }
}
