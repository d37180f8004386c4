//! The end of a soak: the faults stop, every daemon runs and drains, a last collection runs,
//! and the bucket is judged — nothing handed over lost, no aged garbage left, stock Nix
//! substitutes everything with `require-sigs`, the invariant whole.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use narpush_e2e::*;

use crate::actors::restart;
use crate::checker::Sampled;
use crate::world::{Tally, World};

/// How long the daemons get to drain once the faults stop.
const DRAIN: Duration = Duration::from_secs(600);

/// How the drain went.
pub struct Settled {
    /// Problems while draining (a daemon that would not start, a wait that failed, …).
    pub problems: Vec<String>,
}

pub fn settle(world: &World) -> Settled {
    let mut problems = Vec::new();
    world.proxy.calm();
    eprintln!("soak: faults off; draining the daemons");
    for writer in &world.writers {
        let mut daemon = writer.daemon.lock().expect("daemon");
        if let Some(pid) = daemon.try_pid() {
            run(std::process::Command::new("kill").args(["-CONT", &pid.to_string()]));
        }
        for _ in 0..3 {
            restart(world, &mut daemon);
            if daemon.is_running() {
                break;
            }
        }
        if !daemon.is_running() {
            let kept = keep_for_diagnosis(&daemon);
            problems.push(format!(
                "a daemon does not start (its directory is kept in {}):\n{}",
                kept.display(),
                last_lines(&daemon.log(), 15)
            ));
        }
    }
    let deadline = Instant::now() + DRAIN;
    for writer in &world.writers {
        if !writer.daemon.lock().expect("daemon").is_running() {
            continue;
        }
        // Spooled requests are taken at start, on change and every 30 s.
        while !daemon::spooled(&writer.spool).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let rejected = daemon::spooled(&writer.spool.join("rejected"));
        if !rejected.is_empty() {
            problems.push(format!("spooled requests rejected: {rejected:?}"));
        }
        let _ = writer.client(&["retry", "--all"]);
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        let waited = writer.client(&["wait", "--timeout", &left.max(1).to_string()]);
        if !waited.status.success() {
            let log = writer.daemon.lock().expect("daemon").log();
            problems.push(format!(
                "`narpush wait` failed: {}\nthe daemon's last log lines:\n{}",
                stderr(&waited),
                last_lines(&log, 15)
            ));
        }
    }
    let collected = world.collect(true);
    if !collected.status.success() {
        problems.push(format!(
            "the last collection failed: {}",
            stderr(&collected)
        ));
    }
    Settled { problems }
}

/// What the run proved.
pub struct Verdict {
    pub acknowledged: usize,
    pub lost: Vec<String>,
    pub garbage_left: Vec<String>,
    pub substituted: Result<usize, String>,
    pub final_invariant: Result<(), String>,
    pub problems: Vec<String>,
    pub violations: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.garbage_left.is_empty()
            && self.substituted.is_ok()
            && self.final_invariant.is_ok()
            && self.problems.is_empty()
            && self.violations == 0
    }
}

pub fn verdict(world: &World, sampled: &Sampled, settled: &Settled) -> Verdict {
    let acked: BTreeSet<String> = world.acked.lock().expect("acked").iter().cloned().collect();
    let lost: Vec<String> = acked
        .iter()
        .filter(|p| {
            !world
                .bucket
                .join(format!("{}.narinfo", hash_part(p)))
                .exists()
        })
        .cloned()
        .collect();
    let garbage_left: Vec<String> = world
        .garbage_keys
        .iter()
        .filter(|key| world.bucket.join(key).exists())
        .cloned()
        .collect();
    let bucket = world.bucket.clone();
    let final_invariant = std::panic::catch_unwind(move || assert_closure_invariant(&bucket))
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "the invariant check panicked".to_owned())
        });
    let substituted = substitute_all(world, &acked);
    let mut problems = settled.problems.clone();
    if Tally::get(&world.tally.not_handed_over) > 0 {
        problems.push("hooks that could neither hand over nor spool".to_owned());
    }
    if Tally::get(&world.tally.failed_restarts) > 0 {
        problems.push(format!(
            "{} daemon restart(s) failed",
            Tally::get(&world.tally.failed_restarts)
        ));
    }
    Verdict {
        acknowledged: acked.len(),
        lost,
        garbage_left,
        substituted,
        final_invariant,
        problems,
        violations: sampled.violations.len(),
    }
}

