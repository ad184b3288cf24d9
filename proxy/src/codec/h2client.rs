//! HTTP/2 client connections towards the next hop, driven with the h2 crate directly.
//!
//! hyper's HTTP/2 client puts a dispatch channel, a oneshot and a spawned task between the
//! caller and h2 for every request: the request is queued to the connection's task, which
//! opens the stream and spawns another task to wait for the response and send it back. Here
//! the routing future opens the stream itself and awaits h2's response future, so a request
//! costs no task and no channel hop on this side; only a request body that outlives the
//! response head (a gRPC client stream) gets a task of its own to go on streaming it.
//!
//! A connection's task drives h2's connection state and pings the peer every
//! [`KEEPALIVE_INTERVAL`], closing the connection when no answer comes within
//! [`KEEPALIVE_TIMEOUT`], so a dead peer is noticed even when nothing is in flight.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::h2body::{pump, H2Body};
use crate::codec::headers::RequestBody;
use crate::codec::wake::OnWake;

/// How often an open connection pings its peer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Flow-control windows offered to the peer: large enough that a response of a few MiB
/// streams without waiting for window updates (hyper's client uses the same sizes).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Data a stream may queue beyond what the peer's window lets out (hyper's client's size).
const SEND_BUFFER: usize = 1024 * 1024;

/// One HTTP/2 connection, shared by every request to its address.
#[derive(Clone, Debug)]
pub struct Sender {
    /// One handle for all requests, taken in turn: h2 lets a handle open one stream beyond
    /// the peer's concurrency limit and then makes it wait until that stream is open. Clones
    /// would each get one, so requests over the limit would pile up inside h2, where a GOAWAY
    /// fails them instead of handing them back. Taken in turn, they wait here, untouched.
    send: Arc<tokio::sync::Mutex<SendRequest<Bytes>>>,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
}

/// Why a request could not be exchanged.
#[derive(Debug)]
pub enum Failure {
    /// The connection was closed before the request was sent; it is handed back untouched.
    Closed(Box<Request<RequestBody>>),
    /// The request was (possibly) sent and then failed.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl Sender {
    /// Performs the HTTP/2 handshake on `io` and spawns the connection's task.
    pub async fn handshake<I>(io: I, max_header_list: u32) -> Result<Sender, h2::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = h2::client::Builder::new()
            .enable_push(false)
            // Until the peer's SETTINGS say otherwise, as many streams as any common server
            // allows (hyper's choice too), not h2's unlimited default.
            .initial_max_send_streams(100)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
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
        Ok(Sender {
            send: Arc::new(tokio::sync::Mutex::new(send)),
            closed,
        })
    }

    /// Whether the connection has ended (new requests need a new one).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether `self` and `other` are handles of the same connection.
    pub fn same_connection(&self, other: &Sender) -> bool {
        Arc::ptr_eq(&self.closed, &other.closed)
    }

    /// Sends `req` (already rewritten for HTTP/2: absolute URI, no connection headers) and
    /// waits for the response head.
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<H2Body>, Failure> {
        let mut send = self.send.lock().await;
        // Waits while the peer's stream limit is reached; fails only if the connection is
        // gone, and then nothing of the request has been touched.
        if poll_fn(|cx| send.poll_ready(cx)).await.is_err() {
            return Err(Failure::Closed(Box::new(req)));
        }
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
                Poll::Ready(Some(Err(e))) => return Err(Failure::Failed(e)),
                Poll::Pending => {}
            }
        }
        let head_only = end_of_stream && first.is_none();
        let (response, mut stream) = send
            .send_request(Request::from_parts(parts, ()), head_only)
            .map_err(|e| Failure::Failed(e.into()))?;
        drop(send);
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
        let response = if end_of_stream {
            response.await
        } else {
            // The rest of the body is pumped by this future while it waits for the response
            // head, not by a task of its own: a request whose body ends before its response
            // (a gRPC unary call whose message came after its head) then costs no task, no
            // channel and no wake-ups across tasks. Only a body that outlives the head (a
            // client stream) moves to a task, to go on while the response is relayed.
            //
            // If this future is dropped before the response head (a route timeout, the
            // client gone), the pump and the response future go with it: every handle of the
            // stream is gone, so h2 resets it (CANCEL) and the peer stops waiting for the body.
            let mut body = Box::pin(pump(body, stream, h2::Reason::CANCEL));
            let mut body_done = false;
            let mut response = response;
            let head = poll_fn(|cx| {
                if let Poll::Ready(r) = Pin::new(&mut response).poll(cx) {
                    return Poll::Ready(r);
                }
                if !body_done && body.as_mut().poll(cx).is_ready() {
                    body_done = true;
                }
                Poll::Pending
            })
            .await;
            if !body_done && head.is_ok() {
                tokio::spawn(body);
            }
            head
        };
        let response = response.map_err(|e| Failure::Failed(e.into()))?;
        let (parts, recv) = response.into_parts();
        let body = H2Body::new(recv, &parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// Drives the connection until it ends, pinging the peer; returns why it ended.
async fn drive<I: AsyncRead + AsyncWrite + Unpin>(
    conn: h2::client::Connection<I, Bytes>,
    ping: Option<h2::PingPong>,
) -> String {
    tokio::pin!(conn);
    let Some(mut ping) = ping else {
        return ended(conn.await);
    };
    // Waiting for the next ping, or (`pinged`) for the answer to the last one. The timer is
    // looked at only when it woke the task, not on each of the connection's wake-ups (three
    // per request).
    let mut timer = OnWake::new(Box::pin(tokio::time::sleep(KEEPALIVE_INTERVAL)));
    let mut pinged = false;
    loop {
        // The connection first, so its wake-ups take no more than a look at a flag.
        let pong = poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Err(ended(r)));
            }
            if pinged {
                if let Poll::Ready(r) = ping.poll_pong(cx) {
                    return Poll::Ready(Ok(Some(r)));
                }
            }
            match timer.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(None)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match pong {
            Err(reason) => return reason,
            Ok(Some(Err(e))) => return format!("ping: {e}"),
            Ok(Some(Ok(_))) => {
                pinged = false;
                timer.reset(tokio::time::Instant::now() + KEEPALIVE_INTERVAL);
            }
            // Dropping the connection closes it; its streams fail.
            Ok(None) if pinged => {
                return format!("no answer to a ping within {KEEPALIVE_TIMEOUT:?}");
            }
            Ok(None) => {
                if let Err(e) = ping.send_ping(h2::Ping::opaque()) {
                    return format!("ping: {e}");
                }
                pinged = true;
                timer.reset(tokio::time::Instant::now() + KEEPALIVE_TIMEOUT);
            }
        }
    }
}

