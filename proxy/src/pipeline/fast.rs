//! The HTTP/1.1 fast path: plain HTTP/1.1 requests forwarded to an HTTP/1.1 upstream by one task
//! per client connection, with the bytes of heads and bodies passed through rather than decoded
//! and re-encoded. It is a codec of the pipeline, not a second router: each request is planned by
//! [`Pipeline::plan`], sent by the one attempt loop ([`attempt::run`]) over the raw HTTP/1.1
//! transport below, and recorded by the pipeline's finish step.
//!
//! Why it exists: a sidecar sits on every request, and with hyper on both sides an HTTP/1.1
//! request costs about 30k instructions per sidecar, against 18k for nginx. The cost is hyper's
//! generality, not a mistake of ours: a server connection task and a client connection task per
//! hop, a channel hand-off and a oneshot between them, a body channel, header maps built and
//! re-serialised, and the request future moved into place several times. No well-kept crate
//! offers a plain HTTP/1.1 forwarding loop without those, so this module is one, and it is
//! deliberately narrow. It carries only what it can carry exactly:
//!
//! - the client speaks HTTP/1.1, with a `Content-Length` or chunked body or none, no upgrade, no
//!   `Expect`, not gRPC (see `h1::parse_request`);
//! - the next hop is HTTP/1.1 (a peer sidecar for HTTP/1.1 clients, or an `http`/`auto` app).
//!
//! Anything else — HTTP/2 (the preface does not parse as HTTP/1.1), malformed or oversized heads,
//! requests the plan refused (unknown service, no route, no config), an upstream that wants
//! HTTP/2 — hands the connection, with the bytes already read and the decision already made, to
//! the general path (`general.rs`), which then serves it to the end. The IO is any stream
//! (plain TCP today, TLS next): both directions of one stream are lent to two futures of this
//! task through `codec::io::split_ref`, never split by socket.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::base::{ConnCtx, Limits, Reason, MAX_HEADER_BYTES};
use crate::codec::h1::{self, BodyTracker, Framing, Parsed};
use crate::codec::headers::Wire;
use crate::codec::io::{share, split_ref};
use crate::codec::render::ProxyError;
use crate::codec::HeadView;
use crate::forward::upstream::{may_resend, RawConn, Upstream};
use crate::pipeline::attempt::{self, AttemptError, Failure, HeadInfo, Transport};
use crate::pipeline::{Decision, Finished, Pipeline, Planned, Tally};
use crate::telemetry::access::{Sampled, TRACEPARENT};
use crate::telemetry::metrics::Codec;

/// Room made in a buffer before each read. Buffers live as long as their connection (idle
/// keep-alive ones included), so this bounds the memory an idle connection holds; nginx's
/// equivalent default is 1 KiB for heads, hyper's 8 KiB.
const READ_CHUNK: usize = 8 * 1024;

/// How the fast path left a connection.
#[derive(Debug)]
pub enum Exit<I> {
    /// The connection is finished (client closed, drain, timeout or error).
    Closed,
    /// The general path takes over the connection, with the bytes read from it but not yet
    /// served, and the decision made for the request those bytes start with, if it was parsed.
    General(I, BytesMut, Option<Planned>),
}

/// What the loop keeps of a request head once its bytes are consumed.
#[derive(Debug, Clone, Copy)]
struct Request {
    framing: Framing,
    close: bool,
    idempotent: bool,
    is_head: bool,
}

/// How an exchange ended, for the connection's fate (the exchange itself calls the finish
/// step, where everything the finish step records is at hand).
struct Outcome {
    close: bool,
}

/// A body's size as its framing declares it.
fn declared(framing: Framing) -> Option<u64> {
    match framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::UntilClose => None,
    }
}

/// The finish step's facts of a fast-path request that the proxy answered, or whose line
/// the access log takes; a plain success records only what `Pipeline::finish` takes, so it
/// costs what it cost before there were access lines.
fn facts<'a>(
    ctx: &'a ConnCtx,
    d: &'a Decision,
    access: Option<&'a Sampled>,
    req: &Request,
    tally: Tally,
    basic: Finished<'a>,
) -> Finished<'a> {
    Finished {
        ctx: Some(ctx),
        route: d.route.as_ref().and_then(|r| r.name.as_ref()),
        access,
        tally,
        request_bytes: declared(req.framing),
        ..basic
    }
}

