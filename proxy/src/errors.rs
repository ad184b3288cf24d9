//! Every response the proxy makes itself is built here, from a [`ProxyError`]: one status per
//! reason, a `ferrule-error: <reason>` header, and a body that says what to do about it.
//! gRPC callers get the matching `grpc-status` instead of an HTTP error they cannot parse.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::http::{ProxyBody, FERRULE_ERROR};

/// Why the proxy answered a request itself; stable names used in headers, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The proxy holds no snapshot yet.
    NoConfig,
    /// No service is named by the request's host.
    UnknownService,
    /// The service has routes but none matches the request.
    NoRoute,
    /// The chosen backend has no endpoints.
    NoEndpoints,
    /// Every endpoint tried refused or failed the connection.
    ConnectFailed,
    /// The route's timeout elapsed before the response headers arrived.
    Timeout,
    /// The request is malformed or cannot be proxied.
    BadRequest,
    /// The upstream failed after the request was sent (reset, protocol error).
    UpstreamError,
    /// The local application did not accept the connection.
    AppUnavailable,
    /// The proxy is shutting down.
    Draining,
}

impl Reason {
    /// The stable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoConfig => "no-config",
            Reason::UnknownService => "unknown-service",
            Reason::NoRoute => "no-route",
            Reason::NoEndpoints => "no-endpoints",
            Reason::ConnectFailed => "connect-failed",
            Reason::Timeout => "timeout",
            Reason::BadRequest => "bad-request",
            Reason::UpstreamError => "upstream-error",
            Reason::AppUnavailable => "app-unavailable",
            Reason::Draining => "draining",
        }
    }

    /// The HTTP status of the response.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::UnknownService | Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::NoConfig | Reason::NoEndpoints | Reason::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::ConnectFailed | Reason::UpstreamError | Reason::AppUnavailable => {
                StatusCode::BAD_GATEWAY
            }
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// gRPC status code (UNAVAILABLE for anything a retry elsewhere might fix).
    fn grpc_status(self) -> &'static str {
        match self {
            Reason::UnknownService | Reason::NoRoute => "12", // UNIMPLEMENTED
            Reason::Timeout => "4",                           // DEADLINE_EXCEEDED
            Reason::BadRequest => "13",                       // INTERNAL
            _ => "14",                                        // UNAVAILABLE
        }
    }
}

/// A request the proxy could not forward, with a human explanation.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct ProxyError {
    /// Stable reason.
    pub reason: Reason,
    /// What happened, for the operator.
    pub detail: String,
}

impl ProxyError {
    /// A new error.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        ProxyError {
            reason,
            detail: detail.into(),
        }
    }

    /// The response the client gets.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        let reason = HeaderValue::from_static(self.reason.as_str());
        if grpc {
            // A trailers-only gRPC response: status 200, grpc-status in the headers.
            let msg = HeaderValue::from_str(&percent_encode(&self.detail))
                .unwrap_or(HeaderValue::from_static("ferrule"));
            return Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", self.reason.grpc_status())
                .header("grpc-message", msg)
                .header(&FERRULE_ERROR, reason)
                .body(Either::Right(Full::new(Bytes::new())))
                .expect("static response parts are valid");
        }
        let body = self.body_text();
        Response::builder()
            .status(self.reason.status())
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(&FERRULE_ERROR, reason)
            .body(Either::Right(Full::new(Bytes::from(body))))
            .expect("static response parts are valid")
    }
}

impl ProxyError {
    fn body_text(&self) -> String {
        format!("ferrule: {}: {}\n", self.reason.as_str(), self.detail)
    }

    /// The response a (non-gRPC) HTTP/1.1 client gets, as bytes for the fast path: the same
    /// status, headers and body as [`ProxyError::into_response`], plus `connection: close`
    /// when the connection ends after it. A response to `HEAD` has the same head and no body.
    pub fn to_http1(&self, close: bool, head_request: bool) -> Vec<u8> {
        let status = self.reason.status();
        let body = self.body_text();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n{}: {}\r\n\
             content-length: {}\r\n{}\r\n{}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            FERRULE_ERROR.as_str(),
            self.reason.as_str(),
            body.len(),
            if close { "connection: close\r\n" } else { "" },
            if head_request { "" } else { &body }
        )
        .into_bytes()
    }
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
