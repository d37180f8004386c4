use super::*;
use crate::coexist::Check;
use crate::sink::ErrorClass;

fn faults(seed: u64) -> Faults {
    Faults {
        seed,
        min_latency: Duration::from_millis(10),
        max_latency: Duration::from_millis(100),
        ..Faults::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_lands_within_its_latency_and_is_read_back() {
    let bucket = Bucket::new(faults(1));
    let started = tokio::time::Instant::now();
    bucket.put("a", Bytes::from_static(b"x")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(10) && took <= Duration::from_millis(101),
        "{took:?}"
    );
    assert_eq!(
        found(bucket.get("a").await.unwrap()).body,
        Bytes::from_static(b"x")
    );
    assert!(matches!(bucket.head("b").await.unwrap(), Read::Absent));
}

#[tokio::test(start_paused = true)]
async fn a_lost_response_is_an_error_but_the_write_happened() {
    let bucket = Bucket::new(Faults {
        lost_response_ppm: 1_000_000,
        ..faults(2)
    });
    let error = bucket.put("a", Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    bucket.set_faults(faults(2));
    found(bucket.head("a").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_refused_write_has_no_effect() {
    let bucket = Bucket::new(Faults {
        forbidden_ppm: 1_000_000,
        ..faults(3)
    });
    let error = bucket.put("a", Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(bucket.snapshot().is_empty());
}

#[tokio::test(start_paused = true)]
async fn draws_depend_on_the_seed_and_the_key_not_on_the_order_of_requests() {
    async fn latencies(order: &[&str]) -> BTreeMap<String, Duration> {
        let bucket = Bucket::new(faults(7));
        let mut out = BTreeMap::new();
        for key in order {
            let started = tokio::time::Instant::now();
            bucket.head(key).await.unwrap();
            out.insert((*key).to_owned(), started.elapsed());
        }
        out
    }
    assert_eq!(
        latencies(&["a", "b", "c"]).await,
        latencies(&["c", "a", "b"]).await
    );
}

#[tokio::test(start_paused = true)]
async fn the_observer_sees_every_change() {
    let bucket = Bucket::new(faults(4));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    bucket.set_observer(Some(Box::new(move |_, objects| {
        log.lock().unwrap().push(objects.len());
    })));
    bucket.put("a", Bytes::from_static(b"x")).await.unwrap();
    bucket.put("b", Bytes::from_static(b"y")).await.unwrap();
    bucket.delete(&["a".to_owned()]).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 1]);
}

fn found<T>(read: Read<T>) -> T {
    match read {
        Read::Found(found) => found,
        Read::Absent => panic!("absent"),
        Read::Refused(error) => panic!("refused: {error}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_read_is_the_answer_refused_not_an_error() {
    let bucket = Bucket::new(Faults {
        forbidden_ppm: 1_000_000,
        ..faults(5)
    });
    bucket.insert("a", Bytes::from_static(b"x"));
    let sink = MemorySink::new(bucket);
    assert!(matches!(sink.head("a").await.unwrap(), Read::Refused(_)));
    assert!(matches!(sink.read("a").await.unwrap(), Read::Refused(_)));
}

fn slow_deletes(seed: u64) -> Faults {
    Faults {
        slow_delete_ppm: 1_000_000,
        slow_delete: Duration::from_secs(20),
        ..faults(seed)
    }
}

#[tokio::test(start_paused = true)]
async fn a_delete_whose_check_is_over_is_not_sent() {
    let bucket = Bucket::new(faults(6));
    bucket.insert("a", Bytes::from_static(b"x"));
    let sink = MemorySink::new(bucket.clone());
    let over = Check::began_at(tokio::time::Instant::now() - crate::coexist::DELETE_WINDOW);
    let error = sink
        .delete_within(&["a".to_owned()], &over)
        .await
        .unwrap_err();
    assert!(error.detail.contains("not sent"), "{error}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(bucket.snapshot().contains_key("a"));
    assert_eq!(bucket.counts().requests, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_delete_is_given_up_at_the_bound_and_lands_within_a_second_of_it() {
    let bucket = Bucket::new(slow_deletes(8));
    bucket.insert("a", Bytes::from_static(b"x"));
    let sink = MemorySink::new(bucket.clone());
    let check = Check::begin();
    let error = sink
        .delete_within(&["a".to_owned()], &check)
        .await
        .unwrap_err();
    assert!(error.detail.contains("given up"), "{error}");
    assert_eq!(tokio::time::Instant::now(), check.deadline());
    assert!(bucket.snapshot().contains_key("a"));
    tokio::time::sleep(GIVEN_UP_LANDS_WITHIN + Duration::from_millis(1)).await;
    assert!(!bucket.snapshot().contains_key("a"));
}

#[tokio::test(start_paused = true)]
async fn a_removal_lands_at_once_without_a_request_and_is_observed() {
    let bucket = Bucket::new(faults(9));
    bucket.insert("a", Bytes::from_static(b"x"));
    bucket.insert("b", Bytes::from_static(b"y"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    bucket.set_observer(Some(Box::new(move |change, objects| {
        if let Change::Delete(keys) = change {
            log.lock().unwrap().push((keys.to_vec(), objects.len()));
        }
    })));
    let requests = bucket.counts().requests;
    let started = tokio::time::Instant::now();
    bucket.remove(&["a".to_owned(), "gone".to_owned()]);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(bucket.counts().requests, requests);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(vec!["a".to_owned(), "gone".to_owned()], 1)]
    );
    assert!(matches!(bucket.head("a").await.unwrap(), Read::Absent));
}

fn limited(seed: u64) -> Faults {
    Faults {
        key_write_interval: Some(Duration::from_secs(1)),
        ..faults(seed)
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_reaching_a_busy_key_is_answered_429_without_effect_until_a_second_after() {
    let bucket = Bucket::new(limited(10));
    bucket.put("k", Bytes::from_static(b"first")).await.unwrap();
    let answer = bucket.put_shared("k", Bytes::from_static(b"second")).await;
    let Ok(Put::Throttled(error)) = answer else {
        panic!("not throttled: {answer:?}");
    };
    assert!(error.detail.starts_with("429"), "{error}");
    assert_eq!(found(bucket.get("k").await.unwrap()).body, "first");
    // A plain PUT meets the limit as an error.
    let error = bucket
        .put("k", Bytes::from_static(b"third"))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    tokio::time::sleep(Duration::from_secs(1)).await;
    bucket
        .put("k", Bytes::from_static(b"fourth"))
        .await
        .unwrap();
    assert_eq!(found(bucket.get("k").await.unwrap()).body, "fourth");
    // Other keys are not limited by this one's writes.
    bucket.put("other", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(bucket.counts().key_throttled, 2);
}

#[tokio::test(start_paused = true)]
async fn a_write_in_progress_makes_the_key_busy_before_it_lands() {
    let bucket = Bucket::new(limited(11));
    let lands_in = Duration::from_millis(300);
    assert!(!bucket.refuses_write("PUT", "k", lands_in));
    // Nothing landed yet, and the key refuses another write (a GET would find it empty).
    assert!(bucket.refuses_write("COMPLETE-MULTIPART", "k", lands_in));
    assert!(bucket.snapshot().is_empty());
    // Reads and deletes are not limited.
    assert!(!bucket.refuses_write("DELETE", "k", lands_in));
    tokio::time::sleep(lands_in + Duration::from_millis(999)).await;
    assert!(bucket.refuses_write("PUT", "k", lands_in));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!bucket.refuses_write("PUT", "k", lands_in));
}

#[tokio::test(start_paused = true)]
async fn without_the_limit_writes_of_one_key_all_land() {
    let bucket = Bucket::new(faults(12));
    for body in ["a", "b", "c"] {
        let answer = bucket.put_shared("k", Bytes::from(body)).await.unwrap();
        assert!(matches!(answer, Put::Written));
    }
    assert_eq!(bucket.counts().key_throttled, 0);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_under_the_limit_is_sometimes_a_429_whose_write_landed() {
    let bucket = Bucket::new(Faults {
        lost_response_ppm: 1_000_000,
        ..limited(13)
    });
    let mut throttled = 0;
    for i in 0..40 {
        let key = format!("k{i}");
        let answer = bucket.put_shared(&key, Bytes::from_static(b"x")).await;
        throttled += u64::from(matches!(answer, Ok(Put::Throttled(_))));
        assert!(bucket.snapshot().contains_key(&key), "the write landed");
    }
    assert!(throttled > 5 && throttled < 35, "{throttled} of 40");
    assert_eq!(bucket.counts().throttled_landed, throttled);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_shared_write_is_judged_and_the_outcome_counted_and_observed() {
    use crate::sink::contended::{Outcome, Wanted};
    let bucket = Bucket::new(limited(14));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    bucket.set_observer(Some(Box::new(move |change, _| {
        if let Change::Judged {
            key,
            outcome,
            ours,
            got,
            headed,
            ..
        } = change
        {
            // The judge's GET landed before it decided, and it took its own announcement
            // without a HEAD.
            assert!(got.is_some() && headed.is_none(), "{got:?} {headed:?}");
            assert_eq!(
                ours,
                b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
            );
            log.lock().unwrap().push((key.to_owned(), outcome));
        }
    })));
    let sink = crate::sink::Sink::Memory(MemorySink::new(bucket.clone()));
    let info = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n";
    bucket
        .put("nix-cache-info", Bytes::from(info))
        .await
        .unwrap();
    // Within the second: throttled; the key holds the same announcement.
    sink.put_contended(
        "nix-cache-info",
        Bytes::from(info),
        "text/x-nix-cache-info",
        &Wanted::CacheInfo,
    )
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("nix-cache-info".to_owned(), Outcome::TakenAsPublished)]
    );
    assert_eq!(bucket.counts().taken_as_published, 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_write_finding_another_announcement_is_written_again_a_second_later() {
    use crate::sink::contended::{Outcome, Wanted};
    let bucket = Bucket::new(limited(15));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    bucket.set_observer(Some(Box::new(move |change, _| {
        if let Change::Judged { outcome, .. } = change {
            log.lock().unwrap().push(outcome);
        }
    })));
    let sink = crate::sink::Sink::Memory(MemorySink::new(bucket.clone()));
    let theirs = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n";
    let ours = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n";
    bucket
        .put("nix-cache-info", Bytes::from(theirs))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    sink.put_contended(
        "nix-cache-info",
        Bytes::from(ours),
        "text/x-nix-cache-info",
        &Wanted::CacheInfo,
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::WrittenAgain]);
    assert_eq!(
        found(bucket.get("nix-cache-info").await.unwrap()).body,
        ours
    );
}
