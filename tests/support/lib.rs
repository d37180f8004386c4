//! Shared harness of the end-to-end suite: the real `narpush` binaries (built by
//! `cargo build --workspace` before the tests run, as `scripts/test` does), real Nix builds, a
//! real S3 server (`s3s-fs`, with SigV4 credentials unless a test asks for anonymous access),
//! and a stock Nix client that must accept what narpush wrote.
//!
//! Nothing here mocks a part: a missing tool is a test failure that says what to install.

pub mod cache_watch;
pub mod daemon;
pub mod fault_proxy;
pub mod metrics;
pub mod moto;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Settings every Nix invocation of the suite uses: single-user as root without build users,
/// no sandbox (Debian's Nix 2.8), and no substituters, so nothing reaches beyond this machine.
pub const NIX_CONFIG: &str = "build-users-group =\nsandbox = false\nsubstituters =\n\
experimental-features = nix-command\nwarn-dirty = false\n";

/// A binary of this workspace, from the same target directory as the running test (or the
/// running soak, which sits beside the binaries instead of in `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let parent = exe.parent().expect("a binary lives in a directory");
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent
            .parent()
            .expect("tests run from target/<profile>/deps")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        path.display()
    );
    path
}

/// A command with the suite's Nix settings.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env("NIX_CONFIG", NIX_CONFIG).stdin(Stdio::null());
    command
}

/// Runs a command and returns its output, whatever the exit status.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (scripts/test installs it)"))
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The fixture directory of the suite.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Builds a Nix expression with real Nix and returns its output paths.
pub fn nix_build(expression_file: &Path, args: &[(&str, &str)]) -> Vec<String> {
    let mut build = command("nix-build");
    build.arg(expression_file).arg("--no-out-link");
    for (name, value) in args {
        build.args(["--argstr", name, value]);
    }
    run_ok(&mut build).lines().map(str::to_owned).collect()
}

/// `count` fresh, distinct paths of `single.nix` (built without the hook), named after `name`.
pub fn single_paths(name: &str, count: usize) -> Vec<String> {
    let run_id = unique(name);
    (0..count)
        .map(|n| {
            nix_build(
                &fixture("single.nix"),
                &[("nonce", &format!("{run_id}-{n}"))],
            )
            .remove(0)
        })
        .collect()
}

/// The closure of `paths`, as Nix computes it.
pub fn closure(paths: &[String]) -> Vec<String> {
    let mut query = command("nix-store");
    query.args(["-qR"]).args(paths);
    run_ok(&mut query).lines().map(str::to_owned).collect()
}

