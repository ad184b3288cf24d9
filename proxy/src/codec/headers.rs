//! HTTP plumbing shared by every codec: the body types, the one hop-by-hop rule (for header
//! maps here, and for the fast path's in-place heads in `h1`), authority extraction, and the
//! rewrite of a request for the next hop's protocol.

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub use crate::codec::h2body::H2Body;
use crate::codec::idle::IdleBody;

/// A request body as received from downstream (hyper's HTTP/1.1 server or an HTTP/2 stream),
/// or recorded and replayed for a retry.
pub use crate::codec::body::RequestBody;

/// A response body streamed from the next hop: from hyper's HTTP/1.1 client, or from an
/// HTTP/2 stream (`h2client`).
pub type UpstreamBody = Either<Incoming, H2Body>;

/// Body of every response the proxy returns: a streamed upstream body, or one the proxy made.
pub type ProxyBody = Either<IdleBody<UpstreamBody>, Full<Bytes>>;

/// Names the reason of every response the proxy makes itself.
pub static FERRULE_ERROR: HeaderName = HeaderName::from_static("ferrule-error");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether a header is connection-scoped by name (RFC 9110 §7.6.1, plus the `Keep-Alive`,
/// `Proxy-Connection` and `Proxy-Authorization` of older proxies): it is never forwarded,
/// whatever `Connection` says. `te` is in the set; an HTTP/2 hop keeps `te: trailers` only.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // Dispatch on length first: most header names are none of these.
    match name.len() {
        2 => name.eq_ignore_ascii_case(b"te"),
        7 => name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"trailer"),
        10 => name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"),
        16 => name.eq_ignore_ascii_case(b"proxy-connection"),
        17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
        19 => name.eq_ignore_ascii_case(b"proxy-authorization"),
        _ => false,
    }
}

/// Which connection-scoped header `name` is, as one bit of a set: the same names as
/// [`is_hop_by_hop`] (a test holds them together), for the header-map stripper, which wants to
/// know which ones a map has. (The fast path keeps the plain test, which it runs on every
/// header of every head.)
fn hop_by_hop(name: &[u8]) -> Option<u8> {
    // Dispatch on length first: most header names are none of these.
    let hop = match name.len() {
        2 if name.eq_ignore_ascii_case(b"te") => HOP_TE,
        7 if name.eq_ignore_ascii_case(b"upgrade") => HOP_UPGRADE,
        7 if name.eq_ignore_ascii_case(b"trailer") => HOP_TRAILER,
        10 if name.eq_ignore_ascii_case(b"connection") => HOP_CONNECTION,
        10 if name.eq_ignore_ascii_case(b"keep-alive") => HOP_KEEP_ALIVE,
        16 if name.eq_ignore_ascii_case(b"proxy-connection") => HOP_PROXY_CONNECTION,
        17 if name.eq_ignore_ascii_case(b"transfer-encoding") => HOP_TRANSFER_ENCODING,
        19 if name.eq_ignore_ascii_case(b"proxy-authorization") => HOP_PROXY_AUTHORIZATION,
        _ => return None,
    };
    Some(hop)
}

const HOP_TE: u8 = 1;
const HOP_UPGRADE: u8 = 1 << 1;
const HOP_TRAILER: u8 = 1 << 2;
const HOP_CONNECTION: u8 = 1 << 3;
const HOP_KEEP_ALIVE: u8 = 1 << 4;
const HOP_PROXY_CONNECTION: u8 = 1 << 5;
const HOP_TRANSFER_ENCODING: u8 = 1 << 6;
const HOP_PROXY_AUTHORIZATION: u8 = 1 << 7;

/// Whether `Connection` may name header `name` away. `Content-Length` and `Host` are never
/// removed this way: a message whose framing or target vanished on the way would be read
/// differently by the next hop.
fn connection_may_remove(name: &[u8]) -> bool {
    !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"host"))
}

