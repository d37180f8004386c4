//! A one-shot upload (`narpush upload`) as the simulation runs it: an engine of its own,
//! given a few tops, whose reports are checked as they come ("done means there", the push
//! filters' verdicts), then gone. It must end within [`RUN_BOUND`].

use std::sync::Arc;
use std::time::Duration;

use narpush::engine::{Engine, EngineConfig, Report};
use narpush::format::store_path::StorePath;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::daemon::Ledger;
use crate::run::{lock, RUN_BOUND};

/// Starts the upload of `tops`' closures with `config`.
pub fn spawn(
    config: Arc<EngineConfig>,
    ledger: Arc<Ledger>,
    tops: Vec<StorePath>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (engine, mut reports, task) =
            Engine::start(config, CancellationToken::new(), Duration::ZERO);
        let mut left = tops.len();
        engine.submit(tops);
        drop(engine);
        let ended = tokio::time::timeout(RUN_BOUND, async {
            while left > 0 {
                match reports.recv().await {
                    Some(Report::TopDone(path)) => {
                        let objects = ledger.bucket.snapshot();
                        lock(&ledger.checker).check_done("upload", path.hash_part(), &objects);
                        left -= 1;
                    }
                    Some(Report::TopFailed { .. } | Report::TopSkipped { .. }) => left -= 1,
                    Some(report) => {
                        crate::verdicts::on_report(&mut lock(&ledger.checker), "upload", &report);
                    }
                    None => break,
                }
            }
        })
        .await;
        if ended.is_err() {
            lock(&ledger.checker).violations.push(format!(
                "hang: a one-shot upload did not end within {RUN_BOUND:?}"
            ));
        }
        let _ = task.await;
    })
}
