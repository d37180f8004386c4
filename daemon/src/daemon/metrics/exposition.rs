//! The `/metrics` document: the status document ([`StatusReport`]) and the upload histograms,
//! written in the Prometheus text format (version 0.0.4) by `prometheus-client`.
//!
//! Invariant: every number here is read from the same status document `narpush status --json`
//! prints, never counted a second time. Labels take only fixed values (queue states, failure
//! classes, skip reasons, closure stages, the version): no store path, URL or key appears, so
//! the series are bounded whatever the daemon uploads.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::daemon::status::StatusReport;
use crate::engine::progress::Finished;
use crate::filter::SKIP_KINDS;
use crate::sink::requests::{Class, RequestCounts};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Writes the metrics of `report` and `finished`.
pub fn render(report: StatusReport, finished: &Finished) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register(
        "narpush_build",
        "The running narpush version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register(
        "narpush_nar_upload_duration_seconds",
        "Time from the start of a NAR upload to its last byte stored, since the daemon started",
        finished.seconds.clone(),
    );
    registry.register(
        "narpush_nar_upload_size_bytes",
        "Uncompressed size of each NAR stored, since the daemon started",
        finished.nar_bytes.clone(),
    );
    registry.register_collector(Box::new(Snapshot(report)));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One status document, turned into metrics at encoding time.
#[derive(Debug)]
struct Snapshot(StatusReport);

impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let r = &self.0;
        let c = &r.counts;
        labelled(
            &mut out,
            "narpush_queue_entries",
            "Queue entries by state",
            "state",
            &[
                ("pending", gauge(c.pending)),
                ("uploading", gauge(c.uploading)),
                ("done", gauge(c.done)),
                ("failed", gauge(c.failed)),
                ("skipped", gauge(c.skipped)),
            ],
        )?;
        let stages = &r.closure;
        labelled(
            &mut out,
            "narpush_closure_paths",
            "Paths of the closures being uploaded, by what they wait for",
            "stage",
            &[
                ("resolving", gauge(stages.resolving)),
                ("checking", gauge(stages.checking)),
                ("storing", gauge(stages.storing)),
                (
                    "waiting_for_references",
                    gauge(stages.waiting_for_references),
                ),
                ("publishing", gauge(stages.publishing)),
            ],
        )?;
        let in_flight = gauge(u64::try_from(r.uploads.len()).unwrap_or(u64::MAX));
        single(
            &mut out,
            "narpush_uploads_in_flight",
            "NARs being uploaded now",
            in_flight,
        )?;
        single(
            &mut out,
            "narpush_oldest_waiting_seconds",
            "Age of the oldest pending or uploading entry (0 when none waits)",
            ConstGauge::new(r.oldest_waiting_secs.unwrap_or(0.0)),
        )?;
        let up = &r.uploaded;
        for (name, help, value) in [
            ("narpush_uploaded_paths", "Paths published", up.paths),
            (
                "narpush_uploaded_nar_bytes",
                "NAR bytes published (uncompressed)",
                up.nar_bytes,
            ),
            (
                "narpush_uploaded_stored_bytes",
                "Bytes written to the cache for the NARs published (compressed)",
                up.stored_bytes,
            ),
        ] {
            single(&mut out, name, help, ConstCounter::new(value))?;
        }
        single(
            &mut out,
            "narpush_last_upload_timestamp_seconds",
            "When the last path was published, in Unix seconds (0: never)",
            ConstGauge::new(r.last_upload_unix_secs.unwrap_or(0.0)),
        )?;
        let mut skipped = vec![
            ("present", ConstCounter::new(r.skipped_present)),
            ("upstream", ConstCounter::new(r.skipped_upstream.paths)),
        ];
        for kind in SKIP_KINDS {
            let count = r.skipped.by_reason.get(kind).copied().unwrap_or(0);
            skipped.push((kind, ConstCounter::new(count)));
        }
        labelled(
            &mut out,
            "narpush_skipped_paths",
            "Paths not uploaded since the daemon started: already in the cache, served upstream, \
             or kept out by the push filters (excluded by a pattern, an output name or the NAR \
             size, or needing such a path)",
            "reason",
            &skipped,
        )?;
        single(
            &mut out,
            "narpush_skipped_upstream_nar_bytes",
            "NAR bytes not uploaded since the daemon started because an upstream cache serves them",
            ConstCounter::new(r.skipped_upstream.nar_bytes),
        )?;
        labelled(
            &mut out,
            "narpush_failures",
            "Failed upload attempts of queued paths since the daemon started, by class",
            "class",
            &[
                (
                    "transient",
                    ConstCounter::new(r.failures.transient.attempts),
                ),
                (
                    "permanent",
                    ConstCounter::new(r.failures.permanent.attempts),
                ),
            ],
        )?;
        single(
            &mut out,
            "narpush_retries",
            "Failed attempts followed by another after a backoff, since the daemon started",
            ConstCounter::new(r.retries),
        )?;
        single(
            &mut out,
            "narpush_requests_acknowledged",
            "Enqueue requests acknowledged on the socket (durably queued) since the daemon started",
            ConstCounter::new(r.enqueue_requests.acknowledged),
        )?;
        single(
            &mut out,
            "narpush_spool_ingested",
            "Spooled requests read and queued since the daemon started",
            ConstCounter::new(r.enqueue_requests.spool_ingested),
        )?;
        requests(&mut out, &r.requests)?;
        let throttled = &r.requests.throttled_writes;
        labelled(
            &mut out,
            "narpush_throttled_writes",
            "Writes of narinfos and nix-cache-info the target throttled (HTTP 429, SlowDown) since \
             the daemon started, by outcome: taken as published by another writer, sent again, or \
             given up after the last write (left to the retries)",
            "outcome",
            &[
                (
                    "taken_as_published",
                    ConstCounter::new(throttled.taken_as_published),
                ),
                ("written_again", ConstCounter::new(throttled.written_again)),
                ("given_up", ConstCounter::new(throttled.given_up)),
            ],
        )?;
        single(
            &mut out,
            "narpush_spool_waiting_files",
            "Requests waiting in the spool directory",
            gauge(r.spool.waiting),
        )?;
        single(
            &mut out,
            "narpush_spool_rejected_files",
            "Spool files rejected for good (they stay until removed)",
            gauge(r.spool.rejected_total),
        )
    }
}

