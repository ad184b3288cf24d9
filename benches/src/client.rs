//! HTTP client plumbing shared by the load generator and the harness: resolving a URL into an
//! [`Endpoint`] of one [`Protocol`], opening HTTP/1.1 or prior-knowledge h2 connections with
//! hyper's low-level `client::conn` API, judging responses (status, gRPC trailers), and
//! one-shot requests for readiness probes.
//!
//! The low-level API (rather than a pooled client) is deliberate: the load generator must
//! control exactly how many connections exist and how many requests each carries at once.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::grpc;
use crate::protocol::Protocol;
use crate::Result;

/// Body type of every request the benchmarks send: empty for GETs, one framed message for
/// gRPC calls (a `Bytes` clone of the same message every time).
pub(crate) type ReqBody = Full<Bytes>;

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
    /// What to speak.
    pub(crate) protocol: Protocol,
    /// The request body: empty, or the gRPC request message.
    body: Bytes,
}

impl Endpoint {
    /// Resolves `url` (`http://HOST:PORT/path`). `host` overrides the Host header / authority,
    /// which is how a request names a mesh service (`Host: bench-upstream`) while being sent to
    /// the sidecar's address. Non-loopback addresses are refused unless `allow_non_loopback`.
    pub(crate) async fn resolve(
        url: &str,
        host: Option<&str>,
        protocol: Protocol,
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
        let request_uri = if protocol.is_h2() {
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
            protocol,
            body: match protocol {
                Protocol::Grpc => grpc::request_body(),
                _ => Bytes::new(),
            },
        })
    }

    /// An endpoint for a plain HTTP/1.1 GET of `path` on `addr` (admin and readiness probes).
    pub(crate) fn http1(addr: SocketAddr, path: &'static str) -> Result<Self> {
        Ok(Endpoint {
            addr,
            uri: Uri::from_static(path),
            host: HeaderValue::from_str(&addr.to_string())?,
            protocol: Protocol::Http1,
            body: Bytes::new(),
        })
    }

    /// Builds the benchmark request. Cheap: `Uri`, `HeaderValue` and `Bytes` clones share
    /// their bytes.
    pub(crate) fn request(&self) -> Request<ReqBody> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.uri_mut() = self.uri.clone();
        match self.protocol {
            Protocol::Http1 => {
                request.headers_mut().insert(HOST, self.host.clone());
            }
            Protocol::Http2 => {}
            Protocol::Grpc => {
                *request.method_mut() = Method::POST;
                let headers = request.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
                headers.insert(TE, HeaderValue::from_static("trailers"));
            }
        }
        request
    }

    /// Opens a connection of this endpoint's protocol.
    pub(crate) async fn connect(&self) -> Result<Sender> {
        Ok(if self.protocol.is_h2() {
            Sender::H2(connect_http2(self.addr).await?)
        } else {
            Sender::H1(connect_http1(self.addr).await?)
        })
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

/// A connection's request sender, of either protocol.
pub(crate) enum Sender {
    /// HTTP/1.1: one request at a time.
    H1(http1::SendRequest<ReqBody>),
    /// HTTP/2: cloneable, requests multiplexed.
    H2(http2::SendRequest<ReqBody>),
}

impl Sender {
    /// Sends the endpoint's request once and judges the whole response.
    pub(crate) async fn exchange(&mut self, endpoint: &Endpoint) -> Outcome {
        let response = match self {
            Sender::H1(s) => match s.ready().await {
                Ok(()) => s.send_request(endpoint.request()).await,
                Err(e) => Err(e),
            },
            Sender::H2(s) => match s.ready().await {
                Ok(()) => s.send_request(endpoint.request()).await,
                Err(e) => Err(e),
            },
        };
        match response {
            Ok(response) => judge(endpoint.protocol, response).await,
            Err(e) => Outcome::Transport(e.to_string()),
        }
    }
}

/// What happened to one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A complete, successful response: 2xx, and for gRPC `grpc-status: 0` in the trailers.
    Ok,
    /// A complete response that is not a success: non-2xx, or a gRPC error status.
    Failed(String),
    /// Connect, protocol or body error, or no complete response within the request timeout.
    Transport(String),
    /// Still unfinished when the run's hard deadline cut it off.
    CutOff,
}

/// Reads the whole response and decides whether it succeeded.
pub(crate) async fn judge(protocol: Protocol, response: Response<Incoming>) -> Outcome {
    let status = response.status();
    let (parts, body) = response.into_parts();
    let drained = match drain(body).await {
        Ok(drained) => drained,
        Err(e) => return Outcome::Transport(format!("reading the body: {e}")),
    };
    if !status.is_success() {
        let reason = parts
            .headers
            .get("ferrule-error")
            .and_then(|v| v.to_str().ok())
            .map_or(String::new(), |r| format!(" (ferrule-error: {r})"));
        return Outcome::Failed(format!("status {status}{reason}"));
    }
    if protocol == Protocol::Grpc {
        let trailers = match drained.trailers.as_ref() {
            Some(trailers) => Some(trailers),
            // Trailers-only response: the status sits in the headers. Never a success here
            // (the benchmark's method returns a message), but it says what went wrong.
            None if parts.headers.contains_key("grpc-status") => {
                return Outcome::Failed(match grpc::check_trailers(Some(&parts.headers)) {
                    Ok(()) => "trailers-only gRPC response without a message".into(),
                    Err(e) => e,
                })
            }
            None => None,
        };
        if let Err(e) = grpc::check_trailers(trailers) {
            return Outcome::Failed(e);
        }
    }
    Outcome::Ok
}

/// A response body read to its end.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Bytes of data.
    pub(crate) len: usize,
    /// The trailers, if the response had any.
    pub(crate) trailers: Option<HeaderMap>,
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

/// Reads a response body to its end: its length and trailers. Bodies are read (not dropped)
/// so that the measured latency includes the whole response and HTTP/1.1 connections stay
/// reusable.
pub(crate) async fn drain(mut body: Incoming) -> Result<Drained, hyper::Error> {
    let mut drained = Drained::default();
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => drained.len += data.len(),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    drained.trailers = Some(trailers);
                }
            }
        }
    }
    Ok(drained)
}

/// One HTTP/1.1 request to `addr` on a fresh connection, bounded by `timeout`: `GET` without
/// a body, or a method with a JSON body (control-plane API calls). Returns status and body.
pub(crate) async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: Option<Bytes>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes)> {
    let exchange = async {
        let mut sender = connect_http1(addr).await?;
        sender.ready().await?;
        let mut request = Request::new(Full::new(json.clone().unwrap_or_default()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = path.parse()?;
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(&addr.to_string())?);
        if json.is_some() {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let response: Response<Incoming> = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{method} http://{addr}{path} timed out"))?
}

/// One request of the endpoint's protocol on a fresh connection, bounded by `timeout`
/// (readiness probes): `Ok` only for a successful response.
pub(crate) async fn once(endpoint: &Endpoint, timeout: Duration) -> Result<(), String> {
    let exchange = async {
        let mut sender = endpoint.connect().await.map_err(|e| e.to_string())?;
        match sender.exchange(endpoint).await {
            Outcome::Ok => Ok(()),
            Outcome::Failed(e) | Outcome::Transport(e) => Err(e),
            Outcome::CutOff => Err("cut off".into()),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no response within {timeout:?}"))?
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
