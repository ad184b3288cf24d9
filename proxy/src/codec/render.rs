//! The one renderer: every response the proxy makes itself is built here, from a
//! [`ProxyError`], in each wire form a codec needs: an `http::Response` (hyper's HTTP/1.1 server
//! and the HTTP/2 server), HTTP/1.1 bytes (the fast path and the general path's own refusals),
//! or a trailers-only gRPC response. Status, code and gRPC status come from the table in
//! `base::reason`; the header `ferrule-error: <code>` names the reason, and the body says what
//! to do about it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::base::Reason;
use crate::codec::headers::{ProxyBody, FERRULE_ERROR};

/// A request the proxy could not forward, with a human explanation.
#[derive(Debug, Clone, thiserror::Error)]
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

    /// The response the client gets, as an `http::Response`.
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
