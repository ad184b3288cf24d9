//! The control plane's own TLS: its server certificate, issued by the mesh CA for
//! `spiffe://<trust domain>/ns/ferrule-system/sa/ferrule-control` (plus DNS/IP names for clients
//! that check those, such as curl), and the rustls configuration built from it.
//!
//! The configuration is swapped whole: when the certificate nears its end (two thirds of its
//! life) or the CA changes (a new issuing root, a root added or removed, which also changes
//! which client certificates verify), a new one is made, and new connections take it while open
//! connections keep theirs. Client certificates are optional: operators and sidecars that
//! still bootstrap have none; a verified one tells the handlers the caller's identity.
//!
//! [`ServerTls`] is part of the wiring: the server builds it at start, the accept loop reads it,
//! and [`ServerTls::run_renewal`] keeps it fresh; it uses only the CA below.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ferrule_config::identity::SpiffeId;
use ferrule_tls::rustls::ServerConfig;
use ferrule_tls::{ClientAuth, Credentials, ALPN_H2, ALPN_HTTP1};
use tokio::sync::watch;

use crate::ca::Ca;
use crate::shutdown::until_shutdown;

/// The server side of the API's TLS.
#[derive(Debug)]
pub struct ServerTls {
    ca: Arc<Ca>,
    names: Vec<String>,
    config: RwLock<Arc<ServerConfig>>,
    /// When the current certificate should be replaced.
    renew_at: RwLock<SystemTime>,
}

impl ServerTls {
    /// Issues the first certificate for `names` (DNS names or IP addresses).
    pub fn new(ca: Arc<Ca>, names: Vec<String>) -> Result<ServerTls, String> {
        let (config, renew_at) = make(&ca, &names)?;
        Ok(ServerTls {
            ca,
            names,
            config: RwLock::new(Arc::new(config)),
            renew_at: RwLock::new(renew_at),
        })
    }

    /// The configuration a new connection uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().expect("tls lock"))
    }

    /// The identity a verified client certificate proves, if it is of this trust domain.
    pub fn client_identity(&self, conn: &ferrule_tls::rustls::CommonState) -> Option<SpiffeId> {
        conn.peer_certificates()?;
        match ferrule_tls::peer_identity(conn) {
            Ok(id) if id.trust_domain() == self.ca.trust_domain() => Some(id),
            Ok(id) => {
                tracing::debug!(%id, "ignoring a client certificate of another trust domain");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a client certificate without a workload identity");
                None
            }
        }
    }

    /// Replaces the certificate before it ends and whenever the CA changes, until shutdown.
    pub async fn run_renewal(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.ca.subscribe();
        loop {
            let renew_at = *self.renew_at.read().expect("tls lock");
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                r = changes.changed() => if r.is_err() { return },
                () = until_shutdown(&mut shutdown) => return,
            }
            match make(&self.ca, &self.names) {
                Ok((config, renew_at)) => {
                    *self.config.write().expect("tls lock") = Arc::new(config);
                    *self.renew_at.write().expect("tls lock") = renew_at;
                    tracing::info!("server certificate renewed");
                }
                Err(e) => {
                    // Keep serving with the current one and retry soon; it is still valid for
                    // a third of its life.
                    tracing::error!(error = %e, "cannot renew the server certificate");
                    *self.renew_at.write().expect("tls lock") =
                        SystemTime::now() + Duration::from_secs(10);
                }
            }
        }
    }
}

/// Issues a certificate and builds the configuration; returns when to renew it.
fn make(ca: &Ca, names: &[String]) -> Result<(ServerConfig, SystemTime), String> {
    let current = ca.current();
    let ttl = ca.max_ttl();
    let (issued, key) = current
        .authority
        .issue(&ca.server_identity(), ttl, names)
        .map_err(|e| format!("cannot issue the server certificate: {e}"))?;
    let creds = Credentials::new(&issued.chain_pem, key)?;
    let config = ferrule_tls::server_config(
        &creds,
        &current.bundle,
        ClientAuth::Optional,
        &[ALPN_H2, ALPN_HTTP1],
    )?;
    let life = issued
        .info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok((config, SystemTime::now() + life * 2 / 3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaConfig;
    use crate::store::Store;
    use crate::test_util::TempDir;

    #[tokio::test(start_paused = true)]
    async fn the_certificate_is_renewed_at_two_thirds_of_its_life_and_on_ca_changes() {
        let dir = TempDir::new("server-tls");
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let ca = Arc::new(
            Ca::open(
                store,
                dir.path(),
                CaConfig {
                    trust_domain: "cluster.local".into(),
                    max_ttl: Duration::from_secs(60),
                    operator: None,
                },
            )
            .unwrap(),
        );
        let tls = Arc::new(ServerTls::new(Arc::clone(&ca), vec!["localhost".into()]).unwrap());
        // Holding each configuration keeps its allocation, so pointer equality means "the same".
        let first = tls.config();
        let renew_at = *tls.renew_at.read().unwrap();
        // The certificate has 60 s left: renewal is due 40 s on.
        let due = renew_at.duration_since(SystemTime::now()).unwrap();
        assert!(
            due > Duration::from_secs(35) && due <= Duration::from_secs(40),
            "{due:?}"
        );

        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(Arc::clone(&tls).run_renewal(shutdown));
        tokio::time::sleep(due / 2).await;
        assert!(Arc::ptr_eq(&tls.config(), &first), "not renewed early");
        tokio::time::sleep(due).await;
        let second = tls.config();
        assert!(!Arc::ptr_eq(&second, &first), "renewed when due");

        // A CA change renews at once: a new root must sign the server's certificate too.
        let added = ca.add_root().await.unwrap();
        ca.activate(&added.fingerprint).await.unwrap();
        for _ in 0..100 {
            if !Arc::ptr_eq(&tls.config(), &second) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("not renewed after the CA changed");
    }
}
