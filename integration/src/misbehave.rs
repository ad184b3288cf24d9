//! An upstream that fails on command, for the resilience tests: it answers every request with
//! the status it is told (200 by default), or holds every request without answering, and
//! counts what reaches it. HTTP/1.1 and h2c on one port (hyper's auto server).
//!
//! A `200` echoes the request body (so a test sees that a retried body arrived whole) and
//! carries `x-app: <name>`; every response carries the `ferrule-deadline` the request arrived
//! with as `x-seen-deadline` (so a test sees the time left that reached the app).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct State {
    /// The status every request gets.
    status: AtomicU16,
    /// Requests are held, never answered.
    stall: AtomicBool,
    /// Requests get a 200 head and the first bytes of a body that never ends.
    stall_body: AtomicBool,
    /// `Retry-After` seconds on a non-200 answer (0: none).
    retry_after: AtomicU16,
    hits: AtomicUsize,
    deadlines: Mutex<Vec<String>>,
}

/// A running upstream; it stops when dropped.
#[derive(Debug)]
pub struct Misbehaving {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Misbehaving {
    /// Answers every request from now on with `status` (200 echoes the body).
    pub fn answer(&self, status: u16) {
        self.state.stall.store(false, Ordering::SeqCst);
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Holds every request from now on without answering.
    pub fn stall(&self) {
        self.state.stall.store(true, Ordering::SeqCst);
    }

    /// Answers every request from now on with a 200 head and a body that starts and then
    /// stops moving, never ending.
    pub fn stall_body(&self) {
        self.state.stall.store(false, Ordering::SeqCst);
        self.state.stall_body.store(true, Ordering::SeqCst);
    }

    /// Adds `Retry-After: secs` to every non-200 answer.
    pub fn retry_after(&self, secs: u16) {
        self.state.retry_after.store(secs, Ordering::SeqCst);
    }

    /// Requests that reached it so far, counted on arrival.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The `ferrule-deadline` values requests arrived with, in order.
    pub fn deadlines(&self) -> Vec<String> {
        self.state.deadlines.lock().expect("lock").clone()
    }
}

/// Starts an upstream named `name` on `127.0.0.1:0`, answering 200.
pub async fn misbehaving(name: &str) -> Misbehaving {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding an upstream");
    let addr = listener.local_addr().expect("bound address");
    let state = Arc::new(State::default());
    state.status.store(200, Ordering::SeqCst);
    let name: Arc<str> = name.into();
    let shared = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = shared.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(state.clone(), name.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Misbehaving { addr, state, task }
}

async fn handle(
    state: Arc<State>,
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let deadline = req
        .headers()
        .get("ferrule-deadline")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(d) = &deadline {
        state.deadlines.lock().expect("lock").push(d.clone());
    }
    if state.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if state.stall_body.load(Ordering::SeqCst) {
        return Ok(Response::builder()
            .status(200)
            .header("x-app", &*name)
            .body(BoxBody::new(Stuck(Some(Bytes::from_static(
                b"first bytes\n",
            )))))
            .expect("a valid response"));
    }
    let status = state.status.load(Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::builder()
        .status(status)
        .header("x-app", &*name)
        .header("x-seen-deadline", deadline.as_deref().unwrap_or(""));
    let retry_after = state.retry_after.load(Ordering::SeqCst);
    if status != 200 && retry_after > 0 {
        resp = resp.header("retry-after", retry_after.to_string());
    }
    let body = if status == 200 {
        body
    } else {
        Bytes::from(format!("{name} fails with {status}\n"))
    };
    Ok(resp
        .body(BoxBody::new(
            Full::new(body).map_err(|never| match never {}),
        ))
        .expect("a valid response"))
}

/// A body of one chunk that then neither moves nor ends.
struct Stuck(Option<Bytes>);

impl http_body::Body for Stuck {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(chunk) => std::task::Poll::Ready(Some(Ok(Frame::data(chunk)))),
            // Never woken: the connection goes when the client (or a proxy) gives up on it.
            None => std::task::Poll::Pending,
        }
    }
}
