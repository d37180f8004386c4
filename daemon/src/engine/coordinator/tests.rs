//! The coordinator's own bookkeeping of held tops, driven directly (its tasks joined by hand)
//! on tokio's paused clock against a directory cache: which paths count as in flight, and
//! what a held top's realisations may rely on.

use std::path::Path;

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::engine::compress::Compression;
use crate::engine::presence::KNOWN_FOR;
use crate::engine::realisations;
use crate::engine::stream::StreamSettings;
use crate::format::hash::Sha256;
use crate::format::realisation::{DrvOutputId, Realisation};
use crate::format::signing::SigningKey;
use crate::layout;
use crate::sink::{Sink, TargetUrl};

fn path(name: &str) -> StorePath {
    StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-{name}")).unwrap()
}

fn id(n: u32) -> DrvOutputId {
    let mut hash = [0; 32];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    DrvOutputId {
        drv_hash: Sha256(hash),
        output: "out".to_owned(),
    }
}

fn realisation(n: u32, out: &StorePath, deps: &[(u32, &StorePath)]) -> Realisation {
    Realisation {
        id: id(n),
        out_path: out.clone(),
        signatures: BTreeSet::new(),
        dependent_realisations: deps
            .iter()
            .map(|(d, p)| (id(*d), (*p).clone()))
            .collect::<BTreeMap<_, _>>(),
        drv: None,
    }
}

fn info(path: &StorePath) -> PathInfo {
    PathInfo {
        path: path.clone(),
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 3,
        references: Vec::new(),
        deriver: None,
        ca: None,
        signatures: Vec::new(),
    }
}

async fn config(dir: &Path, key: SigningKey) -> Arc<EngineConfig> {
    let url = TargetUrl::parse(&format!("file://{}", dir.display())).unwrap();
    let sink = Sink::open(&url, Duration::from_secs(60)).await.unwrap();
    Arc::new(EngineConfig::new(
        Arc::new(sink),
        url.to_string(),
        Arc::new(vec![key]),
        StreamSettings::new(Compression::None, 0),
        1,
        4,
        false,
    ))
}

/// A coordinator not running: the test feeds it commands and reports, and joins its tasks.
async fn coordinator(dir: &Path) -> (Coordinator, mpsc::UnboundedReceiver<Report>) {
    let key = SigningKey::generate("ours-1").unwrap();
    let (_commands, commands_rx) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let coordinator = Coordinator::new(
        config(dir, key).await,
        commands_rx,
        reports_tx,
        Arc::new(EngineView::default()),
    );
    (coordinator, reports)
}

fn uploaded(path: &StorePath) -> Report {
    Report::Uploaded {
        path: path.clone(),
        nar_size: 3,
        file_size: 3,
    }
}

/// Joins every task the coordinator started (and those their results start).
async fn settle(coordinator: &mut Coordinator) {
    while let Some(joined) = coordinator.tasks.join_next_with_id().await {
        coordinator.on_joined(joined);
    }
}

fn top_done(reports: &mut mpsc::UnboundedReceiver<Report>, top: &StorePath) -> bool {
    let mut done = false;
    while let Ok(report) = reports.try_recv() {
        done |= matches!(&report, Report::TopDone(t) if t == top);
    }
    done
}

/// Top `t` is uploaded and held: its realisation depends on `d`'s, whose output `d` this
/// engine is still uploading. Returns the coordinator in that state.
async fn held_top_waiting_for_d(
    dir: &Path,
    t: &StorePath,
    d: &StorePath,
) -> (Coordinator, mpsc::UnboundedReceiver<Report>) {
    let (mut c, mut reports) = coordinator(dir).await;
    c.on_command(Command::Realisations(vec![
        realisation(1, t, &[(2, d)]),
        realisation(2, d, &[]),
    ]));
    // `d` is in the graph (its upload runs); its actions are left undone.
    let _ = c
        .graph
        .add(vec![info(d)], std::slice::from_ref(d), |_| false);
    c.report(uploaded(t));
    c.report(Report::TopDone(t.clone()));
    settle(&mut c).await;
    assert!(!top_done(&mut reports, t), "t waits for its realisation");
    (c, reports)
}

/// `d` uploaded: its realisation, then `t`'s, are published; `t` must be reported done.
async fn finish_d(c: &mut Coordinator, d: &StorePath) {
    c.report(uploaded(d));
    c.report(Report::TopDone(d.clone()));
    settle(c).await;
}

#[tokio::test(start_paused = true)]
async fn a_held_top_is_released_after_its_known_present_trust_ended() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = (path("t"), path("d"));
    let (mut c, mut reports) = held_top_waiting_for_d(dir.path(), &t, &d).await;
    tokio::time::advance(KNOWN_FOR + Duration::from_secs(1)).await;
    finish_d(&mut c, &d).await;
    assert!(top_done(&mut reports, &t), "t is reported done");
    assert!(dir.path().join(layout::realisation_key(&id(1))).exists());
}

#[tokio::test(start_paused = true)]
async fn a_held_top_is_released_after_a_reload_with_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = (path("t"), path("d"));
    let (mut c, mut reports) = held_top_waiting_for_d(dir.path(), &t, &d).await;
    let rekeyed = config(dir.path(), SigningKey::generate("ours-2").unwrap()).await;
    c.on_command(Command::Reconfigure(rekeyed));
    finish_d(&mut c, &d).await;
    assert!(top_done(&mut reports, &t), "t is reported done");
}

/// More realisations than the bound, all of paths this engine does not hold (queued, not
/// submitted yet).
fn flood() -> Command {
    let count = u32::try_from(realisations::MAX_PENDING + 1).unwrap();
    Command::Realisations(
        (100..100 + count)
            .map(|n| realisation(n, &path(&format!("queued-{n}")), &[]))
            .collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_top_in_flight_keeps_its_realisation_when_the_pending_set_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let t = path("t");
    let (mut c, mut reports) = coordinator(dir.path()).await;
    c.on_command(Command::Realisations(vec![realisation(1, &t, &[])]));
    c.on_command(Command::SubmitResolved(
        vec![info(&t)],
        vec![t.clone()],
        Vec::new(),
    ));
    c.on_command(flood());
    // `t`'s upload ends (its tasks are left unrun: the test plays the graph's part).
    c.report(uploaded(&t));
    c.report(Report::TopDone(t.clone()));
    assert!(
        !top_done(&mut reports, &t),
        "t is not reported done before its realisation is published"
    );
    let publishing =
        |p: &Purpose| matches!(p, Purpose::PublishRealisations(ids) if ids == &[id(1)]);
    assert!(
        c.purposes.values().any(publishing),
        "t's realisation is being published"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_top_keeps_its_realisations_when_the_pending_set_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = (path("t"), path("d"));
    let (mut c, mut reports) = held_top_waiting_for_d(dir.path(), &t, &d).await;
    c.on_command(flood());
    finish_d(&mut c, &d).await;
    assert!(top_done(&mut reports, &t), "t is reported done");
    assert!(dir.path().join(layout::realisation_key(&id(1))).exists());
    assert!(dir.path().join(layout::realisation_key(&id(2))).exists());
}

#[path = "skip_tests.rs"]
mod skips;
