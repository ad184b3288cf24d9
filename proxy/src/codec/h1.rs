//! HTTP/1.1 wire pieces of the fast path (`fastpath.rs`): parsing a request or response head in
//! place, deciding whether the fast path may carry it, writing the head for the next hop without
//! hop-by-hop headers, and tracking where a body ends so its bytes pass through unchanged.
//!
//! Everything here is synchronous and allocation-free apart from the output buffer, so it is
//! tested on byte strings. Anything unusual (HTTP/1.0, CONNECT, upgrades, `Expect`, both
//! `Content-Length` and `Transfer-Encoding`, a malformed head, too many headers) is *not* handled
//! here: the parser answers [`Parsed::General`] and the connection goes to the general hyper
//! path, which has the complete HTTP/1.1 semantics and the error responses for bad input.
//!
//! The rules a request head must meet to be proxied at all ([`check_request`]: one valid
//! `Host`, a target in origin or absolute form, framing headers that say one thing) live here
//! too, so the general path's guard (`h1guard`) refuses exactly what the fast path declines.
//! Chunked bodies lose their chunk extensions on the way, on both paths ([`BodyTracker::feed`]).

use bytes::BytesMut;
use http::{HeaderName, HeaderValue};

use crate::base::MAX_HEADER_BYTES;
use crate::codec::headers::{is_hop_by_hop, listed_in_connection, DEADLINE};
use crate::codec::HeadView;

/// Most headers a request head may have on the fast path; more go to the general path.
pub const MAX_HEADERS: usize = 64;
/// Most headers a response head may have: as many as hyper's client takes, since a response
/// cannot be handed to the general path.
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// Most `Connection` header lines a head may have on the fast path (a request with more goes
/// to the general path; a response with more is refused).
const MAX_CONNECTION_LINES: usize = 4;

/// The values of a head's `Connection` lines, borrowed from the read buffer.
#[derive(Debug, Default)]
struct ConnectionLines<'a> {
    lines: [&'a [u8]; MAX_CONNECTION_LINES],
    len: usize,
}

impl<'a> ConnectionLines<'a> {
    fn is_full(&self) -> bool {
        self.len == MAX_CONNECTION_LINES
    }

    /// Adds a line; the caller checks `is_full` first.
    fn push(&mut self, value: &'a [u8]) {
        self.lines[self.len] = value;
        self.len += 1;
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        &self.lines[..self.len]
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response body that ends when the upstream closes the connection.
    UntilClose,
}

/// A request head the fast path can carry, borrowed from the read buffer.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a str,
    /// Origin-form target (path and query) to send upstream.
    pub target: &'a str,
    /// Authority: from an absolute-form target, else the `Host` header.
    pub authority: Option<&'a str>,
    /// Headers as received.
    pub headers: &'a [httparse::Header<'a>],
    /// Body framing.
    pub framing: Framing,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// Length of the head in the buffer.
    pub len: usize,
    /// Values of the `Connection` lines (they name more hop-by-hop headers).
    connection: ConnectionLines<'a>,
    /// Whether the request is gRPC (`content-type: application/grpc...`).
    grpc: bool,
}