/// `narpush_requests_total{class,op,object}`: one series per operation and object kind
/// sent (operations and kinds are fixed sets, so the series stay bounded).
fn requests(out: &mut DescriptorEncoder, counts: &RequestCounts) -> fmt::Result {
    if counts.by_object.is_empty() {
        return Ok(());
    }
    let mut family = out.encode_descriptor(
        "narpush_requests",
        "Requests sent to the target since the daemon started (each attempt), by R2 price class, \
         S3 operation and object kind",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (op, objects) in &counts.by_object {
        let class = Class::of(op).label();
        for (object, &n) in objects {
            let labels = [
                ("class", class),
                ("op", op.as_str()),
                ("object", object.as_str()),
            ];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// A gauge from a count (as i64, Prometheus' integer gauges; counts never get near 2^63).
fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A metric without labels.
fn single(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> fmt::Result {
    metric.encode(out.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A metric with one label and the given value per label value.
fn labelled<M: EncodeMetric>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, M)],
) -> fmt::Result {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut family = out.encode_descriptor(name, help, None, first.metric_type())?;
    for (value, metric) in series {
        metric.encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// The value of the sample `name` (with its labels) in `text`.
#[cfg(test)]
fn sample(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|line| line.split(' ').next() == Some(name))
        .and_then(|line| line.split(' ').nth(1))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::activity::{ClassFailures, Failures};
    use crate::daemon::status::{Counts, Skipped, SkippedByFilters, Uploaded};

    #[test]
    fn the_status_numbers_come_out_under_their_metric_names() {
        let report = StatusReport {
            counts: Counts {
                pending: 3,
                uploading: 1,
                done: 7,
                failed: 2,
                skipped: 3,
            },
            uploaded: Uploaded {
                paths: 7,
                nar_bytes: 7000,
                stored_bytes: 2500,
            },
            skipped_upstream: Skipped {
                paths: 4,
                nar_bytes: 400,
            },
            skipped_present: 5,
            skipped: SkippedByFilters {
                by_reason: [
                    ("excluded_output".to_owned(), 1),
                    ("needs_skipped".to_owned(), 2),
                ]
                .into_iter()
                .collect(),
                paths: Vec::new(),
            },
            failures: Failures {
                transient: ClassFailures {
                    attempts: 6,
                    ..ClassFailures::default()
                },
                permanent: ClassFailures {
                    attempts: 2,
                    last_error: Some("/nix/store/secret-looking path".to_owned()),
                    last_error_secs_ago: Some(1.0),
                },
            },
            retries: 6,
            requests: {
                let tally = crate::sink::requests::Tally::default();
                tally.sent("PutObject", crate::sink::requests::Object::Narinfo);
                tally.sent("PutObject", crate::sink::requests::Object::Narinfo);
                tally.sent("HeadObject", crate::sink::requests::Object::Narinfo);
                tally.taken_as_published();
                tally.counts(&Default::default())
            },
            ..StatusReport::default()
        };
        let finished = Finished::default();
        finished.seconds.observe(0.3);
        finished.nar_bytes.observe(5000.0);
        let text = render(report, &finished).unwrap();
        for (name, value) in [
            ("narpush_queue_entries{state=\"pending\"}", "3"),
            ("narpush_queue_entries{state=\"failed\"}", "2"),
            ("narpush_uploaded_paths_total", "7"),
            ("narpush_uploaded_nar_bytes_total", "7000"),
            ("narpush_uploaded_stored_bytes_total", "2500"),
            ("narpush_skipped_paths_total{reason=\"present\"}", "5"),
            ("narpush_skipped_paths_total{reason=\"upstream\"}", "4"),
            (
                "narpush_skipped_paths_total{reason=\"excluded_output\"}",
                "1",
            ),
            ("narpush_skipped_paths_total{reason=\"needs_skipped\"}", "2"),
            ("narpush_skipped_paths_total{reason=\"too_big\"}", "0"),
            ("narpush_queue_entries{state=\"skipped\"}", "3"),
            ("narpush_failures_total{class=\"transient\"}", "6"),
            ("narpush_failures_total{class=\"permanent\"}", "2"),
            ("narpush_retries_total", "6"),
            (
                "narpush_requests_total{class=\"A\",op=\"PutObject\",object=\"narinfo\"}",
                "2",
            ),
            (
                "narpush_requests_total{class=\"B\",op=\"HeadObject\",object=\"narinfo\"}",
                "1",
            ),
            (
                "narpush_throttled_writes_total{outcome=\"taken_as_published\"}",
                "1",
            ),
            (
                "narpush_throttled_writes_total{outcome=\"written_again\"}",
                "0",
            ),
            ("narpush_nar_upload_duration_seconds_count", "1"),
            ("narpush_nar_upload_size_bytes_sum", "5000.0"),
            ("narpush_last_upload_timestamp_seconds", "0.0"),
        ] {
            assert_eq!(
                sample(&text, name).as_deref(),
                Some(value),
                "{name} in\n{text}"
            );
        }
        let version = format!(
            "narpush_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &version).as_deref(), Some("1"), "{text}");
        assert!(!text.contains("/nix/store"), "no path may leak:\n{text}");
    }
}
