//! The soak's actors, one thread each, until the stop flag is set: builders whose hooks hand
//! paths to the daemons, a pusher and a retrier on the CLI, a collector running `narpush gc`
//! in a loop, and the chaos — kill -9 and restart, SIGSTOP/SIGCONT, a full state disk.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use narpush_e2e::daemon::build_with_hook;
use narpush_e2e::*;

use crate::world::{Tally, World, Writer};

/// splitmix64: each actor draws its choices from the run's seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, actor: u64) -> Rng {
        Rng(seed ^ actor.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }
}

/// Sleeps `duration`, or less once `stop` is set.
fn nap(stop: &AtomicBool, duration: Duration) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

/// Builds fresh closures on top of the seeded bottom, the hook handing them to `writer`.
pub fn builder(world: &World, writer: &Writer, stop: &AtomicBool, mut rng: Rng) {
    let env = writer.hook_env();
    while !stop.load(Ordering::Relaxed) {
        let own = unique("soak-build");
        let (paths, output) = if rng.between(0, 5) == 0 {
            // A NAR above the engine's small-NAR size: streamed, not sent from the budget.
            let size = rng.between(1100, 3000).to_string();
            let args = [("nonce", own.as_str()), ("size", size.as_str())];
            build_with_hook(&fixture("single.nix"), &args, &env)
        } else {
            let args = [("shared", world.shared.as_str()), ("own", own.as_str())];
            build_with_hook(&fixture("gc.nix"), &args, &env)
        };
        Tally::add(&world.tally.builds, 1);
        if !output.status.success() || paths.is_empty() {
            Tally::add(&world.tally.builds_failed, 1);
            eprintln!("soak: a build failed: {}", stderr(&output));
            continue;
        }
        let log = stderr(&output);
        if log.contains("these paths will not be uploaded") {
            Tally::add(&world.tally.not_handed_over, 1);
            eprintln!("soak: a hook could neither hand over nor spool: {log}");
            continue;
        }
        let spooled = log.contains("narpush-hook: the daemon did not take the request");
        let counter = if spooled {
            &world.tally.acked_by_spool
        } else {
            &world.tally.acked_by_socket
        };
        Tally::add(counter, 1);
        world.acked.lock().expect("acked").extend(paths);
        nap(stop, rng.millis(0, 400));
    }
}

/// Hands paths built earlier to a daemon again with `narpush push`.
pub fn pusher(world: &World, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        nap(stop, rng.millis(500, 2000));
        let path = {
            let acked = world.acked.lock().expect("acked");
            if acked.is_empty() {
                continue;
            }
            acked[rng.between(0, acked.len() as u64) as usize].clone()
        };
        let writer = &world.writers[rng.between(0, world.writers.len() as u64) as usize];
        let pushed = writer.client(&["push", &path]);
        Tally::add(&world.tally.pushes, 1);
        if !pushed.status.success() {
            // The daemon is down, stopped or its disk full: the push says so and queues nothing.
            Tally::add(&world.tally.pushes_refused, 1);
        }
    }
}

/// `narpush retry --all` on a daemon, over and over.
pub fn retrier(world: &World, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        nap(stop, rng.millis(1000, 4000));
        let writer = &world.writers[rng.between(0, world.writers.len() as u64) as usize];
        let _ = writer.client(&["retry", "--all"]);
        Tally::add(&world.tally.retries, 1);
    }
}

/// `narpush gc` in a loop, through the fault proxy.
pub fn collector(world: &World, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        let output = world.collect(false);
        Tally::add(&world.tally.collections, 1);
        if output.status.success() {
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            let deleted = report["deleted_keys"].as_array().map_or(0, Vec::len);
            Tally::add(&world.tally.collected_objects, deleted as u64);
        } else {
            // A fault it could not ride out: it stops before deleting what it cannot vouch for.
            Tally::add(&world.tally.collections_failed, 1);
        }
        nap(stop, rng.millis(200, 1500));
    }
}

/// kill -9 of a daemon now and then, restarted after a moment.
pub fn killer(world: &World, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        nap(stop, rng.millis(4000, 12000));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let writer = &world.writers[rng.between(0, world.writers.len() as u64) as usize];
        let mut daemon = writer.daemon.lock().expect("daemon");
        daemon.kill_9();
        Tally::add(&world.tally.kills, 1);
        std::thread::sleep(rng.millis(0, 2000));
        restart(world, &mut daemon);
    }
}

/// Starts a daemon that is not running; a daemon that cannot start is counted and tried again
/// by the next chaos step or the final phase.
pub fn restart(world: &World, daemon: &mut narpush_e2e::daemon::Daemon) {
    if daemon.is_running() {
        return;
    }
    daemon.kill_9();
    if let Err(why) = daemon.try_spawn(Duration::from_secs(30)) {
        Tally::add(&world.tally.failed_restarts, 1);
        let lines: Vec<&str> = why.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n");
        eprintln!("soak: a daemon did not restart:\n{tail}");
    }
}

/// SIGSTOP of a daemon for a few seconds (a hung process: hooks time out and spool).
pub fn stopper(world: &World, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        nap(stop, rng.millis(3000, 10000));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let writer = &world.writers[rng.between(0, world.writers.len() as u64) as usize];
        let daemon = writer.daemon.lock().expect("daemon");
        let Some(pid) = daemon.try_pid() else {
            continue;
        };
        let pid = pid.to_string();
        run(std::process::Command::new("kill").args(["-STOP", &pid]));
        Tally::add(&world.tally.stops, 1);
        std::thread::sleep(rng.millis(1000, 6000));
        run(std::process::Command::new("kill").args(["-CONT", &pid]));
    }
}

/// Fills the first daemon's state disk for a while, then frees it.
pub fn filler(world: &World, stop: &AtomicBool, mut rng: Rng) {
    let Some(disk) = world.writers.iter().find_map(|w| w.state_disk.clone()) else {
        return;
    };
    let filler = disk.join("soak-filler");
    while !stop.load(Ordering::Relaxed) {
        nap(stop, rng.millis(5000, 15000));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        fill(&filler);
        Tally::add(&world.tally.disk_full_episodes, 1);
        nap(stop, rng.millis(3000, 12000));
        let _ = std::fs::remove_file(&filler);
    }
    let _ = std::fs::remove_file(&filler);
}

/// Writes zeros to `file` until the disk refuses more.
fn fill(file: &std::path::Path) {
    let Ok(mut out) = std::fs::File::create(file) else {
        return;
    };
    let chunk = vec![0u8; 1 << 20];
    while out.write_all(&chunk).is_ok() {}
    // The last partial megabyte.
    while out.write_all(&chunk[..4096]).is_ok() {}
}
