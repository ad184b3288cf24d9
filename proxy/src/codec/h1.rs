//! HTTP/1.1 wire pieces of the fast path (`fastpath.rs`): parsing a request or response head in
//! place, deciding whether the fast path may carry it, writing the head for the next hop without
//! hop-by-hop headers, and tracking where a body ends so its bytes pass through unchanged.
//!
//! Everything here is synchronous and allocation-free apart from the output buffer, so it is
//! tested on byte strings. Anything unusual (HTTP/1.0, CONNECT, upgrades, `Expect`, both
//! `Content-Length` and `Transfer-Encoding`, a malformed head, too many headers) is *not* handled
//! here: the parser answers [`Parsed::General`] and the connection goes to the general hyper
//! path, which has the complete HTTP/1.1 semantics and the error responses for bad input.

use http::{HeaderName, HeaderValue};

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
        if authority.is_empty() || !path.starts_with('/') {
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
                if host.is_some() {
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
    let host = match host.map(std::str::from_utf8) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return Parsed::General,
        None => None,
    };
    Parsed::Ready(RequestHead {
        method,
        target,
        authority: uri_authority.or(host),
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

/// Where a body ends, fed the bytes as they arrive; the bytes themselves pass through unchanged.
#[derive(Debug)]
pub enum BodyTracker {
    /// This many bytes still belong to the body.
    Length(u64),
    /// A chunked body, decoded just enough to find its end.
    Chunked(Chunked),
    /// Everything until the connection closes.
    UntilClose,
}

/// The body is not valid chunked encoding.
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

    /// Takes the leading bytes of `input` that belong to the body; returns how many.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, BadChunk> {
        match self {
            BodyTracker::Length(n) => {
                let take = (*n).min(input.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            BodyTracker::Chunked(c) => c.feed(input),
            BodyTracker::UntilClose => Ok(input.len()),
        }
    }
}

/// Largest trailer section accepted after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// State of the chunked-encoding scanner (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Size of the chunk being read, then bytes of it still to come.
    size: u64,
    digits: u8,
    trailer_bytes: usize,
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

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn feed(&mut self, input: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err(BadChunk);
                        }
                        let d = (b as char).to_digit(16).expect("a hex digit") as u64;
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' if self.digits > 0 => self.state = ChunkState::Extension,
                    b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::SizeSpace,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                // Whitespace after the size may only lead to an extension or the line's end
                // (`5 6` is not a size of 5), as hyper's decoder has it.
                ChunkState::SizeSpace => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(BadChunk);
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = ChunkState::Trailer;
                        self.line_len = 0;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    // Skip the chunk's bytes in one step.
                    let take = self.size.min((input.len() - i) as u64);
                    self.size -= take;
                    i += take as usize;
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
                    } else if b == b'\n' {
                        return Err(BadChunk);
                    } else {
                        self.line_len += 1;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    if self.line_len == 0 {
                        self.state = ChunkState::Done;
                        return Ok(i + 1);
                    }
                    self.line_len = 0;
                    self.state = ChunkState::Trailer;
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
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
            "PUT http://echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
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

    #[test]
    fn chunked_bodies_end_where_the_encoding_says_in_any_split() {
        let body = b"5 ;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n";
        let mut all = body.to_vec();
        all.extend_from_slice(next);
        // Every split point: the tracker takes exactly the body, wherever the reads end.
        for split in 0..all.len() {
            let mut t = BodyTracker::new(Framing::Chunked);
            let a = t.feed(&all[..split]).unwrap();
            assert_eq!(a, split.min(body.len()));
            let b = if t.done() {
                0
            } else {
                t.feed(&all[a..]).unwrap()
            };
            assert_eq!(a + b, body.len(), "split at {split}");
            assert!(t.done());
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"0\r\nX\n\r\n",
            b"ffffffffffffffff0\r\n",
            b"5 6\r\n",
        ] {
            let mut t = BodyTracker::new(Framing::Chunked);
            assert_eq!(
                t.feed(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_bodies_take_exactly_their_length() {
        let mut t = BodyTracker::new(Framing::Length(5));
        assert_eq!(t.feed(b"abc").unwrap(), 3);
        assert!(!t.done());
        assert_eq!(t.feed(b"deGET").unwrap(), 2);
        assert!(t.done());
        assert_eq!(t.feed(b"more").unwrap(), 0);
    }
}
