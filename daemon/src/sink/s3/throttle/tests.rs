//! A throttled write of a shared key against a scripted S3 server: what is sent, and counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;

use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::format::signing::{SigningKey, VerifyingKey};
use crate::format::store_path::StorePath;
use crate::sink::contended::{Wanted, ATTEMPTS};
use crate::sink::requests::{tally as process_tally, RequestPrices, Tally};
use crate::sink::s3::client::sdk_config_counting;
use crate::sink::s3::counting::CountRequests;
use crate::sink::s3::S3Sink;
use crate::sink::url::TargetUrl;
use crate::sink::{Sink, SinkError};

/// R2's answer to a second write of one key within a second.
const R2_THROTTLED: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code>\
     <Message>Reduce your concurrent request rate for the same object.</Message></Error>";

/// A server that throttles every PUT, holds `narinfo` under every narinfo key, and has the
/// NARs in `nars`; it keeps the method and path of each request.
#[derive(Debug)]
struct Throttling {
    narinfo: Option<String>,
    nars: Vec<String>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl HttpConnector for Throttling {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let method = request.method().to_owned();
        let path = request.uri().split('?').next().unwrap_or("").to_owned();
        let path = path
            .rsplit_once("/cache/")
            .map_or(path.clone(), |(_, key)| key.to_owned());
        self.seen
            .lock()
            .unwrap()
            .push((method.clone(), path.clone()));
        let (status, body) = match method.as_str() {
            "PUT" => (429, SdkBody::from(R2_THROTTLED)),
            "GET" => match &self.narinfo {
                Some(text) if path.ends_with(".narinfo") => (200, SdkBody::from(text.clone())),
                _ => (404, SdkBody::from("<Error><Code>NoSuchKey</Code></Error>")),
            },
            "HEAD" if self.nars.contains(&path) => (200, SdkBody::empty()),
            _ => (404, SdkBody::empty()),
        };
        HttpConnectorFuture::ready(Ok(HttpResponse::new(status.try_into().unwrap(), body)))
    }
}

fn sink(server: Throttling, tally: Arc<Tally>) -> Sink {
    let TargetUrl::S3(location) =
        TargetUrl::parse("s3://cache?endpoint=http://127.0.0.1:9000").expect("a valid target URL")
    else {
        panic!("an S3 target");
    };
    let connector = SharedHttpConnector::new(server);
    let config = sdk_config_counting(
        &location,
        Duration::from_secs(5),
        CountRequests::into_tally(tally),
    )
    .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
    .http_client(http_client_fn(move |_, _| connector.clone()))
    .build();
    Sink::S3(S3Sink::with_config(&location, config))
}

