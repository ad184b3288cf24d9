//! The accept loop shared by every listener: hyper-util's auto server (HTTP/1.1 and
//! prior-knowledge h2c on one port) with the protections every listener needs from the first
//! request on, and graceful draining on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::framing::FramingGuard;
use crate::http::ProxyBody;

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

fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Serves `listener` until `stop` turns true, then lets open connections finish for up to
/// `grace` (HTTP/1.1 connections close after their current response, HTTP/2 gets GOAWAY).
pub async fn serve<H, Fut>(
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(builder(limits));
    let graceful = GracefulShutdown::new();
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
                let (io, guard) = FramingGuard::wrap(stream);
                let h = handler.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let h = h.clone();
                    let refused = guard.refuse(&req);
                    async move {
                        match refused {
                            Some(resp) => Ok::<_, Infallible>(resp),
                            None => Ok(h(req).await),
                        }
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::info!("grace period over; closing remaining connections");
        }
    }
}
