//! Upstream instances that misbehave on command, for balancing and ejection tests: each one is
//! an HTTP/1.1 server that answers `200` with `x-app: <name>`, can be told to answer a fixed
//! status (a 503 storm) instead, and can be stopped (its listener and every open connection
//! closed, so connects are refused) and started again on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One upstream instance (see the module doc); stopped when dropped.
#[derive(Debug)]
pub struct Instance {
    /// Its name, sent back as `x-app`.
    pub name: Arc<str>,
    /// Where it listens, the same across restarts.
    pub addr: SocketAddr,
    /// 0: answer normally; else answer this status.
    status: Arc<AtomicU16>,
    served: Arc<AtomicUsize>,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    /// Starts an instance named `name` on a fresh loopback port.
    pub async fn start(name: &str) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an instance");
        let inst = Instance {
            name: name.into(),
            addr: listener.local_addr().expect("bound address"),
            status: Arc::new(AtomicU16::new(0)),
            served: Arc::new(AtomicUsize::new(0)),
            running: Mutex::new(None),
        };
        inst.serve(listener);
        inst
    }

    /// From now on answer every request with `status` (`None`: answer normally again).
    pub fn fail_with(&self, status: Option<u16>) {
        self.status.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Requests answered so far (normally or not).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection: from now on connects are refused.
    pub async fn stop(&self) {
        let running = self.running.lock().expect("lock").take();
        if let Some(r) = running {
            let _ = r.stop.send(true);
            // Wait for the accept loop to end, so the port is free when `stop` returns.
            let _ = r.task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop().await;
        // tokio sets SO_REUSEADDR, so the port can be bound again at once even with
        // connections of the previous life in TIME_WAIT.
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("binding the same port again");
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, stop_rx) = watch::channel(false);
        let name = self.name.clone();
        let status = self.status.clone();
        let served = self.served.clone();
        let task = tokio::spawn(async move {
            let mut stopped = stop_rx.clone();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let (name, status, served) = (name.clone(), status.clone(), served.clone());
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        served.fetch_add(1, Ordering::SeqCst);
                        let code = status.load(Ordering::SeqCst);
                        let name = name.clone();
                        async move {
                            drop(req);
                            let code = if code == 0 { 200 } else { code };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(code)
                                    .header("x-app", &*name)
                                    .body(Full::new(Bytes::from(name.to_string())))
                                    .expect("valid response"),
                            )
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    // Dropping the connection future closes the socket: a stopped instance
                    // keeps no connection open (as a killed process would not).
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        *self.running.lock().expect("lock") = Some(Running { stop, task });
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(r) = self.running.lock().expect("lock").take() {
            let _ = r.stop.send(true);
            r.task.abort();
        }
    }
}
