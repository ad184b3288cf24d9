//! Handshakes between the configurations this crate makes, over in-memory pipes.

use std::sync::Arc;
use std::time::Duration;

use ferrule_config::identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::Authority;

fn id(svc: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", svc).unwrap()
}

fn creds(ca: &Authority, svc: &str, ttl: Duration) -> Credentials {
    let (issued, key) = ca.issue(&id(svc), ttl, &[]).unwrap();
    Credentials::new(&issued.chain_pem, key).unwrap()
}

/// Runs one handshake and a byte each way; returns what each side learnt of the other.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
) -> Result<(SpiffeId, SpiffeId, Vec<u8>), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let server = tokio::spawn(async move {
        let mut tls = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1)?;
        let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((peer, alpn))
    });
    let name = server_name(std::net::Ipv4Addr::LOCALHOST.into());
    let client_side = async {
        let mut tls = connector
            .connect(name, b)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1)?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let client_res = client_side.await;
    let server_res = server.await.unwrap();
    let (client_seen_by_server, alpn) = server_res?;
    Ok((client_res?, client_seen_by_server, alpn))
}

#[tokio::test]
async fn mutual_handshake_proves_both_identities() {
    let ca = Authority::generate_root("cluster.local").unwrap();
    let bundle = Bundle::from_pem(ca.cert_pem()).unwrap();
    let server = creds(&ca, "payments", Duration::from_secs(3600));
    let client = creds(&ca, "web", Duration::from_secs(3600));
    let (server_id, client_id, alpn) = handshake(
        server_config(
            &server,
            &bundle,
            ClientAuth::Required,
            &[ALPN_H2, ALPN_HTTP1],
        )
        .unwrap(),
        client_config(Some(&client), &bundle, &[ALPN_H2]).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(server_id, id("payments"));
    assert_eq!(client_id, id("web"));
    assert_eq!(alpn, ALPN_H2);
    assert!(server.info().not_after > server.info().not_before);
}

#[tokio::test]
async fn a_foreign_ca_is_refused_both_ways() {
    let ca = Authority::generate_root("cluster.local").unwrap();
    let other = Authority::generate_root("cluster.local").unwrap();
    let bundle = Bundle::from_pem(ca.cert_pem()).unwrap();
    let good = creds(&ca, "payments", Duration::from_secs(3600));
    let foreign = creds(&other, "web", Duration::from_secs(3600));
    // A client with a certificate from another CA.
    let err = handshake(
        server_config(&good, &bundle, ClientAuth::Required, &[]).unwrap(),
        client_config(Some(&foreign), &bundle, &[]).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A server with one: the client refuses its signature chain (both roots have the same
    // name, so the check that fails is the signature's) and says so with an alert.
    let err = handshake(
        server_config(&foreign, &bundle, ClientAuth::Required, &[]).unwrap(),
        client_config(Some(&good), &bundle, &[]).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("DecryptError") || err.contains("certificate"),
        "{err}"
    );
    // No client certificate where one is required.
    let err = handshake(
        server_config(&good, &bundle, ClientAuth::Required, &[]).unwrap(),
        client_config(None, &bundle, &[]).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = Authority::generate_root("cluster.local").unwrap();
    let bundle = Bundle::from_pem(ca.cert_pem()).unwrap();
    let good = creds(&ca, "payments", Duration::from_secs(3600));
    let expiring = creds(&ca, "web", Duration::ZERO);
    // Its not-after is the second it was signed in; a second later it has expired.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = handshake(
        server_config(&good, &bundle, ClientAuth::Required, &[]).unwrap(),
        client_config(Some(&expiring), &bundle, &[]).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn a_bundle_of_two_roots_trusts_both() {
    let old = Authority::generate_root("cluster.local").unwrap();
    let new = Authority::generate_root("cluster.local").unwrap();
    let both = Bundle::from_pem(&format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
    assert_eq!(both.len(), 2);
    let server = creds(&old, "payments", Duration::from_secs(3600));
    let client = creds(&new, "web", Duration::from_secs(3600));
    handshake(
        server_config(&server, &both, ClientAuth::Required, &[]).unwrap(),
        client_config(Some(&client), &both, &[]).unwrap(),
    )
    .await
    .unwrap();
}

#[test]
fn a_csr_gets_the_proven_identity_not_the_requested_one() {
    let ca = Authority::generate_root("cluster.local").unwrap();
    let (key, csr) = new_key_and_csr().unwrap();
    let issued = ca
        .sign_csr(&csr, &id("payments"), Duration::from_secs(60), &[])
        .unwrap();
    assert_eq!(issued.info.identity, id("payments"));
    let life = issued
        .info
        .not_after
        .duration_since(issued.info.not_before)
        .unwrap();
    // Sixty seconds of life plus the minute it is backdated by.
    assert_eq!(life, Duration::from_secs(120));
    let creds = Credentials::new(&issued.chain_pem, key).unwrap();
    assert_eq!(creds.info().identity, id("payments"));
    assert!(ca
        .sign_csr("not a csr", &id("x"), Duration::from_secs(60), &[])
        .is_err());
}

#[test]
fn an_intermediate_chains_to_its_root() {
    let root = Authority::generate_root("cluster.local").unwrap();
    // An operator's intermediate: a CA certificate signed by the root.
    let (inter_pem, inter_key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let root_params = rcgen::CertificateParams::from_ca_cert_pem(root.cert_pem()).unwrap();
        let root_key = rcgen::KeyPair::from_pem(&root.key_pem()).unwrap();
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let cert = p.signed_by(&key, &root_cert, &root_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let inter = Authority::from_pem(&inter_pem, &inter_key).unwrap();
    let (issued, _) = inter
        .issue(&id("web"), Duration::from_secs(60), &[])
        .unwrap();
    assert_eq!(certs_from_pem(&issued.chain_pem).unwrap().len(), 2);
    assert!(Authority::from_pem(&inter_pem, &root.key_pem()).is_err());
}
