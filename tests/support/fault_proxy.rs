//! A fault-injecting HTTP proxy between narpush and the S3 server (s3s-fs), driven per test.
//!
//! Requests are forwarded byte for byte as far as SigV4 can tell (method, target, headers
//! including `Host`, body), one fresh upstream connection per request. Before or after
//! forwarding, the proxy may inject a [`Fault`]:
//!
//! - scripted: "the next CompleteMultipartUpload gets DropAfterCompletion" ([`FaultProxy::script`]);
//! - random: each request gets a fault with a configured chance, drawn from a seeded generator,
//!   so a run is reproducible up to the timing of concurrent requests ([`FaultProxy::randomize`]);
//! - 404 turned into 403, as AWS answers for a missing key without `s3:ListBucket`
//!   ([`FaultProxy::forbid_missing`]);
//! - requests refused with 403 (credentials without a permission, [`Fault::Forbidden`]), and
//!   answers or requests held back ([`Fault::SlowAnswer`], [`Fault::HeldRequest`]); these are
//!   scripted or drawn only when a test names them, never part of [`Fault::ALL`];
//! - R2's limit on writes to one key: 429 to a second PutObject of a key within a window
//!   ([`FaultProxy::limit_same_key_writes`], in `same_key`).
//!
//! Every injected fault is counted ([`FaultProxy::injected`]), so a test can prove how many it
//! survived, and the `x-amz-security-token` header of every request is recorded
//! ([`FaultProxy::security_tokens`]), so a test can prove temporary credentials were used.
//! The proxy runs on its own tokio runtime and stops when dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::http::{Method, StatusCode};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod same_key;
mod wire;

use same_key::SameKeyWrites;
pub use same_key::R2_SAME_KEY_BODY;
use wire::{
    drain, error_body, error_response, forward, full, has_body, injected, read_half, ProxyBody,
    Truncated,
};

/// What can go wrong with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 500 InternalError; the request never reaches the server.
    ServerError,
    /// 503 SlowDown with `Retry-After` (1 s unless [`FaultProxy::set_retry_after`] says
    /// otherwise); the request never reaches the server.
    SlowDown,
    /// The connection closes half way through a body: the request's when it has one (the
    /// server never sees the request), else the response's (after the server answered).
    ResetMidBody,
    /// The server completes the request, but the answer comes only after the client's timeout
    /// (the proxy's `timeout_delay`), and then the connection closes without it.
    Timeout,
    /// The server completes the request, then the connection closes without the answer.
    DropAfterCompletion,
    /// 403 AccessDenied, as for credentials that lack the permission; the request never
    /// reaches the server.
    Forbidden,
    /// The server completes the request; its answer arrives whole, `timeout_delay` later.
    SlowAnswer,
    /// The request reaches the server only `timeout_delay` after it was sent, and only if the
    /// client still waits for it then (a client that gave up is counted in
    /// [`FaultProxy::abandoned`]): a request slowed down on its way.
    HeldRequest,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::ServerError,
        Fault::SlowDown,
        Fault::ResetMidBody,
        Fault::Timeout,
        Fault::DropAfterCompletion,
    ];
}

/// The S3 operation of a request, as far as the proxy needs to tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Head,
    Get,
    /// ListObjectsV2.
    List,
    PutObject,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListMultipartUploads,
    DeleteObjects,
    Other,
}

impl Operation {
    fn of(method: &Method, query: &str) -> Operation {
        let has = |name: &str| {
            query
                .split('&')
                .any(|pair| pair == name || pair.starts_with(&format!("{name}=")))
        };
        match *method {
            Method::HEAD => Operation::Head,
            Method::GET if has("uploads") => Operation::ListMultipartUploads,
            Method::GET if has("list-type") => Operation::List,
            Method::GET => Operation::Get,
            Method::PUT if has("partNumber") => Operation::UploadPart,
            Method::PUT => Operation::PutObject,
            Method::POST if has("uploads") => Operation::CreateMultipartUpload,
            Method::POST if has("uploadId") => Operation::CompleteMultipartUpload,
            Method::POST if has("delete") => Operation::DeleteObjects,
            Method::DELETE if has("uploadId") => Operation::AbortMultipartUpload,
            _ => Operation::Other,
        }
    }
}

/// What the proxy does, changed by the test at any time.
struct State {
    scripted: VecDeque<(Operation, Fault)>,
    rate_per_mille: u32,
    random_kinds: Vec<Fault>,
    random_operations: Option<Vec<Operation>>,
    rng: u64,
    forbid_missing: bool,
    timeout_delay: Duration,
    retry_after: String,
    injected: BTreeMap<Fault, u64>,
    forbidden: u64,
    abandoned: u64,
    requests: BTreeMap<Operation, u64>,
    security_tokens: Vec<Option<String>>,
    /// Object writes (PutObject, CreateMultipartUpload): the key and `Cache-Control`.
    cache_controls: Vec<(String, Option<String>)>,
    /// R2's limit on writes to one key ([`FaultProxy::limit_same_key_writes`]).
    same_key_writes: SameKeyWrites,
}

