//! Connections to the control plane: plaintext for `http://` URLs (local development), mutual
//! TLS for `https://` ones, where the control plane must prove its own identity
//! (`spiffe://<trust-domain>/ns/ferrule-system/sa/ferrule-control`) against the trust bundle,
//! and this sidecar presents its workload certificate once it holds one (the control plane
//! authenticates renewals and the push stream by it).

use std::sync::Arc;
use std::time::Duration;

use ferrule_tls::tokio_rustls::TlsConnector;
use ferrule_tls::{Bundle, ALPN_H2, ALPN_HTTP1};
use http::Uri;
use tokio::net::TcpStream;

use crate::base::Identity;
use crate::forward::conn::Conn;

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
    /// The bundle to verify it with before the sidecar has one of its own (`--trust-bundle`).
    bundle: Option<Bundle>,
    /// The identity it must prove.
    expected: String,
}

impl ControlPlane {
    /// Checks the URL: `https://` needs a trust bundle (from `bundle`, or, once the sidecar
    /// holds a certificate, the one that came with it).
    pub fn new(uri: Uri, bundle: Option<Bundle>, trust_domain: &str) -> Result<Self, String> {
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
                if bundle.is_none() {
                    return Err(
                        "an https:// control plane needs --trust-bundle (the mesh's root \
                         certificates, PEM) to verify it"
                            .into(),
                    );
                }
                Some(ControlTls { bundle, expected })
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
            // The mesh's bundle once there is one (it follows root rotation), else the file.
            let bundle = identity
                .bundle()
                .or_else(|| tls.bundle.clone())
                .ok_or("no trust bundle to verify the control plane with")?;
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
}
