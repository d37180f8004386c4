use super::*;

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
        bucket.get("a").await.unwrap().unwrap().body,
        Bytes::from_static(b"x")
    );
    assert_eq!(bucket.head("b").await.unwrap(), None);
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
    assert!(bucket.head("a").await.unwrap().is_some());
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
