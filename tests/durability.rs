//! The queue's durability promises, checked on the real daemon: an enqueue is acknowledged only
//! after the intake journal and the GC roots' directory were synced to disk (seen from outside
//! with strace), and an ack is
//! worth something even when the daemon dies the moment after sending it, before the request
//! left the journal for the queue; a damaged journal is reported, record by record; a daemon
//! started on a full state disk serves and recovers; GC roots lost before an upload come back;
//! a panic during a batch fails only the path that causes it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "durability/full_disk.rs"]
mod full_disk;
#[path = "durability/gc_roots.rs"]
mod gc_roots;
#[path = "durability/journal.rs"]
mod journal;
#[path = "durability/quarantine.rs"]
mod quarantine;

use narpush_e2e::daemon::{build_with_hook, spooled, Daemon};
use narpush_e2e::{
    assert_closure_invariant, closure, fixture, hash_part, nix_build, run, single_paths, stderr,
    substitute, unique,
};

/// One line of `strace -f -yy` output reduced to what the check needs.
#[derive(Debug, PartialEq)]
enum Event {
    /// A request was read from a socket (fd number).
    RequestRead(String),
    /// An `ok` response was written to a socket (fd number).
    AckWritten(String),
    /// fsync/fdatasync of the intake journal returned 0.
    JournalSynced,
    /// fsync of the GC roots' directory returned 0.
    RootsSynced,
}

/// The events of an strace log, in the order strace saw them complete. A syscall split into
/// `<unfinished ...>` and `<... resumed>` counts where it resumed.
fn events(log: &str) -> Vec<Event> {
    let mut unfinished: std::collections::HashMap<String, String> = Default::default();
    let mut events = Vec::new();
    for line in log.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let call = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            unfinished.insert(pid.to_owned(), head.to_owned());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(head) = unfinished.remove(pid) else {
                continue;
            };
            // `<... name resumed>ARGS) = RESULT`: the arguments written on return (a read's
            // data) come after the marker.
            // strace pads the result to a column there: `resumed>)      = 20`.
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            format!(
                "{head}{}",
                tail.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        } else {
            rest.to_owned()
        };
        let fd = || {
            call.split_once('(')
                .and_then(|(_, args)| args.split_once('<'))
                .map_or(String::new(), |(fd, _)| fd.to_owned())
        };
        let ok = call
            .rsplit_once(") = ")
            .is_some_and(|(_, r)| !r.starts_with('-'));
        if (call.starts_with("fsync(") || call.starts_with("fdatasync("))
            && call.contains("/intake.journal>")
            && ok
        {
            events.push(Event::JournalSynced);
        } else if call.starts_with("fsync(") && call.contains("</nix/var/nix/gcroots/") && ok {
            events.push(Event::RootsSynced);
        } else if (call.starts_with("read(") || call.starts_with("recvfrom("))
            && call.contains("\"narpush 1 enqueue")
            && ok
        {
            events.push(Event::RequestRead(fd()));
        } else if (call.starts_with("write(") || call.starts_with("sendto("))
            && call.contains(", \"ok queued ")
            && ok
        {
            events.push(Event::AckWritten(fd()));
        }
    }
    events
}

