//! HTTP plumbing shared by both directions: the body types, hop-by-hop headers, authority
//! extraction and the rewrite of a request for the next hop's protocol.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub use crate::h2stream::H2Body;

/// A request body as received from downstream: from hyper's HTTP/1.1 server (the general
/// path), or from an HTTP/2 stream (`h2server`).
pub type RequestBody = Either<Incoming, H2Body>;

/// A response body streamed from the next hop: from hyper's HTTP/1.1 client, or from an
/// HTTP/2 stream (`h2client`).
pub type UpstreamBody = Either<Incoming, H2Body>;

/// Body of every response the proxy returns: a streamed upstream body, or one the proxy made.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Names the reason of every response the proxy makes itself.
pub static FERRULE_ERROR: HeaderName = HeaderName::from_static("ferrule-error");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the connection-scoped headers of RFC 9110 §7.6.1, and every header that
/// `Connection` names, so they never leak onto the next hop.
///
/// `keep_te_trailers` keeps `te: trailers`, which gRPC needs end to end over HTTP/2.
///
/// Runs on every request and response: one pass over the (few) header names decides whether
/// there is anything to remove at all, instead of a hashed lookup per hop-by-hop name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    let mut found = false;
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            found = true;
            break;
        }
    }
    if !found {
        return;
    }
    if let Some(conn) = headers.remove(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                let name = name.trim();
                if !name.is_empty() {
                    headers.remove(name);
                }
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    if let Some(te) = headers.get(header::TE) {
        let exact = te.as_bytes() == b"trailers";
        let trailers_only = exact || te.as_bytes().eq_ignore_ascii_case(b"trailers");
        if !(keep_te_trailers && trailers_only) {
            headers.remove(header::TE);
        } else if !exact {
            // HTTP/2 allows only the lowercase token (h2 refuses the request otherwise).
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TRAILER
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The authority a request is for: the URI's (absolute-form proxy requests, HTTP/2
/// `:authority`) or else the `Host` header.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers().get(header::HOST)?.to_str().ok()
}

/// The host part of an authority, lower-cased, without port or userinfo. Borrowed when it is
/// already lower case, as nearly every host is, to keep an allocation off the request path.
pub fn host_of(authority: &str) -> std::borrow::Cow<'_, str> {
    let a = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(rest) = a.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        a.split(':').next().unwrap_or(a)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Whether the request is gRPC (then proxy errors are reported as gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Which wire protocol to use towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 over a pooled connection.
    Http1,
    /// Prior-knowledge HTTP/2 over one multiplexed connection.
    Http2,
}

/// Rewrites a request for the next hop's protocol: HTTP/2 wants an absolute URI (scheme and
/// `:authority`) and no `Host`; HTTP/1.1 wants origin-form with a `Host` header.
pub fn set_wire<B>(req: &mut Request<B>, wire: Wire, authority: &str) -> Result<(), String> {
    match wire {
        Wire::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            if req.uri().scheme().is_none() || req.uri().authority().is_none() {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| format!("invalid authority {authority:?}: {e}"))?;
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(header::HOST);
        }
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            if req.uri().authority().is_some() {
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
            }
            if !req.headers().contains_key(header::HOST) {
                let v = HeaderValue::from_str(authority)
                    .map_err(|_| format!("invalid authority {authority:?}"))?;
                req.headers_mut().insert(header::HOST, v);
            }
            // `te: trailers` is only meaningful with `Connection: te`; drop it on HTTP/1.1.
            req.headers_mut().remove(header::TE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_scoped_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        let mut grpc = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut grpc, true);
        assert_eq!(grpc.get(header::TE).unwrap(), "trailers");
        // HTTP/1.1 matches the token in any case; HTTP/2 takes only lowercase.
        let mut mixed = HeaderMap::new();
        mixed.insert(header::TE, "Trailers".parse().unwrap());
        strip_hop_by_hop(&mut mixed, true);
        assert_eq!(mixed.get(header::TE).unwrap().as_bytes(), b"trailers");
        mixed.insert(header::TE, "trailers, deflate".parse().unwrap());
        strip_hop_by_hop(&mut mixed, true);
        assert!(mixed.get(header::TE).is_none());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("Echo:8080"), "echo");
        assert_eq!(host_of("echo"), "echo");
        assert_eq!(host_of("user@echo:1"), "echo");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
