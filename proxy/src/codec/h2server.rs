//! HTTP/2 connections from downstream (prior-knowledge h2c), served with the h2 crate directly.
//!
//! hyper's HTTP/2 server was the last hyper layer on the HTTP/2 path. Replacing it alone
//! measured level; what this module adds is control over the socket writes. h2 writes a DATA
//! frame of 256 bytes or more straight from the frame and can queue nothing behind it until
//! that write is done, so it flushes in the middle of a turn: a gRPC response left each sidecar
//! in two writes (HEADERS and DATA, then the trailers), and the peer woke for each. Here
//! `Corked` collects what h2 writes during a turn of the connection and the connection's
//! task sends it in one write, and `h2stream::pump` queues every frame of a response that is
//! already at hand before the turn ends.
//!
//! On the one-thread runtime a stream is a future polled by its connection's task, not a task
//! of its own: no spawn per request, and the wake-ups of a stream land on the task that writes
//! its frames. On a multi-thread runtime each stream is spawned, so one busy connection (a
//! peer sidecar's, which carries all its traffic) can use every worker.
//!
//! What hyper's server did and this one keeps: the handshake must finish within the header
//! read timeout; the client is pinged every 20 s and the connection closed when no answer
//! comes within 10 s (see [`Settings`]); a stop sends GOAWAY and lets the open
//! streams finish; a client's reset drops the stream's routing future, which cancels the
//! request upstream.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use h2::server::{Connection, SendResponse};
use h2::RecvStream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;

use crate::base::{Reason, MAX_HEADER_BYTES, MAX_HEADER_FIELDS};
use crate::codec::h1::valid_authority;
use crate::codec::h2body::{pump, H2Body};
use crate::codec::headers::{join_cookies, ProxyBody, RequestBody};
use crate::codec::render::ProxyError;
use crate::codec::wake::OnWake;

