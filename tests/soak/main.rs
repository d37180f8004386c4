//! `scripts/soak [--minutes N] [--seed S]`: the chaos soak on the real binaries.
//!
//! Two `narpush daemon`s write one bucket on a real S3 server (s3s-fs) through a fault proxy
//! (5xx, SlowDown with Retry-After, resets mid-body, answers lost after the server acted, slow
//! answers), while builders hand them fresh paths through `narpush-hook`, `narpush push` and
//! `narpush retry --all` run beside them, `narpush gc` collects in a loop over garbage aged
//! through the server's file times, and the chaos kills (-9) and restarts the daemons, stops
//! and resumes them (SIGSTOP/SIGCONT) and fills the first one's state disk (a small tmpfs).
//! A checker samples the closure invariant the whole time (see `checker`).
//!
//! At the end the faults stop and the daemons drain. The run passes when every path a hook or
//! a push handed over is in the bucket and stock Nix substitutes all of them with
//! `require-sigs`, every aged object nothing uses is gone, and no violation was seen. It prints
//! its figures either way; the seed makes the actors' choices repeatable (the timing of real
//! processes is not).

mod actors;
mod checker;
mod settle;
mod world;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use narpush_e2e::fault_proxy::Fault;

use actors::Rng;
use world::World;

/// Requests that get a fault, per thousand.
const FAULT_RATE: u32 = 40;

struct Args {
    minutes: f64,
    seed: u64,
}

const USAGE: &str = "usage: narpush-soak [--minutes N] [--seed S]

Runs two narpush daemons against s3s-fs behind a fault proxy for N minutes (default 2) with
builds, pushes, retries, collections, kills, stops and a full state disk, then checks that
nothing handed over was lost and the closure invariant always held. Needs root (tmpfs), Nix
and s3s-fs (scripts/test installs them). Exit 0 when the run passed, 1 when it did not.";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        minutes: 2.0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = |name: &str| given.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--minutes" => {
                let text = value("--minutes")?;
                args.minutes = text
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m > 0.0)
                    .ok_or(format!("--minutes {text}: not a positive number"))?;
            }
            "--seed" => {
                let text = value("--seed")?;
                args.seed = text
                    .parse()
                    .map_err(|_| format!("--seed {text}: not a whole number"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) if why.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("narpush-soak: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "soak: seed {} for {} minute(s) (replay the choices with --seed {})",
        args.seed, args.minutes, args.seed
    );
    let world = World::create(args.seed);
    world
        .proxy
        .randomize(args.seed, FAULT_RATE, &Fault::ALL, None);
    let stop = AtomicBool::new(false);
    let checker_stop = AtomicBool::new(false);
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let (sampled, settled) = std::thread::scope(|scope| {
        let checker = scope.spawn(|| checker::watch(&world.bucket, &checker_stop));
        let (world, stop) = (&world, &stop);
        let seed = args.seed;
        let mut actors = Vec::new();
        for (i, writer) in world.writers.iter().enumerate() {
            let rng = Rng::new(seed, i as u64);
            actors.push(scope.spawn(move || actors::builder(world, writer, stop, rng)));
        }
        actors.push(scope.spawn(move || actors::pusher(world, stop, Rng::new(seed, 10))));
        actors.push(scope.spawn(move || actors::retrier(world, stop, Rng::new(seed, 11))));
        actors.push(scope.spawn(move || actors::collector(world, stop, Rng::new(seed, 12))));
        actors.push(scope.spawn(move || actors::killer(world, stop, Rng::new(seed, 13))));
        actors.push(scope.spawn(move || actors::stopper(world, stop, Rng::new(seed, 14))));
        actors.push(scope.spawn(move || actors::filler(world, stop, Rng::new(seed, 15))));
        while started.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        eprintln!("soak: time is up; stopping the actors");
        for actor in actors {
            actor.join().expect("an actor panicked");
        }
        let settled = settle::settle(world);
        checker_stop.store(true, Ordering::Relaxed);
        (checker.join().expect("the checker panicked"), settled)
    });
    let verdict = settle::verdict(&world, &sampled, &settled);
    settle::print_figures(&world, &args_summary(&args, started), &sampled, &verdict);
    if verdict.passed() {
        eprintln!("soak: PASSED");
        ExitCode::SUCCESS
    } else {
        eprintln!("soak: FAILED (seed {})", args.seed);
        ExitCode::FAILURE
    }
}

fn args_summary(args: &Args, started: Instant) -> String {
    format!(
        "seed {}, {} minute(s) of chaos, {:.0} s in all",
        args.seed,
        args.minutes,
        started.elapsed().as_secs_f64()
    )
}
