//! The guard under hyper's HTTP/1.1 server: it sees every byte hyper reads, and does two jobs
//! hyper cannot be asked to do.
//!
//! **Heads hyper would refuse are answered by the proxy's renderer.** hyper answers a malformed
//! head with a bare 400 and an oversized one with a bare 431, with no `ferrule-error` and
//! nothing counted. So a request head is handed to hyper only once it is complete and parses
//! (httparse, as hyper parses it, within the proxy's head limit). A head that does not is never
//! shown to hyper: the guard records why ([`FramingGuard::refused`]), the connection's task
//! closes hyper's side gracefully (the responses before it finish), and the guard writes the
//! rendered response (`400 bad-request` or `431 header-too-large`, `connection: close`) when
//! hyper shuts the connection down. Body bytes pass at once, up to where their framing ends.
//!
//! **Requests framed twice are refused.** A request with both `Content-Length` and
//! `Transfer-Encoding` is the classic request-smuggling vector: two hops that disagree on which
//! header frames the body see different requests in the same bytes. RFC 9112 §6.3 lets a
//! server either drop `Content-Length` or refuse; hyper silently drops it, and by the time a
//! request reaches our service the evidence is gone. So a minimal framing tracker (request
//! heads, `Content-Length` bodies, chunked bodies) marks the request that has both headers; the
//! service then answers it 400 and closes the connection. HTTP/2 connections (prior-knowledge
//! preface) and upgraded or CONNECT streams are not scanned.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use http::{HeaderValue, Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::base::{Reason, MAX_HEADER_BYTES, MAX_HEADER_FIELDS as MAX_HEADERS};
use crate::codec::headers::ProxyBody;
use crate::codec::render::ProxyError;

const NONE: u64 = u64::MAX;
/// Bytes read from the socket at a time while a head is held back.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug)]
struct Shared {
    /// Index (0-based) of the first request head found with both headers.
    bad: AtomicU64,
    /// Requests handed to the service so far.
    served: AtomicU64,
    /// Why the next head was refused: 0 none, 1 malformed, 2 too large.
    refused: AtomicU8,
    /// Wakes the connection's task when a head is refused.
    notify: Notify,
}

const REFUSED_NONE: u8 = 0;
const REFUSED_MALFORMED: u8 = 1;
const REFUSED_TOO_LARGE: u8 = 2;

/// The service's side: tells whether the request being served was marked.
#[derive(Debug, Clone)]
pub struct FramingGuard {
    shared: Arc<Shared>,
}

impl FramingGuard {
    /// Wraps a connection's IO; returns the scanning IO and the guard for its service.
    pub fn wrap<T>(io: T) -> (Scanned<T>, FramingGuard) {
        let shared = Arc::new(Shared {
            bad: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
            refused: AtomicU8::new(REFUSED_NONE),
            notify: Notify::new(),
        });
        (
            Scanned {
                inner: io,
                scanner: Scanner::default(),
                shared: shared.clone(),
                held: BytesMut::new(),
                cleared: 0,
                eof: false,
                answer: None,
            },
            FramingGuard { shared },
        )
    }

    /// Why a head was refused, once one was: the connection should then be closed gracefully
    /// (the guard writes the answer when hyper shuts the connection down).
    pub fn refused(&self) -> Option<Reason> {
        match self.shared.refused.load(Ordering::Acquire) {
            REFUSED_MALFORMED => Some(Reason::BadRequest),
            REFUSED_TOO_LARGE => Some(Reason::HeaderTooLarge),
            _ => None,
        }
    }