/// Serves HTTP/1.1 requests on `client` for as long as the fast path can carry them.
pub async fn serve<I>(
    p: &Pipeline,
    ctx: &ConnCtx,
    mut client: I,
    limits: Limits,
    stop: &mut watch::Receiver<bool>,
) -> Exit<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    let mut deadline_at = None;
    loop {
        if buf.is_empty() && *stop.borrow() {
            return Exit::Closed;
        }
        // A complete head, within the header-read timeout (which is also the keep-alive idle
        // limit, as on the general path).
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let (decision, req, access) = loop {
            let step = if buf.is_empty() {
                None
            } else {
                let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
                match h1::parse_request(&buf, &mut storage) {
                    Parsed::Partial => None,
                    Parsed::General => return Exit::General(client, buf, None),
                    Parsed::Ready(head) => {
                        let planned = p.plan(ctx, &head);
                        let decision = match (planned, head.authority) {
                            (Ok(d), Some(authority)) if p.fast_can_carry(&d) => {
                                deadline_at = h1::write_request_head(
                                    &mut out,
                                    &head,
                                    authority,
                                    d.caller_deadline.is_some(),
                                );
                                d
                            }
                            // Refused, or another protocol towards the next hop: the general
                            // path answers or translates it, with this decision.
                            (planned, _) => return Exit::General(client, buf, Some(planned)),
                        };
                        let req = Request {
                            framing: head.framing,
                            close: head.close,
                            idempotent: decision.idempotent,
                            is_head: head.method == "HEAD",
                        };
                        // The head is gone by the finish step: what an access line needs of
                        // it is read now.
                        let access = decision
                            .logged
                            .then(|| Sampled::read(head.header(TRACEPARENT)));
                        Some((decision, req, head.len, access))
                    }
                }
            };
            if let Some((decision, req, len, access)) = step {
                buf.advance(len);
                break (decision, req, access);
            }
            if buf.len() >= MAX_HEADER_BYTES {
                // The general path answers 431.
                return Exit::General(client, buf, None);
            }
            buf.reserve(READ_CHUNK);
            let idle = buf.is_empty();
            tokio::select! {
                r = tokio::time::timeout_at(deadline, client.read_buf(&mut buf)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Exit::Closed,
                },
                _ = stop.changed(), if idle => return Exit::Closed,
            }
        };
        // While draining, this is the connection's last response, and it says so.
        let stopping = *stop.borrow();
        let outcome = exchange(
            p,
            (ctx, &decision, access.as_deref()),
            (req, deadline_at),
            &mut client,
            &mut buf,
            stopping,
            &mut out,
        )
        .await;
        match outcome {
            Some(o) if !o.close && !req.close && !stopping => {}
            _ => return Exit::Closed,
        }
    }
}

/// An upstream connection whose response head has arrived and been rewritten into `out`,
/// after the request head.
struct Sent {
    upstream: Arc<Upstream>,
    conn: RawConn,
    status: u16,
    retry_after: Option<Duration>,
    framing: Framing,
    upstream_close: bool,
    head_len: usize,
}

