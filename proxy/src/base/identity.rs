//! The sidecar's workload identity: its certificate, the mesh's trust bundle, and the TLS
//! configurations made from the two, swapped whole when either changes.
//!
//! The certificate comes from the control plane (`sync::certs`), the bundle from the same
//! answer and then from every snapshot (root rotation). Listeners and connectors read
//! [`Identity::tls`] once per new connection, so a renewal reaches new connections at once and
//! never disturbs open ones.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use ferrule_tls::rustls::{ClientConfig, ServerConfig};
use ferrule_tls::{Bundle, CertInfo, ClientAuth, Credentials, ALPN_H2, ALPN_HTTP1};

/// What a connection needs from the identity, at one moment.
#[derive(Debug)]
pub struct MeshTls {
    /// Inbound: presents our certificate, requires the peer's.
    pub server: Arc<ServerConfig>,
    /// Outbound, HTTP/1.1 inside.
    pub client_http1: Arc<ClientConfig>,
    /// Outbound, HTTP/2 inside.
    pub client_h2: Arc<ClientConfig>,
    /// Our certificate.
    pub cert: CertInfo,
    /// Roots in the trust bundle.
    pub roots: usize,
}

#[derive(Default)]
struct Parts {
    creds: Option<Credentials>,
    bundle: Option<Bundle>,
    renew_at: Option<SystemTime>,
}

/// The sidecar's identity (see the module documentation).
pub struct Identity {
    enabled: bool,
    current: ArcSwapOption<MeshTls>,
    parts: Mutex<Parts>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity that will hold a certificate (none yet: the sidecar is not ready).
    pub fn enabled() -> Arc<Identity> {
        Arc::new(Identity {
            enabled: true,
            current: ArcSwapOption::empty(),
            parts: Mutex::default(),
        })
    }

    /// No identity (`--identity-disabled`): plaintext everywhere, for local development.
    pub fn disabled() -> Arc<Identity> {
        Arc::new(Identity {
            enabled: false,
            current: ArcSwapOption::empty(),
            parts: Mutex::default(),
        })
    }

    /// Whether this sidecar has (or waits for) a workload identity.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The TLS configurations, once a certificate and a bundle are in hand.
    pub fn tls(&self) -> Option<Arc<MeshTls>> {
        self.current.load_full()
    }

    /// When the certificate is due for renewal (shown by `/identity`).
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.parts.lock().expect("identity lock poisoned").renew_at
    }

    /// Installs a new certificate (and the bundle that came with it), due for renewal at
    /// `renew_at`. On error nothing changes.
    pub fn install(
        &self,
        creds: Credentials,
        bundle: Bundle,
        renew_at: SystemTime,
    ) -> Result<(), String> {
        let mut parts = self.parts.lock().expect("identity lock poisoned");
        let tls = build(&creds, &bundle)?;
        *parts = Parts {
            creds: Some(creds),
            bundle: Some(bundle),
            renew_at: Some(renew_at),
        };
        self.current.store(Some(Arc::new(tls)));
        Ok(())
    }

    /// Takes a new trust bundle (from a snapshot). Returns whether it differed from the one
    /// in use. Without a certificate yet, it is kept for when one arrives.
    pub fn set_bundle(&self, pem: &str) -> Result<bool, String> {
        let mut parts = self.parts.lock().expect("identity lock poisoned");
        if parts.bundle.as_ref().is_some_and(|b| b.pem() == pem) {
            return Ok(false);
        }
        let bundle = Bundle::from_pem(pem).map_err(|e| format!("trustBundle: {e}"))?;
        if let Some(creds) = &parts.creds {
            self.current.store(Some(Arc::new(build(creds, &bundle)?)));
        }
        parts.bundle = Some(bundle);
        Ok(true)
    }

    /// The bundle in use, if any.
    pub fn bundle(&self) -> Option<Bundle> {
        self.parts
            .lock()
            .expect("identity lock poisoned")
            .bundle
            .clone()
    }

    /// The certificate and key in use (to authenticate a renewal).
    pub fn credentials(&self) -> Option<Credentials> {
        self.parts
            .lock()
            .expect("identity lock poisoned")
            .creds
            .clone()
    }
}

fn build(creds: &Credentials, bundle: &Bundle) -> Result<MeshTls, String> {
    let server =
        ferrule_tls::server_config(creds, bundle, ClientAuth::Required, &[ALPN_H2, ALPN_HTTP1])?;
    let client_http1 = ferrule_tls::client_config(Some(creds), bundle, &[ALPN_HTTP1])?;
    let client_h2 = ferrule_tls::client_config(Some(creds), bundle, &[ALPN_H2])?;
    Ok(MeshTls {
        server: Arc::new(server),
        client_http1: Arc::new(client_http1),
        client_h2: Arc::new(client_h2),
        cert: creds.info().clone(),
        roots: bundle.len(),
    })
}
