//! Test harness: an in-process control plane on 127.0.0.1:0 over a temporary directory, an
//! HTTP/1.1 API client (plain or TLS), and a push-stream client speaking HTTP/2 like a sidecar
//! (h2c or TLS, with a client certificate or a bootstrap token).

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrule_config::push::{take_lines, to_line, ControlMessage, ProxyMessage};
use ferrule_config::Snapshot;
use ferrule_control::body::ChannelBody;
use ferrule_control::{Config, Server};
use ferrule_tls::tokio_rustls::{client::TlsStream, TlsConnector};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ferrule-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running control plane.
pub struct ControlPlane {
    pub addr: SocketAddr,
    pub token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ControlPlane {
    /// A plaintext control plane that serves anonymous push streams, as the tests before
    /// identity expect.
    pub async fn start(dir: &Path, token: Option<&str>, lease_ttl: Duration) -> ControlPlane {
        Self::start_with(Config {
            admin_token: token.map(str::to_owned),
            lease_ttl,
            plaintext: true,
            allow_anonymous_proxies: true,
            ..Config::new("127.0.0.1:0".parse().unwrap(), dir.to_owned())
        })
        .await
    }

    /// A control plane with `config` (its listen address should be 127.0.0.1:0).
    pub async fn start_with(config: Config) -> ControlPlane {
        let token = config.admin_token.clone();
        let server = Server::bind(config).await.expect("control plane starts");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        ControlPlane {
            addr,
            token,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and waits until it has shut down.
    pub async fn stop(mut self) {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops in time")
            .unwrap();
        eprintln!("control plane stopped in {:?}", started.elapsed());
    }

    /// A request with the admin token (if any).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        request(self.addr, method, path, body, self.token.as_deref()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
}

/// Sends one HTTP/1.1 request; a JSON answer is parsed, any other is returned as a string.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let io = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the control plane");
    request_on(io, method, path, body, token).await
}

/// Polls `check` until it returns `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A snapshot push as received.
#[derive(Debug, Clone)]
pub struct Push {
    pub version: u64,
    pub nonce: String,
    pub heartbeat_ms: u64,
    pub snapshot: Snapshot,
}

impl Push {
    pub fn has_endpoint(&self, name: &str) -> bool {
        self.snapshot.endpoints.iter().any(|e| e.name == name)
    }

    pub fn has_service(&self, name: &str) -> bool {
        self.snapshot.services.iter().any(|s| s.name == name)
    }
}

/// A sidecar's end of the push stream, over HTTP/2 with prior knowledge.
pub struct Sidecar {
    tx: mpsc::Sender<Bytes>,
    pub pushes: mpsc::UnboundedReceiver<Push>,
    conn: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl Sidecar {
    /// An anonymous h2c stream that says `hello` and must be admitted.
    pub async fn connect(addr: SocketAddr, hello: &ProxyMessage) -> Sidecar {
        let tcp = TcpStream::connect(addr).await.unwrap();
        match Sidecar::open(tcp, None, Some(hello)).await {
            Ok(s) => s,
            Err((status, body)) => panic!("stream refused: {status} {body}"),
        }
    }

    /// Opens a push stream on `io` (with a bootstrap token if given), sends `first` as its
    /// first line, and waits for the answer: the stream, or the refusal's status and body.
    pub async fn open<I>(
        io: I,
        token: Option<&str>,
        first: Option<&ProxyMessage>,
    ) -> Result<Sidecar, (StatusCode, Value)>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("h2 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let (tx, body) = ChannelBody::channel(16);
        if let Some(m) = first {
            tx.send(Bytes::from(to_line(m))).await.unwrap();
        }
        let mut req = Request::post("http://control-plane/v1/stream")
            .header("content-type", "application/x-ndjson");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(body).unwrap())
            .await
            .expect("the control plane answers");
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let v = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            return Err((status, v));
        }
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let mut body = resp.into_body();
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                for line in take_lines(&mut buf) {
                    let ControlMessage::Snapshot {
                        version,
                        nonce,
                        snapshot,
                        heartbeat_ms,
                    } = serde_json::from_slice(&line).expect("a control message");
                    let snapshot = Snapshot::from_value(&snapshot).expect("a valid snapshot");
                    assert_eq!(snapshot.version, version);
                    let _ = push_tx.send(Push {
                        version,
                        nonce,
                        heartbeat_ms,
                        snapshot,
                    });
                }
            }
        });
        Ok(Sidecar {
            tx,
            pushes,
            conn,
            reader,
        })
    }

    /// Sends `bytes` as they are (a line or garbage).
    pub async fn send_raw(&self, bytes: &'static [u8]) {
        self.tx
            .send(Bytes::from_static(bytes))
            .await
            .expect("stream open");
    }

    /// Whether the control plane ends the stream within `within` (pushes before the end are
    /// skipped).
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    pub async fn send(&self, msg: &ProxyMessage) {
        self.tx
            .send(Bytes::from(to_line(msg)))
            .await
            .expect("stream open");
    }

    /// Waits for a push that satisfies `pred`, skipping others.
    pub async fn push_where(&mut self, what: &str, pred: impl Fn(&Push) -> bool) -> Push {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                Ok(Some(p)) if pred(&p) => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream ended while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Drops the connection without a goodbye, like a sidecar killed with SIGKILL.
    pub fn crash(self) {
        self.conn.abort();
        self.reader.abort();
    }
}

