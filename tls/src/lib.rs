//! Ferrule's mutual TLS, shared by the sidecar and the control plane: workload credentials,
//! trust bundles, the rustls configurations of both sides, and the SPIFFE identity check.
//!
//! # Why the identity check is ours
//! rustls verifies a server's chain and then its DNS name or IP address. A mesh names peers by
//! SPIFFE ID (a URI SAN), which rustls does not check, so the client side here verifies the
//! chain only ([`ChainVerifier`]) and the caller then checks the peer's identity with
//! [`peer_identity`] before it writes a byte of the request. The server side uses rustls's
//! client verifier (chain against the bundle, client certificate required) and reads the
//! caller's identity the same way, for authorization.
//!
//! # Choices
//! - TLS 1.3 only (the workspace builds rustls without `tls12`), ECDSA P-256 keys (rcgen's
//!   default), the ring provider.
//! - No session tickets from servers: mesh connections are long-lived and pooled, and an idle
//!   pooled connection must have nothing to read (the pool's liveness probe treats any byte as
//!   a broken connection).
//! - Configurations are immutable; a renewal or a new trust bundle builds new ones, which new
//!   connections pick up, while open connections keep the ones they were made with.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrule_config::identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, CommonState, DigitallySignedStruct, RootCertStore, ServerConfig};

pub mod ca;

pub use rustls;
pub use tokio_rustls;

/// ALPN of HTTP/2 inside mesh TLS.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of HTTP/1.1 inside mesh TLS.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The process's crypto provider (ring), made once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    // rustls marks ring's provider deprecated because it lacks post-quantum key exchange
    // (X25519MLKEM768 needs aws-lc-rs). Traffic between sidecars uses X25519 for now; ring
    // builds with cc alone, where aws-lc-rs needs cmake and minutes of C build on two cores.
    // Moving to aws-lc-rs is one line here once the build cost is paid.
    #[allow(deprecated)]
    let make = || Arc::new(rustls::crypto::ring::default_provider());
    PROVIDER.get_or_init(make).clone()
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE ID in its URI SAN.
    pub identity: SpiffeId,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, hex with colons (as `openssl x509 -serial` prints it, lower case).
    pub serial: String,
}

/// Reads a workload certificate: it must carry exactly one URI SAN, a SPIFFE ID of the form
/// this mesh issues. (A certificate with two identities would let one peer pass for another
/// under a rule that matches either.)
pub fn inspect(cert: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?
        .ok_or("the certificate has no subjectAltName, so no workload identity")?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err("a workload certificate must carry exactly one URI SAN".into());
    };
    let identity = SpiffeId::parse(uri)?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(CertInfo {
        identity,
        not_before: at(x509.validity().not_before.timestamp()),
        not_after: at(x509.validity().not_after.timestamp()),
        serial: x509.raw_serial_as_string(),
    })
}

/// The identity the peer of an established TLS connection proved (its leaf certificate was
/// verified against the bundle during the handshake).
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, String> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the peer presented no certificate")?;
    Ok(inspect(leaf)?.identity)
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(certs)
}

/// The roots a mesh trusts, and the PEM they came from.
#[derive(Debug, Clone)]
pub struct Bundle {
    roots: Arc<RootCertStore>,
    pem: Arc<str>,
}

impl Bundle {
    /// Parses a PEM bundle of one or more roots.
    pub fn from_pem(pem: &str) -> Result<Bundle, String> {
        let mut roots = RootCertStore::empty();
        for cert in certs_from_pem(pem)? {
            roots
                .add(cert)
                .map_err(|e| format!("not a usable trust anchor: {e}"))?;
        }
        Ok(Bundle {
            roots: Arc::new(roots),
            pem: pem.into(),
        })
    }

    /// The PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// How many roots it holds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// Whether it holds no root (never, for a parsed bundle).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// A workload's certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    info: CertInfo,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            info: self.info.clone(),
        }
    }
}

