//! One seed's run: set up the world, then let the scheduler take its steps (builds pushed to
//! daemons, pushes of known tops, one-shot uploads, GC runs, retries, crashes), each followed
//! by a random pause of virtual time, and stop at the first violation. At the end, with the
//! faults off and no GC, every daemon must finish its queue within a bound (no hang), and
//! every path it acknowledged must be done, or failed with a reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use narpush::engine::compress::Compression;
use narpush::engine::stream::StreamSettings;
use narpush::engine::EngineConfig;
use narpush::format::signing::SigningKey;
use narpush::format::store_path::StorePath;
use narpush::gc::{self, Policy};
use narpush::sink::memory::{Bucket, MemorySink};
use narpush::sink::Sink;
use narpush::upstream::{SimulatedCache, Upstream, UpstreamCache, UpstreamUrl};
use tokio::task::JoinHandle;

use crate::checker::Checker;
use crate::contention::Contention;
use crate::daemon::{final_check, Command, Daemon, Ledger};
use crate::filters::Filtering;
use crate::rng::Rng;
use crate::scenario::{Options, Scenario};
use crate::world::World;

/// Virtual 2026-01-01T00:00:00Z.
const EPOCH_SECS: u64 = 1_767_225_600;
/// The longest a GC run or a one-shot upload may take.
pub const RUN_BOUND: Duration = Duration::from_secs(3600);
/// The longest the final drain may take.
const DRAIN_BOUND: Duration = Duration::from_secs(12 * 3600);

pub struct Outcome {
    pub seed: u64,
    pub scenario: Scenario,
    pub violations: Vec<String>,
    pub history: Vec<String>,
    pub digest: u64,
    pub summary: String,
    /// Throttled writes and how they were judged, for the run's totals.
    pub throttled: crate::summary::Throttled,
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn run_seed(seed: u64, options: &Options) -> Outcome {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    // `select!` picks among ready branches at random: from the seed, where tokio allows it
    // (`--cfg tokio_unstable`, as scripts/simulate builds), so that a seed replays exactly.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("a runtime");
    let dir = tempfile::Builder::new()
        .prefix("narpush-sim-")
        .tempdir_in(state_root())
        .expect("a state directory");
    // GC's future is not `Send` (its closures borrow across awaits): it runs as a local task.
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&runtime, simulate(seed, options, dir.path()));
    drop(local);
    drop(runtime);
    drop(dir);
    narpush::store::simulated::install(None);
    narpush::clock::set_virtual(None);
    narpush::random::seeded::install(None);
    outcome
}

/// Queues live on tmpfs when there is one: their syncs then cost nothing.
fn state_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// The simulation's signing key, the same every run (narinfos are then the same bytes).
pub fn signing_key() -> SigningKey {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    SigningKey::parse(&format!(
        "sim-1:{}",
        base64::engine::general_purpose::STANDARD.encode(key.to_keypair_bytes())
    ))
    .expect("a valid key")
}

/// An uploader's configuration; with contention, its announcement is drawn there.
fn engine_config(
    bucket: &Arc<Bucket>,
    scenario: &Scenario,
    world: &World,
    contention: Option<&mut Contention>,
) -> Arc<EngineConfig> {
    let config = engine_config_value(bucket, scenario, world);
    Arc::new(match contention {
        Some(contention) => config.with_cache_info(contention.cache_info()),
        None => config,
    })
}

pub fn engine_config_value(
    bucket: &Arc<Bucket>,
    scenario: &Scenario,
    world: &World,
) -> EngineConfig {
    let sink = Arc::new(Sink::Memory(MemorySink::new(bucket.clone())));
    let mut stream = StreamSettings::new(Compression::Zstd, 1);
    stream.workers = 0;
    let mut config = EngineConfig::new(
        sink,
        "memory://sim".to_owned(),
        Arc::new(vec![signing_key()]),
        stream,
        2,
        8,
        true,
    )
    .with_refresh_after(scenario.refresh_after);
    if let Some(upstream) = &world.upstream {
        let cache =
            UpstreamCache::from(UpstreamUrl::Memory(SimulatedCache(upstream.bucket.clone())));
        config = config.with_upstream(Upstream::new(vec![cache], vec![upstream.public_key()]));
    }
    if let Some(filters) = &scenario.filters {
        config = config.with_filter(filters.push_filter());
    }
    config
}