impl HeadView for RequestHead<'_> {
    fn method(&self) -> &str {
        self.method
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }

    fn has_header(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        self.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_str()) && h.value == value.as_bytes())
    }

    fn authority(&self) -> Option<&str> {
        self.authority
    }

    fn is_grpc(&self) -> bool {
        self.grpc
    }

    fn is_http2(&self) -> bool {
        false
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.len() == name.len() && h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Result of parsing the start of a buffer as a request.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// The head is not complete yet.
    Partial,
    /// A head the fast path carries.
    Ready(RequestHead<'a>),
    /// Leave this connection to the general path.
    General,
}

/// Parses a request head at the start of `buf`.
pub fn parse_request<'a>(buf: &'a [u8], headers: &'a mut [httparse::Header<'a>]) -> Parsed<'a> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        // A head over the limit that arrived whole in one read: the general path answers 431.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEADER_BYTES => return Parsed::General,
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::General,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::General;
    };
    if method == "CONNECT" {
        return Parsed::General;
    }
    let (target, uri_authority) = if target.starts_with('/') {
        (target, None)
    } else if let Some(rest) = target.strip_prefix("http://") {
        // Absolute form, as sent to an explicit proxy.
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        // Userinfo in the target is refused (RFC 9110 §4.2.4), by the general path.
        if authority.is_empty() || !path.starts_with('/') || authority.contains('@') {
            return Parsed::General;
        }
        (path, Some(authority))
    } else {
        return Parsed::General;
    };
    let headers: &'a [httparse::Header<'a>] = req.headers;
    let mut host = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut connection = ConnectionLines::default();
    let mut close = false;
    let mut grpc = false;
    for h in headers {
        let name = h.name.as_bytes();
        // Dispatch on length first: most headers are none of these.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                // Two, or one that names no authority: the general path answers 400.
                if host.is_some() || !valid_authority(h.value) {
                    return Parsed::General;
                }
                host = Some(h.value);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::General,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::General,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                if connection.is_full() {
                    return Parsed::General;
                }
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::General;
                    }
                }
                connection.push(h.value);
            }
            // gRPC needs HTTP/2: the plan sends it to the general path.
            12 if name.eq_ignore_ascii_case(b"content-type")
                && h.value.starts_with(b"application/grpc") =>
            {
                grpc = true;
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let Some(n) = parse_length(h.value) else {
                    return Parsed::General;
                };
                if length.is_some_and(|l| l != n) {
                    return Parsed::General;
                }
                length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Parsed::General;
                }
                chunked = true;
            }
            _ => {}
        }
    }
    let framing = match (length, chunked) {
        // Both: the request-smuggling shape; the general path refuses it with 400.
        (Some(_), true) => return Parsed::General,
        (Some(0), false) | (None, false) => Framing::Empty,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    // Every HTTP/1.1 request names its host, absolute-form ones too (RFC 9112 §3.2); one
    // without gets 400 from the general path. (A valid authority is ASCII.)
    let Some(Ok(host)) = host.map(std::str::from_utf8) else {
        return Parsed::General;
    };
    Parsed::Ready(RequestHead {
        method,
        target,
        authority: Some(uri_authority.unwrap_or(host)),
        headers,
        framing,
        close,
        len,
        connection,
        grpc,
    })
}

/// A response head, borrowed from the upstream's read buffer.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    /// Status code.
    pub status: u16,
    reason: &'a str,
    headers: &'a [httparse::Header<'a>],
    connection: ConnectionLines<'a>,
    /// The body is framed by `Transfer-Encoding`, so any `Content-Length` must not be forwarded.
    transfer_encoded: bool,
    /// Body framing (already accounting for `HEAD` requests and bodiless statuses).
    pub framing: Framing,
    /// The upstream will close the connection after this response.
    pub close: bool,
    /// Length of the head in the buffer.
    pub len: usize,
}

impl ResponseHead<'_> {
    /// `Retry-After` in its seconds form, on a 429 or 503 (the only statuses it means a wait on).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        if self.status != 429 && self.status != 503 {
            return None;
        }
        let h = self
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("retry-after"))?;
        let secs: u32 = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        Some(std::time::Duration::from_secs(u64::from(secs)))
    }
}

/// Why an upstream's response cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// Not a parseable HTTP/1.x response head.
    #[error("malformed response head")]
    Malformed,
    /// Conflicting or invalid framing headers.
    #[error("invalid response framing (Content-Length / Transfer-Encoding)")]
    Framing,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
}

/// Parses a response head at the start of `buf`; `Ok(None)` if it is not complete yet.
pub fn parse_response<'a>(
    buf: &'a [u8],
    headers: &'a mut [httparse::Header<'a>],
    request_was_head: bool,
) -> Result<Option<ResponseHead<'a>>, BadResponse> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse::Malformed);
    };
    if status == 101 {
        return Err(BadResponse::UnexpectedUpgrade);
    }
    let headers: &'a [httparse::Header<'a>] = resp.headers;
    let mut length: Option<u64> = None;
    let mut transfer_encoded = false;
    let mut connection = ConnectionLines::default();
    let mut close = false;
    let mut keep_alive = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::Framing)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Framing);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only plain `chunked` is relayed: the head sent on says `transfer-encoding:
            // chunked`, so another coding (`gzip, chunked`, or one spread over several lines)
            // would be lost on the way. Such responses are refused rather than mangled.
            if transfer_encoded || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse::Framing);
            }
            transfer_encoded = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if connection.is_full() {
                return Err(BadResponse::Malformed);
            }
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
            connection.push(h.value);
        }
    }
    if version == 0 && !keep_alive {
        close = true;
    }
    let bodiless =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length (which is then not forwarded).
    let framing = if bodiless {
        Framing::Empty
    } else if transfer_encoded {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok(Some(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        headers,
        connection,
        transfer_encoded,
        framing,
        close,
        len,
    }))
}

