//! The guard under hyper's HTTP/1.1 server: it sees every byte hyper reads, and does what
//! hyper cannot be asked to do.
//!
//! **Heads are checked before hyper sees them.** hyper answers a malformed head with a bare
//! 400 and an oversized one with a bare 431, with no `ferrule-error` and nothing counted, and
//! it accepts heads RFC 9112 says to refuse (two `Host` lines, none, `GET *`, codings other
//! than chunked). So a request head is handed to hyper only once it is complete, parses
//! (httparse, as hyper parses it, within the proxy's head limits) and meets the rules of
//! [`h1::check_request`], the same the fast path applies. A head that does not is never
//! shown to hyper: the guard records why ([`FramingGuard::refused`]), the connection's task
//! closes hyper's side gracefully (the responses before it finish), and the guard writes the
//! rendered response (`400 bad-request` or `431 header-too-large`, `connection: close`) when
//! hyper shuts the connection down.
//!
//! **Bodies are framed here too.** The guard follows each request's framing, so it knows
//! where the next head starts: `Content-Length` bodies pass as they come, chunked ones
//! through the fast path's decoder ([`h1::Chunked`]), which drops chunk extensions and refuses
//! malformed chunks. A bad chunk that came with its head refuses the head (400, nothing
//! forwarded); one that comes later, once hyper is serving the request, fails the read, and
//! hyper closes the connection.
//!
//! **Requests framed twice are refused.** A request with both `Content-Length` and
//! `Transfer-Encoding` is the classic request-smuggling vector: two hops that disagree on which
//! header frames the body see different requests in the same bytes. RFC 9112 §6.3 lets a
//! server either drop `Content-Length` or refuse; hyper silently drops it, so the guard marks
//! the request and the service answers it 400 and closes the connection. HTTP/2 connections
//! (prior-knowledge preface) never come here, and the bytes after an upgrade or a CONNECT are
//! not scanned.

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
use crate::codec::h1::{self, Chunked};
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
                state: State::Head,
                heads: 0,
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

/// Where the guard is in the request stream.
#[derive(Debug)]
enum State {
    /// Before a request head (or inside one).
    Head,
    /// This many bytes of a `Content-Length` body still to come.
    Body(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// Not HTTP/1 request framing any more (after an upgrade, a CONNECT, a request marked as
    /// framed twice): everything passes.
    Off,
}

/// Why the guard stopped a connection.
enum Stop {
    /// A head it refuses, answered with this reason and explanation.
    Head(Reason, &'static str),
    /// A bad chunk in a body hyper is already reading: the read fails.
    Body,
}

/// A connection's IO with the framing tracker on its read side.
#[derive(Debug)]
pub struct Scanned<T> {
    inner: T,
    state: State,
    /// Request heads handed to hyper so far.
    heads: u64,
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
    /// Decides how many held bytes may go to hyper, and moves the framing on past them.
    fn clear(&mut self) -> Result<(), Stop> {
        self.cleared = match &mut self.state {
            State::Off => self.held.len(),
            State::Body(left) => {
                let take = (*left).min(self.held.len() as u64);
                *left -= take;
                if *left == 0 {
                    self.state = State::Head;
                }
                take as usize
            }
            State::Chunked(c) => {
                let n = c.feed(&mut self.held).map_err(|_| Stop::Body)?;
                if c.done() {
                    self.state = State::Head;
                }
                n
            }
            State::Head if self.held.is_empty() => 0,
            State::Head => self.head()?,
        };
        Ok(())
    }

    /// A request head at the front of `held`: how many bytes go to hyper (0 while it is
    /// incomplete), or why it is refused.
    fn head(&mut self) -> Result<usize, Stop> {
        const TOO_LARGE: Stop = Stop::Head(
            Reason::HeaderTooLarge,
            "the request head is too large or has too many fields",
        );
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&self.held) {
            Ok(httparse::Status::Complete(n)) if n <= MAX_HEADER_BYTES => n,
            Ok(httparse::Status::Complete(_)) => return Err(TOO_LARGE),
            Ok(httparse::Status::Partial) if self.held.len() > MAX_HEADER_BYTES => {
                return Err(TOO_LARGE)
            }
            Ok(httparse::Status::Partial) => return Ok(0),
            Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
            Err(_) => {
                return Err(Stop::Head(
                    Reason::BadRequest,
                    "the request head is not valid HTTP/1.1",
                ))
            }
        };
        let facts = h1::check_request(&req).map_err(|e| Stop::Head(Reason::BadRequest, e))?;
        let index = self.heads;
        self.heads += 1;
        if facts.framed_twice() {
            // Marked; the service refuses it and the connection closes (see the module doc).
            let _ =
                self.shared
                    .bad
                    .compare_exchange(NONE, index, Ordering::Relaxed, Ordering::Relaxed);
            self.state = State::Off;
            return Ok(n);
        }
        if facts.tunnel {
            self.state = State::Off;
            return Ok(n);
        }
        if !facts.chunked {
            self.state = match facts.length {
                Some(len) if len > 0 => State::Body(len),
                _ => State::Head,
            };
            return Ok(n);
        }
        // The chunks that came with the head are checked before the head goes: a bad one
        // refuses the request before anything of it is forwarded.
        let mut body = self.held.split_off(n);
        let mut chunked = Chunked::default();
        let checked = chunked.feed(&mut body);
        self.held.unsplit(body);
        let chunks = checked.map_err(|_| {
            Stop::Head(
                Reason::BadRequest,
                "the chunked body is malformed (chunk size line, extension or trailer)",
            )
        })?;
        self.state = if chunked.done() {
            State::Head
        } else {
            State::Chunked(chunked)
        };
        Ok(n + chunks)
    }