struct Sim {
    rng: Rng,
    scenario: Scenario,
    world: World,
    bucket: Arc<Bucket>,
    ledger: Arc<Ledger>,
    daemons: Vec<Daemon>,
    gc: Option<JoinHandle<()>>,
    one_shots: Vec<JoinHandle<()>>,
    /// Per daemon: when its favourites are pushed next.
    repush_at: Vec<tokio::time::Instant>,
    counts: BTreeMap<&'static str, u64>,
    /// Damage and repairs (`--repair on`).
    keeper: Option<crate::repair::Keeper>,
    /// Writers meeting on keys (`--throttling on`).
    contention: Option<Contention>,
}

async fn simulate(seed: u64, options: &Options, dir: &std::path::Path) -> Outcome {
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS);
    narpush::clock::set_virtual(Some(epoch));
    // Writer ids, NAR names and jitter from the seed.
    narpush::random::seeded::install(Some(seed));
    let mut rng = Rng::new(seed);
    let mut later = Rng::new(seed ^ 0x7570_7374_7265_616d);
    let mut filtering = Rng::new(seed ^ 0x6669_6c74_6572_7321);
    let mut scenario = Scenario::draw(&mut rng, &mut later, &mut filtering, options);
    let keeper = crate::repair::Keeper::draw(seed, options.repair);
    scenario.repair = keeper.is_some();
    let mut contention = Contention::draw(seed, options.throttling);
    scenario.throttling = contention.is_some();
    if scenario.throttling {
        scenario.faults.key_write_interval = Some(crate::contention::KEY_WRITE_INTERVAL);
    }
    let mut world = World::default();
    if scenario.upstream {
        let mut faults = scenario.faults.clone();
        faults.seed = later.fork();
        faults.slow_delete_ppm = 0;
        if scenario.filters.is_some() {
            // A 403 means "not there" from an upstream (coexist.rs): it would rightly skip an
            // excluded path the upstream serves, against the verdicts (crate::verdicts).
            faults.forbidden_ppm = 0;
        }
        world.upstream = Some(crate::upstream::UpstreamCache::new(faults, later.fork()));
    }
    narpush::store::simulated::install(Some(world.store.clone()));
    let bucket = Bucket::new(scenario.faults.clone());
    let checker = Arc::new(Mutex::new(Checker::new(epoch)));
    if let Some(set) = &scenario.filters {
        let verdicts = lock(&checker).verdicts.clone();
        *crate::verdicts::lock(&verdicts) = crate::verdicts::Verdicts::new(set.clone());
        world.filtering = Some(Filtering::new(filtering.fork(), verdicts));
    }
    let observer = checker.clone();
    bucket.set_observer(Some(Box::new(move |change, objects| {
        lock(&observer).observe(change, objects);
    })));
    let ledger = Arc::new(Ledger {
        checker: checker.clone(),
        bucket: bucket.clone(),
        acked: Mutex::new(BTreeMap::new()),
    });
    let daemons = (0..scenario.daemons)
        .map(|i| {
            Daemon::start(
                format!("daemon{i}"),
                dir.join(format!("daemon{i}")),
                engine_config(&bucket, &scenario, &world, contention.as_mut()),
                ledger.clone(),
            )
        })
        .collect();
    let now = tokio::time::Instant::now();
    let mut sim = Sim {
        rng,
        repush_at: vec![now + scenario.repush_every; scenario.daemons],
        scenario,
        world,
        bucket,
        ledger,
        daemons,
        gc: None,
        one_shots: Vec::new(),
        counts: BTreeMap::new(),
        keeper,
        contention,
    };
    for _ in 0..sim.scenario.steps {
        sim.step().await;
        if !lock(&checker).violations.is_empty() {
            break;
        }
    }
    if lock(&checker).violations.is_empty() {
        sim.drain(dir).await;
    }
    sim.finish(seed, &checker)
}

