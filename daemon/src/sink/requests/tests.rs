//! The request tally: counting, classes, summaries and prices.

use super::*;

#[test]
fn requests_are_counted_by_class_operation_and_object() {
    let tally = Tally::default();
    let hash = "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6";
    tally.sent("PutObject", Object::of_key(&format!("{hash}.narinfo")));
    tally.sent("PutObject", Object::of_key(&format!("{hash}.narinfo")));
    tally.sent("UploadPart", Object::of_key("nar/x.nar.zst"));
    tally.sent("HeadObject", Object::of_key("nix-cache-info"));
    tally.sent("DeleteObjects", Object::of_keys(["a", "nar/b"]));
    tally.sent("ListObjectsV2", Object::of_prefix(""));
    let counts = tally.counts(&RequestPrices::default());
    assert_eq!(
        (counts.total, counts.class_a, counts.class_b, counts.free),
        (6, 4, 1, 1)
    );
    assert_eq!(counts.by_op["PutObject"], 2);
    assert_eq!(counts.by_object["PutObject"]["narinfo"], 2);
    assert_eq!(counts.by_object["UploadPart"]["nar"], 1);
    assert_eq!(counts.by_object["HeadObject"]["cache-info"], 1);
    assert_eq!(counts.by_object["DeleteObjects"]["mixed"], 1);
    assert_eq!(counts.by_object["ListObjectsV2"]["mixed"], 1);
    assert!((counts.estimated_cost_usd - (4.0 * 4.5 + 0.36) / 1e6).abs() < 1e-12);
}

#[test]
fn the_summary_line_groups_thousands_and_prices_at_r2s_rates() {
    let counts = RequestCounts {
        total: 1234,
        class_a: 1000,
        class_b: 234,
        free: 0,
        estimated_cost_usd: RequestPrices::default().cost(1000, 234),
        ..RequestCounts::default()
    };
    assert_eq!(
        counts.to_string(),
        "requests: 1,234 (class A 1,000, class B 234, free 0), estimated cost $0.0046"
    );
}

#[test]
fn the_summary_line_tells_of_throttled_writes_when_there_were_any() {
    let tally = Tally::default();
    tally.sent("PutObject", Object::Narinfo);
    tally.taken_as_published();
    tally.taken_as_published();
    tally.written_again();
    tally.given_up();
    let line = tally.counts(&RequestPrices::default()).to_string();
    assert!(
        line.ends_with(
            "; throttled writes: 2 published by another writer, 1 written again, 1 given up"
        ),
        "{line}"
    );
}

#[test]
fn since_subtracts_an_earlier_snapshot() {
    let tally = Tally::default();
    tally.sent("GetObject", Object::Narinfo);
    tally.taken_as_published();
    let before = tally.counts(&RequestPrices::default());
    tally.sent("GetObject", Object::Narinfo);
    tally.sent("PutObject", Object::Nar);
    tally.taken_as_published();
    tally.written_again();
    tally.given_up();
    let after = tally.counts(&RequestPrices::default());
    assert_eq!(after.throttled_writes.taken_as_published, 2);
    let run = after.since(&before, &RequestPrices::default());
    assert_eq!((run.total, run.class_a, run.class_b), (2, 1, 1));
    assert_eq!(run.by_object["GetObject"]["narinfo"], 1);
    assert_eq!(
        run.throttled_writes,
        ThrottledWrites {
            taken_as_published: 1,
            written_again: 1,
            given_up: 1
        }
    );
}

#[test]
fn prices_must_be_non_negative_numbers() {
    assert!(RequestPrices::default().check().is_ok());
    let negative = RequestPrices {
        class_a_per_million: -1.0,
        ..RequestPrices::default()
    };
    assert!(negative
        .check()
        .unwrap_err()
        .contains("class_a_per_million"));
}

#[test]
fn prices_are_bounded_so_the_cost_stays_finite() {
    let at_bound = RequestPrices {
        class_b_per_million: MAX_PRICE_PER_MILLION,
        ..RequestPrices::default()
    };
    assert!(at_bound.check().is_ok());
    assert!(at_bound.cost(u64::MAX, u64::MAX).is_finite());
    let huge = RequestPrices {
        class_b_per_million: 1e308,
        ..RequestPrices::default()
    };
    let err = huge.check().unwrap_err();
    assert!(err.contains("class_b_per_million = 1e308"), "{err}");
}

#[test]
fn counts_read_with_fields_absent_and_unknown_ones_ignored() {
    let v3: RequestCounts =
        serde_json::from_str(r#"{"acknowledged": 3, "spool_ingested": 1}"#).unwrap();
    assert_eq!(v3, RequestCounts::default());
    let partial: RequestCounts = serde_json::from_str(r#"{"total": 2}"#).unwrap();
    assert_eq!((partial.total, partial.class_a), (2, 0));
}
