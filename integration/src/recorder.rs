//! An app that records what reaches it, for the mirroring tests: every request's method, path,
//! host (`Host`, or the `:authority` of an HTTP/2 request) and whole body, in order of arrival.
//! It answers `200` with `x-app: <name>` once it has read the body, or, told to stall, holds
//! every request from then on without reading its body or answering. It counts arrivals as
//! soon as a head is in, and the most requests it held at once. HTTP/1.1 and h2c on one port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One request as the app saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `Host`, or the authority of the request target (HTTP/2).
    pub host: String,
    /// The whole body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct State {
    stall: AtomicBool,
    arrived: AtomicUsize,
    held: AtomicUsize,
    peak_held: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A running recording app; it stops when dropped.
#[derive(Debug)]
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Holds every request that arrives from now on, unanswered, its body unread.
    pub fn stall(&self) {
        self.state.stall.store(true, SeqCst);
    }

    /// Heads that have arrived so far (stalled ones included).
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(SeqCst)
    }

    /// The most requests it held unanswered at once.
    pub fn peak_held(&self) -> usize {
        self.state.peak_held.load(SeqCst)
    }

    /// The requests it read whole and answered, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("recorder lock").clone()
    }
}

/// Counts a stalled request out of the held ones however its handler ends.
struct Held(Arc<State>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, SeqCst);
    }
}

/// Starts a recording app named `name` on `127.0.0.1:0`.
pub async fn recorder(name: &str) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the recording app");
    let addr = listener.local_addr().expect("bound address");
    let state = Arc::new(State::default());
    let shared = state.clone();
    let name: Arc<str> = name.into();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (state, name) = (shared.clone(), name.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(state.clone(), name.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Recorder { addr, state, task }
}

async fn handle(
    state: Arc<State>,
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.arrived.fetch_add(1, SeqCst);
    if state.stall.load(SeqCst) {
        let n = state.held.fetch_add(1, SeqCst) + 1;
        state.peak_held.fetch_max(n, SeqCst);
        let _held = Held(state.clone());
        std::future::pending::<()>().await;
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(Response::builder()
                .status(400)
                .body(Full::new(Bytes::new()))
                .expect("valid response"))
        }
    };
    state.seen.lock().expect("recorder lock").push(Seen {
        method,
        path,
        host,
        body,
    });
    Ok(Response::builder()
        .header("x-app", &*name)
        .body(Full::new(Bytes::from_static(b"ok")))
        .expect("valid response"))
}
