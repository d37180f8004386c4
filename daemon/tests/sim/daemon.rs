//! A daemon as the simulation runs it: the real queue (sled, in a directory of its own) and
//! the real engine, joined by the daemon pipeline's bookkeeping (take due entries, submit
//! them, record each report as done, retry later, or failed). A crash aborts both where they
//! are; a restart opens the same queue again, puts `uploading` entries back to pending and
//! starts a fresh engine (an empty known-present set).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use narpush::engine::{Engine, EngineConfig, Report, Reports};
use narpush::format::store_path::StorePath;
use narpush::queue::{now_ms, NewPath, Outcome, Queue, SkipRecord, State};
use narpush::sink::memory::Bucket;
use narpush::sink::ErrorClass;
use narpush_protocol::Source;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checker::Checker;

const MAX_ATTEMPTS: u32 = 6;
const RETRY_INITIAL: Duration = Duration::from_secs(20);
const RETRY_MAX: Duration = Duration::from_secs(600);
const BATCH_WINDOW: Duration = Duration::from_millis(500);

/// What the daemons share with the scheduler.
pub struct Ledger {
    pub checker: Arc<Mutex<Checker>>,
    pub bucket: Arc<Bucket>,
    /// Paths each daemon acknowledged (its queue flushed them), by daemon name.
    pub acked: Mutex<BTreeMap<String, BTreeSet<StorePath>>>,
}

pub enum Command {
    Push(Vec<StorePath>),
    Retry,
    Unfinished(tokio::sync::oneshot::Sender<usize>),
}

pub struct Daemon {
    pub name: String,
    dir: PathBuf,
    config: Arc<EngineConfig>,
    ledger: Arc<Ledger>,
    commands: mpsc::UnboundedSender<Command>,
    actor: JoinHandle<()>,
    engine: JoinHandle<()>,
    /// Tops pushed again and again (a CI job re-pushing its result).
    pub favourites: Vec<StorePath>,
}

impl Daemon {
    pub fn start(
        name: String,
        dir: PathBuf,
        config: Arc<EngineConfig>,
        ledger: Arc<Ledger>,
    ) -> Daemon {
        // Opening puts `uploading` entries back to pending, as at every start.
        let queue = open(&dir);
        let (engine, reports, engine_task) =
            Engine::start(config.clone(), CancellationToken::new(), Duration::ZERO);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let actor = tokio::spawn(run(
            name.clone(),
            queue,
            engine,
            reports,
            commands_rx,
            ledger.clone(),
        ));
        Daemon {
            name,
            dir,
            config,
            ledger,
            commands,
            actor,
            engine: engine_task,
            favourites: Vec::new(),
        }
    }

    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// kill -9 and start again.
    pub async fn crash_and_restart(self) -> Daemon {
        self.actor.abort();
        self.engine.abort();
        let _ = self.actor.await;
        let _ = self.engine.await;
        let favourites = self.favourites;
        let mut daemon = Daemon::start(self.name, self.dir, self.config, self.ledger);
        daemon.favourites = favourites;
        daemon
    }

    /// How many entries are pending or uploading (`None`: the daemon does not answer).
    pub async fn unfinished(&self) -> Option<usize> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Unfinished(reply));
        answer.await.ok()
    }

    pub async fn stop(self) -> PathBuf {
        self.actor.abort();
        self.engine.abort();
        let _ = self.actor.await;
        let _ = self.engine.await;
        self.dir
    }
}

async fn run(
    name: String,
    queue: Queue,
    engine: Engine,
    mut reports: Reports,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ledger: Arc<Ledger>,
) {
    let mut take_at = Some(Instant::now());
    loop {
        tokio::select! {
            report = reports.recv() => match report {
                Some(report) => {
                    if let Some(at) = record(&name, &queue, &ledger, report) {
                        take_at = Some(take_at.map_or(at, |t| t.min(at)));
                    }
                }
                None => return,
            },
            command = commands.recv() => match command {
                Some(Command::Push(paths)) => {
                    let new: Vec<NewPath> = paths
                        .iter()
                        .map(|path| NewPath {
                            path: path.clone(),
                            source: Source::Hook,
                            drv: None,
                            realisations: Vec::new(),
                        })
                        .collect();
                    if queue.enqueue(&new).await.is_ok() {
                        lock(&ledger.acked)
                            .entry(name.clone())
                            .or_default()
                            .extend(paths);
                        let gather = Instant::now() + BATCH_WINDOW;
                        take_at = Some(take_at.map_or(gather, |t| t.min(gather)));
                    }
                }
                Some(Command::Unfinished(reply)) => {
                    let count = queue.entries().map_or(usize::MAX, |entries| {
                        entries
                            .iter()
                            .filter(|e| matches!(e.state, State::Pending | State::Uploading))
                            .count()
                    });
                    let _ = reply.send(count);
                }
                Some(Command::Retry) => {
                    let _ = queue.retry(true, &[]).await;
                    take_at = Some(Instant::now());
                }
                None => return,
            },
            () = narpush::sleep_until(take_at) => {
                take_at = take_due(&queue, &engine).await;
            }
        }
    }
}

