//! DAMAGE and REPAIR in the scheduler (`--repair on`), and what a repair must do. The keeper
//! draws from a generator of its own (so that seeds run as before with `--repair off`): before
//! each step it may damage the bucket ([`crate::damage`]) and may start `narpush verify
//! --repair` (the real `narpush::repair::repair`, with or without `--delete-broken` and
//! `--nar-hash`, one at a time) beside the daemons, the one-shot uploads and GC, with the
//! simulated store as the local store.
//!
//! A running repair is watched ([`Watch`]); the invariants it keeps:
//! - **nothing it could make whole is deleted**: every narinfo it deletes was, at some instant
//!   of its run, *doomable*: its closure held a narinfo with a bad NAR or a missing reference
//!   whose path the local store lacks (a signature alone never dooms);
//! - **what it saw is whole after it**, when no damage ran beside it and no upload failed:
//!   every narinfo listed at its start, older than the grace period then, that is still there
//!   has its NAR (of its size; of its bytes with `--nar-hash`), a trusted signature and its
//!   references, unless the path at fault is not in the local store and the repair reports it
//!   unfixable; and nothing it reports "not valid in the local store" is there.
//!
//! That no change but damage breaks a whole narinfo (repair's own writes and deletes
//! included) is the checker's closure check, which every change goes through.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use narpush::format::store_path::StorePath;
use narpush::repair::{self, Repaired};
use narpush::sink::memory::{Bucket, Change, MemorySink, Stored};
use narpush::sink::Sink;
use narpush::store::simulated::SimStore;
use narpush::upstream::{SimulatedCache, Upstream, UpstreamCache, UpstreamUrl};
use tokio::task::JoinHandle;

use crate::checker::Checker;
use crate::damage::{self, Harm};
use crate::rng::Rng;
use crate::run::{engine_config_value, lock, signing_key, RUN_BOUND};
use crate::scenario::Scenario;
use crate::world::World;

/// Percent of steps preceded by a stroke of damage, and by the start of a repair.
const DAMAGE_PERCENT: u64 = 4;
const REPAIR_PERCENT: u64 = 5;

pub struct Keeper {
    rng: Rng,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    /// The keeper of `seed`, if repair is on for it (`fixed`, else drawn for half the seeds).
    pub fn draw(seed: u64, fixed: Option<bool>) -> Option<Keeper> {
        let mut rng = Rng::new(seed ^ 0x7265_7061_6972_2121);
        let drawn = rng.chance(50);
        fixed.unwrap_or(drawn).then(|| Keeper { rng, task: None })
    }

    /// Before a scheduler step: perhaps damage, perhaps a repair.
    pub fn step(
        &mut self,
        bucket: &Arc<Bucket>,
        checker: &Arc<Mutex<Checker>>,
        world: &mut World,
        scenario: &Scenario,
        counts: &mut BTreeMap<&'static str, u64>,
    ) {
        if self.rng.chance(DAMAGE_PERCENT)
            && damage::strike(&mut self.rng, bucket, checker, world, scenario.throttling).is_some()
        {
            *counts.entry("damages").or_default() += 1;
        }
        let idle = self.task.as_ref().is_none_or(|t| t.is_finished());
        if self.rng.chance(REPAIR_PERCENT) && idle {
            *counts.entry("repairs").or_default() += 1;
            self.start(bucket, checker, world, scenario);
        }
    }

