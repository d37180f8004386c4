use std::sync::{Arc, Mutex};

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;
use sha2::{Digest, Sha256};

use super::client::sdk_config_counting;
use super::*;
use crate::sink::url::TargetUrl;

const BODY: &[u8] = b"a part of a NAR";

fn location(url: &str) -> S3Location {
    match TargetUrl::parse(url).expect("a valid target URL") {
        TargetUrl::S3(location) => location,
        other => panic!("not an S3 target: {other:?}"),
    }
}

/// The requests a [`capturing_sink`] sent, signed and ready for the wire.
type Sent = Arc<Mutex<Vec<HttpRequest>>>;

/// Answers every request with an empty 200 and keeps it, instead of using the network.
#[derive(Debug)]
struct Capture(Sent);

impl HttpConnector for Capture {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.0.lock().unwrap().push(request);
        let ok = HttpResponse::new(200.try_into().unwrap(), SdkBody::empty());
        HttpConnectorFuture::ready(Ok(ok))
    }
}

/// A sink with credentials whose requests are captured.
fn capturing_sink(url: &str) -> (S3Sink, Sent) {
    let location = location(url);
    let sent = Sent::default();
    let connector = SharedHttpConnector::new(Capture(sent.clone()));
    let config = sdk_config(&location, Duration::from_secs(5))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(http_client_fn(move |_, _| connector.clone()))
        .build();
    (S3Sink::with_config(&location, config), sent)
}

/// The payload hash the one request sent was signed with.
fn payload_header(sent: Sent) -> String {
    let sent = sent.lock().unwrap();
    let [request] = sent.as_slice() else {
        panic!("{} requests sent, not one", sent.len());
    };
    assert!(
        request.headers().get("authorization").is_some(),
        "the request is signed"
    );
    request
        .headers()
        .get("x-amz-content-sha256")
        .expect("x-amz-content-sha256 is sent")
        .to_owned()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn over_https_and_to_aws_object_bodies_are_not_hashed_into_the_signature() {
    for url in [
        "s3://cache?endpoint=https://account.r2.cloudflarestorage.com",
        "s3://cache?endpoint=HTTPS://minio.example:9000",
        "s3://cache?region=eu-west-1",
    ] {
        let (sink, requests) = capturing_sink(url);
        sink.put("x.narinfo", Bytes::from_static(BODY), "text/plain", None)
            .await
            .expect("the captured PUT succeeds");
        assert_eq!(payload_header(requests), "UNSIGNED-PAYLOAD", "{url}");
    }
}

#[tokio::test]
async fn over_plain_http_object_bodies_are_signed() {
    let (sink, requests) = capturing_sink("s3://cache?endpoint=http://127.0.0.1:9000");
    sink.put("x.narinfo", Bytes::from_static(BODY), "text/plain", None)
        .await
        .expect("the captured PUT succeeds");
    assert_eq!(payload_header(requests), hex_sha256(BODY));
}

#[tokio::test]
async fn parts_follow_the_same_rule_as_whole_objects() {
    for (url, expected) in [
        (
            "s3://cache?endpoint=https://r2.example",
            "UNSIGNED-PAYLOAD".to_owned(),
        ),
        (
            "s3://cache?endpoint=http://127.0.0.1:9000",
            hex_sha256(BODY),
        ),
    ] {
        let (sink, requests) = capturing_sink(url);
        let mut upload = S3Upload {
            client: sink.client.clone(),
            sign_payload: sink.sign_payload,
            bucket: sink.bucket.clone(),
            key: "nar/x.nar.zst".to_owned(),
            upload_id: "upload-1".to_owned(),
            parts: Vec::new(),
            size: 0,
        };
        upload
            .put_part(Bytes::from_static(BODY))
            .await
            .expect("the captured UploadPart succeeds");
        assert_eq!(payload_header(requests), expected, "{url}");
    }
}

/// Answers 503 SlowDown to the first request, 200 to the others.
#[derive(Debug)]
struct SlowDownOnce(Arc<Mutex<u32>>);

impl HttpConnector for SlowDownOnce {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let mut seen = self.0.lock().unwrap();
        *seen += 1;
        let status = if *seen == 1 { 503 } else { 200 };
        let body = if *seen == 1 {
            SdkBody::from("<Error><Code>SlowDown</Code><Message>slow</Message></Error>")
        } else {
            SdkBody::empty()
        };
        HttpConnectorFuture::ready(Ok(HttpResponse::new(status.try_into().unwrap(), body)))
    }
}

#[tokio::test]
async fn every_attempt_is_counted_with_its_operation_and_object_kind() {
    use super::counting::CountRequests;
    use crate::sink::requests::{RequestPrices, Tally};
    let location = location("s3://cache?endpoint=http://127.0.0.1:9000");
    let connector = SharedHttpConnector::new(SlowDownOnce(Arc::default()));
    // A tally of its own: other tests of this binary send requests into the process's at the
    // same time.
    let tally = Arc::new(Tally::default());
    let counter = CountRequests::into_tally(tally.clone());
    let config = sdk_config_counting(&location, Duration::from_secs(5), counter)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(http_client_fn(move |_, _| connector.clone()))
        .build();
    let sink = S3Sink::with_config(&location, config);
    let prices = RequestPrices::default();
    let narinfo = "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6.narinfo";
    sink.put(narinfo, Bytes::from_static(BODY), "text/plain", None)
        .await
        .expect("the PUT succeeds on its second attempt");
    let _ = sink.read("nar/x.nar.zst").await;
    let sent = tally.counts(&prices);
    assert_eq!(sent.by_object["PutObject"]["narinfo"], 2, "{sent:?}");
    assert_eq!(sent.by_object["GetObject"]["nar"], 1, "{sent:?}");
    assert_eq!((sent.total, sent.class_a, sent.class_b), (3, 2, 1));
}