/// Opens the queue at `dir`; sled's flusher thread of a dropped handle may hold the lock for
/// a moment, so this waits for it (in real time: virtual time stands still meanwhile).
fn open(dir: &std::path::Path) -> Queue {
    let mut tries = 0;
    loop {
        match Queue::open(dir) {
            Ok(queue) => return queue,
            Err(e) if tries >= 500 => panic!("the queue does not open: {e}"),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn take_due(queue: &Queue, engine: &Engine) -> Option<Instant> {
    let now = now_ms();
    // The simulated daemon never stops on a fatal error, so no entry is a suspect of the
    // quarantine and whether the engine is idle does not matter.
    let taken = queue.take_due(now, 1000, MAX_ATTEMPTS, true);
    if !taken.entries.is_empty() {
        queue.flush().await.expect("the queue flushes");
        engine.submit(taken.entries.into_iter().map(|e| e.path).collect());
    }
    queue
        .next_due_ms()
        .expect("the queue reads")
        .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now)))
}

/// Books one report; returns when a path that goes back to pending comes due.
fn record(name: &str, queue: &Queue, ledger: &Ledger, report: Report) -> Option<Instant> {
    crate::verdicts::on_report(&mut lock(&ledger.checker), name, &report);
    let (path, outcome) = match report {
        Report::TopSkipped { top, reason } => (
            top,
            Outcome::Skipped(SkipRecord {
                kind: reason.kind().to_owned(),
                reason: reason.to_string(),
            }),
        ),
        Report::TopDone(path) => {
            let objects = ledger.bucket.snapshot();
            lock(&ledger.checker).check_done(name, path.hash_part(), &objects);
            (path, Outcome::Done)
        }
        Report::TopFailed { top, failure } => {
            let attempts = queue
                .get(&top)
                .ok()
                .flatten()
                .map_or(1, |e| e.attempts.max(1));
            let outcome = match failure.class {
                ErrorClass::Permanent => Outcome::Failed {
                    error: failure.message,
                },
                ErrorClass::Transient if attempts >= MAX_ATTEMPTS => Outcome::Failed {
                    error: format!("gave up after {attempts} attempts: {}", failure.message),
                },
                ErrorClass::Transient => {
                    let delay = RETRY_INITIAL
                        .saturating_mul(1 << attempts.min(10))
                        .min(RETRY_MAX)
                        .max(failure.retry_after.unwrap_or_default());
                    Outcome::RetryAt {
                        at_ms: now_ms() + delay.as_millis() as u64,
                        error: failure.message,
                    }
                }
            };
            (top, outcome)
        }
        _ => return None,
    };
    let retry_at = match &outcome {
        Outcome::RetryAt { at_ms, .. } => {
            Some(Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms())))
        }
        _ => None,
    };
    queue.finish(&path, &outcome).expect("the queue records");
    retry_at
}

/// After the run: what is still unfinished in the queue at `dir`, and acknowledged paths that
/// are neither done, skipped nor failed with a reason, or whose end the push filters' rules
/// (`verdicts`) contradict.
pub fn final_check(
    dir: &std::path::Path,
    acked: &BTreeSet<StorePath>,
    verdicts: &crate::verdicts::Verdicts,
) -> (usize, Vec<String>) {
    let queue = open(dir);
    let entries = queue.entries().expect("the queue reads");
    let unfinished = entries
        .iter()
        .filter(|e| matches!(e.state, State::Pending | State::Uploading))
        .count();
    let by_path: BTreeMap<String, _> = entries.iter().map(|e| (e.path.to_absolute(), e)).collect();
    let mut problems = Vec::new();
    for path in acked {
        let entry = by_path.get(&path.to_absolute());
        problems.extend(entry.and_then(|e| verdicts.judge_entry(e)));
        match entry {
            None => problems.push(format!(
                "lost: {path} was acknowledged and is not in the queue"
            )),
            Some(e) if matches!(e.state, State::Done | State::Skipped) => {}
            Some(e) if e.state == State::Failed => {
                if e.last_error.as_deref().is_none_or(str::is_empty) {
                    problems.push(format!("{path} failed without a reason"));
                }
            }
            Some(e) => problems.push(format!("hang: {path} is still {:?}", e.state)),
        }
    }
    (unfinished, problems)
}
