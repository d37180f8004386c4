//! What an operator sees when the daemon has nothing to do: it sleeps. Measured as the CPU time
//! the kernel charged to the real `narpush daemon` process (`/proc/PID/stat`, user + system)
//! over ten seconds, with an empty queue (and the metrics endpoint on, a scraper connected) and
//! with a path waiting out its retry delay.

use std::io::{Read, Write};
use std::time::Duration;

use narpush_e2e::daemon::Daemon;
use narpush_e2e::*;

/// The most CPU an idle daemon may use in [`WINDOW`]: 1% of one core.
const BUDGET: Duration = Duration::from_millis(100);
const WINDOW: Duration = Duration::from_secs(10);

/// CPU time (user + system) the kernel has charged to `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = run_ok(std::process::Command::new("getconf").arg("CLK_TCK"));
    let hz: u64 = hz.trim().parse().expect("CLK_TCK");
    Duration::from_millis(ticks * 1000 / hz)
}

/// Asserts that `daemon`, described as `what`, uses less than [`BUDGET`] of CPU over
/// [`WINDOW`].
fn assert_sleeps(daemon: &Daemon, what: &str) {
    let before = cpu_time(daemon.pid());
    std::thread::sleep(WINDOW);
    let used = cpu_time(daemon.pid()) - before;
    assert!(
        used < BUDGET,
        "{what} used {used:?} of CPU in {WINDOW:?}\n{}",
        daemon.log()
    );
}

#[test]
fn an_idle_daemon_sleeps() {
    // With the metrics endpoint on, and scraped once (as Prometheus would, keeping its
    // connection open): nothing may tick between scrapes.
    let address = free_port();
    let daemon = Daemon::start(&format!("metrics_listen = \"{address}\""), vec![]);
    let mut scraper = std::net::TcpStream::connect(address).expect("metrics endpoint");
    write!(scraper, "GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    scraper.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "{}", daemon.log());
    // Let start-up work (key generation, first spool scan) finish before measuring.
    std::thread::sleep(Duration::from_secs(1));
    assert_sleeps(&daemon, "an idle daemon with metrics on");
    drop(scraper);
}

#[test]
fn a_daemon_waiting_out_a_retry_delay_sleeps() {
    let mut s3 = S3Server::start();
    s3.bucket("cache");
    let daemon = Daemon::start(
        &format!(
            "target = \"{}\"\nretry_initial_delay_ms = 60000\nretry_max_delay_ms = 60000",
            s3.url("cache")
        ),
        s3.env(),
    );
    s3.stop();
    let path = nix_build(&fixture("single.nix"), &[("nonce", &unique("idle-retry"))]).remove(0);
    let pushed = daemon.client(&["push", &path]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    // The first attempt fails (S3 is down) and the path waits a minute for the next.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.status_json()["retrying"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first attempt never failed:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_sleeps(&daemon, "a daemon waiting for a retry");
    assert_eq!(daemon.status_json()["counts"]["pending"], 1);
}