/// One request, recorded by the finish step when it ends: `None` if it was aborted without a
/// response.
async fn exchange<I>(
    p: &Pipeline,
    (ctx, d, access): (&ConnCtx, &Decision, Option<&Sampled>),
    (req, deadline_at): (Request, Option<usize>),
    client: &mut I,
    buf: &mut BytesMut,
    stopping: bool,
    out: &mut Vec<u8>,
) -> Option<Outcome>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let start = d.start;
    let mut pump = Pump {
        body: BodyTracker::new(req.framing),
        pending: 0,
    };
    let Ok(initial) = pump.body.feed(buf) else {
        let e = ProxyError::new(Reason::BadRequest, "malformed chunked request body");
        let _ = client.write_all(&e.to_http1(true, req.is_head)).await;
        let basic = Finished::new(Codec::Fast, 400, Some(e.reason), start.elapsed());
        let f = Finished {
            detail: Some(&e.detail),
            ..facts(ctx, d, access, &req, Tally::default(), basic)
        };
        p.record(d.service.as_ref(), &f);
        return Some(Outcome { close: true });
    };
    // The body bytes that came with the head leave the client buffer now, whatever happens
    // next: on any failure, what stays in the buffer must be the next request and nothing else.
    // They are kept aside for a resend on a fresh connection.
    let early_body = buf.split_to(initial);
    let req_len = out.len();
    // The stream idle timeout, kept by the sidecar that planned the route (the caller's).
    let idle = d.route.as_ref().map(|r| {
        r.resilience
            .idle_timeout
            .unwrap_or(crate::pipeline::general::DEFAULT_IDLE_TIMEOUT)
    });
    let mut tally = Tally::default();
    let mut transport = Raw(Outgoing {
        idle,
        req,
        req_len,
        deadline_at,
        whole_body: pump.body.done(),
        client: &mut *client,
        buf: &mut *buf,
        early_body: &early_body,
        pump: &mut pump,
        out: &mut *out,
        start,
        tally: &mut tally,
    });
    let result = attempt::run(p, d, &mut transport).await;
    let latency = start.elapsed();
    let sent = match result {
        Ok(sent) => sent,
        Err(Failure::Abort) => return None,
        Err(Failure::Respond(e)) => {
            tracing::debug!(reason = e.reason.as_str(), detail = %e.detail, "request failed");
            // Unread request body bytes would be taken for the next request: close instead.
            let close = !pump.done() || req.close || stopping;
            let _ = client.write_all(&e.to_http1(close, req.is_head)).await;
            let basic = Finished::new(Codec::Fast, e.status().as_u16(), Some(e.reason), latency);
            let f = Finished {
                detail: Some(&e.detail),
                ..facts(ctx, d, access, &req, tally, basic)
            };
            p.record(d.service.as_ref(), &f);
            return Some(Outcome { close });
        }
    };
    drop(early_body);
    let response_bytes = match access {
        Some(_) => declared(sent.framing),
        None => None,
    };
    let (status, close) = relay_response(
        sent,
        client,
        buf,
        &mut pump,
        req.close || stopping,
        (out, req_len),
        (start, idle),
    )
    .await;
    let basic = Finished::new(Codec::Fast, status, None, latency);
    match access {
        None => p.record(d.service.as_ref(), &basic),
        Some(_) => {
            let f = Finished {
                response_bytes,
                ..facts(ctx, d, access, &req, tally, basic)
            };
            p.record(d.service.as_ref(), &f);
        }
    }
    Some(Outcome { close })
}

/// The request body on its way from the client to the upstream. Its progress lives here, not
/// in a future, so the pumping future can be dropped at any await (the response head arrived)
/// and a new one carries on without losing or repeating a byte.
struct Pump {
    body: BodyTracker,
    /// Bytes at the front of the client buffer that belong to the body but are not written yet.
    pending: usize,
}

impl Pump {
    fn done(&self) -> bool {
        self.pending == 0 && self.body.done()
    }
}

/// The client's side of one exchange, lent to each attempt at sending it upstream.
struct Outgoing<'a, I> {
    req: Request,
    /// The stream idle timeout, if this sidecar keeps one for the exchange.
    idle: Option<Duration>,
    /// The length of the request head at the start of `out` (the response head goes after
    /// it, so a retry can send the request head again).
    req_len: usize,
    /// Where the request head's `ferrule-deadline` value is, when it has one.
    deadline_at: Option<usize>,
    /// The whole body came with the head (or there is none): it can be sent again.
    whole_body: bool,
    client: &'a mut I,
    /// The client connection's buffer: the rest of the request body arrives here.
    buf: &'a mut BytesMut,
    /// The body bytes that came with the head, kept to resend on a fresh connection.
    early_body: &'a [u8],
    pump: &'a mut Pump,
    /// The rewritten request head, then the response head.
    out: &'a mut Vec<u8>,
    /// When the request head arrived.
    start: Instant,
    /// The attempts made, for the finish step.
    tally: &'a mut Tally,
}