/// A strict decimal `Content-Length` value.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a `Host` value (or an absolute-form target's authority) is an authority: `host`
/// or `host:port`, where host is a registered name, an IPv4 address or a bracketed IP literal
/// (RFC 3986 §3.2.2). Checked byte by byte for the characters those may contain; no
/// userinfo (`@`), path, space or control byte. An empty `Host` names nothing to route to.
pub fn valid_authority(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter().all(|&b| {
            matches!(b,
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
                | b'-' | b'.' | b'_' | b'~' | b'%'
                | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
                | b':' | b'[' | b']')
        })
}

/// What [`check_request`] learned of a valid request head's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFacts {
    /// Its `Content-Length`, if it has one.
    pub length: Option<u64>,
    /// Its body is chunked.
    pub chunked: bool,
    /// It asks for an upgrade, or it is a CONNECT: what follows may not be HTTP/1.1.
    pub tunnel: bool,
}

impl HeadFacts {
    /// Both framing headers: the request-smuggling shape. It is left to the guard to answer
    /// (see `h1guard`), which refuses the request it starts and closes the connection.
    pub fn framed_twice(&self) -> bool {
        self.length.is_some() && self.chunked
    }
}

/// The rules of RFC 9112 a request head must meet before any path proxies it; `Err` says
/// which one it breaks (the guard answers 400 with that, and closes the connection):
///
/// - exactly one `Host`, a valid authority; HTTP/1.1 requires it (§3.2);
/// - a target in origin form or absolute form (an authority without userinfo); asterisk form
///   (`OPTIONS *`, `GET *`) is about the proxy, not the app, and is refused, as is authority
///   form other than for CONNECT (§3.2);
/// - every `Content-Length` a number, all of them the same (§6.3);
/// - `Transfer-Encoding` only in HTTP/1.1, and only `chunked`, once: the next hop gets the
///   body re-framed as chunked, so any other coding would be lost on the way (§6.1).
///
/// The fast path carries a subset of these heads (`parse_request`), so what is refused here is
/// refused on both paths.
pub fn check_request(req: &httparse::Request<'_, '_>) -> Result<HeadFacts, &'static str> {
    let version = req.version.unwrap_or(1);
    let method = req.method.unwrap_or_default();
    let connect = method == "CONNECT";
    check_target(connect, req.path.unwrap_or_default())?;
    let mut facts = HeadFacts {
        tunnel: connect,
        ..HeadFacts::default()
    };
    let mut hosts = 0;
    let mut encoded = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Err("the request has more than one Host header");
            }
            if !valid_authority(h.value) {
                return Err("the Host header is not a valid host[:port]");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or("Content-Length is not a decimal number")?;
            if facts.length.is_some_and(|l| l != n) {
                return Err("the request has conflicting Content-Length values");
            }
            facts.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if version == 0 {
                return Err("Transfer-Encoding is not allowed in an HTTP/1.0 request");
            }
            encoded = true;
            for coding in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() {
                    continue;
                }
                if facts.chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err("only `Transfer-Encoding: chunked` is accepted, applied once");
                }
                facts.chunked = true;
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            facts.tunnel = true;
        }
    }
    if encoded && !facts.chunked {
        return Err("only `Transfer-Encoding: chunked` is accepted, applied once");
    }
    if hosts == 0 && version == 1 {
        return Err("an HTTP/1.1 request must have a Host header");
    }
    Ok(facts)
}

