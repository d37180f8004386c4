use super::*;
use crate::coexist::Check;

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