    /// Resolves when a head has been refused.
    pub async fn refusal(&self) {
        loop {
            let notified = self.shared.notify.notified();
            if self.refused().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Called once per request, in order: the 400 response if this request was marked.
    pub fn refuse<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        if req.version() == Version::HTTP_2 {
            return None;
        }
        let index = self.shared.served.fetch_add(1, Ordering::Relaxed);
        if self.shared.bad.load(Ordering::Relaxed) != index {
            return None;
        }
        let e = ProxyError::new(
            Reason::BadRequest,
            "the request has both Content-Length and Transfer-Encoding; send only one",
        );
        let mut resp = e.into_response(false);
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        Some(resp)
    }
}

/// A connection's IO with the framing tracker on its read side.
#[derive(Debug)]
pub struct Scanned<T> {
    inner: T,
    scanner: Scanner,
    shared: Arc<Shared>,
    /// Bytes read from `inner` and not yet handed to hyper.
    held: BytesMut,
    /// How many bytes at the front of `held` may go to hyper (a checked head, or body bytes).
    cleared: usize,
    eof: bool,
    /// The refusal to write (and how much of it is written) when hyper shuts down.
    answer: Option<(Vec<u8>, usize)>,
}

impl<T> Scanned<T> {
    /// Decides how many held bytes may go to hyper; `Err` refuses the head they start with.
    fn clear(&mut self) -> Result<(), Reason> {
        let held = &self.held[..];
        self.cleared = match self.scanner.state {
            State::Off => held.len(),
            State::Body(n) | State::ChunkData(n) => held.len().min(n as usize),
            // A framing line: up to its end (bytes of an unfinished line are the line's).
            State::ChunkSize | State::ChunkEnd | State::Trailers => held
                .iter()
                .position(|b| *b == b'\n')
                .map_or(held.len(), |i| i + 1),
            State::Head if held.is_empty() => 0,
            State::Head => {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::Request::new(&mut headers).parse(held) {
                    Ok(httparse::Status::Complete(n)) if n <= MAX_HEADER_BYTES => n,
                    Ok(httparse::Status::Complete(_)) => return Err(Reason::HeaderTooLarge),
                    Ok(httparse::Status::Partial) if held.len() > MAX_HEADER_BYTES => {
                        return Err(Reason::HeaderTooLarge)
                    }
                    Ok(httparse::Status::Partial) => 0,
                    Err(httparse::Error::TooManyHeaders) => return Err(Reason::HeaderTooLarge),
                    Err(_) => return Err(Reason::BadRequest),
                }
            }
        };
        Ok(())
    }