    fn refuse(&mut self, reason: Reason, detail: &str) {
        let detail = match reason {
            Reason::HeaderTooLarge => format!(
                "the request head is larger than {MAX_HEADER_BYTES} bytes or has more than \
                 {MAX_HEADERS} fields"
            ),
            _ => detail.to_owned(),
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
                match this.clear() {
                    Ok(()) => {}
                    Err(Stop::Head(reason, detail)) => {
                        this.refuse(reason, detail);
                        continue;
                    }
                    Err(Stop::Body) => {
                        this.held.clear();
                        this.state = State::Off;
                        this.eof = true;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "malformed chunked request body",
                        )));
                    }
                }
            }
            if this.cleared > 0 {
                let n = this.cleared.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.advance(n);
                this.cleared -= n;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads what the guard lets through from `input` (sent whole, then EOF), until it would
    /// wait; returns that, why it refused a head if it did, and whether a read failed.
    async fn through_guard(input: &[u8]) -> (Vec<u8>, Option<Reason>, bool) {
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
        let mut failed = false;
        // A refused head leaves the reader waiting (the connection's task closes it).
        while let Some(r) = io.read(&mut buf).now_or_never() {
            match r {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        (seen, guard.refused(), failed)
    }

    /// The index of the request the guard marked as framed twice, if any, after `input`.
    async fn marked(input: &[u8]) -> Option<u64> {
        let (mut io, _guard) = FramingGuard::wrap(std::io::Cursor::new(input.to_vec()));
        let mut sink = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut io, &mut sink)
            .await
            .unwrap();
        match io.shared.bad.load(Ordering::Relaxed) {
            NONE => None,
            i => Some(i),
        }
    }

    #[tokio::test]
    async fn finds_the_request_with_both_headers_after_other_bodies() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\nx-t: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(marked(input).await, Some(3));
        let clean = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(marked(clean).await, None);
    }

    #[tokio::test]
    async fn heads_reach_hyper_only_once_they_parse() {
        let good = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(through_guard(good).await, (good.to_vec(), None, false));

        // A malformed head after a good request: the good one passes, the bad one never does.
        let mut input = good.to_vec();
        input.extend_from_slice(b"GET /\x01 HTTP/1.1\r\n\r\n");
        assert_eq!(
            through_guard(&input).await,
            (good.to_vec(), Some(Reason::BadRequest), false)
        );

        // A body that looks like a head is a body: only heads are checked.
        let body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nNOT\x01HTTP\r";
        assert_eq!(through_guard(body).await, (body.to_vec(), None, false));

        // Too large, or too many fields: 431, and nothing of the head passes; exactly at
        // the field limit passes.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(
            through_guard(big.as_bytes()).await,
            (Vec::new(), Some(Reason::HeaderTooLarge), false)
        );
        let fields = |n: usize| {
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                "X: 1\r\n".repeat(n - 1)
            )
        };
        let at_limit = fields(MAX_HEADERS);
        assert_eq!(
            through_guard(at_limit.as_bytes()).await,
            (at_limit.into_bytes(), None, false)
        );
        assert_eq!(
            through_guard(fields(MAX_HEADERS + 1).as_bytes()).await,
            (Vec::new(), Some(Reason::HeaderTooLarge), false)
        );

        // An unfinished head at EOF goes to hyper, which sees it incomplete.
        assert_eq!(
            through_guard(b"GET / HTTP/1.1\r\nHo").await,
            (b"GET / HTTP/1.1\r\nHo".to_vec(), None, false)
        );
    }

    /// Regression (issue 15, defect 1): hyper forwarded these.
    #[tokio::test]
    async fn heads_rfc_9112_refuses_never_reach_hyper() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            assert_eq!(
                through_guard(bad).await,
                (Vec::new(), Some(Reason::BadRequest), false),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Regression (issue 15, defect 4): chunk extensions reached the app. They are dropped
    /// before hyper sees them; a bad chunk that came with its head refuses the head, a later
    /// one fails the read.
    #[tokio::test]
    async fn chunk_extensions_are_dropped_and_bad_chunks_stop_the_request() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(b"3;a=b\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut want = head.to_vec();
        want.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(through_guard(&input).await, (want, None, false));

        let mut input = head.to_vec();
        input.extend_from_slice(b"3;a=\x00\r\nabc\r\n0\r\n\r\n");
        assert_eq!(
            through_guard(&input).await,
            (Vec::new(), Some(Reason::BadRequest), false)
        );

        // A bad chunk after the head was handed over: the read fails.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (mut io, guard) = FramingGuard::wrap(server);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client.write_all(head).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], head);
        client.write_all(b"3;a=\x01\r\nabc\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(guard.refused(), None);
    }

    #[tokio::test]
    async fn upgrades_are_left_alone() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x00\x01not http";
        assert_eq!(through_guard(input).await, (input.to_vec(), None, false));
    }
}