impl Sim {
    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    async fn step(&mut self) {
        self.repush_due();
        if let Some(keeper) = &mut self.keeper {
            let checker = &self.ledger.checker;
            keeper.step(
                &self.bucket,
                checker,
                &mut self.world,
                &self.scenario,
                &mut self.counts,
            );
        }
        let daemon = self.rng.below(self.daemons.len() as u64) as usize;
        match self.rng.below(100) {
            0..=49 => {
                let top = self.world.build(&mut self.rng, self.scenario.shared_nars);
                if let Some(upstream) = &self.world.upstream {
                    lock(&self.ledger.checker).upstream_serves = upstream.served.clone();
                }
                let d = &mut self.daemons[daemon];
                if d.favourites.len() < 2 {
                    d.favourites.push(top.clone());
                }
                d.send(Command::Push(vec![top.clone()]));
                self.count("builds");
                self.burst(daemon, top);
            }
            50..=59 if !self.world.paths.is_empty() => {
                // A path built again (or pushed by hand), whatever its age.
                let path = self.rng.pick(&self.world.paths).clone();
                // Built again: back in the local store if its GC had taken it.
                self.world.revive(&path);
                self.daemons[daemon].send(Command::Push(vec![path]));
                self.count("rebuilds");
            }
            60..=67 if !self.world.paths.is_empty() => self.one_shot(),
            68..=77 => self.start_gc(),
            78..=81 => {
                self.daemons[daemon].send(Command::Retry);
                self.count("retries");
            }
            82..=84 if self.scenario.crashes => {
                let d = self.daemons.remove(daemon);
                let d = d.crash_and_restart().await;
                self.daemons.insert(daemon, d);
                self.count("crashes");
            }
            _ => {}
        }
        let pause = if self.rng.chance(50) {
            Duration::from_millis(self.rng.between(50, 3000))
        } else {
            Duration::from_secs(self.rng.between(5, 120))
        };
        tokio::time::sleep(pause).await;
    }

    /// With contention, perhaps others push `top` at once too (besides daemon `pushed`).
    fn burst(&mut self, pushed: usize, top: StorePath) {
        let Some(burst) = self.contention.as_mut().and_then(Contention::burst) else {
            return;
        };
        self.count("bursts");
        if burst.daemons {
            for (i, d) in self.daemons.iter().enumerate() {
                if i != pushed {
                    d.send(Command::Push(vec![top.clone()]));
                }
            }
        }
        for _ in 0..burst.one_shots {
            self.upload(vec![top.clone()]);
        }
    }

    /// An uploader's configuration (its announcement drawn with contention).
    fn engine_config(&mut self) -> Arc<EngineConfig> {
        engine_config(
            &self.bucket,
            &self.scenario,
            &self.world,
            self.contention.as_mut(),
        )
    }

    /// Daemons whose time has come push their favourites again.
    fn repush_due(&mut self) {
        if !self.scenario.repush {
            return;
        }
        let now = tokio::time::Instant::now();
        for (i, at) in self.repush_at.iter_mut().enumerate() {
            if *at <= now {
                *at = now + self.scenario.repush_every;
                let d = &self.daemons[i];
                if !d.favourites.is_empty() {
                    d.send(Command::Push(d.favourites.clone()));
                    *self.counts.entry("repushes").or_default() += 1;
                }
            }
        }
    }

    /// `narpush upload` of a few paths' closures, in an engine of its own.
    fn one_shot(&mut self) {
        let tops: Vec<StorePath> = (0..self.rng.between(1, 3))
            .map(|_| self.rng.pick(&self.world.paths).clone())
            .collect();
        self.upload(tops);
    }