    fn start(
        &mut self,
        bucket: &Arc<Bucket>,
        checker: &Arc<Mutex<Checker>>,
        world: &World,
        scenario: &Scenario,
    ) {
        let what = repair::Options {
            delete_broken: self.rng.chance(50),
            dry_run: false,
        };
        let grace = narpush::coexist::MIN_GRACE + Duration::from_secs(self.rng.between(0, 900));
        let nar_hash = self.rng.chance(50);
        // Missing references are asked of the upstream cache (one that serves nothing when
        // the seed has none), so that they are problems repair acts upon, not "unchecked".
        let caches: Vec<UpstreamCache> = world
            .upstream
            .iter()
            .map(|u| UpstreamCache::from(UpstreamUrl::Memory(SimulatedCache(u.bucket.clone()))))
            .collect();
        let mut upstream_keys: Vec<_> = world.upstream.iter().map(|u| u.public_key()).collect();
        upstream_keys.push(signing_key().public_key());
        let mut verify = narpush::verify::Options {
            keys: vec![signing_key().public_key()],
            grace,
            nar_hash,
            upstream: Some(Upstream::new(caches, upstream_keys)),
            now: narpush::clock::now(),
            settled: HashSet::new(),
        };
        let engine = engine_config_value(bucket, scenario, world);
        let sink = Arc::new(Sink::Memory(MemorySink::new(bucket.clone())));
        let bucket = bucket.clone();
        let checker = checker.clone();
        let store = world.store.clone();
        let revived = world.revived.clone();
        self.task = Some(tokio::task::spawn_local(async move {
            {
                let mut c = lock(&checker);
                c.note(format!(
                    "repair starts (delete-broken {}, nar-hash {nar_hash}, grace {}s)",
                    what.delete_broken,
                    grace.as_secs()
                ));
                let watch = Watch::begin(
                    &c,
                    &bucket.snapshot(),
                    store,
                    revived,
                    what,
                    grace,
                    nar_hash,
                );
                c.watch = Some(watch);
            }
            let run = repair::repair(
                &sink,
                "memory://sim",
                &mut verify,
                what,
                engine,
                &|_: &str| {},
            );
            let outcome = tokio::time::timeout(RUN_BOUND, run).await;
            let mut c = lock(&checker);
            let Some(watch) = c.watch.take() else {
                return;
            };
            let figure = match &outcome {
                Ok(Ok(_)) => "ran through",
                Ok(Err(_)) => "stopped",
                Err(_) => "hung",
            };
            *c.repair_figures.entry(figure).or_default() += 1;
            match outcome {
                Err(_) => c
                    .violations
                    .push(format!("hang: a repair did not end within {RUN_BOUND:?}")),
                Ok(Err(e)) => c.note(format!("repair stops: {}", narpush::error_chain(&e))),
                Ok(Ok(repaired)) => watch.end(&mut c, &repaired, &bucket.snapshot()),
            }
        }));
    }