/// A signing key made by `narpush keygen`, stored 0600 in `dir`; returns (file, public key).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let output = run(Command::new(bin("narpush")).args(["keygen", name]));
    assert!(output.status.success(), "keygen failed: {output:?}");
    let file = dir.join(format!("{name}.sk"));
    std::fs::write(&file, &output.stdout).expect("write key");
    set_mode(&file, 0o600);
    let public = String::from_utf8(output.stderr).expect("UTF-8 public key");
    (file, public.trim().to_owned())
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Sets the modification time of every object in `bucket` back by `age` (s3s-fs reports a
/// file's mtime as the object's LastModified).
pub fn age_everything(bucket: &Path, age: Duration) {
    for file in snapshot(bucket).into_keys() {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(SystemTime::now() - age))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// Every regular file under `root` with its size and modification time: a snapshot to prove
/// that a run wrote nothing.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Gone since the directory was read: another process is writing the cache.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(entry.path(), (meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    files
}

/// The narinfo files in a cache directory.
pub fn narinfos(cache: &Path) -> Vec<PathBuf> {
    snapshot(cache)
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect()
}

/// The closure invariant, checked on the files of a cache: every narinfo points at a NAR that
/// exists with the FileSize and FileHash the narinfo states and which decompresses to NarSize
/// bytes hashing to NarHash (checked by stock tools: `nix-hash`, `zstd`, `xz`), and every
/// reference it names has a narinfo too. A narinfo that disappears while being read (another
/// process is writing the cache) is skipped. Each NAR file is hashed once per size and mtime.
pub fn assert_closure_invariant(cache: &Path) {
    for narinfo in narinfos(cache) {
        let Ok(text) = std::fs::read_to_string(&narinfo) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{} has no {name} line", narinfo.display()))
        };
        let url = field("URL: ");
        let nar = cache.join(url);
        assert!(
            nar.exists(),
            "{} points at missing {url}",
            narinfo.display()
        );
        let checked = checked_nar(&nar, field("Compression: "));
        let stated = NarFacts {
            file_size: field("FileSize: ").parse().expect("FileSize"),
            file_hash: field("FileHash: ").to_owned(),
            nar_size: field("NarSize: ").parse().expect("NarSize"),
            nar_hash: field("NarHash: ").to_owned(),
        };
        assert_eq!(
            checked,
            stated,
            "{} does not describe {url} (left: the file, right: the narinfo)",
            narinfo.display()
        );
        for reference in field("References: ").split(' ').filter(|r| !r.is_empty()) {
            assert!(
                cache.join(format!("{}.narinfo", &reference[..32])).exists(),
                "{} references {reference}, which has no narinfo",
                narinfo.display()
            );
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct NarFacts {
    file_size: u64,
    file_hash: String,
    nar_size: u64,
    nar_hash: String,
}

/// Size and hash of a NAR file and of the NAR inside it, as stock tools compute them.
fn checked_nar(nar: &Path, compression: &str) -> NarFacts {
    type Seen = std::sync::Mutex<std::collections::HashMap<(PathBuf, u64, SystemTime), NarFacts>>;
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    let meta = std::fs::metadata(nar).expect("NAR metadata");
    let key = (nar.to_owned(), meta.len(), meta.modified().expect("mtime"));
    let seen = SEEN.get_or_init(Default::default);
    if let Some(facts) = seen.lock().expect("lock").get(&key) {
        return facts.clone();
    }
    let sha256 = |file: &Path| {
        let hash = run_ok(
            Command::new("nix-hash")
                .args(["--type", "sha256", "--flat", "--base32"])
                .arg(file),
        );
        format!("sha256:{}", hash.trim())
    };
    let plain = tempfile::NamedTempFile::new().expect("temporary file");
    let decompressor = match compression {
        "zstd" => Some("zstd"),
        "xz" => Some("xz"),
        "none" => None,
        other => panic!("{}: unknown Compression {other}", nar.display()),
    };
    let plain_path = match decompressor {
        Some(tool) => {
            let output = run(Command::new(tool).arg("-dc").arg(nar));
            assert!(output.status.success(), "{tool} -dc {}", nar.display());
            std::fs::write(plain.path(), &output.stdout).expect("write NAR");
            plain.path().to_owned()
        }
        None => nar.to_owned(),
    };
    let facts = NarFacts {
        file_size: meta.len(),
        file_hash: sha256(nar),
        nar_size: std::fs::metadata(&plain_path).expect("NAR").len(),
        nar_hash: sha256(&plain_path),
    };
    seen.lock().expect("lock").insert(key, facts.clone());
    facts
}

/// The 32-character hash part of an absolute store path.
pub fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// A real S3 server (s3s-fs) on a loopback port, killed when dropped.
pub struct S3Server {
    child: Child,
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    pub credentials: Option<(String, String)>,
}

fn spawn_s3s(root: &Path, addr: SocketAddr, credentials: Option<(&str, &str)>) -> Child {
    let mut command = Command::new("s3s-fs");
    command
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((key, secret)) = credentials {
        command.args(["--access-key", key, "--secret-key", secret]);
    }
    command.arg(root);
    let child = command
        .spawn()
        .expect("cannot start s3s-fs (scripts/test installs it with cargo install)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "s3s-fs did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl S3Server {
    /// With SigV4 credentials: every request must be signed with them.
    pub fn start() -> S3Server {
        S3Server::start_with(Some(("narpush-test-key", "narpush-test-secret")))
    }

    /// Without credentials: anonymous requests are accepted (like a public bucket).
    pub fn start_anonymous() -> S3Server {
        S3Server::start_with(None)
    }

    fn start_with(credentials: Option<(&str, &str)>) -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        let addr = free_port();
        let child = spawn_s3s(root.path(), addr, credentials);
        S3Server {
            child,
            root,
            addr,
            credentials: credentials.map(|(k, s)| (k.to_owned(), s.to_owned())),
        }
    }

    /// Creates a bucket (a directory of the server's root) and returns its directory.
    pub fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("create bucket");
        dir
    }

    /// The `s3://` target URL of a bucket on this server.
    pub fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint=http://{}&region=us-east-1",
            self.addr
        )
    }

    /// Environment that gives narpush this server's credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match &self.credentials {
            Some((key, secret)) => vec![
                ("AWS_ACCESS_KEY_ID", key.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
            ],
            None => vec![
                ("AWS_ACCESS_KEY_ID", "anonymous".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "anonymous".to_owned()),
            ],
        }
    }

    /// The server's process id (a test may have another process kill it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and data, after [`S3Server::stop`].
    pub fn restart(&mut self) {
        let credentials = self.credentials.clone();
        let credentials = credentials.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
        self.child = spawn_s3s(self.root.path(), self.addr, credentials);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// `narpush` with a clean environment for credentials, keys and config.
pub fn narpush() -> Command {
    let mut command = command(bin("narpush"));
    command
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env_remove("NARPUSH_SIGNING_KEY")
        .env_remove("NARPUSH_STATE_DIR")
        .env("NARPUSH_CONFIG", "/dev/null");
    command
}

/// Substitutes `paths` from the cache at `cache_url` into a fresh chroot store, requiring
/// signatures by `public_key` and trusting nothing else. Returns the command's output.
pub fn substitute(
    cache_url: &str,
    public_key: &str,
    paths: &[String],
) -> (tempfile::TempDir, Output) {
    let store = tempfile::tempdir().expect("tempdir");
    let mut realise = command("nix-store");
    realise
        .arg("--store")
        .arg(store.path())
        .args(["--option", "substituters", cache_url])
        .args(["--option", "trusted-public-keys", public_key])
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .arg("-r")
        .args(paths);
    let output = run(&mut realise);
    (store, output)
}

/// Realises `paths` into a fresh chroot store whose only cache settings are `client_lines`
/// (with signatures required). Returns the store and Nix's output.
pub fn substitute_with_client_config(
    client_lines: &str,
    paths: &[String],
) -> (tempfile::TempDir, Output) {
    let store = tempfile::tempdir().expect("tempdir");
    let output = run(command("nix-store")
        .env(
            "NIX_CONFIG",
            format!(
                "{NIX_CONFIG}require-sigs = true\nnarinfo-cache-negative-ttl = 0\n{client_lines}"
            ),
        )
        .arg("--store")
        .arg(store.path())
        .arg("-r")
        .args(paths));
    (store, output)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A nonce no earlier run used, so Nix really builds (and runs the hook).
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{name}-{nanos}")
}
