//! Connections to the control plane: plaintext for `http://` URLs (local development), mutual
//! TLS for `https://` ones, where the control plane must prove its own identity
//! (`spiffe://<trust-domain>/ns/ferrule-system/sa/ferrule-control`) against the trust bundle,
//! and this sidecar presents its workload certificate once it holds one (the control plane
//! authenticates renewals and the push stream by it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use ferrule_tls::tokio_rustls::TlsConnector;
use ferrule_tls::{Bundle, ALPN_H2, ALPN_HTTP1};
use http::Uri;
use tokio::net::TcpStream;

use crate::base::Identity;
use crate::forward::conn::Conn;

/// Largest answer read from the control plane.
const MAX_ANSWER: usize = 1024 * 1024;
/// How long the control plane has to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 exchange with the control plane on `io`, a connection of its own: sends `req`
/// and returns the status and the whole body. `what` names the request in errors.
pub(crate) async fn exchange<I>(
    io: I,
    req: Request<Full<Bytes>>,
    what: &str,
) -> Result<(StatusCode, Bytes), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with the control plane: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| format!("the control plane did not answer {what} in {ANSWER_TIMEOUT:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer to {what}: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, bytes))
}

/// Where the control plane serves its trust bundle.
const TRUST_BUNDLE_PATH: &str = "/v1/trust-bundle";
/// How long a connect (TCP and TLS) to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Namespace and service of the control plane's own identity.
pub const CONTROL_NAMESPACE: &str = "ferrule-system";
/// See [`CONTROL_NAMESPACE`].
pub const CONTROL_SERVICE: &str = "ferrule-control";

/// Where the control plane is and how to reach it.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Its URL.
    pub uri: Uri,
    /// `host:port`.
    pub authority: http::uri::Authority,
    tls: Option<ControlTls>,
}

#[derive(Debug, Clone)]
struct ControlTls {
    /// The bundle to verify it with before the sidecar has one of its own (`--trust-bundle`,
    /// or fetched once and checked against `pin`).
    bundle: Arc<Mutex<Option<Bundle>>>,
    /// SHA-256 of one root of the bundle to fetch (`--trust-bundle-sha256`).
    pin: Option<String>,
    /// The identity it must prove.
    expected: String,
}

impl ControlPlane {
    /// Checks the URL: `https://` needs a trust bundle, given (`bundle`) or fetched once from
    /// the control plane and accepted only if one of its roots has the fingerprint `pin`.
    pub fn new(
        uri: Uri,
        bundle: Option<Bundle>,
        pin: Option<String>,
        trust_domain: &str,
    ) -> Result<Self, String> {
        let authority = uri
            .authority()
            .ok_or("the control plane URL has no host:port")?
            .clone();
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let expected = ferrule_config::identity::SpiffeId::new(
                    trust_domain,
                    CONTROL_NAMESPACE,
                    CONTROL_SERVICE,
                )?
                .to_string();
                if bundle.is_none() && pin.is_none() {
                    return Err(
                        "an https:// control plane needs --trust-bundle (the mesh's root \
                         certificates, PEM) or --trust-bundle-sha256 (the fingerprint of one \
                         root, from `ferrulectl ca show`) to verify it"
                            .into(),
                    );
                }
                Some(ControlTls {
                    bundle: Arc::new(Mutex::new(bundle)),
                    pin,
                    expected,
                })
            }
            _ => {
                return Err(format!(
                    "control plane URL {uri} must be http:// or https://"
                ))
            }
        };
        Ok(ControlPlane {
            uri,
            authority,
            tls,
        })
    }

    /// Whether connections are TLS (then the sidecar's certificate authenticates it).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The scheme for request URIs.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// Opens a connection, HTTP/2 or HTTP/1.1 inside (ALPN).
    pub async fn connect(&self, identity: &Identity, h2: bool) -> Result<Conn, String> {
        let addr = self.authority.as_str().to_owned();
        let work = async {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(Conn::Plain(stream));
            };
            // The mesh's bundle once there is one (it follows root rotation), else the file or
            // the pinned one.
            let given = tls.bundle.lock().expect("bundle lock poisoned").clone();
            let bundle = match (identity.bundle().or(given), &tls.pin) {
                (Some(b), _) => b,
                (None, Some(pin)) => self.fetch_pinned(pin).await?,
                (None, None) => {
                    return Err("no trust bundle to verify the control plane with".into())
                }
            };
            let creds = identity.credentials();
            let alpn: &[&[u8]] = if h2 { &[ALPN_H2] } else { &[ALPN_HTTP1] };
            let config = ferrule_tls::client_config(creds.as_ref(), &bundle, alpn)?;
            let ip = stream
                .peer_addr()
                .map_err(|e| format!("connect to {addr}: {e}"))?
                .ip();
            let conn = TlsConnector::from(Arc::new(config))
                .connect(ferrule_tls::server_name(ip), stream)
                .await
                .map_err(|e| format!("TLS handshake with the control plane at {addr}: {e}"))?;
            let found = ferrule_tls::peer_identity(conn.get_ref().1)
                .map_err(|e| format!("the control plane at {addr}: {e}"))?;
            if found.to_string() != tls.expected {
                return Err(format!(
                    "{addr} presented identity {found}, expected the control plane's {}",
                    tls.expected
                ));
            }
            Ok(Conn::Tls(Box::new(conn)))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, work)
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
    }

    /// Fetches `GET /v1/trust-bundle` over a connection that verifies nothing, and keeps the
    /// bundle only if one of its roots has the pinned fingerprint: the pin, not the
    /// connection, is what makes it trustworthy. Nothing else is sent on that connection.
    async fn fetch_pinned(&self, pin: &str) -> Result<Bundle, String> {
        let addr = self.authority.as_str();
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let ip = stream.peer_addr().map_err(|e| e.to_string())?.ip();
        let config = ferrule_tls::unverified_client_config(&[ALPN_HTTP1])?;
        let conn = TlsConnector::from(Arc::new(config))
            .connect(ferrule_tls::server_name(ip), stream)
            .await
            .map_err(|e| format!("TLS handshake with the control plane at {addr}: {e}"))?;
        let req = Request::get(format!("https://{addr}{TRUST_BUNDLE_PATH}"))
            .header(header::HOST, addr)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = exchange(conn, req, "fetching the trust bundle").await?;
        if !status.is_success() {
            return Err(format!("fetching the trust bundle: {status}"));
        }
        let pem = String::from_utf8_lossy(&body);
        let bundle = ferrule_tls::pinned_bundle(&pem, pin)?;
        if let Some(tls) = &self.tls {
            *tls.bundle.lock().expect("bundle lock poisoned") = Some(bundle.clone());
        }
        tracing::info!(
            roots = bundle.len(),
            "trust bundle fetched from the control plane and matched the pinned fingerprint"
        );
        Ok(bundle)
    }
}
