//! Demo apps for tests: HTTP/1.1 + h2c servers that say who they are and what they received.
//!
//! `GET` answers a JSON description of the request as the app saw it (HTTP version, host,
//! path, headers), so a test can check what crossed the sidecars; other methods echo the
//! request body back, streamed. `/slow/<ms>` answers after a delay. Every response carries
//! `x-app: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A running echo app; it stops when the test's runtime ends or when dropped.
#[derive(Debug)]
pub struct EchoApp {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoApp {
    /// Requests that have reached the app so far, counted on arrival (before a `/slow/`
    /// delay): lets a test wait until its requests are in flight at the app.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an echo app named `name` on `127.0.0.1:0`.
pub async fn echo_app(name: &str) -> EchoApp {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding an app");
    let addr = listener.local_addr().expect("bound address");
    let name: Arc<str> = name.into();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    handle(name.clone(), req)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    EchoApp {
        addr,
        received,
        task,
    }
}

async fn handle(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, hyper::Error>>, Infallible> {
    let builder = Response::builder().header("x-app", &*name);
    // `/slow/<ms>` answers after that many milliseconds (for timeout tests).
    if let Some(ms) = req
        .uri()
        .path()
        .strip_prefix("/slow/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(30_000))).await;
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "app": &*name,
            "version": format!("{:?}", req.version()),
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "path": req.uri().path(),
            "host": req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()),
            "headers": headers,
        });
        let body = Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed();
        return Ok(builder
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("valid response"));
    }
    Ok(builder
        .body(req.into_body().boxed())
        .expect("valid response"))
}

/// The Python gRPC echo server (`integration/grpc/echo.py`, real grpcio), killed when dropped.
#[derive(Debug)]
pub struct GrpcEcho {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const GRPC_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/echo.py");

/// Starts the gRPC echo server on a fresh loopback port.
pub fn grpc_echo_server() -> GrpcEcho {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args([GRPC_SCRIPT, "server"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio (pip install grpcio)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading the gRPC server's port");
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("grpc server said {line:?}"));
    GrpcEcho {
        child,
        addr: ([127, 0, 0, 1], port).into(),
    }
}

/// Runs the gRPC echo client (`client`, `denied` or `stream` mode, see the script) against
/// `target` with `:authority` `authority`, off the async runtime; returns its output.
pub async fn grpc_echo_client(
    mode: &str,
    target: SocketAddr,
    authority: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        GRPC_SCRIPT.to_owned(),
        mode.to_owned(),
        target.to_string(),
        authority.to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(&args)
            .output()
            .expect("running the gRPC client")
    })
    .await
    .expect("the gRPC client's thread")
}
