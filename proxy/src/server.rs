//! The accept loop shared by every listener: the HTTP/1.1 fast path first (proxy listeners),
//! then, for whatever the fast path leaves, the HTTP/2 server (`h2server`) when the connection
//! opens with the prior-knowledge h2c preface and hyper's HTTP/1.1 server otherwise, with the
//! protections every listener needs from the first request on, and graceful draining on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{self, Either, FutureExt};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::fastpath::{self, Exit, Side};
use crate::framing::FramingGuard;
use crate::h2server;
use crate::http::{ProxyBody, RequestBody};

/// Largest request head accepted; bigger ones get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Limits every listener applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a complete request head. Without hyper's timer this timeout
    /// does nothing, and a client trickling header bytes (slowloris) holds a connection forever.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn builder(limits: Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .keep_alive(true);
    b
}

/// Serves `listener` until `stop` turns true, then lets open connections finish for up to
/// `grace` (HTTP/1.1 connections close after their current response, HTTP/2 gets GOAWAY).
///
/// With a `fast` side, each connection starts on the HTTP/1.1 fast path (`fastpath.rs`), which
/// hands it to the general path (`handler`) at the first request it does not carry.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    handler: H,
    fast: Option<Arc<Side>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
) where
    H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(builder(limits));
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
                let handler = handler.clone();
                let builder = builder.clone();
                let fast = fast.clone();
                let mut stop = stop.clone();
                let open = open_tx.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let (stream, prefix) = match &fast {
                        Some(side) => match fastpath::serve(side, stream, limits, &mut stop).await {
                            Exit::Closed => return,
                            Exit::General(stream, prefix) => (stream, prefix),
                        },
                        None => (stream, BytesMut::new()),
                    };
                    serve_general(stream, prefix, handler, &builder, limits, stop, peer).await;
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

/// Serves a connection on the general path, from `prefix` (bytes the fast path already read)
/// on: HTTP/2 if it opens with the client preface, else hyper's HTTP/1.1 server.
async fn serve_general<H, Fut>(
    mut stream: TcpStream,
    mut prefix: BytesMut,
    handler: H,
    builder: &http1::Builder,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let h2 = match preface(&prefix) {
        Some(h2) => h2,
        // Too few bytes to tell (a listener without the fast path reads nothing first).
        None => {
            let read = sniff(&mut stream, &mut prefix);
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
    if h2 {
        let settings = h2server::Settings {
            handshake_timeout: limits.header_read_timeout,
            max_header_list: MAX_HEADER_BYTES as u32,
            ..Default::default()
        };
        let served = h2server::serve(stream, prefix.freeze(), &handler, stop, settings);
        if let Err(e) = served.await {
            tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
        }
        return;
    }
    let io = Prefixed {
        prefix: prefix.freeze(),
        io: stream,
    };
    let (io, guard) = FramingGuard::wrap(io);
    let svc = service_fn(move |req: Request<Incoming>| match guard.refuse(&req) {
        Some(resp) => Either::Left(future::ready(Ok::<_, Infallible>(resp))),
        None => Either::Right(handler(req.map(RequestBody::Left)).map(Ok)),
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
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
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
async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
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

/// A connection (or its reading half) whose first bytes were already read, by the fast path
/// or to look for the HTTP/2 preface: they are read again first, then the socket.
pub(crate) struct Prefixed<T> {
    pub(crate) prefix: Bytes,
    pub(crate) io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
