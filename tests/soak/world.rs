//! What the soak runs against: a real S3 server (s3s-fs) behind the fault proxy, two daemons
//! writing one bucket with one signing key, the first with its state directory on a small
//! tmpfs that the chaos fills, and a bucket seeded with old objects — some that new builds
//! depend on (they must survive, refreshed), some that nothing uses (they must be collected).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use narpush_e2e::daemon::Daemon;
use narpush_e2e::fault_proxy::FaultProxy;
use narpush_e2e::*;

/// The state disk of the first daemon: room for its queue and journal, quickly filled.
const STATE_DISK: &str = "size=64m";
/// How old the seeded objects are made: older than the collector's `--older-than`.
pub const SEED_AGE: Duration = Duration::from_secs(60 * 24 * 3600);
/// The collector's `--older-than` (the seeded objects are older; everything new is younger).
pub const OLDER_THAN: &str = "2d";

/// One daemon and how builds reach it.
pub struct Writer {
    pub daemon: Mutex<Daemon>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub spool: PathBuf,
    /// Where the daemon keeps its state, when it is a tmpfs the chaos may fill.
    pub state_disk: Option<PathBuf>,
}

impl Writer {
    pub fn hook_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("NARPUSH_SOCKET", self.socket.clone()),
            ("NARPUSH_SPOOL_DIR", self.spool.clone()),
        ]
    }

    /// A `narpush` client command against this daemon.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        run(narpush()
            .env("NARPUSH_SOCKET", &self.socket)
            .env("NARPUSH_CONFIG", &self.config)
            .args(args))
    }
}

/// Counters every actor adds to; printed at the end.
#[derive(Default)]
pub struct Tally {
    pub builds: AtomicU64,
    pub builds_failed: AtomicU64,
    pub acked_by_socket: AtomicU64,
    pub acked_by_spool: AtomicU64,
    pub not_handed_over: AtomicU64,
    pub pushes: AtomicU64,
    pub pushes_refused: AtomicU64,
    pub retries: AtomicU64,
    pub collections: AtomicU64,
    pub collections_failed: AtomicU64,
    pub collected_objects: AtomicU64,
    pub kills: AtomicU64,
    pub stops: AtomicU64,
    pub disk_full_episodes: AtomicU64,
    pub failed_restarts: AtomicU64,
}

impl Tally {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub struct World {
    pub s3: S3Server,
    pub bucket: PathBuf,
    pub proxy: FaultProxy,
    pub writers: Vec<Writer>,
    pub public_key: String,
    /// The `shared` argument of gc.nix: the seeded closure every build depends on.
    pub shared: String,
    /// Seeded objects (bucket-relative keys) that nothing uses: collected by the end.
    pub garbage_keys: Vec<String>,
    /// Paths handed over (acknowledged by a daemon or spooled): each must end in the cache.
    pub acked: Mutex<Vec<String>>,
    pub tally: Tally,
    _keys: tempfile::TempDir,
    _spool_disk: tempfile::TempDir,
}

const BUCKET: &str = "soak";

impl World {
    pub fn create(seed: u64) -> World {
        let s3 = S3Server::start();
        let bucket = s3.bucket(BUCKET);
        let proxy = FaultProxy::start(s3.addr);
        proxy.set_timeout_delay(Duration::from_secs(4));
        let keys = tempfile::tempdir().expect("tempdir");
        let (secret, public_key) = keygen(keys.path(), "soak-1");

        eprintln!("soak: seeding the bucket with old objects");
        let shared = unique(&format!("soak-shared-{seed}"));
        let used = nix_build(
            &fixture("gc.nix"),
            &[("shared", &shared), ("own", &unique("soak-seed"))],
        );
        let unused = single_paths("soak-garbage", 8);
        let seeded: Vec<String> = used.iter().chain(&unused).cloned().collect();
        let uploaded = run(narpush()
            .args(["upload", "--no-upstream", "--to", &s3.url(BUCKET), "--key"])
            .arg(&secret)
            .args(&seeded)
            .envs(s3.env()));
        assert!(uploaded.status.success(), "{}", stderr(&uploaded));
        // The seeded top is no build's dependency (only its bottom, `shared`, is).
        let mut garbage = unused;
        garbage.push(used[0].clone());
        let garbage_keys = object_keys_of(&bucket, &garbage);
        age_everything(&bucket, SEED_AGE);

        let spool_disk = tempfile::tempdir().expect("tempdir");
        let common = format!(
            "target = \"{}\"\nsecret_key_files = [\"{}\"]\nupstream_public_keys = []\n\
             retry_initial_delay_ms = 200\nretry_max_delay_ms = 2000\nmax_attempts = 1000\n\
             request_timeout_ms = 3000",
            proxy.url(BUCKET),
            secret.display()
        );
        let writers = (0..2)
            .map(|i| {
                let spool = spool_disk.path().join(format!("spool-{i}"));
                let extra = format!("{common}\nspool_dir = \"{}\"", spool.display());
                let mut daemon = Daemon::configure(&extra, s3.env());
                let state_disk = (i == 0).then(|| mount_tmpfs(&daemon.state));
                daemon.spawn();
                Writer {
                    socket: daemon.socket.clone(),
                    config: daemon.config.clone(),
                    daemon: Mutex::new(daemon),
                    spool,
                    state_disk,
                }
            })
            .collect();
        World {
            s3,
            bucket,
            proxy,
            writers,
            public_key,
            shared,
            garbage_keys,
            acked: Mutex::new(Vec::new()),
            tally: Tally::default(),
            _keys: keys,
            _spool_disk: spool_disk,
        }
    }

    /// `narpush gc` of the bucket; through the fault proxy unless `direct`.
    pub fn collect(&self, direct: bool) -> std::process::Output {
        let url = if direct {
            self.s3.url(BUCKET)
        } else {
            self.proxy.url(BUCKET)
        };
        run(narpush()
            .args(["gc", "--json", "--older-than", OLDER_THAN, "--to", &url])
            .envs(self.s3.env()))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for writer in &self.writers {
            if let Ok(mut daemon) = writer.daemon.lock() {
                daemon.kill_9();
            }
            if let Some(disk) = &writer.state_disk {
                let _ = Command::new("umount").arg("-l").arg(disk).status();
            }
        }
    }
}

/// Mounts a small tmpfs at `dir` (created if needed) and returns it.
fn mount_tmpfs(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("state directory");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", STATE_DISK, "tmpfs"])
            .arg(dir),
    );
    dir.to_owned()
}

/// The bucket's keys of the narinfos of `paths` and of the NARs they name.
fn object_keys_of(bucket: &Path, paths: &[String]) -> Vec<String> {
    let mut keys = Vec::new();
    for path in paths {
        let narinfo = format!("{}.narinfo", hash_part(path));
        let text = std::fs::read_to_string(bucket.join(&narinfo))
            .unwrap_or_else(|e| panic!("{narinfo} was not uploaded: {e}"));
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("a URL line");
        keys.push(narinfo);
        keys.push(url.to_owned());
    }
    keys
}