/// The request-target rule of [`check_request`].
fn check_target(connect: bool, target: &str) -> Result<(), &'static str> {
    if connect || target.starts_with('/') {
        // CONNECT's authority form is the tunnel's business (the outbound listener refuses it).
        return Ok(());
    }
    if target == "*" {
        return Err("asterisk-form targets (`*`) are not proxied");
    }
    let absolute = target.split_once("://").and_then(|(scheme, rest)| {
        let mut s = scheme.bytes();
        let scheme_ok = s.next().is_some_and(|b| b.is_ascii_alphabetic())
            && s.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        scheme_ok.then_some(authority)
    });
    match absolute {
        Some(a) if valid_authority(a.as_bytes()) => Ok(()),
        Some(_) => Err("the target's authority is not a valid host[:port]"),
        None => Err("the request target must be a path or an absolute URI"),
    }
}

/// Whether a header must not be forwarded: the one hop-by-hop rule of `codec::headers`, over
/// every `Connection` line of the head. Framing headers are written back by the caller when the
/// framing passes through.
fn skip_header(name: &str, connection: &[&[u8]]) -> bool {
    let n = name.as_bytes();
    is_hop_by_hop(n) || listed_in_connection(n, connection.iter().copied())
}

/// Width of the deadline value [`write_request_head`] leaves room for: milliseconds, zero
/// padded, so the value can be rewritten in place before each attempt.
pub const DEADLINE_DIGITS: usize = 8;

/// Writes the head to send upstream: origin-form target, `Host` set to `authority`, no
/// hop-by-hop headers, the body framing kept as received. With `deadline`, a
/// `ferrule-deadline` line replaces the caller's, and its value's offset in `out` is returned
/// (see [`set_deadline`]).
pub fn write_request_head(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    authority: &str,
    deadline: bool,
) -> Option<usize> {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = head.connection.as_slice();
    for h in head.headers {
        let replaced = h.name.eq_ignore_ascii_case("host")
            || (deadline && h.name.eq_ignore_ascii_case(DEADLINE.as_str()));
        if !replaced && !skip_header(h.name, connection) {
            push_header(out, h);
        }
    }
    let at = deadline.then(|| {
        out.extend_from_slice(b"ferrule-deadline: ");
        let at = out.len();
        out.extend_from_slice(&[b'0'; DEADLINE_DIGITS]);
        out.extend_from_slice(b"\r\n");
        at
    });
    end_framing(out, head.framing);
    out.extend_from_slice(b"\r\n");
    at
}

/// Writes `left` (milliseconds, saturating) into the deadline value at `at` of a head from
/// [`write_request_head`].
pub fn set_deadline(out: &mut [u8], at: usize, left: std::time::Duration) {
    let mut ms = left.as_millis().min(10u128.pow(DEADLINE_DIGITS as u32) - 1) as u64;
    for b in out[at..at + DEADLINE_DIGITS].iter_mut().rev() {
        *b = b'0' + (ms % 10) as u8;
        ms /= 10;
    }
}

fn push_header(out: &mut Vec<u8>, h: &httparse::Header<'_>) {
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(h.value);
    out.extend_from_slice(b"\r\n");
}

/// A chunked body passes through as it came, so its head says so again (the received
/// `Transfer-Encoding` line is hop-by-hop and was skipped).
fn end_framing(out: &mut Vec<u8>, framing: Framing) {
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
}

/// Appends the head to send to the client to `out`, without hop-by-hop headers, but without its final
/// blank line: [`end_head`] adds that once the caller knows whether the connection stays open.
pub fn write_response_head(out: &mut Vec<u8>, head: &ResponseHead<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa3(head.status);
    out.append(&mut code);
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in head.headers {
        let dropped_length = head.transfer_encoded && h.name.eq_ignore_ascii_case("content-length");
        if !dropped_length && !skip_header(h.name, head.connection.as_slice()) {
            push_header(out, h);
        }
    }
    end_framing(out, head.framing);
}

