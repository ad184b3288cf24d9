//! The one renderer: every response the proxy makes itself is built here, from a
//! [`ProxyError`], in each wire form a codec needs: an `http::Response` (hyper's HTTP/1.1 server
//! and the HTTP/2 server), HTTP/1.1 bytes (the fast path and the general path's own refusals),
//! or a trailers-only gRPC response. Status, code and gRPC status come from the table in
//! `base::reason`, unless a policy chose them ([`Custom`]: an injected fault's status, a
//! fallback response, a rate limit's `Retry-After`); the header `ferrule-error: <code>` names
//! the reason in every case, and the body says what to do about it.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::base::Reason;
use crate::codec::headers::{ProxyBody, FERRULE_ERROR};

/// What a policy chose about a proxy-made response, over its reason's row. Shared (`Arc`) so
/// a fallback compiled once per snapshot costs a reference count per response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Custom {
    /// The HTTP status instead of the row's.
    pub status: Option<StatusCode>,
    /// The gRPC status instead of the row's.
    pub grpc_status: Option<u32>,
    /// Extra headers (a fallback's own, `Retry-After`); `ferrule-error` always wins.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body instead of the reason's text (HTTP only: a gRPC caller gets trailers only).
    pub body: Option<Bytes>,
}

/// A request the proxy could not forward, with a human explanation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct ProxyError {
    /// Stable reason.
    pub reason: Reason,
    /// What happened, for the operator.
    pub detail: String,
    /// What a policy chose instead of the reason's row, if anything.
    pub custom: Option<Arc<Custom>>,
}

impl ProxyError {
    /// A new error.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        ProxyError {
            reason,
            detail: detail.into(),
            custom: None,
        }
    }

    /// A new error whose response a policy shaped.
    pub fn custom(reason: Reason, detail: impl Into<String>, custom: Arc<Custom>) -> Self {
        ProxyError {
            reason,
            detail: detail.into(),
            custom: Some(custom),
        }
    }

    /// The HTTP status a (non-gRPC) client gets.
    pub fn status(&self) -> StatusCode {
        self.custom
            .as_ref()
            .and_then(|c| c.status)
            .unwrap_or(self.reason.status())
    }

    /// The `grpc-status` a gRPC client gets: the policy's, else the one gRPC's HTTP mapping
    /// gives the policy's HTTP status, else the reason's.
    fn grpc_status(&self) -> HeaderValue {
        match self.custom.as_deref() {
            Some(Custom {
                grpc_status: Some(g),
                ..
            }) => HeaderValue::from(*g),
            Some(Custom {
                status: Some(s), ..
            }) => HeaderValue::from_static(grpc_of_http(*s)),
            _ => HeaderValue::from_static(self.reason.grpc_status()),
        }
    }

    fn extra_headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.custom.as_deref().map_or(&[], |c| &c.headers)
    }

    /// The response the client gets, as an `http::Response`.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        let reason = HeaderValue::from_static(self.reason.as_str());
        let mut b = Response::builder();
        for (k, v) in self.extra_headers() {
            b = b.header(k, v);
        }
        if grpc {
            // A trailers-only gRPC response: status 200, grpc-status in the headers.
            let msg = HeaderValue::from_str(&percent_encode(&self.detail))
                .unwrap_or(HeaderValue::from_static("ferrule"));
            let mut resp = b
                .status(StatusCode::OK)
                .body(Either::Right(Full::new(Bytes::new())))
                .expect("static response parts are valid");
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", self.grpc_status());
            h.insert("grpc-message", msg);
            h.insert(&FERRULE_ERROR, reason);
            return resp;
        }
        let (ctype, body) = self.body();
        let mut resp = b
            .status(self.status())
            .body(Either::Right(Full::new(body)))
            .expect("static response parts are valid");
        let h = resp.headers_mut();
        if let Some(ctype) = ctype {
            h.insert(http::header::CONTENT_TYPE, ctype);
        }
        h.insert(&FERRULE_ERROR, reason);
        resp
    }
}

impl ProxyError {
    /// The body and, when the body is the proxy's own text, its content type (a policy's
    /// body keeps the content type its headers give, if any).
    fn body(&self) -> (Option<HeaderValue>, Bytes) {
        match self.custom.as_ref().and_then(|c| c.body.clone()) {
            Some(body) => (None, body),
            None => (
                Some(HeaderValue::from_static("text/plain; charset=utf-8")),
                Bytes::from(format!(
                    "ferrule: {}: {}\n",
                    self.reason.as_str(),
                    self.detail
                )),
            ),
        }
    }

    /// The response a (non-gRPC) HTTP/1.1 client gets, as bytes for the fast path: the same
    /// status, headers and body as [`ProxyError::into_response`], plus `connection: close`
    /// when the connection ends after it. A response to `HEAD` has the same head and no body.
    pub fn to_http1(&self, close: bool, head_request: bool) -> Vec<u8> {
        use std::io::Write;
        let status = self.status();
        let (ctype, body) = self.body();
        let mut out = Vec::with_capacity(160 + body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (k, v) in self.extra_headers() {
            // The policy's headers never carry framing or the reason (the config refuses
            // connection-scoped names; these two are written below).
            if k == http::header::CONTENT_LENGTH || k == FERRULE_ERROR {
                continue;
            }
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(ctype) = ctype {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(ctype.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(
            out,
            "{}: {}\r\ncontent-length: {}\r\n{}\r\n",
            FERRULE_ERROR.as_str(),
            self.reason.as_str(),
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if !head_request {
            out.extend_from_slice(&body);
        }
        out
    }
}

/// The gRPC status gRPC's own HTTP-to-gRPC mapping gives an HTTP status
/// (grpc/grpc `doc/http-grpc-status-mapping.md`), for an abort configured with an HTTP status
/// only.
fn grpc_of_http(s: StatusCode) -> &'static str {
    match s.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502 | 503 | 504 => "14",
        _ => "2",
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
