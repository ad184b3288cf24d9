//! Refuses HTTP/1.1 requests that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! Such a request is the classic request-smuggling vector: two hops that disagree on which
//! header frames the body see different requests in the same bytes. RFC 9112 §6.3 lets a
//! server either drop `Content-Length` or refuse; hyper silently drops it, and by the time a
//! request reaches our service the evidence is gone. So this module watches the raw bytes of
//! each HTTP/1 connection as hyper reads them, with a minimal framing tracker (request heads,
//! `Content-Length` bodies, chunked bodies), and marks the request that has both headers; the
//! service then answers it 400 and closes the connection. HTTP/2 connections (prior-knowledge
//! preface) and upgraded or CONNECT streams are not scanned.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::Reason;
use crate::codec::headers::ProxyBody;
use crate::codec::render::ProxyError;

const NONE: u64 = u64::MAX;

#[derive(Debug)]
struct Shared {
    /// Index (0-based) of the first request head found with both headers.
    bad: AtomicU64,
    /// Requests handed to the service so far.
    served: AtomicU64,
}

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
        });
        (
            Scanned {
                inner: io,
                scanner: Scanner::default(),
                shared: shared.clone(),
            },
            FramingGuard { shared },
        )
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
}

impl<T: AsyncRead + Unpin> AsyncRead for Scanned<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if let Some(index) = this.scanner.feed(&buf.filled()[before..]) {
                let _ = this.shared.bad.compare_exchange(
                    NONE,
                    index,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        res
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
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
        // hyper refuses heads this large itself (431); stop tracking rather than buffer more.
        if self.head_len > crate::base::MAX_HEADER_BYTES * 2 {
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