    /// Waits for the repair in progress (the final drain).
    pub async fn finish(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What the checker knows of a repair in progress.
pub struct Watch {
    what: repair::Options,
    grace: Duration,
    nar_hash: bool,
    start: SystemTime,
    /// Every object's LastModified at the start.
    start_modified: BTreeMap<String, SystemTime>,
    damaged_during: bool,
    /// Hash parts of the narinfos doomable now, and at any instant of the run.
    doomable: BTreeSet<String>,
    ever_doomable: BTreeSet<String>,
    store: Arc<SimStore>,
    revived: Arc<Mutex<Vec<String>>>,
    revived_before: usize,
}

fn narinfo_key(hash: &str) -> String {
    format!("{hash}.narinfo")
}

/// Whether the local store holds the path of `hash`.
fn in_store(checker: &Checker, store: &SimStore, hash: &str) -> bool {
    checker
        .paths
        .get(hash)
        .is_some_and(|path| store.info(path).is_some())
}

/// What is wrong with the NAR of the narinfo `key` (its own fault), if anything.
fn nar_fault(checker: &Checker, key: &str, objects: &BTreeMap<String, Stored>) -> Option<String> {
    let needs = checker.needs.get(key)?;
    match objects.get(&needs.url) {
        None => Some(format!("its NAR {} is missing", needs.url)),
        Some(nar) if nar.body.len() as u64 != needs.file_size => Some(format!(
            "its NAR {} has {} bytes, FileSize says {}",
            needs.url,
            nar.body.len(),
            needs.file_size
        )),
        Some(_) if checker.taint.harm(&needs.url) == Some(Harm::Rebytes) => {
            Some(format!("its NAR {} has other bytes", needs.url))
        }
        Some(_) => None,
    }
}

/// The references of the narinfo `key` with no narinfo here and not served upstream.
fn missing_references(
    checker: &Checker,
    key: &str,
    objects: &BTreeMap<String, Stored>,
) -> Vec<String> {
    checker.needs.get(key).map_or_else(Vec::new, |needs| {
        needs
            .references
            .iter()
            .filter(|r| {
                !objects.contains_key(&narinfo_key(r)) && !checker.upstream_serves.contains(*r)
            })
            .cloned()
            .collect()
    })
}

/// Hash parts of the narinfos whose closure holds one with a fault the local store cannot
/// mend: a bad NAR, or a missing reference, whose path it lacks.
fn doomable(
    checker: &Checker,
    store: &SimStore,
    objects: &BTreeMap<String, Stored>,
) -> BTreeSet<String> {
    let mut roots = Vec::new();
    for key in checker.needs.keys() {
        let hash = key.trim_end_matches(".narinfo");
        let bad_nar = nar_fault(checker, key, objects).is_some() && !in_store(checker, store, hash);
        let lost_reference = missing_references(checker, key, objects)
            .iter()
            .any(|r| !in_store(checker, store, r));
        let other_build = checker.taint.other_build(key, objects);
        if bad_nar || lost_reference || other_build {
            roots.push(hash.to_owned());
        }
    }
    let mut doomed = BTreeSet::new();
    while let Some(hash) = roots.pop() {
        if !doomed.insert(hash.clone()) {
            continue;
        }
        for referrer in checker.referrers.get(&hash).into_iter().flatten() {
            if checker.needs.contains_key(referrer) {
                roots.push(referrer.trim_end_matches(".narinfo").to_owned());
            }
        }
    }
    doomed
}

/// The checker's hook after every change: damage, and narinfos written, may make more
/// narinfos doomable while a repair runs.
pub fn after_change(checker: &mut Checker, change: Change<'_>, objects: &BTreeMap<String, Stored>) {
    let Some(mut watch) = checker.watch.take() else {
        return;
    };
    if checker.taint.damaging {
        watch.damaged_during = true;
    }
    if let Change::Put(key) = change {
        if key.ends_with(".narinfo") {
            watch.recompute(checker, objects);
        }
    }
    checker.watch = Some(watch);
}

/// After a stroke of damage is complete (its taints marked, the local store's GC done).
pub fn after_damage(checker: &mut Checker, objects: &BTreeMap<String, Stored>) {
    let Some(mut watch) = checker.watch.take() else {
        return;
    };
    watch.damaged_during = true;
    watch.recompute(checker, objects);
    checker.watch = Some(watch);
}

impl Watch {
    fn begin(
        checker: &Checker,
        objects: &BTreeMap<String, Stored>,
        store: Arc<SimStore>,
        revived: Arc<Mutex<Vec<String>>>,
        what: repair::Options,
        grace: Duration,
        nar_hash: bool,
    ) -> Watch {
        let doomable = doomable(checker, &store, objects);
        let revived_before = lock(&revived).len();
        Watch {
            what,
            grace,
            nar_hash,
            start: narpush::clock::now(),
            start_modified: objects
                .iter()
                .map(|(k, o)| (k.clone(), o.modified))
                .collect(),
            damaged_during: false,
            ever_doomable: doomable.clone(),
            doomable,
            store,
            revived,
            revived_before,
        }
    }

    fn recompute(&mut self, checker: &Checker, objects: &BTreeMap<String, Stored>) {
        self.doomable = doomable(checker, &self.store, objects);
        self.ever_doomable.extend(self.doomable.iter().cloned());
    }

    fn young_at_start(&self, key: &str) -> bool {
        self.start_modified
            .get(key)
            .is_none_or(|m| narpush::clock::age(self.start, *m) < self.grace)
    }

    /// The checks at the end of a repair that ran through.
    fn end(self, checker: &mut Checker, repaired: &Repaired, objects: &BTreeMap<String, Stored>) {
        let summary = &repaired.summary;
        checker.note(format!(
            "repair ends: {} problem(s) before, {} repaired, {} failed, {} unfixable, {} deleted, {} kept",
            summary.problems_before,
            summary.repaired.len(),
            summary.failed.len(),
            summary.unfixable.len(),
            summary.deleted.len(),
            summary.kept.len()
        ));
        let mut figures = vec![
            ("problems seen", summary.problems_before),
            ("paths repaired", summary.repaired.len() as u64),
            ("forced", summary.forced.len() as u64),
            ("unfixable", summary.unfixable.len() as u64),
            ("deleted", summary.deleted.len() as u64),
        ];
        let checked = !self.damaged_during && summary.failed.is_empty();
        figures.push(("checked whole after", u64::from(checked)));
        for (what, n) in figures {
            *checker.repair_figures.entry(what).or_default() += n;
        }
        let mut problems = Vec::new();
        if !self.what.delete_broken && !summary.deleted.is_empty() {
            problems.push(format!(
                "repair: deleted {:?} without --delete-broken",
                summary.deleted
            ));
        }
        for key in summary.deleted.iter().filter(|k| k.ends_with(".narinfo")) {
            if !self
                .ever_doomable
                .contains(key.trim_end_matches(".narinfo"))
            {
                problems.push(format!(
                    "repair: deleted {key}, which it could have made whole"
                ));
            }
        }
        let revived: BTreeSet<String> = lock(&self.revived)[self.revived_before..]
            .iter()
            .cloned()
            .collect();
        if !self.damaged_during {
            problems.extend(self.unfixable_but_here(checker, summary, &revived));
        }
        if !self.damaged_during && summary.failed.is_empty() {
            problems.extend(self.left_broken(checker, summary, objects, &revived));
        }
        for problem in problems {
            checker.violate(problem);
        }
    }

    /// What the repair called not valid in the local store while the store has it.
    fn unfixable_but_here(
        &self,
        checker: &Checker,
        summary: &repair::Summary,
        revived: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, why) in &summary.unfixable {
            if !why.contains("not valid in the local store") {
                continue;
            }
            let path = match key.strip_suffix(".narinfo") {
                Some(hash) => checker.paths.get(hash).cloned(),
                None => StorePath::from_absolute_path(key).ok(),
            };
            let Some(path) = path else {
                continue;
            };
            if !revived.contains(path.hash_part()) && self.store.info(&path).is_some() {
                problems.push(format!(
                    "repair: reported {key} unfixable ({why}) but the local store has it"
                ));
            }
        }
        problems
    }

    /// The narinfos seen at the start (old enough then) still broken at the end, whose fault
    /// the local store could mend or the repair did not report.
    fn left_broken(
        &self,
        checker: &Checker,
        summary: &repair::Summary,
        objects: &BTreeMap<String, Stored>,
        revived: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, needs) in &checker.needs {
            let hash = key.trim_end_matches(".narinfo");
            // A narinfo rewritten (a refresh) while the repair ran may have been listed young.
            let rewritten = objects.get(key).is_some_and(|o| o.modified > self.start);
            if !self.start_modified.contains_key(key)
                || self.young_at_start(key)
                || rewritten
                || crate::damage::reaches_other_build(checker, key, objects)
            {
                continue;
            }
            let mut faults = Vec::new();
            if let Some(fault) = nar_fault(checker, key, objects) {
                let only_bytes = objects
                    .get(&needs.url)
                    .is_some_and(|nar| nar.body.len() as u64 == needs.file_size);
                let seen = objects.get(&needs.url).is_none() || !self.young_at_start(&needs.url);
                if seen && (self.nar_hash || !only_bytes) {
                    faults.push(fault);
                }
            }
            if checker.taint.harm(key) == Some(Harm::ForeignSignature) {
                faults.push("it is signed by a key not trusted".to_owned());
            }
            if !faults.is_empty() && !revived.contains(hash) {
                let here = in_store(checker, &self.store, hash);
                if here || !summary.unfixable.contains_key(key) {
                    problems.push(format!(
                        "repair: left {key} broken ({}); its path is {}in the local store{}",
                        faults.join("; "),
                        if here { "" } else { "not " },
                        if here {
                            ""
                        } else {
                            ", and it is not reported unfixable"
                        }
                    ));
                }
            }
            for reference in missing_references(checker, key, objects) {
                if revived.contains(&reference) {
                    continue;
                }
                let path = checker.paths.get(&reference);
                let here = in_store(checker, &self.store, &reference);
                let reported =
                    path.is_some_and(|p| summary.unfixable.contains_key(&p.to_absolute()));
                if here || !reported {
                    problems.push(format!(
                        "repair: left {key} without its reference {} ({}in the local store{})",
                        narinfo_key(&reference),
                        if here { "" } else { "not " },
                        if here || reported {
                            ""
                        } else {
                            ", not reported unfixable"
                        }
                    ));
                }
            }
        }
        problems
    }
}
