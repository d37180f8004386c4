//! The deterministic simulation of uploaders, retention GC and faults over one bucket (see
//! `docs/simulation.md`). Each seed runs the real engine, queue and GC on a current-thread
//! runtime with virtual time against an S3 model in memory, and checks the invariants at
//! every change of the bucket; a failure prints its seed, and `--seed S` replays it.
//!
//! ```text
//! cargo test -p narpush --features sim --test sim -- [--seeds N] [--base B] [--seed S]
//!     [--jobs J] [--repush on|off] [--shared-nars on|off] [--slow-deletes on|off]
//!     [--crashes on|off] [--faults on|off] [--upstream on|off] [--repair on|off]
//!     [--filters on|off] [--throttling on|off] [--steps N]
//!     [--check-determinism] [--verbose]
//! ```

mod checker;
mod contention;
mod daemon;
mod damage;
mod filters;
mod judged;
mod repair;
mod rng;
mod run;
mod scenario;
mod summary;
mod upload;
mod upstream;
mod verdicts;
mod world;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use run::{run_seed, Outcome};
use scenario::Options;

struct Args {
    seeds: u64,
    base: u64,
    jobs: usize,
    options: Options,
    check_determinism: bool,
    verbose: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 500,
        base: 1,
        jobs: std::thread::available_parallelism().map_or(1, usize::from),
        options: Options::default(),
        check_determinism: false,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, name: &str| -> Result<u64, String> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number"))
    };
    let switch = |v: Option<String>, name: &str| -> Result<Option<bool>, String> {
        match v.as_deref() {
            Some("on") => Ok(Some(true)),
            Some("off") => Ok(Some(false)),
            _ => Err(format!("{name} takes on or off")),
        }
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => args.seeds = number(it.next(), "--seeds")?,
            "--base" => args.base = number(it.next(), "--base")?,
            "--seed" => {
                args.base = number(it.next(), "--seed")?;
                args.seeds = 1;
            }
            "--jobs" => args.jobs = number(it.next(), "--jobs")?.max(1) as usize,
            "--steps" => args.options.steps = Some(number(it.next(), "--steps")? as usize),
            "--repush" => args.options.repush = switch(it.next(), "--repush")?,
            "--shared-nars" => args.options.shared_nars = switch(it.next(), "--shared-nars")?,
            "--upstream" => args.options.upstream = switch(it.next(), "--upstream")?,
            "--filters" => args.options.filters = switch(it.next(), "--filters")?,
            "--throttling" => args.options.throttling = switch(it.next(), "--throttling")?,
            "--slow-deletes" => args.options.slow_deletes = switch(it.next(), "--slow-deletes")?,
            "--crashes" => args.options.crashes = switch(it.next(), "--crashes")?,
            "--faults" => args.options.faults = switch(it.next(), "--faults")?,
            "--repair" => args.options.repair = switch(it.next(), "--repair")?,
            "--check-determinism" => args.check_determinism = true,
            "--verbose" => args.verbose = true,
            // What `cargo test` passes to every test binary.
            "--nocapture" | "--quiet" | "-q" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn report(outcome: &Outcome, args: &Args) {
    println!(
        "seed {} FAILED: {}",
        outcome.seed,
        outcome.violations.first().map_or("", String::as_str)
    );
    for more in outcome.violations.iter().skip(1).take(4) {
        println!("  also: {more}");
    }
    println!("  scenario: {:?}", outcome.scenario);
    println!("  {}", outcome.summary);
    println!("  history of the keys named:");
    for line in &outcome.history {
        println!("  {line}");
    }
    println!(
        "  replay: scripts/simulate --seed {}{}",
        outcome.seed,
        fixed_options(&args.options)
    );
}

fn fixed_options(options: &Options) -> String {
    let mut text = String::new();
    for (name, value) in [
        ("--repush", options.repush),
        ("--shared-nars", options.shared_nars),
        ("--slow-deletes", options.slow_deletes),
        ("--crashes", options.crashes),
        ("--faults", options.faults),
        ("--upstream", options.upstream),
        ("--repair", options.repair),
        ("--filters", options.filters),
        ("--throttling", options.throttling),
    ] {
        if let Some(on) = value {
            text.push_str(&format!(" {name} {}", if on { "on" } else { "off" }));
        }
    }
    if let Some(steps) = options.steps {
        text.push_str(&format!(" --steps {steps}"));
    }
    text
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let next = AtomicU64::new(args.base);
    let failed = Mutex::new(Vec::new());
    let throttled = Mutex::new(summary::Throttled::default());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= args.base + args.seeds {
                    return;
                }
                let outcome = run_seed(seed, &args.options);
                throttled.lock().unwrap().add(&outcome.throttled);
                let mut problem = !outcome.violations.is_empty();
                if args.check_determinism {
                    let again = run_seed(seed, &args.options);
                    if again.digest != outcome.digest {
                        println!(
                            "seed {seed} NOT DETERMINISTIC: trace digests {:x} and {:x}",
                            outcome.digest, again.digest
                        );
                        problem = true;
                    }
                }
                if args.verbose {
                    println!(
                        "seed {seed}: {} (trace {:x})",
                        outcome.summary, outcome.digest
                    );
                }
                if !outcome.violations.is_empty() {
                    report(&outcome, &args);
                }
                if problem {
                    failed.lock().unwrap().push(seed);
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap();
    failed.sort_unstable();
    let throttled = throttled.into_inner().unwrap();
    if throttled.any() {
        println!("{}", throttled.describe());
    }
    println!(
        "{} seeds from {} in {:.1}s: {} failed{}",
        args.seeds,
        args.base,
        started.elapsed().as_secs_f64(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failed:?})")
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