/// The raw HTTP/1.1 transport: a pooled (or new) plain connection, the head and body written
/// as they are, the response head parsed in place.
struct Raw<'a, I>(Outgoing<'a, I>);

impl<I: AsyncRead + AsyncWrite + Unpin> Transport for Raw<'_, I> {
    type Output = Sent;

    async fn attempt(
        &mut self,
        upstream: &Arc<Upstream>,
        wire: Wire,
        remaining: Option<Duration>,
    ) -> Result<Sent, AttemptError> {
        // The plan only lets the fast path carry requests whose every hop is HTTP/1.1.
        debug_assert_eq!(wire, Wire::Http1);
        if let (Some(at), Some(left)) = (self.0.deadline_at, remaining) {
            h1::set_deadline(self.0.out, at, left);
        }
        // A pooled connection first; a fresh one if the pooled one proves stale.
        let mut pooled = upstream.checkout_raw(self.0.start);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                None => match upstream.connect_raw().await {
                    Ok(c) => c,
                    Err(e) => return Err(AttemptError::Refused(e.to_string())),
                },
            };
            match send_on(&mut conn, &mut self.0).await {
                Ok(head) => {
                    return Ok(Sent {
                        upstream: upstream.clone(),
                        conn,
                        status: head.status,
                        retry_after: head.retry_after,
                        framing: head.framing,
                        upstream_close: head.close,
                        head_len: head.len,
                    })
                }
                Err(SendFailure::Closed {
                    written,
                    replayable,
                }) => {
                    let idempotent = self.0.req.idempotent;
                    if may_resend(reused, written, idempotent, replayable) {
                        continue;
                    }
                    let e = if written {
                        "connection closed before a response arrived"
                    } else {
                        "connection closed before the request could be sent"
                    };
                    return Err(AttemptError::Failed(e.into()));
                }
                Err(SendFailure::Upstream(e)) => return Err(AttemptError::Failed(e)),
                Err(SendFailure::Client) => return Err(AttemptError::Abort),
            }
        }
    }

    fn head(sent: &Sent) -> HeadInfo {
        HeadInfo {
            status: sent.status,
            grpc_status: None,
            retry_after: sent.retry_after,
        }
    }

    fn attempted(&mut self, upstream: &Upstream) {
        self.0.tally.note(upstream);
    }

    fn rearm(&mut self) -> bool {
        // The request head is still at the start of `out`, and a body that came whole with it
        // is still in `early_body`; a body streamed from the client is gone.
        self.0.whole_body
    }
}

enum SendFailure {
    /// The connection failed before any byte of a response.
    Closed {
        /// Whether the request head had been written.
        written: bool,
        /// Whether the whole body is in hand to send again.
        replayable: bool,
    },
    /// The upstream failed the exchange.
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// The client failed (closed mid-body, malformed body).
    Client,
}

struct HeadIn {
    status: u16,
    retry_after: Option<Duration>,
    framing: Framing,
    close: bool,
    len: usize,
}