pub fn hello(proxy: &str, service: &str, endpoint: Option<(&str, u16)>) -> ProxyMessage {
    ProxyMessage::Hello {
        proxy: proxy.into(),
        service: service.into(),
        endpoint: endpoint.map(|(name, port)| {
            serde_json::from_value(serde_json::json!({
                "name": name, "service": service, "address": format!("127.0.0.1:{port}"), "sidecar": true
            }))
            .unwrap()
        }),
        version: 0,
    }
}

/// Sends one HTTP/1.1 request on `io`, a JSON body as `application/json`; answers as
/// [`request`] does.
pub async fn request_on<I>(
    io: I,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut headers = vec![("host", "control-plane".to_owned())];
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json".to_owned()));
            serde_json::to_vec(&b).unwrap()
        }
        None => Vec::new(),
    };
    raw_request_on(io, method, path, &headers, bytes).await
}

/// Sends one HTTP/1.1 request to `addr` with exactly `headers` and `body`.
pub async fn raw_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let io = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the control plane");
    raw_request_on(io, method, path, headers, body).await
}

async fn raw_request_on<I>(
    io: I,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    bytes: Vec<u8>,
) -> (StatusCode, Value)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(bytes))).unwrap())
        .await
        .expect("request succeeds");
    let status = resp.status();
    let is_json = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if is_json {
        serde_json::from_slice(&bytes).expect("valid JSON")
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    (status, value)
}

/// A TLS client of the control plane: verifies it against a trust bundle and checks that it
/// proves the control plane's identity; presents a client certificate if given one.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    pub fn new(
        bundle_pem: &str,
        creds: Option<&ferrule_tls::Credentials>,
        alpn: &[u8],
    ) -> TlsClient {
        let bundle = ferrule_tls::Bundle::from_pem(bundle_pem).expect("a valid bundle");
        let config = ferrule_tls::client_config(creds, &bundle, &[alpn]).unwrap();
        TlsClient {
            connector: TlsConnector::from(std::sync::Arc::new(config)),
        }
    }

    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// Connects; panics unless the server proves the control plane's identity.
    pub async fn connect(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = self
            .connector
            .connect(ferrule_tls::server_name(addr.ip()), tcp)
            .await
            .expect("TLS handshake");
        let id = ferrule_tls::peer_identity(tls.get_ref().1).expect("a workload certificate");
        assert_eq!(
            (id.namespace(), id.service()),
            ("ferrule-system", "ferrule-control")
        );
        tls
    }

    pub async fn request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        request_on(self.connect(addr).await, method, path, body, token).await
    }
}