fn ended(r: Result<(), h2::Error>) -> String {
    match r {
        Ok(()) => "closed".into(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A hyper `Incoming` body whose bytes are `raw` (an HTTP/1.1 response, read by hyper's
    /// client from a socket that then stays open): the only way to get one outside hyper.
    async fn incoming(raw: &'static [u8]) -> Incoming {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(raw).await.unwrap();
            // Keeps the body open for as long as the test runs.
            let _open = s;
            std::future::pending::<()>().await;
        });
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("/").body(http_body_util::Empty::<Bytes>::new());
        send.send_request(req.unwrap()).await.unwrap().into_body()
    }

    fn request(body: Incoming) -> Request<RequestBody> {
        Request::post("http://peer/upload")
            .body(RequestBody::http1(body))
            .unwrap()
    }

    async fn connect() -> (Sender, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let io = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let io = io.await.unwrap();
        (Sender::handshake(io, 64 * 1024).await.unwrap(), listener)
    }

    #[tokio::test]
    async fn an_abandoned_request_resets_its_stream_while_its_body_still_streams() {
        let (sender, listener) = connect().await;
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(io).await.unwrap();
            let (req, _respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            // Never answers; reads the body until it ends or is reset.
            let mut body = req.into_body();
            let mut got = Vec::new();
            let end = loop {
                match body.data().await {
                    Some(Ok(data)) => got.extend_from_slice(&data),
                    Some(Err(e)) => break e.reason(),
                    None => break None,
                }
            };
            let _ = reset_tx.send((got, end));
        });
        // A body that has sent "hello" and goes on (chunked, never finished).
        let body =
            incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
        // The route's timeout gives up on the response.
        let gave_up = tokio::time::timeout(Duration::from_millis(200), sender.send(request(body)));
        assert!(gave_up.await.is_err());
        let (got, end) = tokio::time::timeout(Duration::from_secs(5), reset_rx)
            .await
            .expect("the peer saw the stream end")
            .unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(end, Some(h2::Reason::CANCEL));
    }

    #[tokio::test]
    async fn requests_waiting_for_a_stream_slot_are_handed_back_on_goaway() {
        use futures_util::FutureExt;
        let (sender, listener) = connect().await;
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (leave_tx, leave) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(io)
                .await
                .unwrap();
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            opened_tx.send(()).unwrap();
            // Once the other requests queue behind the first, leave gracefully; the
            // connection keeps being driven meanwhile.
            let mut leave = leave;
            loop {
                tokio::select! {
                    _ = &mut leave => break,
                    _ = conn.accept() => {}
                }
            }
            conn.graceful_shutdown();
            let response = http::Response::new(());
            respond.send_response(response, true).unwrap();
            while conn.accept().await.is_some() {}
        });
        let empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        // The first request opens the one stream the peer allows: wait until the peer has it.
        let first = tokio::spawn({
            let sender = sender.clone();
            let body = incoming(empty).await;
            async move { sender.send(request(body)).await }
        });
        opened.await.unwrap();
        // These carry a body that has fully arrived, as a gRPC unary request's has. Each is
        // polled once, so each is queued (one inside h2, the rest for the handle) before the
        // peer leaves.
        let hello = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let sender = sender.clone();
            let body = incoming(hello).await;
            let mut w = Box::pin(async move { sender.send(request(body)).await });
            assert!(
                (&mut w).now_or_never().is_none(),
                "answered before the peer left"
            );
            waiting.push(w);
        }
        leave_tx.send(()).unwrap();
        let first = first.await.unwrap();
        assert_eq!(first.expect("the first request is answered").status(), 200);
        // h2 lets one request wait inside it for a stream slot (hyper's client had the same
        // one): the GOAWAY fails that one. Every other waits outside h2 and comes back
        // untouched, to be sent on a fresh connection.
        let (mut handed_back, mut failed) = (0, 0);
        for w in futures_util::future::join_all(waiting).await {
            match w {
                Err(Failure::Closed(back)) => {
                    assert_eq!(back.uri(), "http://peer/upload");
                    let body = back.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body, "hello", "the body comes back whole");
                    handed_back += 1;
                }
                Err(Failure::Failed(e)) => {
                    let h2 = e.downcast_ref::<h2::Error>().expect("an h2 error");
                    assert!(h2.is_go_away(), "{h2:?}");
                    failed += 1;
                }
                Ok(r) => panic!("answered after GOAWAY: {r:?}"),
            }
        }
        assert_eq!((handed_back, failed), (3, 1));
    }
}
