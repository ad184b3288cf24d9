//! Accept once: the loop shared by every listener. It accepts a connection, makes its
//! context ([`ConnCtx`]: peer, listener, detected protocol, and the slots for the peer identity
//! and the original destination), and gives the connection's IO to a codec: the HTTP/1.1 fast
//! path first on the proxy listeners, then, for whatever the fast path leaves, the HTTP/2 server
//! (`codec::h2server`) when the connection opens with the prior-knowledge h2c preface and hyper's
//! HTTP/1.1 server otherwise, with the protections every listener needs from the first request
//! on, and graceful draining on shutdown. Everything after accept is generic over the IO, so a
//! TLS stream (mTLS) or an intercepted socket plugs in here.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::{self, Either, FutureExt};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::base::conn::Protocol;
use crate::base::{ConnCtx, Limits, Listener, MAX_HEADER_BYTES};
use crate::codec::h1guard::FramingGuard;
use crate::codec::h2server;
use crate::codec::headers::{ProxyBody, RequestBody};
use crate::codec::io::Prefixed;
use crate::pipeline::fast::{self, Exit};
use crate::pipeline::{Pipeline, Planned};
use crate::telemetry::metrics::Codec;

mod mtls;
pub mod original_dst;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn builder(limits: Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        // A client may send its request and shut its write side (`nc -N`, HTTP/1.0 clients,
        // scripts): without this hyper takes the FIN for a disconnect and drops the request,
        // which the app may have served already. The fast path answers such clients too.
        .half_close(true)
        .keep_alive(true);
    b
}

/// Serves `listener` until `stop` turns true, then lets open connections finish for up to
/// `grace` (HTTP/1.1 connections close after their current response, HTTP/2 gets GOAWAY).
///
/// With a `fast` pipeline, each connection starts on the HTTP/1.1 fast path, which hands it to
/// the general path (`handler`) at the first request it does not carry. The inbound listener
/// (`kind` = [`Listener::Inbound`]) also takes mutual TLS from peer sidecars (`mesh_tls`).
pub async fn serve<H, Fut>(
    listener: TcpListener,
    kind: Listener,
    handler: H,
    fast: Option<Arc<Pipeline>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
) where
    H: Fn(Arc<ConnCtx>, Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(builder(limits));
    let local = listener.local_addr().ok();
    // Every connection task holds a sender; the drain is over when all are dropped.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            res = listener.accept() => {
                let (stream, peer) = match res {
                    Ok(s) => s,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let mut ctx = ConnCtx::new(kind, peer, local.unwrap_or(peer));
                if kind != Listener::Admin {
                    intercepted(&mut ctx, &stream);
                }
                let handler = handler.clone();
                let builder = builder.clone();
                let fast = fast.clone();
                let stop = stop.clone();
                let open = open_tx.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let conn = General {
                        handler,
                        builder: &builder,
                        limits,
                        stop,
                        pipeline: fast,
                    };
                    match (&conn.pipeline, kind) {
                        (Some(p), Listener::Inbound) => {
                            match mtls::accept(p, &mut ctx, stream, limits).await {
                                mtls::Accepted::Tls(tls) => conn.run(ctx, *tls).await,
                                mtls::Accepted::Plain(plain) => conn.run(ctx, plain).await,
                                mtls::Accepted::Refused => {}
                            }
                        }
                        _ => conn.run(ctx, stream).await,
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    drop(open_tx);
    tokio::select! {
        _ = open_rx.recv() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::info!("grace period over; closing remaining connections");
        }
    }
}

/// Transparent interception: records in `ctx` where the client meant to connect when an
/// iptables rule redirected the connection here (see `original_dst`). On a listener bound to a
/// wildcard address the socket's own address is asked for first, so that a connection made to
/// the listener's port directly is not taken for a redirected one.
fn intercepted(ctx: &mut ConnCtx, stream: &tokio::net::TcpStream) {
    if ctx.local.ip().is_unspecified() {
        if let Ok(here) = stream.local_addr() {
            ctx.local = here;
        }
    }
    ctx.original_dst = original_dst::of(stream, ctx.local);
}

/// One connection, once its IO is known (plaintext, or TLS from a peer sidecar).
struct General<'a, H> {
    handler: H,
    builder: &'a http1::Builder,
    limits: Limits,
    stop: watch::Receiver<bool>,
    /// The proxy listeners' pipeline: the fast path serves with it first, and requests the
    /// listener refuses itself are recorded in it.
    pipeline: Option<Arc<Pipeline>>,
}

