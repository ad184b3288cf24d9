//! HTTP/2 client connections towards the next hop, driven with the h2 crate directly.
//!
//! hyper's HTTP/2 client puts a dispatch channel, a oneshot and a spawned task between the
//! caller and h2 for every request: the request is queued to the connection's task, which
//! opens the stream and spawns another task to wait for the response and send it back. Here
//! the routing future opens the stream itself and awaits h2's response future, so a request
//! costs no task and no channel hop on this side; only a request body that is still arriving
//! gets a task of its own to stream it (it can outlive the response head, as gRPC streams do).
//!
//! A connection's task drives h2's connection state and pings the peer every
//! [`KEEPALIVE_INTERVAL`], closing the connection when no answer comes within
//! [`KEEPALIVE_TIMEOUT`], so a dead peer is noticed even when nothing is in flight.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpStream;

/// How often an open connection pings its peer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Flow-control windows offered to the peer: large enough that a response of a few MiB
/// streams without waiting for window updates (hyper's client uses the same sizes).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// One HTTP/2 connection, shared by every request to its address.
#[derive(Clone, Debug)]
pub struct Sender {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
}

/// Why a request could not be exchanged.
#[derive(Debug)]
pub enum Failure {
    /// The connection was closed before the request was sent; it is handed back untouched.
    Closed(Box<Request<Incoming>>),
    /// The request was (possibly) sent and then failed.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl Sender {
    /// Performs the HTTP/2 handshake on `io` and spawns the connection's task.
    pub async fn handshake(io: TcpStream, max_header_list: u32) -> Result<Sender, h2::Error> {
        let (send, mut conn) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(max_header_list)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = conn.ping_pong();
        let done = closed.clone();
        tokio::spawn(async move {
            let reason = drive(conn, ping).await;
            done.store(true, Ordering::Release);
            tracing::debug!(reason, "upstream HTTP/2 connection ended");
        });
        Ok(Sender { send, closed })
    }

    /// Whether the connection has ended (new requests need a new one).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` (already rewritten for HTTP/2: absolute URI, no connection headers) and
    /// waits for the response head.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<H2Body>, Failure> {
        // Waits while the peer's stream limit is reached; fails only if the connection is
        // gone, and then nothing of the request has been used.
        let mut send = match self.send.clone().ready().await {
            Ok(send) => send,
            Err(_) => return Err(Failure::Closed(Box::new(req))),
        };
        let (parts, mut body) = req.into_parts();
        // One look at the body: a small one (a gRPC unary message) has usually arrived with the
        // head, and then it goes out with it and needs no task to stream it.
        let mut first = None;
        let mut end_of_stream = body.is_end_stream();
        if !end_of_stream {
            let peek = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            match peek {
                Poll::Ready(Some(Ok(frame))) => {
                    first = Some(frame);
                    end_of_stream = body.is_end_stream();
                }
                Poll::Ready(None) => end_of_stream = true,
                Poll::Ready(Some(Err(e))) => return Err(Failure::Failed(e.into())),
                Poll::Pending => {}
            }
        }
        let head_only = end_of_stream && first.is_none();
        let (response, mut stream) = send
            .send_request(Request::from_parts(parts, ()), head_only)
            .map_err(|e| Failure::Failed(e.into()))?;
        if let Some(frame) = first {
            // One body frame (at most 16 KiB from an HTTP/2 client, 64 KiB from an HTTP/1.1
            // one: the server's read buffer), so h2 may buffer it until the window allows.
            let sent = match frame.into_data() {
                Ok(data) => stream.send_data(data, end_of_stream),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => stream.send_trailers(trailers),
                    Err(_) => Ok(()),
                },
            };
            sent.map_err(|e| Failure::Failed(e.into()))?;
        }
        if !end_of_stream {
            tokio::spawn(send_body(body, stream));
        }
        let response = response.await.map_err(|e| Failure::Failed(e.into()))?;
        Ok(response.map(|recv| H2Body {
            recv,
            data_done: false,
        }))
    }
}

/// Drives the connection until it ends, pinging the peer; returns why it ended.
async fn drive(
    conn: h2::client::Connection<TcpStream, Bytes>,
    ping: Option<h2::PingPong>,
) -> String {
    tokio::pin!(conn);
    let Some(mut ping) = ping else {
        return ended(conn.await);
    };
    loop {
        // `biased`: the connection first, and no random draw on each of its wake-ups.
        tokio::select! {
            biased;
            r = &mut conn => return ended(r),
            _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => {}
        }
        if let Err(e) = ping.send_ping(h2::Ping::opaque()) {
            return format!("ping: {e}");
        }
        let pong = tokio::time::timeout(KEEPALIVE_TIMEOUT, poll_fn(|cx| ping.poll_pong(cx)));
        tokio::select! {
            biased;
            r = &mut conn => return ended(r),
            r = pong => match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("ping: {e}"),
                // Dropping the connection closes it; its streams fail.
                Err(_) => return format!("no answer to a ping within {KEEPALIVE_TIMEOUT:?}"),
            },
        }
    }
}

fn ended(r: Result<(), h2::Error>) -> String {
    match r {
        Ok(()) => "closed".into(),
        Err(e) => e.to_string(),
    }
}

/// Streams a request body that was still arriving when the request went out, within the
/// stream's flow-control window, then its trailers if any. A body error or a reset from the
/// peer ends it; the peer sees the reset or the response fails, either way not silently.
async fn send_body(mut body: Incoming, mut stream: h2::SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            // The peer no longer wants the body (it answered early, or reset the stream).
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed; resetting the stream");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                return;
            }
        };
        let last = body.is_end_stream();
        if data.is_empty() {
            if last {
                let _ = stream.send_data(data, true);
                return;
            }
            continue;
        }
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                // Reset or connection gone.
                _ => return,
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            if stream.send_data(chunk, last && data.is_empty()).is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// A response body arriving on an HTTP/2 stream. Received data is handed back to the
/// connection's flow control as soon as it is passed on, so the peer can keep sending.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
