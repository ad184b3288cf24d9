//! A test app that stalls on command: every request is held for the current hold time before
//! it is answered `200` (body `ok`), and the app counts requests in flight and the most it ever
//! had at once, so a test can check a concurrency limit from the upstream's side.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct State {
    hold_ms: AtomicU64,
    now: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicUsize,
}

/// A running stall app; it stops when dropped.
#[derive(Debug)]
pub struct StallApp {
    /// Where it listens (HTTP/1.1 and h2c).
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl StallApp {
    /// Holds every request that arrives from now on for `hold` (requests already held keep
    /// their time).
    pub fn set_hold(&self, hold: Duration) {
        self.state
            .hold_ms
            .store(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX), SeqCst);
    }

    /// Requests being held right now.
    pub fn in_flight(&self) -> usize {
        self.state.now.load(SeqCst)
    }

    /// The most requests it has held at once.
    pub fn peak(&self) -> usize {
        self.state.peak.load(SeqCst)
    }

    /// Requests answered.
    pub fn served(&self) -> usize {
        self.state.served.load(SeqCst)
    }
}

impl Drop for StallApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request out of flight however its handler ends (answered or dropped).
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

/// Starts a stall app on `127.0.0.1:0` that holds each request for `hold`.
pub async fn stall_app(hold: Duration) -> StallApp {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the stall app");
    let addr = listener.local_addr().expect("bound address");
    let state = Arc::new(State::default());
    let shared = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let state = state.clone();
                    async move {
                        let n = state.now.fetch_add(1, SeqCst) + 1;
                        state.peak.fetch_max(n, SeqCst);
                        let _guard = InFlight(state.clone());
                        let hold = state.hold_ms.load(SeqCst);
                        if hold > 0 {
                            tokio::time::sleep(Duration::from_millis(hold)).await;
                        }
                        state.served.fetch_add(1, SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let app = StallApp { addr, state, task };
    app.set_hold(hold);
    app
}