impl Credentials {
    /// Pairs a PEM chain with a PKCS#8 key (DER); the leaf must be a workload certificate.
    pub fn new(chain_pem: &str, key_pkcs8: Vec<u8>) -> Result<Credentials, String> {
        let chain = certs_from_pem(chain_pem)?;
        let info = inspect(&chain[0])?;
        Ok(Credentials {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)),
            info,
        })
    }

    /// What the leaf certificate says.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// Whether a server asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate of the mesh (sidecar inbound).
    Required,
    /// A client may present one; without one it is anonymous (the control plane's API,
    /// where operators and bootstrapping sidecars have no certificate yet).
    Optional,
}

/// A TLS 1.3 server configuration for `creds`, verifying client certificates against
/// `bundle`, offering `alpn` in order of preference.
pub fn server_config(
    creds: &Credentials,
    bundle: &Bundle,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, String> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), provider.clone());
    let verifier = match client_auth {
        ClientAuth::Required => verifier.build(),
        ClientAuth::Optional => verifier.allow_unauthenticated().build(),
    }
    .map_err(|e| format!("cannot verify clients with this bundle: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| format!("the certificate and key do not make a server identity: {e}"))?;
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3 client configuration that verifies servers' chains against `bundle` (the caller
/// then checks the identity with [`peer_identity`]) and presents `creds`, if any.
pub fn client_config(
    creds: Option<&Credentials>,
    bundle: &Bundle,
    alpn: &[&[u8]],
) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier = Arc::new(ChainVerifier {
        roots: Some(bundle.roots.clone()),
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match creds {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| format!("the certificate and key do not make a client identity: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The name a client gives rustls for a peer it knows by address: rustls needs a server name,
/// the chain verifier ignores it, and an IP address sends no SNI.
pub fn server_name(addr: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.into())
}

/// Verifies a server's chain against the trust bundle, and not its name (see the module
/// documentation: the SPIFFE ID is checked after the handshake, before any request is sent).
/// Without roots it accepts any chain ([`unverified_client_config`]); handshake signatures are
/// checked either way.
#[derive(Debug)]
struct ChainVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configurations speak TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A new private key (ECDSA P-256, generated in memory) and a certificate signing request for
/// it. The CA ignores the request's subject: it signs the identity the caller proved, so the
/// request carries only the public key and the proof that its holder has the private key.
pub fn new_key_and_csr() -> Result<(Vec<u8>, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| format!("cannot make a signing request: {e}"))?
        .pem()
        .map_err(|e| format!("cannot encode the signing request: {e}"))?;
    Ok((key.serialize_der(), csr))
}

/// SHA-256 of a certificate's DER, lower-case hex without separators: how roots are named
/// (`GET /v1/ca`) and pinned (a sidecar's `--trust-bundle-sha256`).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A bundle fetched without verification, accepted only if one of its roots has the pinned
/// fingerprint (compared case-insensitively, `:` separators ignored).
pub fn pinned_bundle(pem: &str, pin: &str) -> Result<Bundle, String> {
    let want: String = pin
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let bundle = Bundle::from_pem(pem)?;
    let certs = certs_from_pem(pem)?;
    if certs.iter().any(|c| fingerprint(c.as_ref()) == want) {
        Ok(bundle)
    } else {
        Err(format!(
            "no root in the control plane's trust bundle has the pinned SHA-256 {want}"
        ))
    }
}

/// A client configuration that accepts any server certificate. Only for fetching the trust
/// bundle once at bootstrap, whose content is then checked against a pinned fingerprint
/// ([`pinned_bundle`]); nothing else may be sent over it.
pub fn unverified_client_config(alpn: &[&[u8]]) -> Result<ClientConfig, String> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainVerifier {
            roots: None,
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A PKCS#8 key (DER) as PEM, for tools that read key files (openssl, nginx).
pub fn key_pem(pkcs8_der: &[u8]) -> Result<String, String> {
    rcgen::KeyPair::try_from(pkcs8_der)
        .map(|k| k.serialize_pem())
        .map_err(|e| format!("not a PKCS#8 key: {e}"))
}

#[cfg(test)]
mod tests;