impl<H, Fut> General<'_, H>
where
    H: Fn(Arc<ConnCtx>, Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    /// Serves the connection: on the fast path first (proxy listeners), then on the general
    /// path from wherever the fast path stopped.
    async fn run<I>(mut self, ctx: ConnCtx, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, prefix, planned) = match &self.pipeline {
            Some(p) => match fast::serve(p, &ctx, io, self.limits, &mut self.stop).await {
                Exit::Closed => return,
                Exit::General(io, prefix, planned) => (io, prefix, planned),
            },
            None => (io, BytesMut::new(), None),
        };
        self.serve(ctx, io, prefix, planned).await;
    }

    /// Serves a connection on the general path, from `prefix` (bytes the fast path already
    /// read) on: HTTP/2 if it opens with the client preface, else hyper's HTTP/1.1 server.
    /// `planned` is the fast path's decision for the request `prefix` starts with.
    async fn serve<I>(
        self,
        mut ctx: ConnCtx,
        mut io: I,
        mut prefix: BytesMut,
        planned: Option<Planned>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let General {
            handler,
            builder,
            limits,
            mut stop,
            pipeline,
        } = self;
        let peer = ctx.peer;
        let h2 = match preface(&prefix) {
            Some(h2) => h2,
            // Too few bytes to tell (a listener without the fast path reads nothing first).
            None => {
                let read = sniff(&mut io, &mut prefix);
                match tokio::time::timeout(limits.header_read_timeout, read).await {
                    Ok(Ok(h2)) => h2,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "connection ended before its first request");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "no request within the header read timeout");
                        return;
                    }
                }
            }
        };
        ctx.protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
        let ctx = Arc::new(ctx);
        if h2 {
            let settings = h2server::Settings {
                handshake_timeout: limits.header_read_timeout,
                // Twice the limit: h2 answers a list over its own limit with a bare 431, so
                // the pipeline checks the real limit and answers through the renderer (h2's
                // bound stays, against a client that sends megabytes of headers).
                max_header_list: 2 * MAX_HEADER_BYTES as u32,
                ..Default::default()
            };
            let handler = move |req| handler(ctx.clone(), req);
            let served = h2server::serve(io, prefix.freeze(), &handler, stop, settings);
            if let Err(e) = served.await {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
            return;
        }
        let io = Prefixed {
            prefix: prefix.freeze(),
            io,
        };
        let (io, guard) = FramingGuard::wrap(io);
        let head_guard = guard.clone();
        // The decision the fast path made goes with the first request hyper reads, which is
        // the one it was made for.
        let planned = Cell::new(planned);
        let counted = pipeline.clone();
        let svc = service_fn(move |mut req: Request<Incoming>| match guard.refuse(&req) {
            Some(resp) => {
                if let Some(p) = &counted {
                    let status = resp.status().as_u16();
                    let reason = Some(crate::base::Reason::BadRequest);
                    p.finish(None, Codec::Http1, status, reason, Duration::ZERO);
                }
                Either::Left(future::ready(Ok::<_, Infallible>(resp)))
            }
            None => {
                if let Some(p) = planned.take() {
                    req.extensions_mut().insert(p);
                }
                Either::Right(handler(ctx.clone(), req.map(RequestBody::http1)).map(Ok))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        if *stop.borrow() {
            conn.as_mut().graceful_shutdown();
        }
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            // A head hyper would refuse: the requests before it finish, then the guard writes
            // the renderer's answer as hyper shuts the connection down.
            _ = head_guard.refusal() => {
                let refused_at = std::time::Instant::now();
                conn.as_mut().graceful_shutdown();
                let r = conn.await;
                if let (Some(p), Some(reason)) = (&pipeline, head_guard.refused()) {
                    let status = reason.status().as_u16();
                    p.finish(None, Codec::Http1, status, Some(reason), refused_at.elapsed());
                }
                r
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Whether `buf` starts with the HTTP/2 client preface; `None` while too short to tell.
fn preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Reads until `buf` tells whether the connection is HTTP/2 (one byte usually does).
async fn sniff<I: AsyncRead + Unpin>(stream: &mut I, buf: &mut BytesMut) -> io::Result<bool> {
    loop {
        if let Some(h2) = preface(buf) {
            return Ok(h2);
        }
        buf.reserve(PREFACE.len());
        if stream.read_buf(buf).await? == 0 {
            // Closed in the middle of what might have been a preface: HTTP/1.1 answers it.
            return Ok(false);
        }
    }
}
