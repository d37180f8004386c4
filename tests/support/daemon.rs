//! A real `narpush daemon` process per test: its own state directory, socket, spool and GC
//! root directory (under /nix/var/nix/gcroots, where Nix's collector looks), killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, command, narpush, run};

pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub spool: PathBuf,
    pub state: PathBuf,
    pub gc_roots: PathBuf,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// A daemon with `extra` appended to its config file (TOML lines), started and serving.
    pub fn start(extra: &str, env: Vec<(&'static str, String)>) -> Daemon {
        let mut daemon = Daemon::configure(extra, env);
        daemon.spawn();
        daemon
    }

    /// A configured daemon that is not running yet.
    pub fn configure(extra: &str, env: Vec<(&'static str, String)>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let socket = dir.path().join("narpush.sock");
        let unique = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .to_owned();
        let gc_roots = PathBuf::from(format!("/nix/var/nix/gcroots/narpush-e2e-{unique}"));
        let config = dir.path().join("narpush.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nsocket = \"{}\"\ngc_roots_dir = \"{}\"\nbatch_window_ms = 50\n{extra}\n",
                state.display(),
                socket.display(),
                gc_roots.display()
            ),
        )
        .expect("write config");
        Daemon {
            child: None,
            spool: state.join("spool"),
            state,
            socket,
            config,
            gc_roots,
            dir,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// Starts the process and waits until it answers `status`.
    pub fn spawn(&mut self) {
        if let Err(why) = self.try_spawn(Duration::from_secs(20)) {
            panic!("{why}");
        }
    }

    /// Starts the process and waits up to `within` until it answers `status`; a daemon that
    /// does not is killed, and the error carries its log.
    pub fn try_spawn(&mut self, within: Duration) -> Result<(), String> {
        self.spawn_process();
        let deadline = Instant::now() + within;
        while !self.client(&["status"]).status.success() {
            if !self.is_running() {
                self.child = None;
                return Err(format!("daemon exited at start; log:\n{}", self.log()));
            }
            if Instant::now() >= deadline {
                self.kill_9();
                return Err(format!("daemon did not start; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the process without waiting for anything (it may not serve, or may refuse
    /// `status`).
    pub fn spawn_process(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log file");
        let child = narpush()
            .env("NARPUSH_CONFIG", &self.config)
            .env_remove("NARPUSH_SOCKET")
            .env_remove("NARPUSH_SPOOL_DIR")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start narpush daemon");
        self.child = Some(child);
    }

    /// Whether the process runs (it may have exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Leaves `name` out of the environment of the next [`Daemon::spawn`].
    pub fn remove_env(&mut self, name: &str) {
        self.env.retain(|(key, _)| key != name);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process id, if the process was started and not killed since.
    pub fn try_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        child.wait().expect("wait")
    }

    /// A `narpush` client command against this daemon's socket.
    pub fn client(&self, args: &[&str]) -> Output {
        run(narpush()
            .env("NARPUSH_SOCKET", &self.socket)
            .env("NARPUSH_CONFIG", &self.config)
            .args(args))
    }

    pub fn status_json(&self) -> serde_json::Value {
        let output = self.client(&["status", "--json"]);
        assert!(output.status.success(), "status: {output:?}");
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// `narpush wait --timeout SECS`.
    pub fn wait(&self, secs: u64) -> Output {
        self.client(&["wait", "--timeout", &secs.to_string()])
    }

    /// `narpush wait --timeout SECS`, which must succeed (the failure shows the daemon's log).
    pub fn wait_ok(&self, secs: u64) {
        let waited = self.wait(secs);
        assert!(
            waited.status.success(),
            "wait: {}\n{}",
            String::from_utf8_lossy(&waited.stderr),
            self.log()
        );
    }

    /// The public key the daemon signs with.
    pub fn public_key(&self) -> String {
        self.status_json()["public_keys"][0]
            .as_str()
            .expect("a public key")
            .to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The environment that sends a build's hook to this daemon.
    pub fn hook_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("NARPUSH_SOCKET", self.socket.clone()),
            ("NARPUSH_SPOOL_DIR", self.spool.clone()),
        ]
    }

    /// Spool files waiting (not the rejected ones).
    pub fn spooled(&self) -> Vec<PathBuf> {
        spooled(&self.spool)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_9();
        let _ = std::fs::remove_dir_all(&self.gc_roots);
    }
}

pub fn spooled(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "request"))
                .collect()
        })
        .unwrap_or_default()
}

/// Builds `expression_file` with real Nix and `narpush-hook` as its post-build-hook, with the
/// hook environment `hook_env`. Returns the output paths and Nix's output.
pub fn build_with_hook(
    expression_file: &Path,
    args: &[(&str, &str)],
    hook_env: &[(&'static str, PathBuf)],
) -> (Vec<String>, Output) {
    let mut build = command("nix-build");
    build
        .arg(expression_file)
        .arg("--no-out-link")
        .args(["--option", "post-build-hook"])
        .arg(bin("narpush-hook"));
    for (name, value) in args {
        build.args(["--argstr", name, value]);
    }
    for (name, value) in hook_env {
        build.env(name, value);
    }
    let output = run(&mut build);
    let paths = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (paths, output)
}
