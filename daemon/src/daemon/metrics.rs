//! The metrics endpoint (`metrics_listen`): `GET /metrics` over plain HTTP/1.1, answered with
//! the Prometheus text format ([`exposition`]); every other path is 404.
//!
//! Invariants: the address is bound before the daemon serves anything, so one already in use
//! stops the start with an error naming it; a scrape reads the same status document
//! `narpush status` does (off the async workers: it scans the queue); at most
//! [`MAX_CONNECTIONS`] connections are served at once and each stops at the stop signal, so
//! the daemon's shutdown never waits on a scraper; nothing runs between scrapes.

pub mod exposition;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::shared::Shared;
use super::status;

/// Connections served at once; more are closed at once (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {address} (config key 'metrics_listen')")]
pub struct ListenError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the metrics address (call inside the runtime).
pub fn listen(address: SocketAddr) -> Result<TcpListener, ListenError> {
    let error = |source| ListenError { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    let listener = TcpListener::from_std(listener).map_err(error)?;
    tracing::info!(%address, "serving metrics at /metrics");
    Ok(listener)
}

/// Serves scrapes until the stop signal.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let listener = &listener;
    while let Some(stream) = shared
        .next_connection("metrics", move || async move {
            listener.accept().await.map(|(stream, _)| stream)
        })
        .await
    {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "metrics: {MAX_CONNECTIONS} connections already open; closing a new one"
            );
            continue;
        };
        let connection_shared = shared.clone();
        shared.tasks.spawn(async move {
            let _slot = slot;
            let service_shared = connection_shared.clone();
            let service = service_fn(move |request| respond(request, service_shared.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!("metrics connection ended: {e}");
                    }
                }
                () = connection_shared.stop.cancelled() => {}
            }
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let rendered = tokio::task::spawn_blocking(move || {
        let report = status::collect(&shared).map_err(|e| crate::error_chain(&e))?;
        exposition::render(report, shared.engine.view().finished())
            .map_err(|e| format!("cannot write the metrics: {e}"))
    })
    .await;
    Ok(match rendered {
        Ok(Ok(body)) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(exposition::CONTENT_TYPE),
            );
            response
        }
        Ok(Err(reason)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the daemon's state: {reason}\n"),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("collecting the metrics stopped: {e}\n"),
        ),
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
