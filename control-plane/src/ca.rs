//! The mesh's certificate authority: the trusted roots, the one that issues, and signing.
//!
//! The roots live in the store (`trust_roots`), so that every change to them is a store write
//! that bumps the revision and publishes a snapshot whose trust bundle holds them all. The key
//! of a root this control plane generated is a file, `<data dir>/ca/<fingerprint>.key`, mode
//! 0600; an operator's CA (`--ca-cert`, `--ca-key`) is read from the operator's files at every
//! start and its key is never copied. `<data dir>/ca/trust-bundle.pem` mirrors the bundle for
//! clients on the same host (`ferrulectl --ca-file`).
//!
//! Rotation without downtime is three steps, each its own snapshot: add a root (trusted, not
//! issuing) so that every sidecar trusts it before anything is signed by it; activate it
//! (new certificates come from it, old ones still verify); remove the old root once every
//! certificate it signed has been renewed.
//!
//! [`Ca`] owns the issuing authority in memory and serialises changes; it uses only the store
//! and the error types below it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ferrule_config::identity::SpiffeId;
use ferrule_tls::ca::{Authority, Issued};
use ferrule_tls::Bundle;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::CaError;
use crate::store::{RootSource, Store, TrustRoot};
use crate::time::rfc3339;

/// The shortest certificate the CA signs: shorter ones would be renewed faster than a sidecar
/// can reasonably ask.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(60);

/// How the CA is set up at start.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The trust domain of every identity this CA signs.
    pub trust_domain: String,
    /// The longest workload certificate it signs (a request may ask for less).
    pub max_ttl: Duration,
    /// The operator's CA certificate (PEM; an intermediate may be followed by its parents)
    /// and key (PEM), if the operator brings one.
    pub operator: Option<(String, String)>,
}

/// One trusted root, as `GET /v1/ca` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootView {
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub fingerprint: String,
    /// The certificate's subject.
    pub subject: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Whether it signs new certificates.
    pub issuing: bool,
    /// `generated` or `operator`.
    pub source: RootSource,
}

/// The state of the CA as `GET /v1/ca` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaView {
    /// The trust domain.
    pub trust_domain: String,
    /// The longest certificate it signs, e.g. `24h`.
    pub max_cert_ttl: String,
    /// Every trusted root, oldest first.
    pub roots: Vec<RootView>,
}

/// The issuing authority and the roots, swapped whole on every change.
#[derive(Debug)]
pub struct Current {
    /// The authority that signs.
    pub authority: Arc<Authority>,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Every trusted root.
    pub roots: Vec<TrustRoot>,
    /// The trust bundle made of them.
    pub bundle: Bundle,
}

/// The certificate authority.
#[derive(Debug)]
pub struct Ca {
    store: Arc<Store>,
    dir: PathBuf,
    trust_domain: String,
    max_ttl: Duration,
    operator: bool,
    current: RwLock<Arc<Current>>,
    /// Serialises changes: each reads the roots, writes the store, then swaps `current`.
    ops: tokio::sync::Mutex<()>,
    /// Bumped after every change, for the task that renews the server's own certificate.
    changes: watch::Sender<u64>,
}

pub use ferrule_tls::fingerprint;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn internal(what: &str, e: impl std::fmt::Display) -> CaError {
    CaError::Internal(format!("{what}: {e}"))
}

