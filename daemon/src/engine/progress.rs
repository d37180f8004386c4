//! What the engine is doing right now, readable from other tasks while it works: every NAR
//! being streamed with its progress, how many paths wait at each stage, and the NAR bytes
//! streamed in all, and how long finished NAR uploads took. `narpush status`, the metrics
//! endpoint and `narpush upload`'s progress line read it.
//!
//! The byte counters are atomics, so the blocking NAR producer threads feed them directly;
//! the lists sit behind a `std::sync::Mutex` that is never held across an `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use crate::format::store_path::StorePath;
use crate::sync::lock;

/// Upper bounds of the duration buckets, in seconds: 50 ms to an hour.
const DURATION_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
/// Upper bounds of the size buckets, in bytes: 4 KiB to 64 GiB, by fours.
const SIZE_BUCKETS: [f64; 13] = [
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
    17_179_869_184.0,
    68_719_476_736.0,
];

/// NAR uploads that finished (stored in the cache), as histograms in base units. The
/// histograms are shared handles: the metrics endpoint registers clones of them.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Seconds from the start of the NAR stream to the last part stored.
    pub seconds: Histogram,
    /// Uncompressed NAR size.
    pub nar_bytes: Histogram,
}

impl Default for Finished {
    fn default() -> Finished {
        Finished {
            seconds: Histogram::new(DURATION_BUCKETS),
            nar_bytes: Histogram::new(SIZE_BUCKETS),
        }
    }
}

/// How far one NAR upload has got.
#[derive(Debug)]
pub struct StreamProgress {
    pub path: StorePath,
    pub nar_size: u64,
    pub started: Instant,
    done: AtomicU64,
    total: Arc<AtomicU64>,
}

impl StreamProgress {
    /// Counts `n` more NAR bytes read into compression.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn nar_bytes_done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

/// Paths the engine holds, by what they wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages {
    /// Top paths whose closure is being read from the store.
    pub resolving: u64,
    /// Being looked up in the cache.
    pub checking: u64,
    /// NAR waiting for an upload slot, or being uploaded.
    pub storing: u64,
    /// NAR stored, the narinfo waiting for references to be published; or absent, the NAR
    /// waiting for the lookup of an excluded path in its closure (held, see `graph`).
    pub waiting_for_references: u64,
    /// narinfo being written.
    pub publishing: u64,
}

/// The engine's state for readers.
#[derive(Debug, Default)]
pub struct EngineView {
    streams: Mutex<BTreeMap<StorePath, Arc<StreamProgress>>>,
    stages: Mutex<Stages>,
    nar_bytes: Arc<AtomicU64>,
    upstream_paths: AtomicU64,
    upstream_nar_bytes: AtomicU64,
    finished: Finished,
}

impl EngineView {
    /// Lists the NAR stream of `path` until the returned guard is dropped, however the task
    /// that streams it ends.
    pub fn start_stream(self: &Arc<Self>, path: &StorePath, nar_size: u64) -> Listed {
        let progress = Arc::new(StreamProgress {
            path: path.clone(),
            nar_size,
            started: Instant::now(),
            done: AtomicU64::new(0),
            total: self.nar_bytes.clone(),
        });
        lock(&self.streams).insert(path.clone(), progress.clone());
        Listed {
            view: self.clone(),
            progress,
        }
    }

    /// Every NAR being streamed, by path.
    pub fn streams(&self) -> Vec<Arc<StreamProgress>> {
        lock(&self.streams).values().cloned().collect()
    }

    pub fn set_stages(&self, stages: Stages) {
        *lock(&self.stages) = stages;
    }

    pub fn stages(&self) -> Stages {
        *lock(&self.stages)
    }

    /// NAR bytes streamed since the engine started.
    pub fn nar_bytes(&self) -> u64 {
        self.nar_bytes.load(Ordering::Relaxed)
    }

    /// Records a NAR stored in the cache.
    pub fn stream_finished(&self, nar_size: u64, elapsed: std::time::Duration) {
        self.finished.seconds.observe(elapsed.as_secs_f64());
        // f64 is exact up to 2^53 bytes, far beyond any NAR.
        self.finished.nar_bytes.observe(nar_size as f64);
    }

    /// The histograms of finished NAR uploads.
    pub fn finished(&self) -> &Finished {
        &self.finished
    }

    /// Counts a path not uploaded because an upstream cache serves it.
    pub fn count_upstream(&self, nar_size: u64) {
        self.upstream_paths.fetch_add(1, Ordering::Relaxed);
        self.upstream_nar_bytes
            .fetch_add(nar_size, Ordering::Relaxed);
    }

    /// Paths skipped as upstream's since the engine started, and their NAR bytes.
    pub fn upstream(&self) -> (u64, u64) {
        (
            self.upstream_paths.load(Ordering::Relaxed),
            self.upstream_nar_bytes.load(Ordering::Relaxed),
        )
    }
}

/// A NAR stream listed in the view; dropping it takes the stream off the list.
pub struct Listed {
    view: Arc<EngineView>,
    progress: Arc<StreamProgress>,
}

impl Listed {
    pub fn progress(&self) -> Arc<StreamProgress> {
        self.progress.clone()
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.view.streams).remove(&self.progress.path);
    }
}
