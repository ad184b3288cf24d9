//! Connections to one upstream address: a pool of idle HTTP/1.1 connections (hyper's client)
//! and one shared, multiplexed HTTP/2 connection (`codec::h2client`) for the general path, a
//! pool of plain sockets for the HTTP/1.1 fast path (`pipeline::fast`), plus what the balancer
//! reads: requests in flight and the endpoint's [`Health`] (ejection, latency estimate).
//!
//! Pools follow one set of rules: an idle connection is closed after [`POOL_IDLE_TIMEOUT`], no
//! connection is reused past [`POOL_MAX_LIFETIME`], at most [`POOL_MAX_IDLE`] idle connections
//! are kept per endpoint and protocol, and a pooled connection that fails before a response is
//! resent on only by [`may_resend`].
//!
//! Written by hand rather than with hyper-util's pooled `Client` because the balancer must
//! know that a connection was refused *before* the request is handed over: the request body
//! is a stream that cannot be replayed, and hyper-util's client consumes the request whether
//! or not it could connect. Here, getting a connection and sending on it are separate steps,
//! so a refused connection moves the request to another endpoint untouched.
//!
//! The state lives in an [`Upstream`] shared through an `Arc`; a snapshot swap that keeps an
//! endpoint keeps its `Upstream`, so its pooled connections and load survive the reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::codec::h2client;
use crate::codec::headers::{H2Body, RequestBody, UpstreamBody, Wire};
pub use crate::forward::conn::ConnectError;
use crate::forward::conn::{self, Conn, TlsTarget};
use crate::forward::health::Health;

/// Most idle HTTP/1.1 connections pooled per upstream (for each of the two HTTP/1.1 clients);
/// beyond that, a connection closes once its response is done.
pub const POOL_MAX_IDLE: usize = 256;
/// An idle pooled connection older than this is closed rather than reused: shorter than the
/// usual server keep-alive timeouts (nginx 75 s, Node.js 5 s is the outlier), so the proxy
/// rarely writes to a connection the server is closing, and a burst's connections do not stay
/// open for ever.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// No connection is used for new requests after this age, so load spreads again over endpoints
/// that were added or restarted, and DNS or address changes are picked up.
pub const POOL_MAX_LIFETIME: Duration = Duration::from_secs(300);

/// The one rule for a connection that failed before any byte of its response: the request is
/// sent again, on a fresh connection to the same endpoint, only when the failed connection was
/// a reused one (a fresh connection that fails says something about the endpoint, and the
/// attempt loop decides what happens next), and either the request was not written at all, or
/// it is idempotent (RFC 9110 §9.2.2) and its whole body is in hand to send again.
pub fn may_resend(reused: bool, written: bool, idempotent: bool, body_in_hand: bool) -> bool {
    reused && (!written || (idempotent && body_in_hand))
}
/// How long a connect may take before the endpoint counts as failed, until a snapshot sets the
/// destination's `connectTimeout` (the inbound app's stays this).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// An error of either HTTP stack (hyper for HTTP/1.1, h2 for HTTP/2).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Failure of an exchange on an established connection.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request is returned untouched.
    Connect(ConnectError, Box<Request<RequestBody>>),
    /// The request was (possibly) sent and then failed.
    Failed(BoxError),
}