impl Ca {
    /// Loads the CA from the store and the data directory: takes the operator's CA if given
    /// (it becomes the issuing root; roots trusted before stay trusted until removed), else
    /// the issuing root stored before, else generates a root on first start.
    pub fn open(store: Arc<Store>, data_dir: &Path, config: CaConfig) -> Result<Ca, String> {
        let dir = data_dir.join("ca");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        SpiffeId::new(&config.trust_domain, "default", "probe")
            .map_err(|e| format!("--trust-domain: {e}"))?;
        if config.max_ttl < MIN_CERT_TTL {
            return Err(format!(
                "--cert-ttl {:?} is shorter than the minimum of 1m",
                config.max_ttl
            ));
        }
        let mut roots = store.trust_roots().map_err(|e| e.to_string())?;
        let operator = config.operator.is_some();
        let (authority, fp) = match &config.operator {
            Some((cert, key)) => {
                let authority = Authority::from_pem(cert, key)
                    .map_err(|e| format!("--ca-cert/--ca-key do not make a usable CA: {e}"))?;
                let info =
                    ferrule_tls::ca::describe_ca(cert).map_err(|e| format!("--ca-cert: {e}"))?;
                let fp = fingerprint(&info.der);
                if !roots.iter().any(|r| r.fingerprint == fp) {
                    roots.push(TrustRoot {
                        fingerprint: fp.clone(),
                        // Only the CA certificate itself is a trust anchor: peers verify the
                        // chain up to it, and an operator's root above an intermediate is
                        // not needed to do so.
                        certificate: pem_of(&info.der),
                        issuing: false,
                        source: RootSource::Operator,
                        added_ms: now_ms(),
                    });
                }
                (authority, fp)
            }
            None => match roots.iter().find(|r| r.issuing) {
                Some(r) if r.source == RootSource::Operator => {
                    return Err(format!(
                        "the issuing CA ({}) is an operator's CA whose key this control plane \
                         does not keep: start with --ca-cert and --ca-key",
                        r.fingerprint
                    ));
                }
                Some(r) => {
                    let key_path = dir.join(format!("{}.key", r.fingerprint));
                    let key = std::fs::read_to_string(&key_path).map_err(|e| {
                        format!(
                            "cannot read the key of the issuing root {}: {e}",
                            key_path.display()
                        )
                    })?;
                    let authority = Authority::from_pem(&r.certificate, &key).map_err(|e| {
                        format!("the issuing root in {} is unusable: {e}", dir.display())
                    })?;
                    (authority, r.fingerprint.clone())
                }
                None => {
                    let (authority, root) =
                        generate(&dir, &config.trust_domain).map_err(|e| e.to_string())?;
                    let fp = root.fingerprint.clone();
                    tracing::info!(fingerprint = %fp, dir = %dir.display(), "generated a root CA");
                    roots.push(root);
                    (authority, fp)
                }
            },
        };
        for r in &mut roots {
            r.issuing = r.fingerprint == fp;
        }
        store
            .set_trust_roots(roots.clone())
            .map_err(|e| e.to_string())?;
        let current = make_current(Arc::new(authority), fp, roots).map_err(|e| e.to_string())?;
        write_bundle_file(&dir, current.bundle.pem()).map_err(|e| e.to_string())?;
        let (changes, _) = watch::channel(0);
        Ok(Ca {
            store,
            dir,
            trust_domain: config.trust_domain,
            max_ttl: config.max_ttl,
            operator,
            current: RwLock::new(Arc::new(current)),
            ops: tokio::sync::Mutex::new(()),
            changes,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The longest certificate the CA signs.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The issuing authority and the trusted roots now.
    pub fn current(&self) -> Arc<Current> {
        Arc::clone(&self.current.read().expect("ca lock"))
    }

    /// Notifies after every change to the roots or the issuing root.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The identity of this control plane: `spiffe://<td>/ns/ferrule-system/sa/ferrule-control`.
    pub fn server_identity(&self) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, "ferrule-system", "ferrule-control")
            .expect("the trust domain was checked at start")
    }

    /// The certificate lifetime for a request: what it asks (at least [`MIN_CERT_TTL`]) up to
    /// the maximum, or the maximum.
    pub fn ttl_for(&self, requested: Option<Duration>) -> Result<Duration, CaError> {
        match requested {
            Some(t) if t < MIN_CERT_TTL => Err(CaError::Invalid(format!(
                "ttl: {t:?} is shorter than the minimum of 1m"
            ))),
            Some(t) => Ok(t.min(self.max_ttl)),
            None => Ok(self.max_ttl),
        }
    }

    /// Signs the public key of `csr_pem` for `identity`: the request's own subject and names
    /// are ignored, so the certificate says exactly what the caller proved.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<(Issued, Arc<Current>), CaError> {
        let current = self.current();
        let issued = current
            .authority
            .sign_csr(csr_pem, identity, ttl, &[])
            .map_err(|e| CaError::Invalid(format!("csr: {e}")))?;
        Ok((issued, current))
    }

    /// The roots as the API shows them.
    pub fn view(&self) -> CaView {
        let current = self.current();
        CaView {
            trust_domain: self.trust_domain.clone(),
            max_cert_ttl: ferrule_config::duration::format(self.max_ttl),
            roots: current.roots.iter().map(root_view).collect(),
        }
    }

    /// Generates a new root: trusted from the next snapshot on, not issuing.
    pub async fn add_root(&self) -> Result<RootView, CaError> {
        if self.operator {
            return Err(CaError::Operator);
        }
        let _op = self.ops.lock().await;
        let (dir, td) = (self.dir.clone(), self.trust_domain.clone());
        let (_, mut root) = tokio::task::spawn_blocking(move || generate(&dir, &td))
            .await
            .map_err(|e| internal("key generation task", e))??;
        root.issuing = false;
        let mut roots = self.current().roots.clone();
        roots.push(root.clone());
        self.commit(roots, None).await?;
        tracing::info!(fingerprint = %root.fingerprint, "added a trusted root");
        Ok(root_view(&root))
    }

    /// Makes the root `fp` the issuing one.
    pub async fn activate(&self, fp: &str) -> Result<RootView, CaError> {
        if self.operator {
            return Err(CaError::Operator);
        }
        let _op = self.ops.lock().await;
        let mut roots = self.current().roots.clone();
        let root = roots
            .iter()
            .find(|r| r.fingerprint == fp)
            .cloned()
            .ok_or_else(|| CaError::NoSuchRoot(fp.to_owned()))?;
        if root.source == RootSource::Operator {
            return Err(CaError::Operator);
        }
        let key_path = self.dir.join(format!("{fp}.key"));
        let key = tokio::fs::read_to_string(&key_path)
            .await
            .map_err(|e| internal(&format!("cannot read {}", key_path.display()), e))?;
        let authority =
            Authority::from_pem(&root.certificate, &key).map_err(|e| internal("root key", e))?;
        for r in &mut roots {
            r.issuing = r.fingerprint == fp;
        }
        self.commit(roots.clone(), Some((Arc::new(authority), fp.to_owned())))
            .await?;
        tracing::info!(fingerprint = %fp, "issuance switched to another root");
        let root = roots
            .iter()
            .find(|r| r.fingerprint == fp)
            .expect("just activated");
        Ok(root_view(root))
    }

