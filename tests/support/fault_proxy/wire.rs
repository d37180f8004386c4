//! The HTTP plumbing of the fault proxy: reading and dropping bodies, forwarding a request
//! to the server, and the answers the proxy makes up itself (S3 errors, cut-off bodies).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::http::{request, response, HeaderValue, StatusCode};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub(super) type ProxyBody = BoxBody<Bytes, io::Error>;

pub(super) fn injected(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, format!("injected: {what}"))
}

pub(super) fn has_body(parts: &request::Parts) -> bool {
    parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 1)
}

pub(super) async fn drain(mut body: Incoming) -> io::Result<()> {
    while let Some(frame) = body.frame().await {
        frame.map_err(io::Error::other)?;
    }
    Ok(())
}

/// Reads about half the request body, so the client is cut off while still sending.
pub(super) async fn read_half(parts: &request::Parts, mut body: Incoming) -> io::Result<()> {
    let length = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut read = 0;
    while read < length / 2 {
        match body.frame().await {
            Some(frame) => {
                if let Some(data) = frame.map_err(io::Error::other)?.data_ref() {
                    read += data.len();
                }
            }
            None => break,
        }
    }
    Ok(())
}

/// The request to the server, over a fresh connection; the whole answer.
pub(super) async fn forward(
    upstream: SocketAddr,
    parts: request::Parts,
    body: Bytes,
) -> io::Result<(response::Parts, Bytes)> {
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(connection);
    let answer = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(io::Error::other)?;
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    Ok((parts, body))
}

pub(super) fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// An S3 error answer, as the server would send it.
pub(super) fn error_response(
    status: StatusCode,
    code: &str,
    retry_after: Option<&str>,
) -> Response<ProxyBody> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    error_body(status, xml, retry_after)
}

/// An error answer with `xml` as its body.
pub(super) fn error_body(
    status: StatusCode,
    xml: String,
    retry_after: Option<&str>,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(xml)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// A body that sends its first chunk and then fails, so the connection is cut mid-body.
pub(super) struct Truncated {
    pub(super) first: Option<Bytes>,
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(Some(match self.first.take() {
            Some(chunk) => Ok(Frame::data(chunk)),
            None => Err(injected("connection reset in the answer body")),
        }))
    }
}
