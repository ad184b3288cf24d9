//! End-to-end tests of the control plane's identity half: the CA and its root rotation,
//! bootstrap tokens, signing, the API over TLS, and the authenticated push stream. The control
//! plane runs in process (TLS, with an admin token) unless a test needs the real binary (start
//! flags, file modes, curl and openssl against it).

mod support;

use std::time::Duration;

use ferrule_config::push::ProxyMessage;
use ferrule_tls::Credentials;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use support::{eventually, ControlPlane, Sidecar, TempDir, TlsClient};

const ADMIN: &str = "admin-s3cret";

/// An in-process control plane over TLS with an admin token, and a client that trusts it.
struct Mesh {
    cp: ControlPlane,
    dir: TempDir,
}

impl Mesh {
    async fn start(tag: &str, tweak: impl FnOnce(&mut ferrule_control::Config)) -> Mesh {
        let dir = TempDir::new(tag);
        Self::start_in(dir, tweak).await
    }

    async fn start_in(dir: TempDir, tweak: impl FnOnce(&mut ferrule_control::Config)) -> Mesh {
        let mut config = ferrule_control::Config {
            admin_token: Some(ADMIN.into()),
            ..ferrule_control::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().into())
        };
        tweak(&mut config);
        let cp = ControlPlane::start_with(config).await;
        Mesh { cp, dir }
    }

    /// A client over HTTP/1.1 without a certificate that trusts the bundle the control plane
    /// keeps in its data dir (as an operator's ferrulectl on the same host would).
    fn api(&self) -> TlsClient {
        TlsClient::new(&bundle_file(&self.dir), None, ferrule_tls::ALPN_HTTP1)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.api()
            .request(self.cp.addr, method, path, body, Some(ADMIN))
            .await
    }

    /// The bundle as the API serves it.
    async fn bundle(&self) -> String {
        let (status, pem) = self
            .api()
            .request(self.cp.addr, Method::GET, "/v1/trust-bundle", None, None)
            .await;
        assert_eq!(status, StatusCode::OK);
        pem.as_str().unwrap().to_owned()
    }

    async fn token(&self, service: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/tokens",
                Some(json!({"service": service})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/certificates` with a bearer token and/or over a connection with `creds`.
    async fn sign(
        &self,
        token: Option<&str>,
        creds: Option<&Credentials>,
        body: Value,
    ) -> (StatusCode, Value) {
        let client = TlsClient::new(&self.bundle().await, creds, ferrule_tls::ALPN_HTTP1);
        client
            .request(
                self.cp.addr,
                Method::POST,
                "/v1/certificates",
                Some(body),
                token,
            )
            .await
    }

    /// Credentials of the identity `token` proves.
    async fn creds(&self, token: &str) -> Credentials {
        let (key, csr) = ferrule_tls::new_key_and_csr().unwrap();
        let (status, body) = self.sign(Some(token), None, json!({"csr": csr})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Credentials::new(body["certificateChain"].as_str().unwrap(), key).unwrap()
    }

    /// Opens a push stream over TLS (HTTP/2) with a client certificate and/or a token.
    async fn stream(
        &self,
        creds: Option<&Credentials>,
        token: Option<&str>,
        hello: Option<&ProxyMessage>,
    ) -> Result<Sidecar, (StatusCode, Value)> {
        let client = TlsClient::new(&self.bundle().await, creds, ferrule_tls::ALPN_H2);
        let io = client.connect(self.cp.addr).await;
        Sidecar::open(io, token, hello).await
    }

    async fn refused(&self, why: &str) -> u64 {
        let (_, v) = self.call(Method::GET, "/v1/streams", None).await;
        v["refused"][why].as_u64().unwrap()
    }
}

fn bundle_file(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("ca/trust-bundle.pem")).unwrap()
}

fn id(svc: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{svc}")
}

fn hello(proxy: &str, service: &str, endpoint: Option<Value>) -> ProxyMessage {
    ProxyMessage::Hello {
        proxy: proxy.into(),
        service: service.into(),
        endpoint: endpoint.map(|e| serde_json::from_value(e).unwrap()),
        version: 0,
    }
}

fn endpoint(name: &str, service: &str, port: u16) -> Value {
    json!({"name": name, "service": service, "address": format!("127.0.0.1:{port}"), "sidecar": true})
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_revoked_without_their_secrets() {
    let mesh = Mesh::start("tokens", |_| {}).await;
    // Admin only.
    let (status, _) = mesh
        .api()
        .request(
            mesh.cp.addr,
            Method::POST,
            "/v1/tokens",
            Some(json!({"service": "payments"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, created) = mesh
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"service": "payments", "namespace": "shop", "ttl": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["identity"],
        "spiffe://cluster.local/ns/shop/sa/payments"
    );
    let token = created["token"].as_str().unwrap();
    let tid = created["id"].as_str().unwrap();
    assert!(token.starts_with(&format!("{tid}.")));
    assert!(created["expiresAt"].as_str().unwrap().ends_with('Z'));

    let (_, list) = mesh.call(Method::GET, "/v1/tokens", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "valid");
    let secret = token.split_once('.').unwrap().1;
    assert!(
        !list.to_string().contains(secret),
        "the list shows no secret"
    );
    // Nor does the database.
    mesh.cp.stop().await;
    let db = std::fs::read(mesh.dir.path().join("ferrule.redb")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let mesh = Mesh::start_in(mesh.dir, |_| {}).await;

    let (status, body) = mesh
        .call(Method::DELETE, &format!("/v1/tokens/{tid}"), None)
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("revoked"))
    );
    let (status, _) = mesh.call(Method::DELETE, "/v1/tokens/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = mesh
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"service": "Bad Name"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_gets_exactly_its_identity_and_bad_tokens_get_401_or_403() {
    let mesh = Mesh::start("sign", |_| {}).await;
    let payments = mesh.token("payments").await;

    // A CSR that asks for `orders` (URI SAN and CN) gets `payments`, the token's identity.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id("orders").try_into().unwrap())];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id("orders"));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (status, body) = mesh
        .sign(Some(&payments), None, json!({"csr": csr, "ttl": "10m"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["identity"], id("payments"));
    let chain = ferrule_tls::certs_from_pem(body["certificateChain"].as_str().unwrap()).unwrap();
    let info = ferrule_tls::inspect(&chain[0]).unwrap();
    assert_eq!(info.identity.to_string(), id("payments"));
    let life = info.not_after.duration_since(info.not_before).unwrap();
    assert_eq!(
        life,
        Duration::from_secs(11 * 60),
        "10m asked, plus the backdated minute"
    );
    assert_eq!(body["serial"], info.serial);
    assert_eq!(body["trustBundle"].as_str().unwrap(), mesh.bundle().await);
    assert!(body["notAfter"].as_str().unwrap().ends_with('Z'));
    // The certificate verifies against the bundle it came with.
    ferrule_tls::Bundle::from_pem(body["trustBundle"].as_str().unwrap()).unwrap();

    // A TTL above the maximum is cut to it; below the minimum is refused.
    let (_, csr) = ferrule_tls::new_key_and_csr().unwrap();
    let (status, body) = mesh
        .sign(Some(&payments), None, json!({"csr": csr, "ttl": "100h"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let chain = ferrule_tls::certs_from_pem(body["certificateChain"].as_str().unwrap()).unwrap();
    let info = ferrule_tls::inspect(&chain[0]).unwrap();
    assert_eq!(
        info.not_after.duration_since(info.not_before).unwrap(),
        Duration::from_secs(24 * 3600 + 60)
    );
    let (status, _) = mesh
        .sign(Some(&payments), None, json!({"csr": csr, "ttl": "30s"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // No credential, an unknown token, a wrong secret: 401.
    let (status, body) = mesh.sign(None, None, json!({"csr": csr})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_of(&body).contains("Bearer"), "{body}");
    let (status, body) = mesh.sign(Some("abc.def"), None, json!({"csr": csr})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_of(&body).contains("not known"), "{body}");
    let tid = payments.split_once('.').unwrap().0;
    let wrong = format!("{tid}.{}", "0".repeat(64));
    let (status, _) = mesh.sign(Some(&wrong), None, json!({"csr": csr})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The admin token is not a bootstrap token.
    let (status, _) = mesh.sign(Some(ADMIN), None, json!({"csr": csr})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoked: 403, saying so.
    mesh.call(Method::DELETE, &format!("/v1/tokens/{tid}"), None)
        .await;
    let (status, body) = mesh.sign(Some(&payments), None, json!({"csr": csr})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(error_of(&body).contains("revoked"), "{body}");

    // Expired: 403, saying so.
    let (_, created) = mesh
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"service": "web", "ttl": "1s"})),
        )
        .await;
    let short = created["token"].as_str().unwrap().to_owned();
    let body = eventually("the token to expire", Duration::from_secs(5), || async {
        let (status, body) = mesh.sign(Some(&short), None, json!({"csr": csr})).await;
        (status == StatusCode::FORBIDDEN).then_some(body)
    })
    .await;
    assert!(error_of(&body).contains("expired"), "{body}");
    let (_, list) = mesh.call(Method::GET, "/v1/tokens", None).await;
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"expired") && states.contains(&"revoked"),
        "{states:?}"
    );
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_a_client_certificate_keeps_its_identity() {
    let mesh = Mesh::start("renew", |_| {}).await;
    let token = mesh.token("payments").await;
    let creds = mesh.creds(&token).await;
    // The token is gone; the certificate alone renews, for its own identity.
    let tid = token.split_once('.').unwrap().0;
    mesh.call(Method::DELETE, &format!("/v1/tokens/{tid}"), None)
        .await;
    let (key, csr) = ferrule_tls::new_key_and_csr().unwrap();
    let (status, body) = mesh.sign(None, Some(&creds), json!({"csr": csr})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["identity"], id("payments"));
    assert_ne!(body["serial"], creds.info().serial.as_str());
    let renewed = Credentials::new(body["certificateChain"].as_str().unwrap(), key).unwrap();
    assert_eq!(renewed.info().identity.to_string(), id("payments"));

    // A certificate from a foreign CA does not even complete the handshake.
    let foreign = ferrule_tls::ca::Authority::generate_root("cluster.local").unwrap();
    let (issued, key) = foreign
        .issue(
            &ferrule_config::identity::SpiffeId::parse(&id("payments")).unwrap(),
            Duration::from_secs(600),
            &[],
        )
        .unwrap();
    let foreign_creds = Credentials::new(&issued.chain_pem, key).unwrap();
    let client = TlsClient::new(&mesh.bundle().await, Some(&foreign_creds), b"http/1.1");
    let refused = async {
        let tcp = tokio::net::TcpStream::connect(mesh.cp.addr).await.unwrap();
        let name = ferrule_tls::server_name(mesh.cp.addr.ip());
        let Ok(io) = client.connector().connect(name, tcp).await else {
            return true;
        };
        // TLS 1.3: the server's verdict on the client certificate may arrive after the
        // client's side of the handshake is done, so the first request must fail instead.
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await
        else {
            return true;
        };
        tokio::spawn(conn);
        let req = http::Request::get("/healthz")
            .header("host", "control-plane")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        sender.send_request(req).await.is_err()
    };
    assert!(refused.await, "a foreign client certificate is refused");
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stream_needs_a_credential_and_a_hello_before_any_snapshot() {
    let mesh = Mesh::start("push-auth", |c| {
        c.hello_timeout = Duration::from_millis(300);
    })
    .await;
    let web = hello("web-1", "web", Some(endpoint("web-1", "web", 9001)));

    // No certificate, no token: 401 and no snapshot, even with a hello.
    let (status, body) = mesh.stream(None, None, Some(&web)).await.err().unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_of(&body).contains("Bearer"), "{body}");
    let (status, _) = mesh
        .stream(None, Some("nope.nope"), Some(&web))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(mesh.refused("unauthenticated").await, 2);

    // A token, but no hello: closed after the hello timeout with 408, no snapshot.
    let token = mesh.token("web").await;
    let started = std::time::Instant::now();
    let (status, body) = mesh.stream(None, Some(&token), None).await.err().unwrap();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(mesh.refused("helloTimeout").await, 1);

    // A token and a hello: admitted, snapshot, and the endpoint carries the token's identity.
    let mut s = mesh.stream(None, Some(&token), Some(&web)).await.unwrap();
    let p = s
        .push_where("the endpoint", |p| p.has_endpoint("web-1"))
        .await;
    let ep = p
        .snapshot
        .endpoints
        .iter()
        .find(|e| e.name == "web-1")
        .unwrap();
    assert_eq!(ep.identity.as_deref(), Some(id("web").as_str()));
    assert!(
        p.snapshot.trust_bundle.is_some(),
        "every snapshot carries the bundle"
    );
    let (_, proxies) = mesh.call(Method::GET, "/v1/proxies", None).await;
    assert_eq!(proxies[0]["identity"], id("web"));
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_speaks_for_its_own_service_only() {
    let mesh = Mesh::start("push-service", |_| {}).await;
    let token = mesh.token("web").await;
    let creds = mesh.creds(&token).await;

    // A hello for another service: refused with a clear error, over a certificate or a token.
    let orders = hello("o-1", "orders", Some(endpoint("o-1", "orders", 9002)));
    for (creds, token) in [(Some(&creds), None), (None, Some(token.as_str()))] {
        let (status, body) = mesh
            .stream(creds, token, Some(&orders))
            .await
            .err()
            .unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(error_of(&body).contains("own service"), "{body}");
    }
    // Its own service, with an endpoint of another service: refused.
    let sneaky = hello("w-1", "web", Some(endpoint("o-1", "orders", 9002)));
    let (status, body) = mesh
        .stream(Some(&creds), None, Some(&sneaky))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(mesh.refused("wrongService").await, 3);
    assert_eq!(
        mesh.call(Method::GET, "/v1/endpoints/o-1", None).await.0,
        StatusCode::NOT_FOUND
    );

    // An endpoint claiming another identity gets the proven one.
    let mut claimed = endpoint("w-1", "web", 9003);
    claimed["identity"] = json!(id("orders"));
    let mut s = mesh
        .stream(
            Some(&creds),
            None,
            Some(&hello("w-1", "web", Some(claimed))),
        )
        .await
        .unwrap();
    s.push_where("w-1", |p| p.has_endpoint("w-1")).await;
    let (_, ep) = mesh.call(Method::GET, "/v1/endpoints/w-1", None).await;
    assert_eq!(ep["identity"], id("web"));
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_and_live_proxy_ids_cannot_be_taken_over() {
    let mesh = Mesh::start("push-takeover", |c| c.allow_anonymous_proxies = true).await;
    let (status, _) = mesh
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(endpoint("static-web", "web", 9100)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let web = mesh.token("web").await;

    // An operator's endpoint is never overwritten by a sidecar.
    let (status, body) = mesh
        .stream(
            None,
            Some(&web),
            Some(&hello(
                "static-web",
                "web",
                Some(endpoint("static-web", "web", 9999)),
            )),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("through the API"), "{body}");
    let (_, ep) = mesh
        .call(Method::GET, "/v1/endpoints/static-web", None)
        .await;
    assert_eq!(ep["address"], "127.0.0.1:9100");

    // A live proxy of `web` holds id w-1 and its endpoint.
    let mut live = mesh
        .stream(
            None,
            Some(&web),
            Some(&hello("w-1", "web", Some(endpoint("w-1", "web", 9001)))),
        )
        .await
        .unwrap();
    live.push_where("w-1", |p| p.has_endpoint("w-1")).await;

    // Another identity cannot take the id, nor the endpoint under a new id.
    let orders = mesh.token("orders").await;
    let (status, body) = mesh
        .stream(None, Some(&orders), Some(&hello("w-1", "orders", None)))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("held by a live stream"), "{body}");
    // An anonymous stream neither.
    let (status, _) = mesh
        .stream(None, None, Some(&hello("w-1", "web", None)))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = mesh
        .stream(
            None,
            None,
            Some(&hello("anon", "web", Some(endpoint("w-1", "web", 9666)))),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("another identity"), "{body}");
    // Nor may an anonymous stream claim an identity for its endpoint.
    let mut claimed = endpoint("anon-1", "web", 9667);
    claimed["identity"] = json!(id("web"));
    let (status, _) = mesh
        .stream(None, None, Some(&hello("anon-1", "web", Some(claimed))))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(mesh.refused("proxyIdTaken").await, 2);
    assert_eq!(mesh.refused("endpointConflict").await, 3);

    // The live proxy is still the one listed, with its endpoint, and a goodbye from a
    // stream that registered nothing removes nothing.
    let (_, proxies) = mesh.call(Method::GET, "/v1/proxies", None).await;
    let w1 = proxies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "w-1")
        .unwrap();
    assert_eq!(w1["identity"], id("web"));
    let other = mesh
        .stream(None, Some(&orders), Some(&hello("o-9", "orders", None)))
        .await
        .unwrap();
    other.send(&ProxyMessage::Goodbye).await;
    let (_, ep) = mesh.call(Method::GET, "/v1/endpoints/w-1", None).await;
    assert_eq!(ep["address"], "127.0.0.1:9001");
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_registration_caps_are_enforced_and_counted() {
    let mesh = Mesh::start("push-caps", |c| {
        c.max_streams = 2;
        c.max_registrations = 1;
    })
    .await;
    let web = mesh.token("web").await;
    let _a = mesh
        .stream(
            None,
            Some(&web),
            Some(&hello("w-1", "web", Some(endpoint("w-1", "web", 9001)))),
        )
        .await
        .unwrap();
    let (status, body) = mesh
        .stream(
            None,
            Some(&web),
            Some(&hello("w-2", "web", Some(endpoint("w-2", "web", 9002)))),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(error_of(&body).contains("--max-registrations"), "{body}");
    let _b = mesh
        .stream(None, Some(&web), Some(&hello("w-3", "web", None)))
        .await
        .unwrap();
    let (status, body) = mesh
        .stream(None, Some(&web), Some(&hello("w-4", "web", None)))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(error_of(&body).contains("--max-streams"), "{body}");
    let (_, v) = mesh.call(Method::GET, "/v1/streams", None).await;
    assert_eq!(v["streams"], 2);
    assert_eq!(v["registrations"], 1);
    assert_eq!(v["refused"]["streamLimit"], 1);
    assert_eq!(v["refused"]["registrationLimit"], 1);
    mesh.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_publishes_every_step_and_keeps_the_issuer_trusted() {
    let mesh = Mesh::start("rotation", |_| {}).await;
    let web = mesh.token("web").await;
    let mut s = mesh
        .stream(None, Some(&web), Some(&hello("w-1", "web", None)))
        .await
        .unwrap();
    let first = s.push_where("a snapshot", |_| true).await;
    let old_bundle = first.snapshot.trust_bundle.clone().unwrap();
    assert_eq!(ferrule_tls::certs_from_pem(&old_bundle).unwrap().len(), 1);
    let (_, ca) = mesh.call(Method::GET, "/v1/ca", None).await;
    assert_eq!(ca["trustDomain"], "cluster.local");
    let old_fp = ca["roots"][0]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(ca["roots"][0]["issuing"], true);

    // 1. Add: both roots trusted, in a new snapshot version; the old one still issues.
    let (status, added) = mesh.call(Method::POST, "/v1/ca/roots", None).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["issuing"], false);
    let new_fp = added["fingerprint"].as_str().unwrap().to_owned();
    let both = s
        .push_where("a bundle of two roots", |p| {
            ferrule_tls::certs_from_pem(p.snapshot.trust_bundle.as_deref().unwrap())
                .unwrap()
                .len()
                == 2
        })
        .await;
    assert!(both.version > first.version);
    let both_bundle = both.snapshot.trust_bundle.clone().unwrap();
    assert!(both_bundle.starts_with(old_bundle.trim_end()));
    assert_eq!(mesh.bundle().await, both_bundle);
    assert_eq!(bundle_file(&mesh.dir), both_bundle);

    // 2. Activate: new certificates come from the new root.
    let roots = ferrule_tls::certs_from_pem(&both_bundle).unwrap();
    let (old_root, new_root) = (&roots[0], &roots[1]);
    let before = mesh.creds(&web).await;
    assert!(signed_by(&before, old_root) && !signed_by(&before, new_root));
    let (status, body) = mesh
        .call(
            Method::POST,
            &format!("/v1/ca/roots/{new_fp}/activate"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["issuing"], true);
    let after = mesh.creds(&web).await;
    assert!(signed_by(&after, new_root) && !signed_by(&after, old_root));
    // The issuing root cannot be removed.
    let (status, body) = mesh
        .call(Method::DELETE, &format!("/v1/ca/roots/{new_fp}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // 3. Remove the old root: the bundle shrinks in a new version, and the API's own
    //    certificate (re-issued by the new root) still verifies against it.
    let (status, _) = mesh
        .call(Method::DELETE, &format!("/v1/ca/roots/{old_fp}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let last = s
        .push_where("a bundle of the new root only", |p| {
            p.snapshot.trust_bundle.as_deref() != Some(both_bundle.as_str())
        })
        .await;
    assert!(last.version > both.version);
    let new_only = last.snapshot.trust_bundle.unwrap();
    assert_eq!(ferrule_tls::certs_from_pem(&new_only).unwrap().len(), 1);
    assert!(!new_only.contains(old_bundle.trim_end()));
    let fresh = TlsClient::new(&new_only, None, ferrule_tls::ALPN_HTTP1);
    let (status, ca) = eventually(
        "the server certificate from the new root",
        Duration::from_secs(5),
        || async {
            let tcp = tokio::net::TcpStream::connect(mesh.cp.addr).await.ok()?;
            fresh
                .connector()
                .connect(ferrule_tls::server_name(mesh.cp.addr.ip()), tcp)
                .await
                .ok()?;
            Some(
                fresh
                    .request(mesh.cp.addr, Method::GET, "/v1/ca", None, Some(ADMIN))
                    .await,
            )
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ca["roots"].as_array().unwrap().len(), 1);
    assert_eq!(ca["roots"][0]["fingerprint"], new_fp.as_str());
    let (status, _) = mesh
        .call(Method::DELETE, &format!("/v1/ca/roots/{old_fp}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    mesh.cp.stop().await;

    // Persisted: after a restart the new root still issues and is the only one trusted.
    let mesh = Mesh::start_in(mesh.dir, |_| {}).await;
    let (_, ca) = mesh.call(Method::GET, "/v1/ca", None).await;
    assert_eq!(ca["roots"].as_array().unwrap().len(), 1);
    assert_eq!(ca["roots"][0]["fingerprint"], new_fp.as_str());
    assert_eq!(ca["roots"][0]["issuing"], true);
    mesh.cp.stop().await;
}

/// Whether the credential's chain verifies against `root` alone.
fn signed_by(
    creds: &Credentials,
    root: &ferrule_tls::rustls::pki_types::CertificateDer<'_>,
) -> bool {
    use ferrule_tls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone().into_owned()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        ferrule_tls::provider(),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(
            &creds.chain()[0],
            &creds.chain()[1..],
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_intermediate_issues_and_is_the_trust_anchor() {
    // The operator's root stays offline; the control plane gets an intermediate and its key.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root = rcgen::CertificateParams::default();
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(rcgen::DnType::CommonName, "operator root");
    let root = root.self_signed(&root_key).unwrap();
    let inter_key = rcgen::KeyPair::generate().unwrap();
    let mut inter = rcgen::CertificateParams::default();
    inter.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    inter.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    inter
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator intermediate");
    let inter = inter.signed_by(&inter_key, &root, &root_key).unwrap();

    let mesh = Mesh::start("intermediate", |c| {
        c.ca.operator = Some((inter.pem(), inter_key.serialize_pem()));
    })
    .await;
    let bundle = mesh.bundle().await;
    let anchors = ferrule_tls::certs_from_pem(&bundle).unwrap();
    assert_eq!(anchors.len(), 1);
    assert_eq!(
        anchors[0].as_ref(),
        inter.der().as_ref(),
        "the intermediate is the anchor"
    );
    let token = mesh.token("web").await;
    let creds = mesh.creds(&token).await;
    assert_eq!(creds.chain().len(), 2, "leaf, then the intermediate");
    assert!(signed_by(&creds, &anchors[0]));
    assert!(
        signed_by(&creds, root.der()),
        "and it chains to the operator's root"
    );
    // Rotation through the API is the operator's, not ours.
    let (status, body) = mesh.call(Method::POST, "/v1/ca/roots", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    mesh.cp.stop().await;
}
