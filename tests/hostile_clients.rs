//! Bad input on the daemon's socket: each kind is refused with a clear error, changes nothing,
//! and does not keep another client from being served at the same time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use narpush_e2e::daemon::Daemon;
use narpush_e2e::*;

/// Sends raw bytes, closes the sending side, and returns the daemon's answer.
fn exchange(daemon: &Daemon, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The daemon may answer and close before reading everything (oversized input).
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn enqueue(path: &str) -> Vec<u8> {
    format!("narpush 1 enqueue\nsource push\nout {path}\nend\n").into_bytes()
}

fn queue_is_empty(daemon: &Daemon) -> bool {
    let status = daemon.status_json();
    status["counts"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == 0)
}

#[test]
fn malformed_oversized_and_out_of_store_requests_are_refused_and_change_nothing() {
    let daemon = Daemon::start("", vec![]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"\x00\x01\xffgarbage\n".to_vec(),
            "malformed request",
        ),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "malformed request",
        ),
        ("oversized", vec![b'a'; 2 << 20], "larger than"),
        (
            "outside the store",
            enqueue("/etc/passwd"),
            "'/etc/passwd' is not a store path",
        ),
        (
            "dot-dot",
            enqueue("/nix/store/../etc/passwd"),
            "is not a store path",
        ),
        (
            "dot-dot after a valid hash",
            enqueue("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x/../../../etc/passwd"),
            "is not a store path",
        ),
        (
            "absent path",
            enqueue("/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-never-built"),
            "is not in the store",
        ),
        (
            "not a derivation",
            b"narpush 1 enqueue\ndrv /nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-x\nend\n".to_vec(),
            "not a derivation",
        ),
        (
            "future version",
            b"narpush 9 status\nend\n".to_vec(),
            "version 9",
        ),
    ];
    for (name, bytes, expected) in cases {
        // A well-behaved client is served while the bad one is being dealt with.
        let answer = std::thread::scope(|scope| {
            let bad = scope.spawn(|| exchange(&daemon, &bytes));
            let status = daemon.client(&["status"]);
            assert!(status.status.success(), "{name}: status failed meanwhile");
            bad.join().unwrap()
        });
        assert!(answer.starts_with("error "), "{name}: {answer:?}");
        assert!(answer.contains(expected), "{name}: {answer:?}");
        assert!(queue_is_empty(&daemon), "{name} changed the queue");
    }
    assert!(
        std::fs::read_dir(&daemon.gc_roots)
            .unwrap()
            .next()
            .is_none(),
        "a GC root was taken"
    );
}

#[test]
fn an_unknown_uid_may_read_status_but_not_enqueue() {
    let daemon = Daemon::start("", vec![]);
    let path = nix_build(&fixture("single.nix"), &[("nonce", "uid-check")]).remove(0);
    set_mode(&daemon.socket, 0o666);
    let as_nobody = |args: &[&str]| {
        run(command(bin("narpush"))
            .env("NARPUSH_SOCKET", &daemon.socket)
            .args(args)
            .uid(65534)
            .gid(65534))
    };
    let status = as_nobody(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let pushed = as_nobody(&["push", &path]);
    assert!(!pushed.status.success());
    assert!(
        stderr(&pushed).contains("uid 65534 may not change the queue"),
        "{}",
        stderr(&pushed)
    );
    let retried = as_nobody(&["retry", "--all"]);
    assert!(
        stderr(&retried).contains("uid 65534 may not"),
        "{}",
        stderr(&retried)
    );
    assert!(queue_is_empty(&daemon));
}

#[test]
fn a_client_sending_one_byte_a_second_is_cut_off_while_others_are_served() {
    let daemon = Daemon::start("", vec![]);
    let path = nix_build(&fixture("single.nix"), &[("nonce", "slow-check")]).remove(0);
    let socket = daemon.socket.clone();
    let slow = std::thread::spawn(move || {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let started = Instant::now();
        let mut answer = String::new();
        for byte in b"narpush 1 status\nend\n" {
            let mut buffer = [0u8; 256];
            if let Ok(n) = stream.read(&mut buffer) {
                answer.push_str(&String::from_utf8_lossy(&buffer[..n]));
                break;
            }
            let _ = stream.write_all(&[*byte]);
            std::thread::sleep(Duration::from_millis(990));
        }
        (answer, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile, a normal client is served at once.
    let started = Instant::now();
    let pushed = daemon.client(&["push", &path]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "served only after {:?}",
        started.elapsed()
    );
    let waited = daemon.client(&["wait", "--timeout", "30"]);
    assert!(waited.status.success(), "{}", stderr(&waited));

    let (answer, took) = slow.join().unwrap();
    assert!(
        answer.contains("error request not complete within 5 s"),
        "{answer:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}