    /// Stops trusting the root `fp` (never the issuing one) and deletes its key.
    pub async fn remove(&self, fp: &str) -> Result<(), CaError> {
        let _op = self.ops.lock().await;
        let current = self.current();
        let root = current
            .roots
            .iter()
            .find(|r| r.fingerprint == fp)
            .ok_or_else(|| CaError::NoSuchRoot(fp.to_owned()))?;
        if root.issuing {
            return Err(CaError::Issuing(fp.to_owned()));
        }
        let roots = current
            .roots
            .iter()
            .filter(|r| r.fingerprint != fp)
            .cloned()
            .collect();
        self.commit(roots, None).await?;
        let key_path = self.dir.join(format!("{fp}.key"));
        if let Err(e) = tokio::fs::remove_file(&key_path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %key_path.display(), error = %e, "cannot delete the key of a removed root");
            }
        }
        tracing::info!(fingerprint = %fp, "removed a trusted root");
        Ok(())
    }

    /// Writes `roots` to the store (one revision: the next snapshot carries the new bundle),
    /// then makes them current, with a new issuing authority if one is given.
    async fn commit(
        &self,
        roots: Vec<TrustRoot>,
        issuing: Option<(Arc<Authority>, String)>,
    ) -> Result<(), CaError> {
        let stored = roots.clone();
        self.store.run(move |s| s.set_trust_roots(stored)).await?;
        let prev = self.current();
        let (authority, fp) =
            issuing.unwrap_or_else(|| (Arc::clone(&prev.authority), prev.fingerprint.clone()));
        let next = make_current(authority, fp, roots)?;
        if let Err(e) = write_bundle_file(&self.dir, next.bundle.pem()) {
            tracing::warn!(error = %e, "cannot update the trust bundle file");
        }
        *self.current.write().expect("ca lock") = Arc::new(next);
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }
}

fn make_current(
    authority: Arc<Authority>,
    fingerprint: String,
    roots: Vec<TrustRoot>,
) -> Result<Current, CaError> {
    let mut pem = String::new();
    for r in &roots {
        pem.push_str(r.certificate.trim_end());
        pem.push('\n');
    }
    let bundle = Bundle::from_pem(&pem).map_err(|e| internal("trust bundle", e))?;
    Ok(Current {
        authority,
        fingerprint,
        roots,
        bundle,
    })
}

fn root_view(r: &TrustRoot) -> RootView {
    let info = ferrule_tls::ca::describe_ca(&r.certificate);
    let (subject, nb, na) = match info {
        Ok(i) => (i.subject, rfc3339(i.not_before), rfc3339(i.not_after)),
        Err(e) => (format!("unreadable: {e}"), String::new(), String::new()),
    };
    RootView {
        fingerprint: r.fingerprint.clone(),
        subject,
        not_before: nb,
        not_after: na,
        issuing: r.issuing,
        source: r.source,
    }
}

/// A certificate's DER as PEM.
fn pem_of(der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(
            out,
            "{}",
            std::str::from_utf8(line).expect("base64 is ASCII")
        );
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Generates a root and writes its key, mode 0600, before the root is stored: a crash in
/// between leaves an unused key file, never a stored root without its key.
fn generate(dir: &Path, trust_domain: &str) -> Result<(Authority, TrustRoot), CaError> {
    let authority = Authority::generate_root(trust_domain).map_err(|e| internal("root", e))?;
    let info =
        ferrule_tls::ca::describe_ca(authority.cert_pem()).map_err(|e| internal("root", e))?;
    let fp = fingerprint(&info.der);
    write_private(
        &dir.join(format!("{fp}.key")),
        authority.key_pem().as_bytes(),
    )
    .map_err(|e| internal("cannot write the root key", e))?;
    let root = TrustRoot {
        fingerprint: fp,
        certificate: authority.cert_pem().to_owned(),
        issuing: true,
        source: RootSource::Generated,
        added_ms: now_ms(),
    };
    Ok((authority, root))
}

/// Writes a file readable by its owner only, atomically (temporary file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn write_bundle_file(dir: &Path, pem: &str) -> Result<(), CaError> {
    let path = dir.join("trust-bundle.pem");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| internal(&format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let a = Authority::generate_root("cluster.local").unwrap();
        let info = ferrule_tls::ca::describe_ca(a.cert_pem()).unwrap();
        let again = ferrule_tls::ca::describe_ca(&pem_of(&info.der)).unwrap();
        assert_eq!(again.der, info.der);
    }
}
