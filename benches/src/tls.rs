//! TLS material for the chains with TLS between hops: a throwaway CA and a server certificate
//! for `localhost` and `127.0.0.1` signed by it, generated with `rcgen` for every run and
//! written as PEM into the run's temporary directory. The second hop serves the certificate;
//! the first hop verifies it against the CA (and the name `localhost`), as a real deployment
//! would, so the handshake does the same work it does in production.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::Result;

/// The name the first hop expects in the second hop's certificate (SNI and verification).
pub(crate) const SERVER_NAME: &str = "localhost";

/// Paths of the generated PEM files.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    /// The CA certificate the first hop trusts.
    pub(crate) ca: PathBuf,
    /// The server certificate.
    pub(crate) cert: PathBuf,
    /// The server's private key (mode 0600).
    pub(crate) key: PathBuf,
    /// Certificate and key in one file, as HAProxy's `crt` wants it (mode 0600).
    pub(crate) bundle: PathBuf,
}

/// Generates a CA and a server certificate (ECDSA P-256) into `dir`.
pub(crate) fn generate(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferrule-bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        bundle: dir.join("server-bundle.pem"),
    };
    let key_pem = key.serialize_pem();
    write(&files.ca, &ca.pem(), 0o644)?;
    write(&files.cert, &cert.pem(), 0o644)?;
    write(&files.key, &key_pem, 0o600)?;
    write(&files.bundle, &format!("{}{key_pem}", cert.pem()), 0o600)?;
    Ok(files)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_certificate_verifies_against_the_ca() {
        let dir = std::env::temp_dir().join(format!("ferrule-bench-tls-{}", std::process::id()));
        let files = generate(&dir).unwrap();
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        let bundle = std::fs::read_to_string(&files.bundle).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.contains("PRIVATE KEY-----"));
        // OpenSSL, which nginx and HAProxy use, must accept the chain and the names.
        if let Ok(out) = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&files.ca)
            .args(["-verify_hostname", SERVER_NAME, "-verify_ip", "127.0.0.1"])
            .arg(&files.cert)
            .output()
        {
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
