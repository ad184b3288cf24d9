//! A certificate authority for workload identities: a root Ferrule makes itself, or an
//! operator's root or intermediate, that signs short-lived certificates whose one URI SAN is
//! the SPIFFE ID the caller proved (never what a signing request asks for).

use std::time::Duration;

use ferrule_config::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::{inspect, CertInfo};

/// How long a root made by [`Authority::generate_root`] lives.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are signed, so that a peer whose clock is a
/// little behind does not see a certificate from the future.
const BACKDATE: Duration = Duration::from_secs(60);

/// A signing key and its CA certificate.
pub struct Authority {
    key: KeyPair,
    /// The CA certificate re-made from its parameters: rcgen signs with a `Certificate`, and
    /// only its subject and key identifier go into what it signs.
    issuer: rcgen::Certificate,
    /// The CA certificate (PEM) as given or made.
    cert_pem: String,
    /// What follows a leaf in the chains this CA hands out: nothing for a root (peers hold it
    /// in their bundle), the intermediate (and any parents in its file) otherwise.
    chain_tail: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Authority")
            .field("intermediate", &!self.chain_tail.is_empty())
            .finish_non_exhaustive()
    }
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then any intermediates.
    pub chain_pem: String,
    /// What the leaf says.
    pub info: CertInfo,
}

impl Authority {
    /// A new self-signed root (ECDSA P-256) for `trust_domain`.
    pub fn generate_root(trust_domain: &str) -> Result<Authority, String> {
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a CA key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Ferrule");
        dn.push(
            DnType::CommonName,
            format!("Ferrule root CA {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_LIFETIME;
        let issuer = params
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
        Ok(Authority {
            cert_pem: issuer.pem(),
            key,
            issuer,
            chain_tail: String::new(),
        })
    }

    /// An operator's CA: its certificate file (the CA certificate first; for an intermediate,
    /// its parents up to but not including the root may follow) and its private key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("unreadable CA key: {e}"))?;
        let certs = crate::certs_from_pem(cert_pem)?;
        let (_, x509) = x509_parser::parse_x509_certificate(certs[0].as_ref())
            .map_err(|e| format!("unreadable CA certificate: {e}"))?;
        if !x509.is_ca() {
            return Err("the CA certificate is not a CA (basicConstraints CA:FALSE)".into());
        }
        let params = CertificateParams::from_ca_cert_der(&certs[0])
            .map_err(|e| format!("unreadable CA certificate: {e}"))?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err("the CA key does not belong to the CA certificate".into());
        }
        let self_signed = x509.subject() == x509.issuer();
        let issuer = params
            .self_signed(&key)
            .map_err(|e| format!("cannot use the CA certificate: {e}"))?;
        Ok(Authority {
            key,
            issuer,
            cert_pem: cert_pem.to_owned(),
            chain_tail: if self_signed {
                String::new()
            } else {
                cert_pem.to_owned()
            },
        })
    }

    /// The CA certificate (PEM), as given or made.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PKCS#8 PEM), for the operator's data directory.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs a certificate for `identity`, valid for `ttl`, over the public key of a signing
    /// request. The request's subject and extensions are ignored.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<Issued, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("unreadable certificate signing request: {e}"))?;
        csr.params = leaf_params(identity, ttl, dns_names)?;
        let cert = csr
            .signed_by(&self.issuer, &self.key)
            .map_err(|e| format!("cannot sign: {e}"))?;
        self.issued(cert.pem())
    }

    /// Makes a key and signs a certificate for it (the control plane's own server identity,
    /// and tests). Returns the certificate and the key (PKCS#8 DER).
    pub fn issue(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<(Issued, Vec<u8>), String> {
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        let cert = leaf_params(identity, ttl, dns_names)?
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| format!("cannot sign: {e}"))?;
        Ok((self.issued(cert.pem())?, key.serialize_der()))
    }

    fn issued(&self, leaf_pem: String) -> Result<Issued, String> {
        let leaf = crate::certs_from_pem(&leaf_pem)?;
        let info = inspect(&leaf[0])?;
        Ok(Issued {
            chain_pem: leaf_pem + &self.chain_tail,
            info,
        })
    }
}

/// What a CA certificate says, for listing the roots a mesh trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertInfo {
    /// The certificate's DER (what a fingerprint is computed over).
    pub der: Vec<u8>,
    /// Its subject, as `openssl x509 -subject` prints it.
    pub subject: String,
    /// Start of validity.
    pub not_before: std::time::SystemTime,
    /// End of validity.
    pub not_after: std::time::SystemTime,
}

/// Reads the first certificate of a PEM text, which must be a CA certificate.
pub fn describe_ca(cert_pem: &str) -> Result<CaCertInfo, String> {
    let certs = crate::certs_from_pem(cert_pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| format!("unreadable CA certificate: {e}"))?;
    if !x509.is_ca() {
        return Err("the certificate is not a CA (basicConstraints CA:FALSE)".into());
    }
    let at = |t: i64| std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(CaCertInfo {
        der: certs[0].as_ref().to_vec(),
        subject: x509.subject().to_string(),
        not_before: at(x509.validity().not_before.timestamp()),
        not_after: at(x509.validity().not_after.timestamp()),
    })
}

/// A workload certificate's parameters: the identity as the one URI SAN (plus DNS names for
/// servers that clients outside the mesh reach by name), usable for both ends of mTLS.
fn leaf_params(
    identity: &SpiffeId,
    ttl: Duration,
    dns_names: &[String],
) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|e| format!("identity is not a valid URI SAN: {e}"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    for name in dns_names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e| format!("{name:?} is not a DNS name: {e}"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
    Ok(params)
}