/// One attempt on one connection: writes the head and the body bytes already read, streams
/// the rest of the body while watching for the response head, and parses that head.
async fn send_on<I>(
    conn: &mut RawConn,
    outgoing: &mut Outgoing<'_, I>,
) -> Result<HeadIn, SendFailure>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Outgoing {
        req,
        idle,
        req_len,
        client,
        buf,
        early_body,
        pump,
        out,
        ..
    } = outgoing;
    let req_len = *req_len;
    // A body that came whole with the head can be sent again on a fresh connection; once more
    // must be streamed from the client, there is no going back.
    let replayable = pump.body.done();
    if write_two(&mut conn.stream, &out[..req_len], early_body)
        .await
        .is_err()
    {
        return Err(SendFailure::Closed {
            written: false,
            replayable,
        });
    }
    let RawConn {
        stream,
        buf: upstream_buf,
        ..
    } = conn;
    let head = if pump.done() {
        read_head(stream, upstream_buf, req.is_head, out, req_len).await
    } else {
        let client = share(&mut **client);
        let upstream = share(stream);
        let (mut client_rd, _) = split_ref(&client);
        let (mut up_rd, mut up_wr) = split_ref(&upstream);
        let send = pump_body(&mut client_rd, buf, &mut up_wr, pump, *idle);
        let recv = read_head(&mut up_rd, upstream_buf, req.is_head, out, req_len);
        tokio::pin!(send, recv);
        let mut sending = true;
        loop {
            tokio::select! {
                r = &mut send, if sending => {
                    sending = false;
                    match r {
                        Ok(()) => {}
                        Err(BodyError::Client) => return Err(SendFailure::Client),
                        // The upstream stopped reading: it may still answer (413, say).
                        Err(BodyError::Upstream) => {}
                    }
                }
                // A response may start before the body is complete (an echo streams it back):
                // the rest of the body is pumped while the response is relayed.
                h = &mut recv => break h,
            }
        }
    };
    match head {
        Ok((status, retry_after, framing, close, len)) => Ok(HeadIn {
            status,
            retry_after,
            framing,
            close,
            len,
        }),
        Err(HeadError::ClosedEarly) => Err(SendFailure::Closed {
            written: true,
            replayable,
        }),
        Err(HeadError::Io(e)) => Err(SendFailure::Upstream(Box::new(e))),
        Err(HeadError::Bad(e)) => Err(SendFailure::Upstream(Box::new(e))),
    }
}

enum BodyError {
    Client,
    Upstream,
}

/// Moves the rest of a request body from the client to the upstream, unchanged. Cancel-safe:
/// every await is a single read or write whose effect is recorded in `pump` and `buf` as soon
/// as it completes.
async fn pump_body<R, W>(
    client: &mut R,
    buf: &mut BytesMut,
    upstream: &mut W,
    pump: &mut Pump,
    idle: Option<Duration>,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if pump.pending > 0 {
            match upstream.write(&buf[..pump.pending]).await {
                Ok(n) if n > 0 => {
                    buf.advance(n);
                    pump.pending -= n;
                }
                _ => return Err(BodyError::Upstream),
            }
            continue;
        }
        if pump.body.done() {
            return Ok(());
        }
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            match read_within(idle, client.read_buf(buf)).await {
                Ok(n) if n > 0 => {}
                _ => return Err(BodyError::Client),
            }
        }
        pump.pending = pump.body.feed(buf).map_err(|_| BodyError::Client)?;
    }
}

enum HeadError {
    /// EOF or reset before any byte of a response.
    ClosedEarly,
    Io(io::Error),
    Bad(h1::BadResponse),
}