/// Substitutes every acknowledged path into a fresh store from the bucket, signatures required;
/// returns how many store paths arrived.
fn substitute_all(world: &World, acked: &BTreeSet<String>) -> Result<usize, String> {
    if acked.is_empty() {
        return Err("nothing was handed over".to_owned());
    }
    let paths: Vec<String> = acked.iter().cloned().collect();
    let cache = format!("file://{}", world.bucket.display());
    let (store, output) = substitute(&cache, &world.public_key, &paths);
    if !output.status.success() {
        return Err(last_lines(&stderr(&output), 10));
    }
    let wanted = closure(&paths);
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|p| !store.path().join(p.trim_start_matches('/')).exists())
        .collect();
    if missing.is_empty() {
        Ok(wanted.len())
    } else {
        Err(format!("not substituted: {missing:?}"))
    }
}

pub fn print_figures(world: &World, run: &str, sampled: &Sampled, verdict: &Verdict) {
    let t = &world.tally;
    let n = Tally::get;
    let faults = world.proxy.injected();
    let fault_list: Vec<String> = faults.iter().map(|(k, v)| format!("{k:?} {v}")).collect();
    let requests: u64 = world.proxy.requests().values().sum();
    println!("soak figures ({run}):");
    println!(
        "  paths acknowledged   {} (builds handed over by socket {}, by spool {}; pushes {} of which {} refused)",
        verdict.acknowledged,
        n(&t.acked_by_socket),
        n(&t.acked_by_spool),
        n(&t.pushes),
        n(&t.pushes_refused)
    );
    println!(
        "  builds               {} ({} failed)",
        n(&t.builds),
        n(&t.builds_failed)
    );
    println!(
        "  faults injected      {} of {requests} requests: {}",
        faults.values().sum::<u64>(),
        fault_list.join(", ")
    );
    println!(
        "  chaos                kills {}, stops {}, disk-full episodes {}, failed restarts {}",
        n(&t.kills),
        n(&t.stops),
        n(&t.disk_full_episodes),
        n(&t.failed_restarts)
    );
    println!(
        "  collections          {} ({} stopped by faults), {} objects deleted; retries {}",
        n(&t.collections),
        n(&t.collections_failed),
        n(&t.collected_objects),
        n(&t.retries)
    );
    println!(
        "  invariant            {} passes, {} narinfos checked, violations {}",
        sampled.passes,
        sampled.checked,
        sampled.violations.len()
    );
    println!("  lost                 {}", verdict.lost.len());
    println!("  aged garbage left    {}", verdict.garbage_left.len());
    match &verdict.substituted {
        Ok(count) => println!("  substituted          {count} store paths, signatures required"),
        Err(why) => println!("  substituted          NO: {why}"),
    }
    if let Err(why) = &verdict.final_invariant {
        println!("  final invariant      BROKEN: {why}");
    }
    for violation in sampled.violations.iter().take(10) {
        println!("  violation: {violation}");
    }
    for path in verdict.lost.iter().take(10) {
        println!("  lost: {path}");
    }
    for key in verdict.garbage_left.iter().take(10) {
        println!("  garbage left: {key}");
    }
    for problem in &verdict.problems {
        println!("  problem: {problem}");
    }
}

/// The last `n` lines of `text`, each cut at 300 characters.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| match line.char_indices().nth(300) {
            Some((end, _)) => format!("{}…", &line[..end]),
            None => (*line).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Copies the directory of a daemon that cannot start (state, log, config) out of the way of
/// the cleanup, and returns where.
fn keep_for_diagnosis(daemon: &narpush_e2e::daemon::Daemon) -> std::path::PathBuf {
    let kept = std::env::temp_dir().join(format!("narpush-soak-kept-{}", unique("daemon")));
    let _ = std::process::Command::new("cp")
        .arg("-a")
        .arg(daemon.dir.path())
        .arg(&kept)
        .status();
    kept
}