impl State {
    /// The fault for a request of `operation`, if any; counted as injected.
    fn choose(&mut self, operation: Operation) -> Option<Fault> {
        *self.requests.entry(operation).or_default() += 1;
        let fault = match self.scripted.iter().position(|(op, _)| *op == operation) {
            Some(index) => self.scripted.remove(index).map(|(_, fault)| fault),
            None => self.random(operation),
        }?;
        *self.injected.entry(fault).or_default() += 1;
        Some(fault)
    }

    fn random(&mut self, operation: Operation) -> Option<Fault> {
        if self.random_kinds.is_empty()
            || self
                .random_operations
                .as_ref()
                .is_some_and(|ops| !ops.contains(&operation))
        {
            return None;
        }
        let roll = self.next_random();
        if roll % 1000 >= u64::from(self.rate_per_mille) {
            return None;
        }
        let index = (self.next_random() % self.random_kinds.len() as u64) as usize;
        self.random_kinds.get(index).copied()
    }

    /// splitmix64: deterministic from the seed, good enough to spread faults.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The proxy, listening on a loopback port until dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy to `upstream` that injects nothing until told to.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(State {
            scripted: VecDeque::new(),
            rate_per_mille: 0,
            random_kinds: Vec::new(),
            random_operations: None,
            rng: 0,
            forbid_missing: false,
            timeout_delay: Duration::from_secs(5),
            retry_after: "1".to_owned(),
            injected: BTreeMap::new(),
            forbidden: 0,
            abandoned: 0,
            requests: BTreeMap::new(),
            security_tokens: Vec::new(),
            cache_controls: Vec::new(),
            same_key_writes: SameKeyWrites::default(),
        }));
        runtime.spawn(accept(listener, upstream, state.clone()));
        FaultProxy {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    fn with<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        change(&mut self.state.lock().expect("proxy state"))
    }

    /// The next request of `operation` gets `fault` (scripted faults queue up in order).
    pub fn script(&self, operation: Operation, fault: Fault) {
        self.with(|s| s.scripted.push_back((operation, fault)));
    }

    /// Each request (of `operations`, or of any operation when `None`) gets one of `kinds`
    /// with a chance of `rate_per_mille`/1000, drawn from a generator seeded with `seed`.
    pub fn randomize(
        &self,
        seed: u64,
        rate_per_mille: u32,
        kinds: &[Fault],
        operations: Option<&[Operation]>,
    ) {
        self.with(|s| {
            s.rng = seed;
            s.rate_per_mille = rate_per_mille;
            s.random_kinds = kinds.to_vec();
            s.random_operations = operations.map(<[Operation]>::to_vec);
        });
    }

    /// Stops random faults (scripted ones still apply).
    pub fn calm(&self) {
        self.with(|s| s.random_kinds.clear());
    }

    /// Answer 403 AccessDenied where the server answers 404.
    pub fn forbid_missing(&self, on: bool) {
        self.with(|s| s.forbid_missing = on);
    }

    /// How long a [`Fault::Timeout`] holds the answer back: more than the client's timeout.
    pub fn set_timeout_delay(&self, delay: Duration) {
        self.with(|s| s.timeout_delay = delay);
    }

    /// The `Retry-After` value of [`Fault::SlowDown`] answers (seconds or an HTTP-date).
    pub fn set_retry_after(&self, value: &str) {
        self.with(|s| s.retry_after = value.to_owned());
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.with(|s| s.injected.clone())
    }

    pub fn injected_total(&self) -> u64 {
        self.with(|s| s.injected.values().sum())
    }

    /// How many 404 answers were turned into 403.
    pub fn forbidden(&self) -> u64 {
        self.with(|s| s.forbidden)
    }

    /// How many [`Fault::HeldRequest`] requests never reached the server because the client
    /// had given up by then.
    pub fn abandoned(&self) -> u64 {
        self.with(|s| s.abandoned)
    }

    /// Requests seen so far, by operation.
    pub fn requests(&self) -> BTreeMap<Operation, u64> {
        self.with(|s| s.requests.clone())
    }

    /// The `x-amz-security-token` header of every request so far, in arrival order (`None`
    /// for a request without it).
    pub fn security_tokens(&self) -> Vec<Option<String>> {
        self.with(|s| s.security_tokens.clone())
    }

    /// The key (the path after the bucket) and `Cache-Control` header of every object write
    /// (PutObject, CreateMultipartUpload) so far, in arrival order.
    pub fn cache_controls(&self) -> Vec<(String, Option<String>)> {
        self.with(|s| s.cache_controls.clone())
    }

    /// Plays R2's limit on writes to one key: a PutObject of a key that an accepted
    /// PutObject wrote less than `window` ago is answered 429 with R2's body
    /// ([`R2_SAME_KEY_BODY`]) and never reaches the server (`None`: no limit). Counted in
    /// [`FaultProxy::same_key_throttled`], not in [`FaultProxy::injected`].
    pub fn limit_same_key_writes(&self, window: Option<Duration>) {
        self.with(|s| s.same_key_writes.limit(window));
    }

    /// The writes answered 429 by [`FaultProxy::limit_same_key_writes`], by key.
    pub fn same_key_throttled(&self) -> HashMap<String, u64> {
        self.with(|s| s.same_key_writes.throttled.clone())
    }

    /// The `s3://` target URL of a bucket, through this proxy.
    pub fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint=http://{}&region=us-east-1",
            self.addr
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| handle(request, upstream, state.clone()));
            // An injected fault ends the connection with an error: that is the point.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
) -> io::Result<Response<ProxyBody>> {
    let operation = Operation::of(request.method(), request.uri().query().unwrap_or(""));
    let token = request
        .headers()
        .get("x-amz-security-token")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (fault, timeout_delay, retry_after, same_key_throttled) = {
        let mut state = state.lock().expect("proxy state");
        state.security_tokens.push(token);
        let mut same_key_throttled = false;
        if matches!(
            operation,
            Operation::PutObject | Operation::CreateMultipartUpload
        ) {
            let path = request.uri().path();
            // Path-style: /<bucket>/<key>.
            let key = path
                .trim_start_matches('/')
                .split_once('/')
                .map_or("", |(_, k)| k);
            let header = request
                .headers()
                .get("cache-control")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            state.cache_controls.push((key.to_owned(), header));
            same_key_throttled =
                operation == Operation::PutObject && !state.same_key_writes.admit(key);
        }
        let fault = match same_key_throttled {
            true => {
                // Seen, and answered without a fault of its own.
                *state.requests.entry(operation).or_default() += 1;
                None
            }
            false => state.choose(operation),
        };
        (
            fault,
            state.timeout_delay,
            state.retry_after.clone(),
            same_key_throttled,
        )
    };
    let (parts, body) = request.into_parts();
    if same_key_throttled {
        drain(body).await?;
        let xml = R2_SAME_KEY_BODY.to_owned();
        return Ok(error_body(StatusCode::TOO_MANY_REQUESTS, xml, None));
    }
    match fault {
        Some(Fault::ServerError) => {
            drain(body).await?;
            return Ok(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                None,
            ));
        }
        Some(Fault::SlowDown) => {
            drain(body).await?;
            return Ok(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                Some(&retry_after),
            ));
        }
        Some(Fault::Forbidden) => {
            drain(body).await?;
            return Ok(error_response(StatusCode::FORBIDDEN, "AccessDenied", None));
        }
        Some(Fault::ResetMidBody) if has_body(&parts) => {
            read_half(&parts, body).await?;
            return Err(injected("connection reset in the request body"));
        }
        _ => {}
    }
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    if fault == Some(Fault::HeldRequest) {
        // hyper drops this future when the client closes the connection: then the guard
        // counts the request as abandoned and it is never forwarded.
        let mut guard = Abandoned(Some(state.clone()));
        tokio::time::sleep(timeout_delay).await;
        guard.0 = None;
    }
    let (mut answer, answer_body) = forward(upstream, parts, body).await?;
    match fault {
        Some(Fault::DropAfterCompletion) => return Err(injected("answer dropped")),
        Some(Fault::Timeout) => {
            tokio::time::sleep(timeout_delay).await;
            return Err(injected("answer held past the timeout"));
        }
        Some(Fault::SlowAnswer) => tokio::time::sleep(timeout_delay).await,
        _ => {}
    }
    answer.headers.remove("transfer-encoding");
    answer.headers.remove("connection");
    if answer.status == StatusCode::NOT_FOUND && state.lock().expect("proxy state").forbid_missing {
        state.lock().expect("proxy state").forbidden += 1;
        return Ok(error_response(StatusCode::FORBIDDEN, "AccessDenied", None));
    }
    if fault == Some(Fault::ResetMidBody) && answer_body.len() > 1 {
        let half = answer_body.slice(..answer_body.len() / 2);
        return Ok(Response::from_parts(
            answer,
            Truncated { first: Some(half) }.boxed(),
        ));
    }
    if fault == Some(Fault::ResetMidBody) {
        return Err(injected("connection reset before an empty answer"));
    }
    Ok(Response::from_parts(answer, full(answer_body)))
}

/// Counts a held request as abandoned when dropped before it was forwarded.
struct Abandoned(Option<Arc<Mutex<State>>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            if let Ok(mut state) = state.lock() {
                state.abandoned += 1;
            }
        }
    }
}