/// Ends a head from [`write_response_head`], with `connection: close` when the client
/// connection ends after this response.
pub fn end_head(out: &mut Vec<u8>, close_client: bool) {
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn itoa3(status: u16) -> Vec<u8> {
    let s = status.min(999);
    vec![
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Where a body ends, fed the bytes as they arrive. The bytes pass through unchanged, but
/// for the extensions of a chunked body's size lines, which are taken out.
#[derive(Debug)]
pub enum BodyTracker {
    /// This many bytes still belong to the body.
    Length(u64),
    /// A chunked body, decoded just enough to find its end.
    Chunked(Chunked),
    /// Everything until the connection closes.
    UntilClose,
}

/// The body is not valid chunked encoding, or breaks one of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked encoding")]
pub struct BadChunk;

impl BodyTracker {
    /// A tracker for a body with this framing.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyTracker::Length(0),
            Framing::Length(n) => BodyTracker::Length(n),
            Framing::Chunked => BodyTracker::Chunked(Chunked::default()),
            Framing::UntilClose => BodyTracker::UntilClose,
        }
    }

    /// Whether the body has ended (an until-close body ends only at EOF).
    pub fn done(&self) -> bool {
        match self {
            BodyTracker::Length(n) => *n == 0,
            BodyTracker::Chunked(c) => c.done(),
            BodyTracker::UntilClose => false,
        }
    }

    /// Takes the leading bytes of `buf` that belong to the body; returns how many. A chunked
    /// body's extensions are removed from `buf` on the way (what follows them moves up), so
    /// `buf[..n]` is what goes on. After an error `buf` is not to be used.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<usize, BadChunk> {
        match self {
            BodyTracker::Length(n) => {
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            BodyTracker::Chunked(c) => c.feed(buf),
            BodyTracker::UntilClose => Ok(buf.len()),
        }
    }
}

/// Largest trailer section accepted after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;
/// Longest chunk-size line, extensions included, CRLF not (`1;` and 4 KiB of anything is not a size
/// line anyone needs). hyper allows 16 KiB of extensions over a whole body.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

/// State of the chunked-encoding scanner (RFC 9112 §7.1).
///
/// Chunk extensions are dropped rather than forwarded, as hyper does on the general path: no
/// extension has a registered meaning, and a proxy that passes them on verbatim hands the next
/// hop whatever parser quirks they were crafted for. They are still held to the grammar's
/// characters (visible ASCII, space, HTAB and obs-text; no other control byte) and to
/// [`MAX_CHUNK_LINE`], so a malformed one gets 400 rather than silence.
#[derive(Debug, Default, Clone)]
pub struct Chunked {
    state: ChunkState,
    /// Size of the chunk being read, then bytes of it still to come.
    size: u64,
    digits: u8,
    trailer_bytes: usize,
    /// Bytes of the current size line or trailer line so far.
    line_len: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

/// Whether `b` may appear in a field value or a chunk extension (RFC 9110 §5.5: HTAB, SP,
/// VCHAR, obs-text).
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl Chunked {
    /// Whether the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// [`BodyTracker::feed`] for a chunked body.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<usize, BadChunk> {
        let (kept, read) = self.scan(buf)?;
        if kept != read {
            // Close the gap the extensions left: the bytes after the body's part move up.
            buf.copy_within(read.., kept);
            buf.truncate(buf.len() - (read - kept));
        }
        Ok(kept)
    }

    /// Scans `buf` up to the body's end and moves each byte that goes on to the front, over
    /// the extension bytes dropped before it. Returns the bytes kept and the bytes read.
    fn scan(&mut self, buf: &mut [u8]) -> Result<(usize, usize), BadChunk> {
        let (mut i, mut w) = (0, 0);
        while i < buf.len() {
            let b = buf[i];
            let mut keep = true;
            match self.state {
                ChunkState::Size | ChunkState::SizeSpace | ChunkState::Extension => {
                    // The line's length, without its CRLF.
                    self.line_len += usize::from(b != b'\r');
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err(BadChunk);
                    }
                    keep = self.size_line(b)?;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.digits = 0;
                    self.line_len = 0;
                    if self.size == 0 {
                        self.state = ChunkState::Trailer;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    // Skip the chunk's bytes in one step.
                    let take = self.size.min((buf.len() - i) as u64) as usize;
                    if w != i {
                        buf.copy_within(i..i + take, w);
                    }
                    self.size -= take as u64;
                    i += take;
                    w += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(BadChunk);
                    }
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if field_byte(b) {
                        self.line_len += 1;
                    } else {
                        return Err(BadChunk);
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    if self.line_len == 0 {
                        self.state = ChunkState::Done;
                        buf[w] = b;
                        return Ok((w + 1, i + 1));
                    }
                    self.line_len = 0;
                    self.state = ChunkState::Trailer;
                }
                ChunkState::Done => return Ok((w, i)),
            }
            if keep {
                buf[w] = b;
                w += 1;
            }
            i += 1;
        }
        Ok((w, i))
    }

    /// One byte of a chunk-size line before its CR: the hex size, then optional whitespace
    /// and extensions. Returns whether the byte goes on (the size and the CR do; whitespace
    /// and extensions do not).
    fn size_line(&mut self, b: u8) -> Result<bool, BadChunk> {
        match (self.state, b) {
            (ChunkState::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                if self.digits == 15 {
                    return Err(BadChunk);
                }
                let d = (b as char).to_digit(16).expect("a hex digit") as u64;
                self.size = self.size * 16 + d;
                self.digits += 1;
                return Ok(true);
            }
            (_, b'\r') if self.digits > 0 => {
                self.state = ChunkState::SizeLf;
                return Ok(true);
            }
            // Whitespace after the size may only lead to an extension or the line's end
            // (`5 6` is not a size of 5), as hyper's decoder has it.
            (ChunkState::Size | ChunkState::SizeSpace, b' ' | b'\t') if self.digits > 0 => {
                self.state = ChunkState::SizeSpace;
            }
            (ChunkState::Size | ChunkState::SizeSpace, b';') if self.digits > 0 => {
                self.state = ChunkState::Extension;
            }
            (ChunkState::Extension, b) if field_byte(b) => {}
            _ => return Err(BadChunk),
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Option<(String, String, Option<String>, Framing, bool, usize)> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(raw.as_bytes(), &mut storage) {
            Parsed::Ready(h) => Some((
                h.method.to_owned(),
                h.target.to_owned(),
                h.authority.map(str::to_owned),
                h.framing,
                h.close,
                h.len,
            )),
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::General => None,
        }
    }

    #[test]
    fn ordinary_requests_take_the_fast_path() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: echo\r\n\r\n";
        let (m, t, a, f, close, len) = parse(raw).unwrap();
        assert_eq!(
            (m.as_str(), t.as_str(), a.as_deref()),
            ("GET", "/a?b=1", Some("echo"))
        );
        assert_eq!((f, close, len), (Framing::Empty, false, raw.len()));

        let (_, t, a, f, _, _) =
            parse("POST http://echo:80/x HTTP/1.1\r\nHost: other\r\nContent-Length: 5\r\n\r\n")
                .unwrap();
        assert_eq!((t.as_str(), a.as_deref()), ("/x", Some("echo:80")));
        assert_eq!(f, Framing::Length(5));

        let (_, t, _, f, close, _) = parse(
            "PUT http://echo HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!((t.as_str(), f, close), ("/", Framing::Chunked, true));
    }

    #[test]
    fn unusual_requests_go_to_the_general_path() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET https://a/ HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                parse(raw).is_none(),
                "{raw:?} should go to the general path"
            );
        }
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut storage),
            Parsed::Partial
        ));
    }

    /// The head `raw` becomes for the next hop.
    fn rewritten_request(raw: &str, authority: &str) -> String {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Ready(head) = parse_request(raw.as_bytes(), &mut storage) else {
            panic!("not ready: {raw:?}");
        };
        let mut out = Vec::new();
        write_request_head(&mut out, &head, authority, false);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_deadline_replaces_the_callers_and_is_rewritten_in_place() {
        let raw = "GET / HTTP/1.1\r\nHost: echo\r\nFerrule-Deadline: 999\r\nx: y\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Ready(head) = parse_request(raw.as_bytes(), &mut storage) else {
            panic!()
        };
        let mut out = Vec::new();
        let at = write_request_head(&mut out, &head, "echo", true).unwrap();
        set_deadline(&mut out, at, std::time::Duration::from_millis(1234));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "GET / HTTP/1.1\r\nhost: echo\r\nx: y\r\nferrule-deadline: 00001234\r\n\r\n"
        );
        // Saturates rather than wrapping.
        set_deadline(&mut out, at, std::time::Duration::from_secs(1_000_000));
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("ferrule-deadline: 99999999\r\n"));
        // Without a deadline the caller's header passes through.
        let mut out = Vec::new();
        assert_eq!(write_request_head(&mut out, &head, "echo", false), None);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Ferrule-Deadline: 999\r\n"));
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_only() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let raw = "HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n";
        let head = parse_response(raw.as_bytes(), &mut storage, false)
            .unwrap()
            .unwrap();
        assert_eq!(head.retry_after(), Some(std::time::Duration::from_secs(3)));
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let raw = "HTTP/1.1 200 OK\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n";
        let head = parse_response(raw.as_bytes(), &mut storage, false)
            .unwrap()
            .unwrap();
        assert_eq!(head.retry_after(), None);
    }

    /// The head `raw` becomes for the client (without the final blank line).
    fn rewritten_response(raw: &str) -> String {
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let head = parse_response(raw.as_bytes(), &mut storage, false)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_response_head(&mut out, &head);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_head_is_rewritten_without_hop_by_hop_headers() {
        let raw = "POST http://echo/x HTTP/1.1\r\nHost: stale\r\nConnection: keep-alive, x-hop\r\n\
                   X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: s\r\n\
                   Transfer-Encoding: chunked\r\nX-Keep: yes\r\n\r\n";
        assert_eq!(
            rewritten_request(raw, "echo"),
            "POST /x HTTP/1.1\r\nhost: echo\r\nX-Keep: yes\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |raw: &str, head: bool| {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_response(raw.as_bytes(), &mut storage, head)
                .map(|r| r.map(|r| (r.framing, r.close)))
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(framing(ok, false), Ok(Some((Framing::Length(3), false))));
        assert_eq!(framing(ok, true), Ok(Some((Framing::Empty, false))));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Some((Framing::Empty, false)))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Chunked, false)))
        );
        // Only plain chunked is relayed; other codings would be lost on the way.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Err(BadResponse::Framing)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(BadResponse::Framing)
        );
        // Transfer-Encoding overrides Content-Length.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Chunked, false)))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Some((Framing::UntilClose, true)))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok(Some((Framing::Length(1), true)))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Length(1), true)))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(BadResponse::Framing)
        );
        assert_eq!(
            framing("HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Err(BadResponse::UnexpectedUpgrade)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert_eq!(
            framing("garbage\r\n\r\n", false),
            Err(BadResponse::Malformed)
        );
    }

    #[test]
    fn response_head_is_rewritten() {
        let raw = "HTTP/1.1 404 Not Found\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n";
        let mut out = rewritten_response(raw).into_bytes();
        end_head(&mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nX-B: 2\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    /// Regression: a name listed on a second `Connection` line reached the next hop (the
    /// request went to the general path, whose rule looked at the first line only).
    #[test]
    fn names_on_every_connection_line_are_dropped() {
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: x-secret\r\n\
                   X-Secret: 1\r\nX-Keep: 2\r\n\r\n";
        assert_eq!(
            rewritten_request(raw, "a"),
            "GET / HTTP/1.1\r\nhost: a\r\nX-Keep: 2\r\n\r\n"
        );
    }

    #[test]
    fn connection_never_removes_framing_or_host() {
        let raw = "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host\r\n\
                   Content-Length: 3\r\n\r\n";
        assert_eq!(
            rewritten_request(raw, "a"),
            "POST / HTTP/1.1\r\nhost: a\r\nContent-Length: 3\r\n\r\n"
        );

        // Responses: Content-Length survives a Connection list naming it, names listed on
        // every Connection line are dropped, and a chunked response loses its Content-Length.
        let raw = "HTTP/1.1 200 OK\r\nConnection: content-length\r\nConnection: x-secret\r\n\
                   X-Secret: s\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            rewritten_response(raw),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
        );
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            rewritten_response(raw),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
        );
    }

    /// Feeds `input` to `t` in two reads split at `split`, the way a connection's buffer
    /// does (bytes after the body stay for the next message); returns what went on and what
    /// stayed.
    fn feed_split(t: &mut BodyTracker, input: &[u8], split: usize) -> (Vec<u8>, Vec<u8>) {
        let mut buf = BytesMut::from(&input[..split]);
        let mut out = Vec::new();
        let n = t.feed(&mut buf).unwrap();
        out.extend_from_slice(&buf.split_to(n));
        buf.extend_from_slice(&input[split..]);
        if !t.done() {
            let n = t.feed(&mut buf).unwrap();
            out.extend_from_slice(&buf.split_to(n));
        }
        (out, buf.to_vec())
    }

    #[test]
    fn chunked_bodies_end_where_the_encoding_says_in_any_split() {
        let body = b"5 ;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        // What goes on: the same chunks and trailers, without the extension and its space.
        let sent = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n";
        let mut all = body.to_vec();
        all.extend_from_slice(next);
        // Every split point: the tracker takes exactly the body, wherever the reads end.
        for split in 0..all.len() {
            let mut t = BodyTracker::new(Framing::Chunked);
            let (out, rest) = feed_split(&mut t, &all, split);
            assert_eq!(out, sent, "split at {split}");
            assert_eq!(rest, next, "split at {split}");
            assert!(t.done());
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"0\r\nX\n\r\n",
            b"ffffffffffffffff0\r\n",
            b"5 6\r\n",
            b";ext\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            // A control byte in an extension or a trailer.
            b"5;a=\x00\r\n",
            b"5;a=\x1b[31m\r\n",
            b"5;a\x7f\r\n",
            b"5;a\rb\r\n",
            b"0\r\nX-T: a\x00b\r\n\r\n",
        ] {
            let mut t = BodyTracker::new(Framing::Chunked);
            assert_eq!(
                t.feed(&mut BytesMut::from(bad)),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Regression (issue 15, defect 4): a 200 KiB chunk extension with a NUL in it reached the
    /// app verbatim. Extensions are dropped, held to the field characters and to 4 KiB a line.
    #[test]
    fn chunk_extensions_are_dropped_and_bounded() {
        // Quoted strings, tabs, obs-text and several extensions are fine, and all dropped.
        let body = b"3;a=1;b=\"x y\"\t;c=\xff\r\nabc\r\n0;last\r\n\r\n";
        for split in 0..body.len() {
            let mut t = BodyTracker::new(Framing::Chunked);
            let (out, rest) = feed_split(&mut t, body, split);
            assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n", "split at {split}");
            assert!(rest.is_empty() && t.done());
        }
        // A size line of exactly the limit passes; one byte more does not, in any split.
        let line = |len: usize| {
            let mut v = b"1;".to_vec();
            v.resize(len, b'x');
            v.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
            v
        };
        let mut t = BodyTracker::new(Framing::Chunked);
        let (out, _) = feed_split(&mut t, &line(MAX_CHUNK_LINE), MAX_CHUNK_LINE / 2);
        assert_eq!(out, b"1\r\na\r\n0\r\n\r\n");
        for split in [0, 10, MAX_CHUNK_LINE] {
            let input = line(MAX_CHUNK_LINE + 1);
            let mut t = BodyTracker::new(Framing::Chunked);
            let mut buf = BytesMut::from(&input[..split]);
            let first = t.feed(&mut buf).map(|n| buf.split_to(n));
            buf.extend_from_slice(&input[split..]);
            assert_eq!(
                first.and_then(|_| t.feed(&mut buf)),
                Err(BadChunk),
                "split {split}"
            );
        }
    }

    #[test]
    fn length_bodies_take_exactly_their_length() {
        let mut t = BodyTracker::new(Framing::Length(5));
        assert_eq!(t.feed(&mut BytesMut::from(&b"abc"[..])).unwrap(), 3);
        assert!(!t.done());
        assert_eq!(t.feed(&mut BytesMut::from(&b"deGET"[..])).unwrap(), 2);
        assert!(t.done());
        assert_eq!(t.feed(&mut BytesMut::from(&b"more"[..])).unwrap(), 0);
    }

    /// What [`check_request`] says of a head (`Ok` with its facts, or refused).
    fn check(raw: &[u8]) -> Result<HeadFacts, &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete(), "{raw:?}");
        check_request(&req)
    }

    /// Regression (issue 15, defect 1): duplicate and missing `Host`, and `GET *`, were
    /// forwarded. Every head the fast path carries passes this check too.
    #[test]
    fn request_heads_are_held_to_rfc_9112() {
        for ok in [
            &b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://echo:80/x HTTP/1.1\r\nHost: other\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            assert!(check(ok).is_ok(), "{:?}", String::from_utf8_lossy(ok));
        }
        let facts = check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(facts.framed_twice());
        assert!(
            check(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .tunnel
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET http://echo/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(check(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // The fast path declines what the check refuses: no Host, a bad one, userinfo.
        for raw in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET http://echo/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET http://u@echo/ HTTP/1.1\r\nHost: echo\r\n\r\n",
        ] {
            assert!(parse(raw).is_none(), "{raw:?}");
        }
    }
}
