//! The daemon one `narpush exec` run owns: a `narpush daemon` process of this same binary with
//! a configuration written for it in a temporary directory (its own socket, queue, spool and
//! GC root directory), so it never touches the machine's daemon or its queue.
//!
//! A separate process rather than the daemon's code in this one, because the daemon is a
//! complete program with its own runtime, signal handling and shutdown protocol (SIGTERM:
//! drain, requeue, flush); `exec` uses exactly that, and its own signals stay free for
//! COMMAND. The child runs in its own process group, so Ctrl-C at a terminal reaches COMMAND
//! and not the daemon, which `exec` stops itself once the uploads are done.
//!
//! The signing key's text and S3 credentials reach the daemon on its stdin, never in its
//! environment (see [`narpush::secrets`]).
//!
//! Invariant: the private configuration is the user's configuration with only the keys below
//! replaced, added (the push filter flags: `exclude`, `exclude_outputs`, `max_nar_bytes`) or
//! (`metrics_listen`) removed, so every other setting (target URL text, compression, limits) is the
//! one the user wrote and the daemon checks it the same way.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use narpush::config::Config;
use narpush::control;
use narpush::daemon::status::StatusReport;
use narpush::filter::PushFilter;
use narpush::process_group;
use narpush::secrets::{self, Secrets};
use narpush_protocol::env;

/// Without a `max_attempts` of its own, a transient failure is retried this often: a CI job
/// waits minutes for a flaky link, not the daemon's default hours.
pub const EXEC_MAX_ATTEMPTS: i64 = 5;
/// Without a `retry_max_delay_ms` of its own, retries are at most this far apart.
pub const EXEC_RETRY_MAX_DELAY_MS: i64 = 30_000;
/// How long the daemon gets to answer its first `status`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one readiness `status` may take; a fresh daemon answers in milliseconds.
const READY_DEADLINE: Duration = Duration::from_secs(1);
/// SIGTERM drains for up to the daemon's own drain timeout; after that and this margin it is
/// killed.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// What the private daemon is told, besides the user's configuration.
pub struct Overrides {
    /// The target URL text (`--to`, or the embedded default cache); `None` keeps `target`.
    pub target: Option<String>,
    /// Key files (`--key`, or the embedded default key); `None` keeps `secret_key_files` and
    /// `$NARPUSH_SIGNING_KEY`.
    pub key_files: Option<Vec<PathBuf>>,
    /// The push filters with the flags added (`None`: no flags, the config's stand).
    pub filter: Option<PushFilter>,
}

pub struct PrivateDaemon {
    child: Child,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub spool: PathBuf,
    gc_roots: PathBuf,
}