    /// `narpush upload` of `tops`' closures, in an engine of its own.
    fn upload(&mut self, tops: Vec<StorePath>) {
        let config = self.engine_config();
        let ledger = self.ledger.clone();
        self.count("one-shot uploads");
        self.one_shots
            .push(crate::upload::spawn(config, ledger, tops));
    }

    fn start_gc(&mut self) {
        if self.gc.as_ref().is_some_and(|gc| !gc.is_finished()) {
            return;
        }
        self.count("gc runs");
        let sink = Sink::Memory(MemorySink::new(self.bucket.clone()));
        let policy = Policy {
            older_than: self.scenario.older_than,
            grace: self.scenario.grace,
            keep: Vec::new(),
        };
        gc::check_policy(&policy, self.scenario.refresh_after).expect("a safe policy");
        let checker = self.ledger.checker.clone();
        self.gc = Some(tokio::task::spawn_local(async move {
            lock(&checker).note("gc starts".to_owned());
            let run = tokio::time::timeout(RUN_BOUND, gc::collect(&sink, &policy, false, &|_| {}));
            let what = match run.await {
                Err(_) => {
                    lock(&checker)
                        .violations
                        .push(format!("hang: gc did not end within {RUN_BOUND:?}"));
                    return;
                }
                Ok(Ok(plan)) => {
                    format!("gc ends: deleted {} objects", plan.summary.deleted.objects)
                }
                Ok(Err(e)) => format!("gc stops: {e}"),
            };
            lock(&checker).note(what);
        }));
    }

    /// Faults off, no GC: every daemon must finish its queue.
    async fn drain(&mut self, dir: &std::path::Path) {
        self.bucket.set_faults(self.scenario.quiet());
        let start = tokio::time::Instant::now();
        if let Some(gc) = self.gc.take() {
            let _ = gc.await;
        }
        for one_shot in std::mem::take(&mut self.one_shots) {
            let _ = one_shot.await;
        }
        if let Some(keeper) = &mut self.keeper {
            keeper.finish().await;
        }
        loop {
            let mut busy = 0;
            for d in &self.daemons {
                busy += d.unfinished().await.unwrap_or(usize::MAX);
            }
            if busy == 0 {
                break;
            }
            if start.elapsed() > DRAIN_BOUND {
                lock(&self.ledger.checker).violations.push(format!(
                    "hang: {busy} entries still unfinished {DRAIN_BOUND:?} after the faults stopped"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let acked = lock(&self.ledger.acked).clone();
        let verdicts = lock(&self.ledger.checker).verdicts.clone();
        for d in std::mem::take(&mut self.daemons) {
            let name = d.name.clone();
            d.stop().await;
            let (_, problems) = final_check(
                &dir.join(&name),
                &acked.get(&name).cloned().unwrap_or_default(),
                &crate::verdicts::lock(&verdicts),
            );
            lock(&self.ledger.checker)
                .violations
                .extend(problems.into_iter().map(|p| format!("{name}: {p}")));
        }
    }

    fn finish(self, seed: u64, checker: &Arc<Mutex<Checker>>) -> Outcome {
        for gc in self.gc.iter().chain(&self.one_shots) {
            gc.abort();
        }
        if let Some(keeper) = &self.keeper {
            keeper.abort();
        }
        let checker = lock(checker);
        let keys: Vec<String> = checker
            .violations
            .first()
            .map(|v| {
                v.split_whitespace()
                    .map(|w| w.trim_end_matches([',', ':']))
                    .filter(|w| w.ends_with(".narinfo") || w.starts_with("nar/"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let counts = self.bucket.counts();
        let summary =
            crate::summary::line(&self.counts, &counts, &checker, &self.world, &self.scenario);
        Outcome {
            seed,
            scenario: self.scenario,
            violations: checker.violations.clone(),
            history: checker.history(&keys),
            digest: checker.digest,
            summary,
            throttled: crate::summary::Throttled::of(&counts),
        }
    }
}
