//! hyper clients for tests: HTTP/1.1 keep-alive and prior-knowledge HTTP/2.

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::Arc;

/// A hyper client: pooled HTTP/1.1 keep-alive, or one multiplexed prior-knowledge HTTP/2
/// connection per target address.
#[derive(Debug, Clone)]
pub struct TestClient {
    h1: Option<Client<HttpConnector, Full<Bytes>>>,
    h2: Arc<tokio::sync::Mutex<HashMap<String, http2::SendRequest<Full<Bytes>>>>>,
}

/// What a request returned: status, headers, whole body.
pub type Reply = (u16, HeaderMap, Bytes);

impl TestClient {
    /// An HTTP/1.1 client (keep-alive).
    pub fn http1() -> Self {
        TestClient {
            h1: Some(Client::builder(TokioExecutor::new()).build_http()),
            h2: Default::default(),
        }
    }

    /// A prior-knowledge HTTP/2 (h2c) client.
    pub fn http2() -> Self {
        TestClient {
            h1: None,
            h2: Default::default(),
        }
    }

    /// Whether this client speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.h1.is_none()
    }

    /// Sends a request to `url`; `host` replaces the Host header (HTTP/1.1) or the
    /// `:authority` (HTTP/2) while the connection still goes to `url`'s address.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        host: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let addr = uri
            .authority()
            .ok_or("URL has no host")?
            .as_str()
            .to_owned();
        let resp = match &self.h1 {
            Some(client) => {
                let mut req = Request::builder().method(method).uri(uri);
                if let Some(h) = host {
                    req = req.header(http::header::HOST, h);
                }
                let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
                client.request(req).await.map_err(|e| format!("{e:?}"))?
            }
            None => {
                let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let target = format!("http://{}{pq}", host.unwrap_or(&addr));
                let req = Request::builder()
                    .method(method)
                    .uri(target)
                    .body(Full::new(body))
                    .map_err(|e| e.to_string())?;
                let mut conn = self.h2_conn(&addr).await?;
                conn.send_request(req).await.map_err(|e| format!("{e:?}"))?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {e}"))?
            .to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }

    async fn h2_conn(&self, addr: &str) -> Result<http2::SendRequest<Full<Bytes>>, String> {
        let mut conns = self.h2.lock().await;
        if let Some(c) = conns.get(addr).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        conns.insert(addr.to_owned(), sender.clone());
        Ok(sender)
    }

    /// `GET url` with an optional Host.
    pub async fn get(&self, url: &str, host: Option<&str>) -> Result<Reply, String> {
        self.send(Method::GET, url, host, Bytes::new()).await
    }
}

/// One-off `GET` over HTTP/1.1; transport errors give status 0 (for polling).
pub async fn get(url: &str, host: Option<&str>) -> Reply {
    TestClient::http1()
        .get(url, host)
        .await
        .unwrap_or_else(|_| (0, HeaderMap::new(), Bytes::new()))
}

/// Runs curl with `args` and returns (stdout, exit success).
pub fn curl(args: &[&str]) -> (String, bool) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl (install it: apt-get install -y curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}