#[test]
fn an_enqueue_is_acknowledged_only_after_the_intake_journal_and_the_gc_roots_are_synced() {
    let mut daemon = Daemon::start("", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.log");
    let mut strace = Command::new("strace")
        .args(["-f", "-yy", "-s", "64", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=read,recvfrom,write,sendto,fsync,fdatasync",
            "-p",
        ])
        .arg(daemon.pid().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (scripts/test installs it)");
    let mut attached = BufReader::new(strace.stderr.take().unwrap());
    let mut line = String::new();
    while attached.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("attached") {
        line.clear();
    }
    assert!(line.contains("attached"), "strace did not attach: {line}");
    // strace reports one line per thread it attaches; the rest is drained in the background.
    std::thread::spawn(move || std::io::copy(&mut attached, &mut std::io::sink()));

    let pushes = 5;
    for n in 0..pushes {
        let path = nix_build(
            &fixture("single.nix"),
            &[("nonce", &unique(&format!("ack{n}")))],
        );
        let pushed = daemon.client(&["push", &path[0]]);
        assert!(pushed.status.success(), "{}", stderr(&pushed));
    }
    // strace ends once the daemon (and every process it started) has exited; interrupting
    // strace instead could leave a process it follows stopped mid-fork.
    let stopped = daemon.terminate();
    assert!(stopped.success(), "{stopped}\n{}", daemon.log());
    strace.wait().unwrap();

    let log = std::fs::read_to_string(&trace).unwrap();
    let events = events(&log);
    let mut acks = 0;
    for (index, event) in events.iter().enumerate() {
        let Event::AckWritten(fd) = event else {
            continue;
        };
        let read_at = events[..index]
            .iter()
            .rposition(|e| *e == Event::RequestRead(fd.clone()))
            .unwrap_or_else(|| panic!("ack on fd {fd} without a request read; events {events:?}"));
        assert!(
            events[read_at..index].contains(&Event::JournalSynced),
            "ack on fd {fd} was written before any sync of the intake journal since its \
             request was read; events {events:?}"
        );
        assert!(
            events[read_at..index].contains(&Event::RootsSynced),
            "ack on fd {fd} was written before any sync of the GC roots' directory since its \
             request was read; events {events:?}"
        );
        acks += 1;
    }
    assert_eq!(acks, pushes, "acks seen in the trace; events {events:?}");
}

/// A tmpfs of `size` mounted at a directory, unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let mounted = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "narpush-e2e"])
            .arg(at));
        assert!(mounted.status.success(), "mount: {}", stderr(&mounted));
        SmallDisk { at: at.to_owned() }
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.at.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        // Also the last few bytes a smaller write still finds.
        while std::io::Write::write_all(&mut file, &[0u8; 512]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.at));
    }
}

