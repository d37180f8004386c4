//! The push filters on a coordinator whose tasks are joined by hand, against a directory
//! cache that keeps every put as a file: a referrer found absent before the lookup of the
//! excluded path it needs has ended puts no NAR, so a skip leaves no orphan behind.

use super::*;
use crate::filter::PushFilter;

/// Every object put in the cache directory, relative to it.
fn objects(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut next = vec![dir.to_path_buf()];
    while let Some(at) = next.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap().path();
            if entry.is_dir() {
                next.push(entry);
            } else {
                found.push(entry.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_referrer_absent_before_its_excluded_reference_is_looked_up_puts_no_nar() {
    let dir = tempfile::tempdir().unwrap();
    let mut viewer = crate::engine::test_store::add(
        "narpush-held-referrer-test",
        b"a viewer of the documentation\n",
    )
    .await;
    // Its documentation is excluded by name, and the cache lacks it.
    let doc = path("manual-doc");
    viewer.references = vec![doc.clone()];
    let url = TargetUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let sink = Sink::open(&url, Duration::from_secs(60)).await.unwrap();
    let filter = PushFilter::new(&["-doc$".to_owned()], &[], None).unwrap();
    let config = EngineConfig::new(
        Arc::new(sink),
        url.to_string(),
        Arc::new(vec![SigningKey::generate("ours-1").unwrap()]),
        StreamSettings::new(Compression::None, 0),
        1,
        4,
        true,
    )
    .with_filter(filter);
    let (_commands, commands) = mpsc::unbounded_channel();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut c = Coordinator::new(
        Arc::new(config),
        commands,
        reports_tx,
        Arc::new(EngineView::default()),
    );
    c.on_command(Command::SubmitResolved(
        vec![viewer.clone(), info(&doc)],
        vec![viewer.path.clone(), doc.clone()],
        Vec::new(),
    ));

    // Everything runs to its end but doc's lookup, which ends last.
    let mut doc_lookup = None;
    while let Some(joined) = c.tasks.join_next_with_id().await {
        match joined {
            Ok((id, Done::Checked(path, result))) if path == doc => {
                doc_lookup = Some((id, Done::Checked(path, result)));
            }
            joined => c.on_joined(joined),
        }
    }
    let stored: Vec<String> = objects(dir.path())
        .into_iter()
        .filter(|key| key.starts_with("nar/"))
        .collect();
    assert!(
        stored.is_empty(),
        "a NAR was put before doc's lookup ended: {stored:?}"
    );
    assert_eq!(c.graph.stages().storing, 0, "viewer's NAR is held");

    c.on_joined(Ok(doc_lookup.expect("doc was looked up")));
    settle(&mut c).await;
    let mut skipped = Vec::new();
    while let Ok(report) = reports.try_recv() {
        if let Report::TopSkipped { top, .. } = report {
            skipped.push(top);
        }
    }
    assert!(skipped.contains(&viewer.path), "{skipped:?}");
    assert!(c.graph.is_empty());
    let left: Vec<String> = objects(dir.path())
        .into_iter()
        .filter(|key| key != "nix-cache-info")
        .collect();
    assert!(left.is_empty(), "objects put for skipped paths: {left:?}");
}