fn narinfo(url: &str, key: &SigningKey) -> NarInfo {
    let mut narinfo = NarInfo {
        store_path: StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-a").unwrap(),
        url: url.to_owned(),
        compression: "zstd".to_owned(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(b"nar"),
        nar_size: 3,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    narinfo.add_signature(key).unwrap();
    narinfo
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Writes `ours` at [`KEY`] through a server that throttles every PUT, holds `theirs` at the
/// key and has the NARs `nars`, trusting `keys`: the outcome, and the requests it saw.
async fn put_narinfo(
    ours: &NarInfo,
    theirs: &NarInfo,
    nars: &[&str],
    keys: &[VerifyingKey],
    tally: Arc<Tally>,
) -> (Result<(), SinkError>, Seen) {
    let seen: Seen = Arc::default();
    let sink = sink(
        Throttling {
            narinfo: Some(theirs.to_string()),
            nars: nars.iter().map(|nar| (*nar).to_owned()).collect(),
            seen: Arc::clone(&seen),
        },
        tally,
    );
    let wanted = Wanted::Narinfo { ours, keys };
    let put = sink
        .put_contended(
            KEY,
            Bytes::from(ours.to_string()),
            "text/x-nix-narinfo",
            &wanted,
        )
        .await;
    (put, seen)
}

fn given_up() -> u64 {
    process_tally()
        .counts(&RequestPrices::default())
        .throttled_writes
        .given_up
}

fn taken_as_published() -> u64 {
    process_tally()
        .counts(&RequestPrices::default())
        .throttled_writes
        .taken_as_published
}

const KEY: &str = "9jm1vj6j3ixsz2x5s77jxchbljjfn6s6.narinfo";

fn count(seen: &Mutex<Vec<(String, String)>>, method: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m == method)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_throttled_narinfo_another_writer_published_with_its_nar_is_success_in_three_requests() {
    let key = SigningKey::generate("ours-1").unwrap();
    let ours = narinfo("nar/ours.nar.zst", &key);
    let theirs = narinfo("nar/theirs.nar.xz", &key);
    let tally = Arc::new(Tally::default());
    let before = taken_as_published();
    let nars = ["nar/theirs.nar.xz"];
    let (put, seen) = put_narinfo(&ours, &theirs, &nars, &[key.public_key()], tally.clone()).await;
    put.expect("taken as published");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("PUT".to_owned(), KEY.to_owned()),
            ("GET".to_owned(), KEY.to_owned()),
            ("HEAD".to_owned(), "nar/theirs.nar.xz".to_owned()),
        ],
        "one PUT (no retry by the SDK), one GET, one HEAD"
    );
    let counted = tally.counts(&RequestPrices::default());
    assert_eq!(counted.by_object["PutObject"]["narinfo"], 1);
    assert_eq!(counted.by_object["GetObject"]["narinfo"], 1);
    assert_eq!(counted.by_object["HeadObject"]["nar"], 1);
    assert!(
        taken_as_published() > before,
        "counted in the process's tally"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_narinfo_whose_nar_is_missing_is_written_again_then_left_to_the_retries() {
    let key = SigningKey::generate("ours-1").unwrap();
    let ours = narinfo("nar/ours.nar.zst", &key);
    let theirs = narinfo("nar/theirs.nar.xz", &key);
    let given_up_before = given_up();
    let (put, seen) = put_narinfo(&ours, &theirs, &[], &[key.public_key()], Arc::default()).await;
    let error = put.expect_err("a narinfo whose NAR is missing is no success");
    assert!(error.detail.contains("HTTP 429"), "{error}");
    assert_eq!(error.class, crate::sink::ErrorClass::Transient);
    let attempts = ATTEMPTS as usize;
    assert_eq!(
        count(&seen, "PUT"),
        attempts,
        "no storm: the SDK retries none"
    );
    assert_eq!(count(&seen, "GET"), attempts);
    assert_eq!(count(&seen, "HEAD"), attempts);
    assert!(given_up() > given_up_before, "counted as given up");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_narinfo_signed_by_a_stranger_is_no_success() {
    let ours_key = SigningKey::generate("ours-1").unwrap();
    let stranger = SigningKey::generate("theirs-1").unwrap();
    let ours = narinfo("nar/ours.nar.zst", &ours_key);
    let theirs = narinfo("nar/theirs.nar.xz", &stranger);
    let nars = ["nar/theirs.nar.xz"];
    let keys = [ours_key.public_key()];
    let (put, seen) = put_narinfo(&ours, &theirs, &nars, &keys, Arc::default()).await;
    put.expect_err("not ours to trust");
    assert_eq!(
        count(&seen, "HEAD"),
        0,
        "an untrusted narinfo's NAR is not looked for"
    );
    assert_eq!(count(&seen, "PUT"), ATTEMPTS as usize);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_cache_info_that_says_the_same_is_success() {
    let info = crate::layout::nix_cache_info(crate::layout::CacheInfo {
        priority: 41,
        want_mass_query: true,
    });
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let server = Throttling {
        narinfo: None,
        nars: Vec::new(),
        seen: Arc::clone(&seen),
    };
    // The cache-info key answers its GET with the same text.
    #[derive(Debug)]
    struct WithInfo(Throttling, String);
    impl HttpConnector for WithInfo {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            if request.method() == "GET" {
                self.0
                    .seen
                    .lock()
                    .unwrap()
                    .push(("GET".to_owned(), "nix-cache-info".to_owned()));
                let ok = HttpResponse::new(200.try_into().unwrap(), SdkBody::from(self.1.clone()));
                return HttpConnectorFuture::ready(Ok(ok));
            }
            self.0.call(request)
        }
    }
    let TargetUrl::S3(location) =
        TargetUrl::parse("s3://cache?endpoint=http://127.0.0.1:9000").unwrap()
    else {
        panic!("an S3 target");
    };
    let connector = SharedHttpConnector::new(WithInfo(server, info.clone()));
    let config = sdk_config_counting(
        &location,
        Duration::from_secs(5),
        CountRequests::into_tally(Arc::default()),
    )
    .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
    .http_client(http_client_fn(move |_, _| connector.clone()))
    .build();
    let sink = Sink::S3(S3Sink::with_config(&location, config));
    sink.put_contended(
        "nix-cache-info",
        Bytes::from(info),
        "text/x-nix-cache-info",
        &Wanted::CacheInfo,
    )
    .await
    .expect("the same announcement is success");
    assert_eq!(seen.lock().unwrap().len(), 2, "one PUT, one GET");
}

/// Answers 429 with R2's body to the first request, 200 to the others.
#[derive(Debug)]
struct ThrottledOnce(Arc<Mutex<u32>>);

impl HttpConnector for ThrottledOnce {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let mut seen = self.0.lock().unwrap();
        *seen += 1;
        let answer = match *seen {
            1 => HttpResponse::new(429.try_into().unwrap(), SdkBody::from(R2_THROTTLED)),
            _ => HttpResponse::new(200.try_into().unwrap(), SdkBody::empty()),
        };
        HttpConnectorFuture::ready(Ok(answer))
    }
}

#[tokio::test(start_paused = true)]
async fn any_other_write_answered_429_is_retried_by_the_sdk_as_throttled() {
    let TargetUrl::S3(location) =
        TargetUrl::parse("s3://cache?endpoint=http://127.0.0.1:9000").unwrap()
    else {
        panic!("an S3 target");
    };
    let seen = Arc::new(Mutex::new(0));
    let connector = SharedHttpConnector::new(ThrottledOnce(Arc::clone(&seen)));
    let config = sdk_config_counting(
        &location,
        Duration::from_secs(5),
        CountRequests::into_tally(Arc::default()),
    )
    .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
    .http_client(http_client_fn(move |_, _| connector.clone()))
    .build();
    let sink = Sink::S3(S3Sink::with_config(&location, config));
    sink.put(
        "nar/x.nar.zst",
        Bytes::from_static(b"nar"),
        "application/x-nix-nar",
    )
    .await
    .expect("the SDK's second attempt succeeds");
    assert_eq!(*seen.lock().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_narinfo_whose_nar_has_another_size_than_it_states_is_no_success() {
    // What `verify --repair` meets when a writer refreshes the damaged narinfo it replaces:
    // its NAR is there, but not of the FileSize the narinfo states.
    let key = SigningKey::generate("ours-1").unwrap();
    let ours = narinfo("nar/ours.nar.zst", &key);
    let mut theirs = narinfo("nar/theirs.nar.xz", &key);
    theirs.file_size = Some(1_000);
    theirs.signatures.clear();
    theirs.add_signature(&key).unwrap();
    let nars = ["nar/theirs.nar.xz"];
    let (put, seen) = put_narinfo(&ours, &theirs, &nars, &[key.public_key()], Arc::default()).await;
    put.expect_err("a NAR of another size than its narinfo states does not do");
    assert_eq!(count(&seen, "PUT"), ATTEMPTS as usize, "written again");
}