/// Whether header `name` is listed by any of the `Connection` values (every `Connection` line
/// counts, not only the first), so it must not be forwarded either (see
/// [`connection_may_remove`] for the two it never removes).
pub fn listed_in_connection<'a>(name: &[u8], connection: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut connection = connection.peekable();
    // Nearly every head has no `Connection` line naming anything: no work per header then.
    if connection.peek().is_none() || !connection_may_remove(name) {
        return false;
    }
    connection.any(|list| {
        list.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// Removes the connection-scoped headers of RFC 9110 §7.6.1, and every header that any
/// `Connection` line names, so they never leak onto the next hop. The same rule as the fast
/// path's ([`is_hop_by_hop`] and [`listed_in_connection`]).
///
/// `keep_te_trailers` keeps `te: trailers`, which gRPC needs end to end over HTTP/2.
///
/// Runs on every request and response: one pass over the (few) header names decides whether
/// there is anything to remove at all, instead of a hashed lookup per hop-by-hop name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // Which of them are there: a gRPC request carries `te` alone, and then that is the only
    // lookup (a hashed removal of each of the others cost about 700 instructions per call).
    let present = headers
        .keys()
        .filter_map(|n| hop_by_hop(n.as_str().as_bytes()))
        .fold(0, |set, hop| set | hop);
    if present == 0 {
        return;
    }
    // Every `Connection` line goes, and with it every name any of them lists (other than the
    // ones removed anyway), in one lookup.
    if present & HOP_CONNECTION != 0 {
        if let Entry::Occupied(lines) = headers.entry(header::CONNECTION) {
            let (_, lines) = lines.remove_entry_mult();
            let mut listed: Vec<HeaderName> = Vec::new();
            for line in lines {
                for token in line.as_bytes().split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.is_empty() || is_hop_by_hop(token) || !connection_may_remove(token) {
                        continue;
                    }
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        listed.push(name);
                    }
                }
            }
            for name in &listed {
                headers.remove(name);
            }
        }
    }
    let others: [(u8, &HeaderName); 6] = [
        (HOP_KEEP_ALIVE, &KEEP_ALIVE),
        (HOP_PROXY_CONNECTION, &PROXY_CONNECTION),
        (HOP_PROXY_AUTHORIZATION, &header::PROXY_AUTHORIZATION),
        (HOP_TRAILER, &header::TRAILER),
        (HOP_TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (HOP_UPGRADE, &header::UPGRADE),
    ];
    for (hop, name) in others {
        if present & hop != 0 {
            headers.remove(name);
        }
    }
    if present & HOP_TE == 0 {
        return;
    }
    let mut te_lines = headers.get_all(header::TE).iter();
    if let Some(te) = te_lines.next() {
        let exact = te.as_bytes() == b"trailers";
        let trailers_only = exact || te.as_bytes().eq_ignore_ascii_case(b"trailers");
        let one_line = te_lines.next().is_none();
        if !(keep_te_trailers && trailers_only && one_line) {
            headers.remove(header::TE);
        } else if !exact {
            // HTTP/2 allows only the lowercase token (h2 refuses the request otherwise).
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Whether an HTTP/1.0 request asks to keep its connection (`Connection: keep-alive`). Its
/// response must then say so too, or hyper's server closes the connection after it (HTTP/1.0
/// has no persistent connections by default, and hyper leaves the answer to the service); the
/// upstream's own `Connection` line is hop-by-hop and never reaches the client.
pub fn http10_keep_alive<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_10
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
        })
}

/// Says in a response head that the connection stays open (see [`http10_keep_alive`]).
pub fn set_keep_alive(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
}

/// Joins the crumbs of a cookie split over several `cookie` fields into one, with "; "
/// between them, as RFC 9113 §8.2.3 requires before a request goes on as HTTP/1.1 (or to any
/// code that reads one `Cookie` line). HTTP/2 clients split cookies so that HPACK compresses
/// each crumb on its own; the HTTP/2 server joins them as each request arrives, so every
/// later step, the header limits included, sees the request as one cookie line. Costs one
/// lookup when there is at most one crumb.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid value, and "; " is too.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
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

/// Methods a retry or a resend cannot do twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Sets the request's remaining time for the next hop: `ferrule-deadline` in milliseconds and,
/// for gRPC, `grpc-timeout`, replacing what the caller sent (the time has moved on since).
pub fn set_deadline(headers: &mut HeaderMap, left: std::time::Duration, grpc: bool) {
    let ms = left.as_millis().min(99_999_999) as u64;
    headers.insert(&DEADLINE, HeaderValue::from(ms));
    if grpc {
        if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
            headers.insert(&GRPC_TIMEOUT, v);
        }
    }
}

/// The header that carries a request's remaining time, in milliseconds.
pub static DEADLINE: HeaderName = HeaderName::from_static("ferrule-deadline");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether an exchange failed because the peer refused the stream (HTTP/2 `REFUSED_STREAM`,
/// RFC 9113 §8.7: it did no work on it), through any layer of error sources.
pub fn is_refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = err.source();
    }
    false
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
            // `Host` names the authority the request was routed by: an absolute-form
            // target's wins over a `Host` line that disagrees (RFC 9112 §3.2.2), as on the
            // fast path, and an HTTP/2 request's `:authority` becomes it.
            let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
            if host != Some(authority.as_bytes()) {
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

    /// Regression: only the first `Connection` line's names were removed, so a name listed on
    /// a second line leaked to the next hop.
    #[test]
    fn names_on_every_connection_line_are_removed() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(header::CONNECTION, "x-secret, X-Other".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "2".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "0".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);

        // `Connection` cannot remove the framing or the host.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "content-length, host".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn both_forms_of_the_hop_by_hop_set_agree() {
        let names = [
            "te",
            "TE",
            "upgrade",
            "trailer",
            "Trailer",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "Proxy-Authorization",
            "host",
            "trailers",
            "content-length",
            "x-te",
            "keep-alive2",
            "",
        ];
        let mut bits = 0;
        for name in names {
            let hop = hop_by_hop(name.as_bytes());
            assert_eq!(hop.is_some(), is_hop_by_hop(name.as_bytes()), "{name}");
            bits |= hop.unwrap_or(0);
        }
        // Every bit names one of them.
        assert_eq!(bits, u8::MAX);
    }

    /// Regression (issue 15, defect 3): an HTTP/2 request's cookie crumbs reached an HTTP/1.1
    /// app as several `Cookie` lines.
    #[test]
    fn cookie_crumbs_become_one_line() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        h.append(header::COOKIE, "c=3".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        assert_eq!(h.len(), 2);
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, "a=1".parse().unwrap());
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[test]
    fn an_http1_hop_gets_the_routed_authority_as_host() {
        let mut req = Request::get("http://echo:80/x")
            .header(header::HOST, "other")
            .body(())
            .unwrap();
        set_wire(&mut req, Wire::Http1, "echo:80").unwrap();
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers().get_all(header::HOST).iter().count(), 1);
        assert_eq!(req.headers()[header::HOST], "echo:80");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("Echo:8080"), "echo");
        assert_eq!(host_of("echo"), "echo");
        assert_eq!(host_of("user@echo:1"), "echo");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