#[test]
fn a_full_state_disk_refuses_acks_and_everything_is_uploaded_once_space_returns() {
    let cache = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::configure(
        &format!(
            "target = \"file://{}\"\nspool_dir = \"{}\"",
            cache.path().display(),
            spool.path().display()
        ),
        vec![],
    );
    let disk = SmallDisk::mount(&daemon.state, "16M");
    daemon.spawn();
    let hook_env = vec![
        ("NARPUSH_SOCKET", daemon.socket.clone()),
        ("NARPUSH_SPOOL_DIR", spool.path().to_owned()),
    ];
    let run_id = unique("full");
    let mut built = Vec::new();
    let mut build = |n: usize| {
        let (paths, output) = build_with_hook(
            &fixture("single.nix"),
            &[("nonce", &format!("{run_id}-{n}"))],
            &hook_env,
        );
        assert!(output.status.success(), "{}", stderr(&output));
        built.push(paths[0].clone());
        stderr(&output)
    };
    let first = build(0);
    assert!(!first.contains("spooled"), "{first}");

    let filler = disk.fill();
    let mut refused = 0;
    for n in 1..=30 {
        if build(n).contains("spooled to") {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no request was refused on a full disk\n{}",
        daemon.log()
    );
    assert_eq!(spooled(spool.path()).len(), refused);

    std::fs::remove_file(filler).unwrap();
    // No restart: the daemon that saw the disk full uploads everything.
    let pid = daemon.pid();
    let all_in = eventually(120, || {
        spooled(spool.path()).is_empty()
            && built.iter().all(|p| {
                cache
                    .path()
                    .join(format!("{}.narinfo", hash_part(p)))
                    .exists()
            })
    });
    assert!(
        all_in,
        "{} spool files left; log:\n{}",
        spooled(spool.path()).len(),
        daemon.log()
    );
    daemon.wait_ok(60);
    assert_eq!(daemon.pid(), pid);
    let log = daemon.log();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("queue database open again"), "{log}");
    assert_closure_invariant(cache.path());
    let (_, substituted) = substitute(
        &format!("file://{}", cache.path().display()),
        &daemon.public_key(),
        &built,
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

/// Waits until `check` holds or `secs` pass; returns whether it held.
fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

#[test]
fn a_daemon_killed_the_moment_after_its_ack_still_uploads_what_it_acknowledged() {
    let mut daemon = Daemon::start("", vec![]);
    let paths = single_paths("ackkill", 5);
    // One request with every path, and SIGKILL as soon as the ack is read: no time for sled's
    // background writer (every 500 ms) to save what the acknowledgement promised.
    let mut args = vec!["push"];
    args.extend(paths.iter().map(String::as_str));
    let pushed = daemon.client(&args);
    daemon.kill_9();
    assert!(pushed.status.success(), "{}", stderr(&pushed));

    daemon.spawn();
    daemon.wait_ok(120);
    let cache = daemon.state.join("cache");
    for path in &paths {
        assert!(
            cache.join(format!("{}.narinfo", hash_part(path))).exists(),
            "{path} was acknowledged but not uploaded\n{}",
            daemon.log()
        );
    }
}

#[test]
fn a_path_that_makes_the_engine_panic_ends_failed_with_the_panic_not_in_a_crash_loop() {
    let path = single_paths("panics", 1).remove(0);
    // Debug builds only: the engine panics when this path is submitted, as a bug would.
    let mut daemon = Daemon::start(
        "max_attempts = 2",
        vec![("NARPUSH_TEST_PANIC_ON", hash_part(&path).to_owned())],
    );
    let pushed = daemon.client(&["push", &path]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let is_failed = |daemon: &Daemon| {
        let output = daemon.client(&["status", "--json"]);
        output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout).is_ok_and(|status| {
                status["failed"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["path"] == path.as_str()))
            })
    };
    // Each start takes the path and panics; the service manager would start it again.
    let mut starts = 1;
    let failed = loop {
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.is_running() && !is_failed(&daemon) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if daemon.is_running() {
            break is_failed(&daemon);
        }
        if starts == 5 {
            break false;
        }
        // Reaps the exited process.
        daemon.kill_9();
        starts += 1;
        let _ = daemon.try_spawn(Duration::from_secs(20));
    };
    assert!(
        failed,
        "still crash-looping after {starts} starts\n{}",
        daemon.log()
    );
    assert_eq!(
        starts,
        3,
        "two panics use up two attempts\n{}",
        daemon.log()
    );
    let status = daemon.status_json();
    let error = status["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("gave up after 2 attempts")
            && error.contains("the engine task panicked")
            && error.contains("NARPUSH_TEST_PANIC_ON"),
        "{error}"
    );
    assert_eq!(status["counts"]["uploading"], 0, "{status}");
}

#[test]
fn a_path_whose_upload_kills_the_daemon_every_time_ends_failed_not_in_a_crash_loop() {
    let mut daemon = Daemon::start("jobs = 1\nmax_attempts = 2", vec![]);
    let (paths, build) = build_with_hook(
        &fixture("closure.nix"),
        &[("nonce", &unique("crashloop")), ("bigMiB", "120")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    let top = &paths[0];
    // The daemon dies during the upload each time, as if the path crashed it.
    for crash in 1..=2 {
        let in_flight = eventually(60, || {
            daemon.status_json()["uploads"]
                .as_array()
                .and_then(|u| u.first())
                .and_then(|largest| largest["nar_bytes_done"].as_u64())
                .is_some_and(|done| done > 1 << 20)
        });
        assert!(in_flight, "crash {crash}: the upload never started");
        daemon.kill_9();
        daemon.spawn();
    }
    // Every entry that was uploading at both crashes gave up; nothing is taken a third time.
    // The big path's own entry (the hook handed it over for its build) was: both crashes came
    // while its NAR was the one in flight. The top's entry may have been claimed only after
    // the first crash (on a busy machine its build ends after the daemon took the others),
    // and then its third attempt may upload the closure: it is not what this test is about.
    let big = closure(std::slice::from_ref(top))
        .into_iter()
        .find(|p| p.ends_with("-narpush-big"))
        .expect("the closure has a big path");
    let is_failed = |status: &serde_json::Value| {
        status["failed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["path"] == big.as_str()))
    };
    let failed = eventually(30, || is_failed(&daemon.status_json()));
    let status = daemon.status_json();
    assert!(failed, "{status}\n{}", daemon.log());
    for entry in status["failed"].as_array().into_iter().flatten() {
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("gave up after 2 attempts") && error.contains("interrupted"),
            "{error}"
        );
    }
    assert_eq!(status["counts"]["pending"], 0, "{status}");
    assert_eq!(status["counts"]["uploading"], 0, "{status}");
}