    fn refuse(&mut self, reason: Reason) {
        let detail = match reason {
            Reason::HeaderTooLarge => format!(
                "the request head is larger than {MAX_HEADER_BYTES} bytes or has more than \
                 {MAX_HEADERS} fields"
            ),
            _ => "the request head is not valid HTTP/1.1".to_owned(),
        };
        let e = ProxyError::new(reason, detail);
        self.answer = Some((e.to_http1(true, false), 0));
        self.held.clear();
        let code = match reason {
            Reason::HeaderTooLarge => REFUSED_TOO_LARGE,
            _ => REFUSED_MALFORMED,
        };
        self.shared.refused.store(code, Ordering::Release);
        self.shared.notify.notify_one();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Scanned<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.answer.is_some() {
                // Refused: hyper sees nothing more, and is closed by the connection's task.
                return Poll::Pending;
            }
            if this.cleared == 0 {
                if let Err(reason) = this.clear() {
                    this.refuse(reason);
                    continue;
                }
            }
            if this.cleared > 0 {
                let n = this.cleared.min(buf.remaining());
                let chunk = this.held.split_to(n);
                this.cleared -= n;
                if let Some(index) = this.scanner.feed(&chunk) {
                    let _ = this.shared.bad.compare_exchange(
                        NONE,
                        index,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // An unfinished head at EOF: hyper gets it and sees the message incomplete.
                let n = this.held.len().min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            }
            this.held.extend_from_slice(read.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Scanned<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    /// hyper shuts a connection down when it is done with it; a refused head's answer goes
    /// out first.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((answer, sent)) = &mut this.answer {
            while *sent < answer.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *sent += n;
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[derive(Debug, Default, PartialEq)]
enum State {
    /// Reading a request head, line by line.
    #[default]
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF line.
    ChunkData(u64),
    /// Reading the line that ends a chunk's data.
    ChunkEnd,
    /// Reading trailer lines until an empty one.
    Trailers,
    /// Not HTTP/1 request framing any more (HTTP/2, upgrade, CONNECT, oversized head, marked).
    Off,
}

/// Incremental HTTP/1 request framing tracker.
#[derive(Debug, Default)]
struct Scanner {
    state: State,
    line: Vec<u8>,
    /// Request heads completed so far.
    requests: u64,
    head_len: usize,
    first_line: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    upgrade: bool,
}

impl Scanner {
    /// Feeds newly read bytes; returns the index of a request with both framing headers.
    fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        let mut found = None;
        while !data.is_empty() {
            match self.state {
                State::Off => return found,
                State::Body(n) | State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = match (&self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                _ => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.push_line_bytes(data);
                        return found;
                    };
                    self.push_line_bytes(&data[..nl]);
                    data = &data[nl + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if let Some(i) = self.line_done(&line) {
                        found = Some(i);
                    }
                    line.clear();
                    self.line = line;
                }
            }
        }
        found
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        self.line.extend_from_slice(bytes);
        self.head_len += bytes.len();
        // Heads are checked against the limit before they get here; a framing line this long
        // is refused by hyper. Stop tracking rather than buffer more.
        if self.head_len > MAX_HEADER_BYTES * 2 {
            self.state = State::Off;
        }
    }

    fn line_done(&mut self, line: &[u8]) -> Option<u64> {
        match self.state {
            State::Head => self.head_line(line),
            State::ChunkSize => {
                let hex = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                self.state = match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    // hyper will reject the body; nothing more to track.
                    None => State::Off,
                };
                self.head_len = 0;
                None
            }
            State::ChunkEnd => {
                self.state = State::ChunkSize;
                self.head_len = 0;
                None
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Head;
                }
                self.head_len = 0;
                None
            }
            _ => None,
        }
    }

    fn head_line(&mut self, line: &[u8]) -> Option<u64> {
        if !self.first_line {
            if line.is_empty() {
                // Tolerated blank lines between requests.
                self.head_len = 0;
                return None;
            }
            self.first_line = true;
            if line.starts_with(b"PRI * HTTP/2.0") || line.starts_with(b"CONNECT ") {
                self.state = State::Off;
            }
            return None;
        }
        if !line.is_empty() {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = &line[..colon];
            let value = trim(&line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                self.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                if self.content_length.is_none() {
                    // hyper answers an unparsable length with 400 itself.
                    self.state = State::Off;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                self.transfer_encoding = true;
                let last = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
            return None;
        }
        // End of the head.
        let index = self.requests;
        self.requests += 1;
        let bad = self.content_length.is_some() && self.transfer_encoding;
        self.state = if bad || self.upgrade || (self.transfer_encoding && !self.chunked) {
            State::Off
        } else if self.transfer_encoding {
            State::ChunkSize
        } else {
            match self.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head,
            }
        };
        self.first_line = false;
        self.content_length = None;
        self.transfer_encoding = false;
        self.chunked = false;
        self.upgrade = false;
        self.head_len = 0;
        bad.then_some(index)
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(input: &[u8], piece: usize) -> (Option<u64>, u64) {
        let mut s = Scanner::default();
        let mut found = None;
        for chunk in input.chunks(piece) {
            if let Some(i) = s.feed(chunk) {
                found.get_or_insert(i);
            }
        }
        (found, s.requests)
    }

    #[test]
    fn finds_the_request_with_both_headers_after_other_bodies() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\nx-t: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for piece in [1, 2, 7, 64, input.len()] {
            assert_eq!(
                scan_in_pieces(input, piece),
                (Some(3), 4),
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn clean_traffic_is_not_marked() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_in_pieces(input, 3), (None, 3));
    }

    /// Reads what the guard lets through from `input` (sent whole, then EOF), until it would
    /// wait; returns that and why it refused, if it did.
    async fn through_guard(input: &[u8]) -> (Vec<u8>, Option<Reason>) {
        use futures_util::FutureExt;
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, input)
            .await
            .unwrap();
        drop(client);
        let (mut io, guard) = FramingGuard::wrap(server);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // A refused head leaves the reader waiting (the connection's task closes it).
        while let Some(Ok(n)) = io.read(&mut buf).now_or_never() {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        (seen, guard.refused())
    }

    #[tokio::test]
    async fn heads_reach_hyper_only_once_they_parse() {
        let good = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(through_guard(good).await, (good.to_vec(), None));

        // A malformed head after a good request: the good one passes, the bad one never does.
        let mut input = good.to_vec();
        input.extend_from_slice(b"GET /\x01 HTTP/1.1\r\n\r\n");
        assert_eq!(
            through_guard(&input).await,
            (good.to_vec(), Some(Reason::BadRequest))
        );

        // A body that looks like a head is a body: only heads are checked.
        let body = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nNOT\x01HTTP\r";
        assert_eq!(through_guard(body).await, (body.to_vec(), None));

        // Too large, or too many fields: 431, and nothing of the head passes.
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(
            through_guard(big.as_bytes()).await,
            (Vec::new(), Some(Reason::HeaderTooLarge))
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            through_guard(many.as_bytes()).await,
            (Vec::new(), Some(Reason::HeaderTooLarge))
        );

        // An unfinished head at EOF goes to hyper, which sees it incomplete.
        assert_eq!(
            through_guard(b"GET / HTTP/1.1\r\nHo").await,
            (b"GET / HTTP/1.1\r\nHo".to_vec(), None)
        );
    }

    #[test]
    fn http2_and_upgrades_are_left_alone() {
        let mut s = Scanner::default();
        assert_eq!(s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert_eq!(s.state, State::Off);
        let mut s = Scanner::default();
        s.feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(s.state, State::Off);
    }
}