/// What a connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Time the client has to complete the handshake (the listener's header-read timeout).
    pub handshake_timeout: Duration,
    /// Largest header list accepted; bigger ones get 431 (from h2).
    pub max_header_list: u32,
    /// How often an open connection pings its client.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for Settings {
    /// hyper's server's keepalive as the proxy configured it, and its head limit.
    fn default() -> Self {
        Settings {
            handshake_timeout: Duration::from_secs(10),
            max_header_list: 64 * 1024,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}
/// Flow-control windows offered to clients (hyper's server's sizes): 1 MiB lets a request of
/// that size stream without waiting for window updates, at a bounded cost per connection.
const WINDOW: u32 = 1024 * 1024;
/// Response data a stream may queue beyond what the client's window lets out.
const SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may have open at once on one connection.
const MAX_STREAMS: u32 = 1024;
/// Most bytes held back for the end of a turn; beyond that they go out at once.
const CORK_LIMIT: usize = 64 * 1024;
/// Largest write buffer a connection keeps from one keepalive ping to the next.
const IDLE_BUFFER: usize = 16 * 1024;

/// A stream's whole exchange, from its request to the end of its response body.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one HTTP/2 connection, whose first bytes (`prefix`, the client preface at least)
/// were already read from `stream`, until the connection ends. Returns why it ended badly.
pub async fn serve<I, H, Fut>(
    stream: I,
    prefix: Bytes,
    handler: &H,
    stop: watch::Receiver<bool>,
    settings: Settings,
) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Send + 'static,
    H: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let (io, mut out) = Corked::new(stream, prefix);
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(settings.max_header_list)
        .handshake::<_, Bytes>(io);
    let handshake_timeout = settings.handshake_timeout;
    let mut conn = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(format!("HTTP/2 handshake: {e}")),
        Err(_) => return Err(format!("no HTTP/2 handshake within {handshake_timeout:?}")),
    };
    let mut ping = conn.ping_pong();
    let inline = Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
    let mut streams = FuturesUnordered::<StreamFuture>::new();
    let turn = Arc::new(Turn::default());
    let wakers = TurnWakers::new(&turn);
    // The stop signal and the keepalive timer are looked at only when they woke the task, not
    // on each of the connection's wake-ups (two per request).
    let mut stopped = Some(OnWake::new(Box::pin(stop_signal(stop))));
    // Waiting for the next ping, or (`pinged`) for the answer to the last one.
    let (interval, pong_timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
    let mut timer = OnWake::new(Box::pin(tokio::time::sleep(interval)));
    let mut pinged = false;
    loop {
        // The connection first, so its wake-ups take no more than a look at two flags.
        let event = poll_fn(|cx| {
            if let Poll::Ready(r) = drive(
                cx,
                &turn,
                &wakers,
                &mut conn,
                &mut out,
                &mut streams,
                handler,
                inline,
            ) {
                return Poll::Ready(Event::Ended(r));
            }
            if let Some(Poll::Ready(())) = stopped.as_mut().map(|s| s.poll(cx)) {
                return Poll::Ready(Event::Stop);
            }
            if pinged {
                if let Poll::Ready(r) = ping.as_mut().expect("pinged").poll_pong(cx) {
                    return Poll::Ready(Event::Pong(r.map(drop)));
                }
            }
            if ping.is_some() && timer.poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(r) => return r,
            Event::Stop => {
                stopped = None;
                conn.graceful_shutdown();
            }
            Event::Pong(Err(e)) => return Err(format!("ping: {e}")),
            Event::Pong(Ok(())) => {
                pinged = false;
                timer.reset(tokio::time::Instant::now() + interval);
            }
            Event::Timer => {
                if pinged {
                    // Tell the client why (it may be alive but slow), without waiting long for
                    // a socket that may be dead; dropping the connection ends its streams.
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    let close = poll_fn(|cx| {
                        drive(
                            cx,
                            &turn,
                            &wakers,
                            &mut conn,
                            &mut out,
                            &mut streams,
                            handler,
                            inline,
                        )
                    });
                    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                    return Err(format!("no answer to a ping within {pong_timeout:?}"));
                }
                out.release_idle();
                if let Some(Err(e)) = ping.as_mut().map(|p| p.send_ping(h2::Ping::opaque())) {
                    return Err(format!("ping: {e}"));
                }
                pinged = true;
                timer.reset(tokio::time::Instant::now() + pong_timeout);
            }
        }
    }
}

/// What woke a connection's task, other than its own traffic.
enum Event {
    /// The connection has ended, well or not.
    Ended(Result<(), String>),
    /// The proxy is stopping: no new streams.
    Stop,
    /// The client answered the keepalive ping (or the connection failed meanwhile).
    Pong(Result<(), h2::Error>),
    /// Time to ping the client, or to give up on its answer.
    Timer,
}

/// Ready once the proxy stops (the signal is true), or its sender is gone, which counts as a
/// stop (otherwise `changed` would fire at once forever).
async fn stop_signal(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Moves the connection along: takes new streams, reads and writes frames, and runs the
/// streams woken since the last call. Ready when the connection has ended.
///
/// h2 and the streams are polled with wakers of their own (see [`Turn`]), so a turn knows
/// which of the two it was woken for, and a wake-up that comes while it runs makes it go round
/// again instead of polling the task once more.
#[allow(clippy::too_many_arguments)]
fn drive<H, Fut>(
    task: &mut Context<'_>,
    turn: &Turn,
    wakers: &TurnWakers,
    conn: &mut Connection<Corked, Bytes>,
    out: &mut Output,
    streams: &mut FuturesUnordered<StreamFuture>,
    handler: &H,
    inline: bool,
) -> Poll<Result<(), String>>
where
    H: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut todo = turn.begin(task.waker());
    if todo == 0 {
        // Polled for something else (the first time, the keepalive, a stop): look at both.
        todo = CONN | STREAMS;
    }
    let conn_cx = &mut Context::from_waker(&wakers.conn);
    let streams_cx = &mut Context::from_waker(&wakers.streams);
    let mut steps = 0;
    loop {
        todo |= turn.take();
        if todo != 0 {
            steps += 1;
            if steps > MAX_STEPS {
                // A stream that keeps waking itself, or IO that keeps saying "later" because
                // the task has used up tokio's budget for this poll (it wakes the task and
                // returns Pending), must not keep the turn going round and the other tasks
                // from running: the scheduler polls this task again after them, and that poll
                // looks at everything.
                turn.hand_over();
                task.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if todo & STREAMS != 0 {
            todo &= !STREAMS;
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(streams_cx) {}
            // What the streams queued goes out with the connection's poll, now, not after a
            // trip through the scheduler (h2 asks for that poll too, by waking it).
            todo |= CONN;
            continue;
        }
        if todo & CONN != 0 {
            todo &= !CONN;
            // `poll_accept` first reads every frame at hand and writes what is queued, then
            // hands out a new stream: a request body that came with its head is in the
            // stream's buffer before the stream first runs, so it can go on with the head.
            match conn.poll_accept(conn_cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let exchange = exchange(handler, req, respond);
                    if inline {
                        streams.push(Box::pin(isolated(exchange)));
                    } else {
                        tokio::spawn(exchange);
                    }
                    // Run it, then ask h2 for the next one (and write what it queued).
                    todo |= STREAMS | CONN;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.to_string())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            continue;
        }
        // The turn is over: what h2 wrote during it leaves in one write.
        if let Poll::Ready(Err(e)) = out.poll_send(conn_cx) {
            return Poll::Ready(Err(format!("write: {e}")));
        }
        if turn.end() {
            return Poll::Pending;
        }
    }
}

/// Most steps (a run of the woken streams, a poll of h2) one turn of a connection takes; a
/// request takes about four, a burst of new streams two each.
const MAX_STEPS: u32 = 64;

/// What a connection's turn is doing, for the wakers of its h2 connection and of its streams.
///
/// On the one-thread runtime the streams run inside their connection's turn, and h2 wakes its
/// connection each time a stream queues a frame. With the task's own waker everywhere, each
/// response polled the task once more after the turn that had already written its frames, and a
/// turn could not tell whether it was woken for the socket or for a stream, so it polled h2
/// (a read attempt and all of h2's bookkeeping) for both. Here a wake-up notes what it is for;
/// while the turn runs that is all it does (the turn looks before it ends), and between turns it
/// also wakes the task.
#[derive(Default)]
struct Turn {
    /// [`RUNNING`], and what woke the connection ([`CONN`], [`STREAMS`]) since last looked at.
    state: AtomicU8,
    task: AtomicWaker,
}

const RUNNING: u8 = 1;
/// h2 asked for its connection to be polled (socket readiness, a frame queued by a stream).
const CONN: u8 = 2;
/// A stream polled inside the connection's task was woken.
const STREAMS: u8 = 4;

impl Turn {
    /// Starts a turn for `task`; returns what woke the connection since the last turn.
    fn begin(&self, task: &Waker) -> u8 {
        self.task.register(task);
        self.state.swap(RUNNING, Ordering::AcqRel) & !RUNNING
    }

    /// What woke the connection since the last look, which the turn now takes care of.
    fn take(&self) -> u8 {
        self.state.fetch_and(RUNNING, Ordering::AcqRel) & !RUNNING
    }

    /// Ends the turn; false if something woke it since the last look (the turn then still
    /// runs, and goes round again).
    fn end(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Ends the turn with work left, for the task's next poll (which looks at everything).
    fn hand_over(&self) {
        self.state.store(0, Ordering::Release);
    }

    fn wake(&self, woke: u8) {
        if self.state.fetch_or(woke, Ordering::AcqRel) & RUNNING == 0 {
            self.task.wake();
        }
    }
}

/// The wakers given to h2 ([`CONN`]) and to the streams ([`STREAMS`]), made once per
/// connection.
struct TurnWakers {
    conn: Waker,
    streams: Waker,
}

impl TurnWakers {
    fn new(turn: &Arc<Turn>) -> TurnWakers {
        let waker = |woke| {
            Waker::from(Arc::new(TurnWaker {
                turn: turn.clone(),
                woke,
            }))
        };
        TurnWakers {
            conn: waker(CONN),
            streams: waker(STREAMS),
        }
    }
}

struct TurnWaker {
    turn: Arc<Turn>,
    woke: u8,
}

impl Wake for TurnWaker {
    fn wake(self: Arc<Self>) {
        self.turn.wake(self.woke);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.turn.wake(self.woke);
    }
}

/// An exchange polled inside its connection's task: a panic in it must cost its own stream
/// only (as it would in a task of its own), not every stream of the connection. Unwinding
/// drops the stream's handles, and h2 resets the stream.
/// (A combinator, not an `async fn`: that would hold the exchange twice over.)
fn isolated(exchange: impl Future<Output = ()>) -> impl Future<Output = ()> {
    std::panic::AssertUnwindSafe(exchange)
        .catch_unwind()
        .map(|r| {
            if r.is_err() {
                tracing::error!("a request panicked; its stream was reset");
            }
        })
}

/// One stream's exchange: the request to the handler, its response back to the client.
fn exchange<H, Fut>(
    handler: &H,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> impl Future<Output = ()> + Send + 'static
where
    H: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let (mut parts, recv) = req.into_parts();
    join_cookies(&mut parts.headers);
    let body = H2Body::new(recv, &parts.headers);
    // Boxed where it is made: the routing future is several KiB (7–9 KiB measured), and every
    // future that held it by value would copy it again each time it moved (into this one, into
    // its box, into a wrapper); a copy per move cost more than the allocation saves (closed-loop
    // HTTP/2 -16% with one more wrapper).
    let response = Box::pin(handler(Request::from_parts(
        parts,
        RequestBody::http2(body),
    )));
    respond_with(respond, response)
}

/// Why an HTTP/2 request head cannot go on, if it cannot; the pipeline answers it through the
/// renderer, counted, before planning it.
///
/// - Over the limits HTTP/1.1 heads are held to (431): its header list size (RFC 9113
///   §6.5.2: name, value and 32 per field, pseudo-headers included) or its number of fields,
///   counted as the request would have them on HTTP/1.1: after its cookie crumbs are joined
///   (see [`exchange`]), and with `:authority` as the `Host` line it becomes. So a request
///   exactly at the limit on HTTP/2 is exactly at it on HTTP/1.1 towards the app.
/// - A `host` that disagrees with `:authority`, two of them, or one that names no authority
///   (400): RFC 9113 §8.3.1 says they must agree. Refused rather than rewritten, as Envoy does:
///   a client that sends both and means two hosts is confused or probing for the hop that
///   routes on one and forwards the other.
pub fn check_head<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let headers = req.headers();
    let uri = req.uri();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if let Some(host) = host {
        let agrees = uri
            .authority()
            .is_none_or(|a| a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()));
        if hosts.next().is_some() || !valid_authority(host.as_bytes()) || !agrees {
            return Err(ProxyError::new(
                Reason::BadRequest,
                "the host header must be one valid authority, equal to :authority",
            ));
        }
    }
    let fields = headers.len() + usize::from(host.is_none() && uri.authority().is_some());
    let pseudo = req.method().as_str().len()
        + uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
        + 4 * 32;
    let size = headers
        .iter()
        .fold(pseudo, |n, (k, v)| n + k.as_str().len() + v.len() + 32);
    if fields > MAX_HEADER_FIELDS || size > MAX_HEADER_BYTES {
        return Err(ProxyError::new(
            Reason::HeaderTooLarge,
            format!(
                "the request's header list is larger than {MAX_HEADER_BYTES} bytes or has \
                 more than {MAX_HEADER_FIELDS} fields (the authority counts as one)"
            ),
        ));
    }
    Ok(())
}

/// Waits for the response and sends it: its head, then its body within the client's window.
async fn respond_with<F>(mut respond: SendResponse<Bytes>, mut response: Pin<Box<F>>)
where
    F: Future<Output = Response<ProxyBody>>,
{
    let response = tokio::select! {
        biased;
        r = &mut response => r,
        // The client reset the stream; dropping the routing future cancels the request.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut parts, body) = response.into_parts();
    let end = body.is_end_stream();
    complete_head(&mut parts.headers, &body, end);
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(stream) if !end => pump(body, stream, h2::Reason::INTERNAL_ERROR).await,
        Ok(_) => {}
        // The stream was reset meanwhile, or the head is not valid HTTP/2 (h2 refuses
        // connection-specific headers, which the handlers remove).
        Err(e) => {
            tracing::debug!(error = %e, "could not send a response head");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

/// What hyper's servers add to a response head that lacks them, on HTTP/2 as on HTTP/1.1:
/// `date` (RFC 9110 §6.6.1; upstream responses nearly always carry theirs, the proxy's own
/// do not) and, for a body that is not empty, `content-length` when its length is known.
fn complete_head(headers: &mut HeaderMap, body: &ProxyBody, end: bool) {
    if !headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            headers.insert(header::DATE, v);
        }
    }
    if !end && !headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// The connection's socket as h2 sees it: reads replay `prefix` first, and writes are
/// collected, to be sent when the connection's turn is over ([`Output::poll_send`]).
///
/// Why: h2 writes a data frame of 256 bytes or more straight from its buffer, and can queue
/// nothing behind it until that write is done, so it flushes in the middle of a turn. A gRPC
/// response (head, message, trailers) then left in two writes, and each woke the client. A
/// copy of a few KiB is far cheaper than a write and a wake-up; a bulk body is held back at
/// most [`CORK_LIMIT`] at a time, which also merges its 16 KiB frames into fewer writes.
///
/// The stream is any IO (plain TCP, TLS), kept in `Pending` for both directions: reads take the
/// same lock as writes, which only this connection's task ever takes. (tokio's `split` would do
/// too, but cost about 300 instructions per gRPC call more, measured with callgrind.)
struct Corked {
    /// Bytes read before the HTTP/2 server started (the client preface, at least).
    prefix: Bytes,
    out: Arc<Mutex<Pending>>,
}

/// The connection's stream, boxed once per connection so the h2 machinery is compiled once,
/// not once per IO type.
type BoxIo = Pin<Box<dyn Io>>;

/// What an HTTP/2 connection can be served over.
trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// The sending side of [`Corked`], kept by the connection's task.
struct Output {
    out: Arc<Mutex<Pending>>,
}

/// Bytes h2 has written and the socket has not taken yet.
struct Pending {
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    sent: usize,
    io: BoxIo,
}

impl Corked {
    fn new<I: AsyncRead + AsyncWrite + Send + 'static>(
        stream: I,
        prefix: Bytes,
    ) -> (Corked, Output) {
        let out = Arc::new(Mutex::new(Pending {
            buf: Vec::new(),
            sent: 0,
            io: Box::pin(stream),
        }));
        let output = Output { out: out.clone() };
        (Corked { prefix, out }, output)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Only the connection's task takes it, one holder at a time; a panic while holding it
        // leaves nothing half-done that matters.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Output {
    /// Gives back a buffer that a burst grew, if nothing is waiting in it. Called now and then
    /// (with each keepalive ping), not after every turn: a busy connection would only grow it
    /// again, copying as it goes.
    fn release_idle(&mut self) {
        let mut pending = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if pending.buf.is_empty() && pending.buf.capacity() > IDLE_BUFFER {
            pending.buf = Vec::new();
        }
    }

    /// Sends what the turn collected; Pending (with a wake-up set) while the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = self.out.lock().unwrap_or_else(|e| e.into_inner());
        pending.poll_drain(cx)
    }
}

#[cfg(test)]
thread_local! {
    /// Socket writes made by `Corked` on this thread, so a test can count a response's writes.
    static SOCKET_WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Pending {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(self.io.as_mut().poll_write(cx, &self.buf[self.sent..]))?;
            #[cfg(test)]
            SOCKET_WRITES.with(|w| w.set(w.get() + 1));
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // All sent: start over at the front, keeping the allocation.
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Corked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        self.pending().io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut pending = self.pending();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if pending.buf.len() + len > CORK_LIMIT {
            ready!(pending.poll_drain(cx))?;
            if len > CORK_LIMIT {
                return pending.io.as_mut().poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            pending.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Nothing to do yet: h2 flushes in the middle of a turn too; the turn's end sends.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = self.pending();
        ready!(pending.poll_drain(cx))?;
        pending.io.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::idle::IdleBody;
    use http_body_util::{Either, Full};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Serves every connection to the returned address with `handler`, until `stop` is sent.
    async fn start<H, Fut>(handler: H) -> (SocketAddr, watch::Sender<bool>)
    where
        H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        start_with(handler, Settings::default()).await
    }

    async fn start_with<H, Fut>(handler: H, settings: Settings) -> (SocketAddr, watch::Sender<bool>)
    where
        H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (handler, stop) = (handler.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, Bytes::new(), &handler, stop, settings).await;
                });
            }
        });
        (addr, stop_tx)
    }

    /// An h2 client connection to `addr`, driven by a task of its own.
    async fn connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
        let io = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send
    }

    /// A GET of `path` on the connection of `send`: the response body's first data frame, or
    /// the error that ended the exchange.
    async fn ask(send: &h2::client::SendRequest<Bytes>, path: &str) -> Result<Bytes, h2::Error> {
        let mut send = send.clone().ready().await?;
        let req = Request::get(format!("http://test{path}")).body(()).unwrap();
        let (response, _) = send.send_request(req, true)?;
        let response = tokio::time::timeout(TIMEOUT, response)
            .await
            .expect("no answer")?;
        response.into_body().data().await.expect("no body")
    }

    fn text(body: &'static str) -> Response<ProxyBody> {
        Response::new(Either::Right(Full::new(Bytes::from_static(
            body.as_bytes(),
        ))))
    }

    /// A connected pair: (the server's end wrapped as h2 sees it, the client's end).
    async fn corked_pair() -> (Corked, Output, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (corked, output) = Corked::new(server, Bytes::from_static(b"first "));
        (corked, output, client)
    }

    #[tokio::test]
    async fn writes_of_a_turn_leave_together_when_the_turn_ends() {
        let (mut corked, mut output, client) = corked_pair().await;
        // A plain socket, so that each read below is a real read(2), not tokio's cached
        // readiness.
        let mut client = client.into_std().unwrap();
        client.set_nonblocking(true).unwrap();
        // h2 writes a data frame from its buffer, flushes, then writes the trailers.
        corked.write_all(&[1u8; 300]).await.unwrap();
        corked.flush().await.unwrap();
        corked.write_all(&[2u8; 10]).await.unwrap();
        let mut buf = [0u8; 1024];
        let early = std::io::Read::read(&mut client, &mut buf);
        assert!(
            matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "nothing may leave before the turn ends: {early:?}"
        );
        poll_fn(|cx| output.poll_send(cx)).await.unwrap();
        // Loopback delivers during the write, so all of it is there now.
        client.set_nonblocking(false).unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = vec![0u8; 310];
        std::io::Read::read_exact(&mut client, &mut got).unwrap();
        assert_eq!(&got[..300], &[1u8; 300][..]);
        assert_eq!(&got[300..], &[2u8; 10][..]);
        // Reads replay what was read before the connection came here, then the socket.
        std::io::Write::write_all(&mut client, b"then the socket").unwrap();
        let mut read = vec![0u8; 21];
        tokio::time::timeout(TIMEOUT, corked.read_exact(&mut read))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, b"first then the socket");
    }

    #[tokio::test]
    async fn a_burst_buffer_is_kept_while_busy_and_given_back_when_quiet() {
        let (mut corked, mut output, _client) = corked_pair().await;
        let capacity = |output: &Output| output.out.lock().unwrap().buf.capacity();
        corked.write_all(&[3u8; 40 * 1024]).await.unwrap();
        poll_fn(|cx| output.poll_send(cx)).await.unwrap();
        // Kept between turns, so the next burst does not grow it again.
        assert!(capacity(&output) >= 40 * 1024);
        // Data waiting is never dropped.
        corked.write_all(&[4u8; 10]).await.unwrap();
        output.release_idle();
        assert_eq!(output.out.lock().unwrap().buf.len(), 10);
        poll_fn(|cx| output.poll_send(cx)).await.unwrap();
        output.release_idle();
        assert!(capacity(&output) <= IDLE_BUFFER);
    }

    #[tokio::test]
    async fn a_bulk_write_is_not_held_back() {
        let (mut corked, _output, mut client) = corked_pair().await;
        corked.write_all(&[7u8; 300]).await.unwrap();
        // More than the limit: what was held goes first, then this, without waiting for the
        // turn to end.
        let bulk = vec![8u8; CORK_LIMIT + 1];
        corked.write_all(&bulk).await.unwrap();
        let mut got = vec![0u8; 300 + bulk.len()];
        tokio::time::timeout(TIMEOUT, client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got[..300].iter().all(|&b| b == 7) && got[300..].iter().all(|&b| b == 8));
    }

    /// Concurrent streams on one connection, each with its own body. Every handler waits
    /// until all of them are in, so streams served one after another would never finish.
    async fn concurrent_streams() {
        const N: u64 = 40;
        let all_in = Arc::new(tokio::sync::Barrier::new(N as usize));
        let (addr, _stop) = start(move |req: Request<RequestBody>| {
            let all_in = all_in.clone();
            async move {
                all_in.wait().await;
                let body = Bytes::from(format!("stream {}", &req.uri().path()[1..]));
                Response::new(Either::Right(Full::new(body)))
            }
        })
        .await;
        let send = connect(addr).await;
        let calls = (0..N).map(|n| {
            let mut send = send.clone();
            async move {
                send = send.ready().await.unwrap();
                let req = Request::get(format!("http://test/{n}")).body(()).unwrap();
                let (response, _) = send.send_request(req, true).unwrap();
                let mut body = response.await.unwrap().into_body();
                let data = body.data().await.unwrap().unwrap();
                assert_eq!(data, format!("stream {n}"));
            }
        });
        let all = futures_util::future::join_all(calls);
        tokio::time::timeout(TIMEOUT, all)
            .await
            .expect("streams were not served concurrently");
    }

    /// One thread: streams are polled by the connection's task.
    #[tokio::test]
    async fn concurrent_streams_on_one_thread() {
        concurrent_streams().await;
    }

    /// Several threads: each stream is a task of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_streams_on_several_threads() {
        concurrent_streams().await;
    }

    #[tokio::test]
    async fn a_client_reset_drops_the_routing_future_and_only_its_stream() {
        let (started_tx, started_rx) = oneshot::channel::<oneshot::Sender<()>>();
        let started_tx = Arc::new(Mutex::new(Some(started_tx)));
        let (addr, _stop) = start(move |_req| {
            let started = started_tx.lock().unwrap().take();
            async move {
                let Some(started) = started else {
                    return text("second");
                };
                // `_alive` is dropped with the future, which the test sees as its sender closed.
                let (guard, _alive) = oneshot::channel::<()>();
                started.send(guard).unwrap();
                std::future::pending::<Response<ProxyBody>>().await
            }
        })
        .await;
        let io = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://test/slow").body(()).unwrap();
        let (response, stream) = send.send_request(req, true).unwrap();
        let mut guard = tokio::time::timeout(TIMEOUT, started_rx)
            .await
            .unwrap()
            .unwrap();
        // Dropping the response future (its stream already closed on our side) resets it.
        drop((response, stream));
        let closed = tokio::time::timeout(TIMEOUT, guard.closed()).await;
        assert!(
            closed.is_ok(),
            "the handler's future was not dropped after the reset"
        );
        // The connection and its other streams go on.
        assert_eq!(ask(&send, "/second").await.unwrap(), "second");
    }

    #[tokio::test]
    async fn response_heads_get_a_date_and_a_known_length() {
        let (addr, _stop) = start(|req: Request<RequestBody>| async move {
            match req.uri().path() {
                "/empty" => text(""),
                _ => text("three"),
            }
        })
        .await;
        let send = connect(addr).await;
        for (path, length) in [("/full", Some("5")), ("/empty", None)] {
            let mut send = send.clone().ready().await.unwrap();
            let req = Request::get(format!("http://test{path}")).body(()).unwrap();
            let (response, _) = send.send_request(req, true).unwrap();
            let response = tokio::time::timeout(TIMEOUT, response)
                .await
                .unwrap()
                .unwrap();
            let headers = response.headers();
            let date = headers[header::DATE].to_str().unwrap();
            assert!(
                httpdate::parse_http_date(date).is_ok(),
                "{path}: date {date:?}"
            );
            let got = headers
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap());
            assert_eq!(got, length, "{path}");
        }
    }

    /// A stream that keeps using up tokio's budget (each time it does, it and the socket say
    /// "later" and wake the task) must not keep its connection's turn going round for ever.
    #[tokio::test]
    async fn a_stream_that_uses_up_the_budget_does_not_stall_its_connection() {
        let (addr, _stop) = start(|req: Request<RequestBody>| async move {
            if req.uri().path() == "/busy" {
                for _ in 0..10_000 {
                    tokio::task::coop::consume_budget().await;
                }
            }
            text("done")
        })
        .await;
        let send = connect(addr).await;
        let (busy, quick) = tokio::join!(ask(&send, "/busy"), ask(&send, "/quick"));
        assert_eq!(busy.unwrap(), "done");
        assert_eq!(quick.unwrap(), "done");
    }

    #[tokio::test]
    async fn a_panicking_request_costs_only_its_own_stream() {
        let (addr, _stop) = start(|req: Request<RequestBody>| async move {
            if req.uri().path() == "/panic" {
                panic!("a bug in one request");
            }
            text("fine")
        })
        .await;
        let send = connect(addr).await;
        let panicked = ask(&send, "/panic").await;
        assert!(
            panicked.as_ref().is_err_and(|e| e.is_reset()),
            "{panicked:?}"
        );
        assert_eq!(ask(&send, "/after").await.unwrap(), "fine");
    }

    #[tokio::test]
    async fn stop_sends_goaway_and_lets_the_open_stream_finish() {
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = Arc::new(Mutex::new(Some(release_rx)));
        let (addr, stop) = start(move |_req| {
            let release = release_rx.lock().unwrap().take();
            async move {
                if let Some(release) = release {
                    let _ = release.await;
                }
                text("finished")
            }
        })
        .await;
        let io = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::get("http://test/in-flight").body(()).unwrap();
        let (response, _) = send.send_request(req, true).unwrap();
        // Let the request reach the handler before stopping.
        let mut send = send.ready().await.unwrap();
        stop.send(true).unwrap();
        // GOAWAY: the connection soon takes no new streams. (h2 announces it twice, and
        // streams the client opened before the second one are still served.)
        let refused = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Err(e) = poll_fn(|cx| send.poll_ready(cx)).await {
                    break e;
                }
                let req = Request::get("http://test/late").body(()).unwrap();
                match send.send_request(req, true) {
                    Ok((late, _)) => {
                        if let Err(e) = late.await {
                            break e;
                        }
                    }
                    Err(e) => break e,
                }
            }
        });
        let refused = refused.await.expect("GOAWAY did not arrive");
        assert!(refused.is_go_away(), "{refused:?}");
        // ...but the one in flight is answered, and then the connection closes.
        release_tx.send(()).unwrap();
        let response = tokio::time::timeout(TIMEOUT, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let data = tokio::time::timeout(TIMEOUT, body.data()).await.unwrap();
        assert_eq!(data.unwrap().unwrap(), "finished");
        let ended = tokio::time::timeout(TIMEOUT, conn).await;
        assert!(
            ended.is_ok(),
            "the connection stayed open after its last stream"
        );
    }

    /// Frame types of the HTTP/2 frames in `bytes` (a server's side of a connection), with
    /// their flags.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            out.push((bytes[3], bytes[4]));
            bytes = &bytes[(9 + len).min(bytes.len())..];
        }
        out
    }

    /// Keepalive on a short clock, so the tests take a second or two.
    const QUICK_PINGS: Settings = Settings {
        handshake_timeout: TIMEOUT,
        max_header_list: 64 * 1024,
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_secs(1),
    };

    #[tokio::test]
    async fn a_client_that_stops_answering_pings_is_disconnected() {
        let (addr, _stop) = start_with(|_req| async { text("unused") }, QUICK_PINGS).await;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        // The preface and an empty SETTINGS frame, then silence: no SETTINGS ack, no PING ack.
        raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        raw.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let start = tokio::time::Instant::now();
        let mut got = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, raw.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "still open after {TIMEOUT:?} without answering"
        );
        let waited = start.elapsed();
        let least = QUICK_PINGS.keepalive_interval + QUICK_PINGS.keepalive_timeout;
        assert!(
            waited >= least,
            "closed after {waited:?}, before a ping went unanswered"
        );
        let frames = frames(&got);
        // A PING (type 6) that is not an ack, then a GOAWAY (type 7) saying why it closed.
        assert!(frames.contains(&(6, 0)), "{frames:?}");
        assert_eq!(frames.last().map(|f| f.0), Some(7), "{frames:?}");
    }

    #[tokio::test]
    async fn a_client_that_answers_pings_stays_connected() {
        let (addr, _stop) = start_with(|_req| async { text("still here") }, QUICK_PINGS).await;
        let io = TcpStream::connect(addr).await.unwrap();
        // h2's client answers pings whenever its connection is polled.
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        // Several pings' worth, and more than one unanswered ping would be allowed.
        let quiet = 2 * (QUICK_PINGS.keepalive_interval + QUICK_PINGS.keepalive_timeout);
        tokio::time::sleep(quiet).await;
        assert!(!conn.is_finished(), "the connection was closed");
        assert_eq!(ask(&send, "/").await.unwrap(), "still here");
    }

    /// An HTTP/2 upstream that answers each connection's first request (stream 1) with a
    /// gRPC-like response — head, a 300-byte message, trailers — in one write, as a peer
    /// sidecar does. The frames are written by hand so that they are certain to arrive together.
    async fn one_write_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    // Read the preface, then frames until the request's HEADERS (type 1).
                    let mut preface = [0u8; 24];
                    s.read_exact(&mut preface).await.unwrap();
                    loop {
                        let mut head = [0u8; 9];
                        s.read_exact(&mut head).await.unwrap();
                        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let mut payload = vec![0u8; len];
                        s.read_exact(&mut payload).await.unwrap();
                        if head[3] == 1 {
                            break;
                        }
                    }
                    let mut out = Vec::new();
                    // SETTINGS (none), and the ack of the client's.
                    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                    out.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
                    // HEADERS, END_HEADERS: `:status: 200` (static table entry 8).
                    out.extend_from_slice(&[0, 0, 1, 1, 4, 0, 0, 0, 1, 0x88]);
                    // DATA, 300 bytes.
                    out.extend_from_slice(&[0, 1, 0x2c, 0, 0, 0, 0, 0, 1]);
                    out.extend_from_slice(&[b'x'; 300]);
                    // Trailers, END_STREAM | END_HEADERS: `grpc-status: 0`, a literal.
                    out.extend_from_slice(&[0, 0, 15, 1, 5, 0, 0, 0, 1, 0, 11]);
                    out.extend_from_slice(b"grpc-status");
                    out.extend_from_slice(&[1, b'0']);
                    s.write_all(&out).await.unwrap();
                    tokio::time::sleep(TIMEOUT).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_response_with_trailers_leaves_in_one_write() {
        let upstream = one_write_upstream().await;
        // The handler forwards each request to the upstream over the proxy's HTTP/2 client.
        let (addr, _stop) = start(move |req| async move {
            let io = TcpStream::connect(upstream).await.unwrap();
            let sender = crate::codec::h2client::Sender::handshake(io, 64 * 1024)
                .await
                .unwrap();
            let response = sender.send(req).await.unwrap();
            response.map(|body| Either::Left(IdleBody::unwatched(Either::Right(body))))
        })
        .await;
        let send = connect(addr).await;
        let mut writes = Vec::new();
        // The first exchange also settles the connection (SETTINGS and their acks).
        for _ in 0..2 {
            let before = SOCKET_WRITES.with(|w| w.get());
            let mut send = send.clone().ready().await.unwrap();
            let req = Request::post("http://test/call").body(()).unwrap();
            let (response, _) = send.send_request(req, true).unwrap();
            let response = tokio::time::timeout(TIMEOUT, response)
                .await
                .unwrap()
                .unwrap();
            let mut body = response.into_body();
            let data = body.data().await.unwrap().unwrap();
            assert_eq!(data.len(), 300);
            let trailers = body.trailers().await.unwrap().unwrap();
            assert_eq!(trailers["grpc-status"], "0");
            writes.push(SOCKET_WRITES.with(|w| w.get()) - before);
        }
        assert_eq!(
            writes[1], 1,
            "head, data and trailers took {} writes",
            writes[1]
        );
    }
}