impl PrivateDaemon {
    /// Writes the configuration, starts the daemon, hands it `secrets` (on its stdin, see
    /// [`narpush::secrets`]) and waits until it answers.
    /// Gives up, stopping the daemon, once `cancelled` is set (a signal came).
    pub fn start(
        config: &Config,
        overrides: Overrides,
        secrets: &Secrets,
        cancelled: &AtomicBool,
    ) -> anyhow::Result<PrivateDaemon> {
        let dir = tempfile::Builder::new()
            .prefix("narpush-exec-")
            .tempdir()
            .context("cannot create a temporary directory for the private daemon")?;
        // nix-daemon runs the hook as root, which reaches into the directory; others need not.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .context("cannot set the private directory's mode")?;
        let state = dir.path().join("state");
        let socket = dir.path().join("narpush.sock");
        let spool = state.join("spool");
        let gc_roots = narpush::default_paths::default_gc_roots_dir()
            .with_file_name(format!("narpush-exec-{}", std::process::id()));
        let mut table = user_table(config)?;
        // The machine's daemon may serve metrics on that address; a run of exec has nothing
        // to serve for longer than a scrape interval.
        table.remove("metrics_listen");
        let mut set = |key: &str, value: toml::Value| {
            table.insert(key.to_owned(), value);
        };
        set("socket", path_value(&socket));
        set("state_dir", path_value(&state));
        set("spool_dir", path_value(&spool));
        set("gc_roots_dir", path_value(&gc_roots));
        if let Some(target) = overrides.target {
            set("target", toml::Value::String(target));
        }
        if let Some(files) = overrides.key_files {
            set(
                "secret_key_files",
                toml::Value::Array(files.iter().map(|f| path_value(f)).collect()),
            );
        }
        if let Some(filter) = overrides.filter {
            let strings = |list: Vec<String>| {
                toml::Value::Array(list.into_iter().map(toml::Value::String).collect())
            };
            set(
                "exclude",
                strings(filter.patterns().map(str::to_owned).collect()),
            );
            set(
                "exclude_outputs",
                strings(filter.exclude_outputs().to_vec()),
            );
            if let Some(max) = filter.max_nar_bytes() {
                let max = i64::try_from(max).context("--max-nar-bytes is too big")?;
                set("max_nar_bytes", toml::Value::Integer(max));
            }
        }
        table
            .entry("max_attempts")
            .or_insert(toml::Value::Integer(EXEC_MAX_ATTEMPTS));
        table
            .entry("retry_max_delay_ms")
            .or_insert(toml::Value::Integer(EXEC_RETRY_MAX_DELAY_MS));
        let config_file = dir.path().join("narpush.toml");
        std::fs::write(&config_file, table.to_string())
            .with_context(|| format!("cannot write {}", config_file.display()))?;

        let log = std::fs::File::create(dir.path().join("daemon.log"))
            .context("cannot create the private daemon's log")?;
        let exe = std::env::current_exe().context("cannot find the narpush binary")?;
        let (secrets_out, mut secrets_in) =
            std::io::pipe().context("cannot make a pipe for the private daemon")?;
        let mut command = Command::new(&exe);
        command
            .args(["daemon", "--secrets-from-stdin"])
            .env(env::CONFIG, &config_file)
            .env_remove(env::SOCKET)
            .env_remove(env::SPOOL_DIR)
            .env_remove(env::STATE_DIR)
            .stdin(secrets_out)
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        for name in secrets::NAMES {
            command.env_remove(name);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} daemon", exe.display()))?;
        // The pipe's read end is the daemon's alone now; it sees the end of its stdin once
        // the text is written and `secrets_in` dropped.
        drop(command);
        let handed = secrets_in
            .write_all(secrets.encode().as_bytes())
            .context("cannot hand the secrets to the private daemon");
        drop(secrets_in);
        let mut daemon = PrivateDaemon {
            child,
            dir,
            socket,
            spool,
            gc_roots,
        };
        handed?;
        daemon.wait_until_serving(cancelled)?;
        Ok(daemon)
    }

    fn wait_until_serving(&mut self, cancelled: &AtomicBool) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if cancelled.load(Ordering::SeqCst) {
                bail!("interrupted before the private narpush daemon answered");
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the private narpush daemon stopped at once ({status}):\n{}",
                    self.log()
                );
            }
            if self.answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the private narpush daemon did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the daemon answers `status` within [`READY_DEADLINE`]: a daemon that binds its
    /// socket but does not answer (stopped, hung) must not hold exec past a signal for long.
    fn answers(&self) -> bool {
        let limits = narpush_protocol::client::Limits {
            deadline: READY_DEADLINE,
            max_response: 64 << 20,
        };
        narpush_protocol::client::exchange(&self.socket, &narpush_protocol::Request::Status, limits)
            .is_ok()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn status(&self) -> anyhow::Result<StatusReport> {
        Ok(control::status(&self.socket)?)
    }

    /// Requests the hook left in the spool that the daemon has not taken yet.
    pub fn spooled_requests(&self) -> usize {
        std::fs::read_dir(&self.spool).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| {
                    narpush_protocol::spool::is_request_file_name(&e.file_name().to_string_lossy())
                })
                .count()
        })
    }

    /// What the daemon logged (for errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM (the daemon drains, requeues and flushes), then waits; kills it if it hangs.
    pub fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + narpush::daemon::DRAIN_TIMEOUT + STOP_MARGIN;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateDaemon {
    /// Whatever happened, the daemon does not outlive `exec`, nor do its GC roots.
    fn drop(&mut self) {
        // Not reaped yet, so its pid is still its group's: the group (the daemon and the
        // processes it started) is killed whole.
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Some(group) = process_group::led_by(self.child.id()) {
                process_group::kill(group);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.gc_roots);
    }
}

/// The user's config file as a table (empty without one); it was already checked.
fn user_table(config: &Config) -> anyhow::Result<toml::Table> {
    let Some(source) = &config.source else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read config file {}", source.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("config file {}", source.display()))
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.to_string_lossy().into_owned())
}