/// Shared connection state and load of one upstream address.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    /// Mutual TLS to a peer sidecar, or plaintext when `None`.
    tls: Option<TlsTarget>,
    in_flight: AtomicUsize,
    /// The destination's connect timeout, in milliseconds (set by each snapshot).
    connect_timeout_ms: AtomicU64,
    /// Ejection state, connect-failure memory and latency estimate.
    health: Health,
    idle_h1: Mutex<Vec<Pooled<http1::SendRequest<RequestBody>>>>,
    h2: Mutex<Option<Pooled<h2client::Sender>>>,
    /// Idle keep-alive sockets of the fast path, each with its read buffer.
    idle_raw: Mutex<Vec<RawConn>>,
    /// Serialises HTTP/2 connects so a burst of first requests opens one connection, not many.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    /// Connection state for `addr`, in plaintext; nothing is connected until the first request.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Self::with_tls(addr, None)
    }

    /// Connection state for `addr`, over mutual TLS when `tls` is given.
    pub fn with_tls(addr: SocketAddr, tls: Option<TlsTarget>) -> Arc<Self> {
        Arc::new(Upstream {
            addr,
            tls,
            in_flight: AtomicUsize::new(0),
            connect_timeout_ms: AtomicU64::new(CONNECT_TIMEOUT.as_millis() as u64),
            health: Health::default(),
            idle_h1: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            idle_raw: Mutex::new(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity the endpoint must prove, when connections to it are mutual TLS.
    pub fn expected_identity(&self) -> Option<&Arc<str>> {
        self.tls.as_ref().map(|t| &t.expected)
    }

    /// Requests in flight (sent, response headers not yet received).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Sets how long a connect may take (the destination's `connectTimeout`).
    pub fn set_connect_timeout(&self, t: Duration) {
        self.connect_timeout_ms
            .store(t.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The endpoint's health as this sidecar has seen it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Sends `req` on a connection of the given protocol, connecting if needed. (The attempt
    /// loop counts the request in flight.)
    pub async fn send(
        self: &Arc<Self>,
        wire: Wire,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match wire {
            Wire::Http1 => Ok(self.send_h1(req).await?.map(UpstreamBody::Left)),
            Wire::Http2 => Ok(self.send_h2(req).await?.map(UpstreamBody::Right)),
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        // A pooled connection can die between checkout and use (the peer's idle timeout);
        // hyper hands the request back in that case, unwritten. A request hyper has written
        // cannot be had back (hyper owns it), so only the unwritten case of `may_resend`
        // applies here.
        loop {
            let (conn, reused) = match self.checkout_h1() {
                Some(c) => (c, true),
                None => match self.connect_h1().await {
                    Ok(c) => (c, false),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            let mut conn = conn;
            match conn.conn.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin_h1(conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if may_resend(reused, false, false, false) => req = back,
                    Some(back) => {
                        let closed = ConnectError::Closed { addr: self.addr };
                        return Err(SendError::Connect(closed, Box::new(back)));
                    }
                    None => return Err(SendError::Failed(e.into_error().into())),
                },
            }
        }
    }

    /// Takes a connection that can send now. The pool also holds connections whose response
    /// body is still streaming (they become ready when it ends): those are skipped, and
    /// closed ones are dropped on the way.
    fn checkout_h1(&self) -> Option<Pooled<http1::SendRequest<RequestBody>>> {
        let mut pool = self.idle_h1.lock().expect("pool lock poisoned");
        let now = Instant::now();
        let mut i = pool.len();
        while i > 0 {
            i -= 1;
            if pool[i].conn.is_closed() || pool[i].times.expired(now) {
                pool.swap_remove(i);
            } else if pool[i].conn.is_ready() {
                return Some(pool.swap_remove(i));
            }
        }
        None
    }

    /// Puts a connection back as soon as its response head is in. It turns ready by itself
    /// when hyper's connection task has read the response body to the end, so no task waits
    /// on it (hyper-util's pool spawns one per request for that).
    fn checkin_h1(&self, mut conn: Pooled<http1::SendRequest<RequestBody>>) {
        let mut pool = self.idle_h1.lock().expect("pool lock poisoned");
        if pool.len() < POOL_MAX_IDLE {
            conn.times.idle_from(Instant::now());
            pool.push(conn);
        }
    }

    /// A new connection, plain or mutual TLS (HTTP/2 or HTTP/1.1 inside, by `h2`). Any
    /// failure, the TLS handshake's and the identity check's included, comes back to the
    /// attempt loop as a refused connect, which counts it against the endpoint's health.
    async fn connect_stream(&self, h2: bool) -> Result<Conn, ConnectError> {
        let timeout = Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed));
        conn::connect(self.addr, self.tls.as_ref(), h2, timeout).await
    }

    /// An idle fast-path connection that is still open, if one is pooled. A socket the
    /// upstream closed while idle is readable (EOF); such sockets are dropped here, before a
    /// request is written to them, as are connections past their idle time or lifetime.
    /// `now` is the request's start: the fast path reads the clock once per request.
    pub(crate) fn checkout_raw(&self, now: Instant) -> Option<RawConn> {
        let mut pool = self.idle_raw.lock().expect("pool lock poisoned");
        while let Some(conn) = pool.pop() {
            if !conn.times.expired(now) && idle_and_open(conn.stream.tcp()) {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a fast-path connection whose exchange ended cleanly. Its idle time counts from
    /// `since`, the start of the request it carried (at most that request's length early: no
    /// clock read per request for a 30 s timeout).
    pub(crate) fn checkin_raw(&self, mut conn: RawConn, since: Instant) {
        let mut pool = self.idle_raw.lock().expect("pool lock poisoned");
        if pool.len() < POOL_MAX_IDLE {
            conn.times.idle_from(since);
            pool.push(conn);
        }
    }

    /// A new fast-path connection.
    pub(crate) async fn connect_raw(&self) -> Result<RawConn, ConnectError> {
        Ok(RawConn {
            stream: self.connect_stream(false).await?,
            buf: bytes::BytesMut::with_capacity(RAW_BUF),
            times: Times::new(),
        })
    }

    async fn connect_h1(&self) -> Result<Pooled<http1::SendRequest<RequestBody>>, ConnectError> {
        let io = TokioIo::new(self.connect_stream(false).await?);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: self.addr,
                source: source.into(),
            })?;
        drive_h1(conn);
        Ok(Pooled::new(sender))
    }

    async fn send_h2(&self, mut req: Request<RequestBody>) -> Result<Response<H2Body>, SendError> {
        // A connection that closed (GOAWAY) just before use hands the request back unwritten:
        // `may_resend` sends it on a fresh connection if the closed one was a reused one, and
        // otherwise the attempt loop tries another endpoint.
        loop {
            let (conn, reused) = match self.h2_conn().await {
                Ok(c) => c,
                Err(e) => return Err(SendError::Connect(e, Box::new(req))),
            };
            match conn.send(req).await {
                Ok(resp) => return Ok(resp),
                Err(h2client::Failure::Closed(back)) => {
                    req = *back;
                    // Forget this connection, not one another request has just put in its place.
                    let mut slot = self.h2.lock().expect("h2 lock poisoned");
                    if slot.as_ref().is_some_and(|c| c.conn.same_connection(&conn)) {
                        *slot = None;
                    }
                    drop(slot);
                    if !may_resend(reused, false, false, false) {
                        let closed = ConnectError::Closed { addr: self.addr };
                        return Err(SendError::Connect(closed, Box::new(req)));
                    }
                }
                Err(h2client::Failure::Failed(e)) => return Err(SendError::Failed(e)),
            }
        }
    }

    /// The shared connection, if it is open and young enough for new requests. One past its
    /// lifetime is let go: requests on it finish, and it closes when the last one is done.
    fn cached_h2(&self) -> Option<h2client::Sender> {
        let mut slot = self.h2.lock().expect("h2 lock poisoned");
        let now = Instant::now();
        if slot.as_ref().is_some_and(|c| c.times.lived(now)) {
            *slot = None;
        }
        slot.as_ref()
            .map(|c| &c.conn)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// The shared HTTP/2 connection, and whether it was already open (reused).
    async fn h2_conn(&self) -> Result<(h2client::Sender, bool), ConnectError> {
        if let Some(c) = self.cached_h2() {
            return Ok((c, true));
        }
        let _connecting = self.h2_connecting.lock().await;
        if let Some(c) = self.cached_h2() {
            return Ok((c, true));
        }
        let stream = self.connect_stream(true).await?;
        let sender = h2client::Sender::handshake(stream, crate::base::MAX_HEADER_BYTES as u32)
            .await
            .map_err(|e| ConnectError::Handshake {
                addr: self.addr,
                source: e.into(),
            })?;
        *self.h2.lock().expect("h2 lock poisoned") = Some(Pooled::new(sender.clone()));
        Ok((sender, false))
    }
}

/// Runs an HTTP/1.1 client connection's task until the connection ends.
fn drive_h1<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
}

/// Initial read buffer of a fast-path connection.
const RAW_BUF: usize = 8 * 1024;

/// A plain HTTP/1.1 connection of the fast path and the bytes read from it but not yet used.
#[derive(Debug)]
pub(crate) struct RawConn {
    pub stream: Conn,
    pub buf: bytes::BytesMut,
    pub times: Times,
}

/// When a pooled connection was opened, and when it may no longer be used: the earlier of the
/// end of its lifetime and the end of its current idle time. Kept as one deadline so that the
/// check at checkout is one comparison.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    created: Instant,
    expires: Instant,
}

impl Times {
    fn new() -> Self {
        let now = Instant::now();
        Times {
            created: now,
            expires: now + POOL_IDLE_TIMEOUT.min(POOL_MAX_LIFETIME),
        }
    }

    /// Starts an idle period at `since`.
    fn idle_from(&mut self, since: Instant) {
        self.expires = (since + POOL_IDLE_TIMEOUT).min(self.created + POOL_MAX_LIFETIME);
    }

    /// Past its idle time or its lifetime: not to be used for a new request.
    fn expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    /// Past its lifetime (a shared connection, never idle in the pool's sense).
    fn lived(&self, now: Instant) -> bool {
        now >= self.created + POOL_MAX_LIFETIME
    }
}

/// A pooled connection handle with its [`Times`].
#[derive(Debug)]
struct Pooled<C> {
    conn: C,
    times: Times,
}

impl<C> Pooled<C> {
    fn new(conn: C) -> Self {
        Pooled {
            conn,
            times: Times::new(),
        }
    }
}

/// Whether an idle connection is still usable: nothing to read (a peer that closed it is
/// readable at EOF; an HTTP/1.1 server says nothing unasked, so any byte means it is broken).
///
/// The probe only peeks, so it consumes nothing: a TLS connection may have a record waiting
/// (a session ticket) that its TLS layer must still read. It costs no syscall while tokio has
/// not seen the socket readable, which is the normal case.
fn idle_and_open(stream: &TcpStream) -> bool {
    let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        socket2::SockRef::from(stream).peek(&mut probe)
    });
    matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Counts a request in flight for as long as it lives (also when its future is dropped).
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Upstream {
    /// Counts one request in flight on this upstream until the guard drops.
    pub(crate) fn in_flight_guard(&self) -> InFlight<'_> {
        InFlight::new(&self.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
