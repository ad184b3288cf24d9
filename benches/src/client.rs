//! HTTP client plumbing shared by the load generator and the harness: resolving a URL into an
//! [`Endpoint`], opening HTTP/1.1 or prior-knowledge h2 connections with hyper's low-level
//! `client::conn` API, draining response bodies, and one-shot GETs for readiness probes.
//!
//! The low-level API (rather than a pooled client) is deliberate: the load generator must
//! control exactly how many connections exist and how many requests each carries at once.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::Result;

/// Body type of every request the benchmarks send: GETs carry no body.
pub(crate) type ReqBody = Empty<Bytes>;

/// How long opening one connection (TCP and protocol handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where requests go and what they look like, resolved once before a run so that building a
/// request on the hot path is only cheap clones.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// Socket address to connect to.
    pub(crate) addr: SocketAddr,
    /// Request target as sent: origin-form for HTTP/1.1, absolute-form for h2 (hyper derives
    /// `:scheme` and `:authority` from it).
    uri: Uri,
    /// Host header value (HTTP/1.1 only; h2 carries it in `:authority`).
    host: HeaderValue,
    /// Speak prior-knowledge HTTP/2 instead of HTTP/1.1.
    pub(crate) http2: bool,
}

impl Endpoint {
    /// Resolves `url` (`http://HOST:PORT/path`). `host` overrides the Host header / authority,
    /// which is how a request names a mesh service (`Host: bench-upstream`) while being sent to
    /// the sidecar's address. Non-loopback addresses are refused unless `allow_non_loopback`.
    pub(crate) async fn resolve(
        url: &str,
        host: Option<&str>,
        http2: bool,
        allow_non_loopback: bool,
    ) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL `{url}`: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(
                format!("URL `{url}` must start with http:// (TLS is not supported yet)").into(),
            );
        }
        let url_authority = uri
            .authority()
            .ok_or_else(|| format!("URL `{url}` has no host"))?;
        let port = url_authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((url_authority.host(), port))
            .await
            .map_err(|e| format!("cannot resolve `{}`: {e}", url_authority.host()))?
            .next()
            .ok_or_else(|| format!("`{}` resolves to no address", url_authority.host()))?;
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(format!(
                "{addr} is not a loopback address; pass --allow-non-loopback if you mean it"
            )
            .into());
        }
        let authority: Authority = match host {
            Some(h) => h
                .parse()
                .map_err(|e| format!("invalid --host `{h}`: {e}"))?,
            None => url_authority.clone(),
        };
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let request_uri = if http2 {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query(path)
                .build()?
        } else {
            Uri::builder().path_and_query(path).build()?
        };
        Ok(Endpoint {
            addr,
            uri: request_uri,
            host: HeaderValue::from_str(authority.as_str())?,
            http2,
        })
    }

    /// An endpoint for a plain HTTP/1.1 GET of `path` on `addr` (admin and readiness probes).
    pub(crate) fn http1(addr: SocketAddr, path: &'static str) -> Result<Self> {
        Ok(Endpoint {
            addr,
            uri: Uri::from_static(path),
            host: HeaderValue::from_str(&addr.to_string())?,
            http2: false,
        })
    }

    /// Builds the benchmark request. Cheap: `Uri` and `HeaderValue` clones share their bytes.
    pub(crate) fn request(&self) -> Request<ReqBody> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        if !self.http2 {
            request.headers_mut().insert(HOST, self.host.clone());
        }
        request
    }

    /// Human-readable form for reports: `http://ADDR/path (Host: x)`.
    pub(crate) fn describe(&self) -> String {
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        format!(
            "http://{}{} (Host: {})",
            self.addr,
            path,
            self.host.to_str().unwrap_or("?")
        )
    }
}

/// Opens a TCP connection with Nagle disabled: small request/response exchanges would
/// otherwise wait for delayed ACKs and measure the kernel, not the proxy.
async fn tcp(addr: SocketAddr) -> Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

/// Opens an HTTP/1.1 connection. The connection task ends when the sender is dropped.
pub(crate) async fn connect_http1(addr: SocketAddr) -> Result<http1::SendRequest<ReqBody>> {
    let open = async {
        let (sender, connection) = http1::handshake(tcp(addr).await?).await?;
        tokio::spawn(async move {
            // Its error (if any) surfaces to the sender as a failed request.
            let _ = connection.await;
        });
        Ok(sender)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
}

/// Opens a prior-knowledge HTTP/2 connection. The connection task ends when every clone of
/// the sender is dropped.
pub(crate) async fn connect_http2(addr: SocketAddr) -> Result<http2::SendRequest<ReqBody>> {
    let open = async {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), tcp(addr).await?).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
}

/// Reads a response body to its end, returning its length. Bodies are read (not dropped) so
/// that the measured latency includes the whole response and HTTP/1.1 connections stay reusable.
pub(crate) async fn drain(mut body: Incoming) -> Result<usize, hyper::Error> {
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            length += data.len();
        }
    }
    Ok(length)
}

/// One GET on a fresh HTTP/1.1 connection, bounded by `timeout`; returns status and body.
pub(crate) async fn get(endpoint: &Endpoint, timeout: Duration) -> Result<(StatusCode, Bytes)> {
    let exchange = async {
        let mut sender = connect_http1(endpoint.addr).await?;
        sender.ready().await?;
        let response: Response<Incoming> = sender.send_request(endpoint.request()).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {} timed out", endpoint.describe()))?
}