/// Reads the response head into `buf` (1xx responses are skipped, as hyper's client does),
/// writes its rewritten form into `out` after the request head's `req_len` bytes (without the
/// final blank line) and returns status, `Retry-After`, framing, whether the upstream closes,
/// and the head's length in `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    upstream: &mut R,
    buf: &mut BytesMut,
    is_head: bool,
    out: &mut Vec<u8>,
    req_len: usize,
) -> Result<(u16, Option<Duration>, Framing, bool, usize), HeadError> {
    let mut seen_any = false;
    loop {
        if !buf.is_empty() {
            let mut storage = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
            match h1::parse_response(buf, &mut storage, is_head) {
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    let len = head.len;
                    buf.advance(len);
                    continue;
                }
                Ok(Some(head)) => {
                    out.truncate(req_len);
                    h1::write_response_head(out, &head);
                    let retry_after = head.retry_after();
                    return Ok((head.status, retry_after, head.framing, head.close, head.len));
                }
                Ok(None) if buf.len() >= MAX_HEADER_BYTES => {
                    return Err(HeadError::Bad(h1::BadResponse::Malformed))
                }
                Ok(None) => {}
                Err(e) => return Err(HeadError::Bad(e)),
            }
        }
        buf.reserve(READ_CHUNK);
        match upstream.read_buf(buf).await {
            Ok(0) if !seen_any => return Err(HeadError::ClosedEarly),
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => seen_any = true,
            Err(e)
                if !seen_any
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(HeadError::ClosedEarly)
            }
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Writes the response head and relays the body, while the rest of the request body (if any)
/// is still pumped to the upstream; pools the upstream connection if everything ended cleanly.
/// Returns the status and whether the client connection closes.
async fn relay_response<I>(
    sent: Sent,
    client: &mut I,
    buf: &mut BytesMut,
    pump: &mut Pump,
    close_client: bool,
    (out, resp_start): (&mut Vec<u8>, usize),
    (start, idle): (Instant, Option<Duration>),
) -> (u16, bool)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Sent {
        upstream: pool,
        mut conn,
        status,
        framing,
        upstream_close,
        head_len,
        ..
    } = sent;
    conn.buf.advance(head_len);
    let RawConn {
        stream,
        buf: upstream_buf,
        ..
    } = &mut conn;
    // The client connection closes after this response when the client asked, when the proxy
    // is draining, when the body runs to the upstream's EOF, or when the request body is still
    // arriving (its rest might not be consumed). An upstream that merely closes its own
    // connection does not end the client's. Once the head says `connection: close`, the
    // connection must close after this response (RFC 9112 §9.6), even if the request body
    // finishes meanwhile.
    let said_close = close_client || framing == Framing::UntilClose || !pump.done();
    h1::end_head(out, said_close);
    let out = &out[resp_start..];
    let relayed = if pump.done() {
        relay_body(stream, upstream_buf, client, framing, out, idle).await
    } else {
        let client = share(client);
        let upstream = share(stream);
        let (mut client_rd, mut client_wr) = split_ref(&client);
        let (mut up_rd, mut up_wr) = split_ref(&upstream);
        // The body may still be pumping when the response ends; then both connections close.
        let send = pump_body(&mut client_rd, buf, &mut up_wr, pump, idle);
        let relay = relay_body(&mut up_rd, upstream_buf, &mut client_wr, framing, out, idle);
        tokio::pin!(send, relay);
        let mut sending = true;
        loop {
            tokio::select! {
                // If the client or the upstream gave up on the request body, the response may
                // still complete; both connections close after it.
                _ = &mut send, if sending => sending = false,
                r = &mut relay => break r,
            }
        }
    };
    let clean = relayed.is_ok() && pump.done();
    let close = !clean || said_close;
    if clean && !upstream_close && upstream_buf.is_empty() {
        pool.checkin_raw(conn, start);
    }
    (status, close)
}

/// Relays a response: the head in `out` and the body bytes already read go out in one write,
/// the rest as it arrives. `Err` if the body did not end cleanly; the client then learns it by
/// the connection closing before the body's end.
async fn relay_body<R, W>(
    upstream: &mut R,
    upstream_buf: &mut BytesMut,
    client: &mut W,
    framing: Framing,
    out: &[u8],
    idle: Option<Duration>,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut body = BodyTracker::new(framing);
    let n = body.feed(upstream_buf).map_err(drop)?;
    write_two(client, out, &upstream_buf[..n])
        .await
        .map_err(drop)?;
    upstream_buf.advance(n);
    while !body.done() {
        upstream_buf.reserve(READ_CHUNK);
        match read_within(idle, upstream.read_buf(upstream_buf)).await {
            Ok(0) if framing == Framing::UntilClose => return Ok(()),
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
        let n = body.feed(upstream_buf).map_err(drop)?;
        client.write_all(&upstream_buf[..n]).await.map_err(drop)?;
        upstream_buf.advance(n);
    }
    Ok(())
}

/// A body read, ended with an error after the stream idle timeout. Only body reads after the
/// first wait here (a body that came with its head costs no timer): for HTTP/1.1, whose bodies
/// move one way at a time, the idle timeout of each direction's reads is the stream's.
async fn read_within<F>(idle: Option<Duration>, read: F) -> io::Result<usize>
where
    F: std::future::Future<Output = io::Result<usize>>,
{
    match idle {
        None => read.await,
        Some(t) => tokio::time::timeout(t, read)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
    }
}

/// Writes `a` then `b`, in one syscall when the socket takes both.
async fn write_two<W: AsyncWrite + Unpin>(w: &mut W, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if b.is_empty() {
            w.write(a).await?
        } else if a.is_empty() {
            w.write(b).await?
        } else {
            w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}
