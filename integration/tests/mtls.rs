//! Identity and mutual TLS between sidecars, end to end: sidecars get their certificates from
//! the control plane's CA with bootstrap tokens, talk mutual TLS to each other (HTTP/1.1 on
//! the fast path, HTTP/2 and gRPC), refuse plaintext where the service is strict, refuse peers
//! with foreign, expired or wrong certificates, and authorize callers by identity. Real
//! clients: hyper, curl, openssl s_client, Python grpcio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule_integration::apps::{echo_app, grpc_echo_client, grpc_echo_server};
use ferrule_integration::client::{curl, TestClient};
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::{eventually, TempDir};
use ferrule_tls::ca::Authority;

const TD: &str = "cluster.local";

fn id(service: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{service}")
}

/// A bootstrap token for `service`, written to a file as `--token-file` wants it.
fn token_file(cp: &ControlPlane, dir: &TempDir, service: &str) -> PathBuf {
    let out = cp.ctl(&["token", "create", "--service", service]);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let path = dir.path().join(format!("{service}.token"));
    std::fs::write(&path, token.trim()).unwrap();
    path
}

/// A sidecar with a workload identity for `service`.
fn meshed(
    cp: &ControlPlane,
    dir: &TempDir,
    service: &str,
    app: SocketAddr,
    extra: &[&str],
) -> Sidecar {
    let token = token_file(cp, dir, service);
    let mut flags = vec!["--token-file", token.to_str().unwrap()];
    flags.extend_from_slice(extra);
    Sidecar::start(SidecarOpts {
        control_plane: &cp.url,
        service,
        app,
        data_dir: &dir.sub(service),
        labels: "",
        extra: &flags,
    })
}

fn unused_app() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

async fn identity_of(sidecar: &Sidecar) -> serde_json::Value {
    let (status, _, body) =
        ferrule_integration::client::get(&format!("http://{}/identity", sidecar.admin), None).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mutual_tls_and_strict_refuses_plaintext() {
    let dir = TempDir::new("mtls");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: echo\nprotocol: http\n---\nkind: Service\nname: web\n");
    let app = echo_app("echo-app").await;
    let echo = meshed(&cp, &dir, "echo", app.addr, &[]);
    let web = meshed(&cp, &dir, "web", unused_app(), &[]);
    web.wait_ready().await;
    echo.wait_ready().await;
    web.wait_endpoints("echo", 1).await;

    // Each holds a certificate for its own service, from the control plane's CA.
    let ident = identity_of(&echo).await;
    assert_eq!(ident["identity"], id("echo"));
    assert!(ident["notAfter"].as_str().unwrap() > ident["renewAt"].as_str().unwrap());
    // The control plane recorded the registered endpoint's identity from the certificate.
    let cfg = web.config().await;
    let ep = cfg["snapshot"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(ep["identity"], id("echo"), "{ep}");

    // HTTP/1.1 (fast path) and h2c from the app cross the hop as mutual TLS.
    let out = web.outbound;
    let (status, _, body) = TestClient::http1()
        .get(&format!("http://{out}/one"), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (body, ok) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: echo",
        &format!("http://{out}/two"),
    ]);
    assert!(ok, "{body}");
    let ok_in = [("direction", "inbound"), ("result", "ok")];
    let ok_out = [("direction", "outbound"), ("result", "ok")];
    assert!(echo.metric("ferrule_tls_handshakes_total", &ok_in).await >= 2.0);
    assert!(web.metric("ferrule_tls_handshakes_total", &ok_out).await >= 2.0);
    let before = app.received();

    // Plaintext straight to the strict inbound port: closed, and nothing reaches the app.
    let (body, ok) = curl(&[
        "-H",
        "Host: echo",
        &format!("http://{}/sneak", echo.inbound),
    ]);
    assert!(!ok, "plaintext to a strict service got an answer: {body}");
    let refused = [("direction", "inbound"), ("result", "plaintext_refused")];
    assert_eq!(
        echo.metric("ferrule_tls_handshakes_total", &refused).await,
        1.0
    );
    assert_eq!(app.received(), before);

    // Permissive lets plaintext in (migration), and mTLS keeps working beside it.
    cp.apply("kind: Service\nname: echo\nprotocol: http\nmtls: {mode: permissive}\n");
    let url = format!("http://{}/plain", echo.inbound);
    eventually(
        Duration::from_secs(10),
        "plaintext accepted once permissive",
        || {
            let url = url.clone();
            async move { curl(&["-H", "Host: echo", &url]).1 }
        },
    )
    .await;
    let (status, _, _) = TestClient::http1()
        .get(&format!("http://{out}/three"), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_by_identity_path_and_method() {
    let dir = TempDir::new("authz");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    let policy = |secret_rule: &str| {
        format!(
            "kind: Service\nname: echo\nprotocol: http\nauthorization:\n  defaultAction: deny\n  rules:\n    - {{action: allow, from: [\"{}\"], paths: [\"/allowed/*\"], methods: [GET]}}\n{secret_rule}---\nkind: Service\nname: grpc-echo\nprotocol: grpc\nauthorization: {{defaultAction: deny}}\n---\nkind: Service\nname: web\n---\nkind: Service\nname: intruder\n",
            id("web")
        )
    };
    cp.apply(&policy(""));
    let app = echo_app("echo-app").await;
    let grpc = grpc_echo_server();
    let echo = meshed(&cp, &dir, "echo", app.addr, &[]);
    let grpc_sidecar = meshed(&cp, &dir, "grpc-echo", grpc.addr, &[]);
    let web = meshed(&cp, &dir, "web", unused_app(), &[]);
    let intruder = meshed(&cp, &dir, "intruder", unused_app(), &[]);
    for s in [&web, &intruder] {
        s.wait_ready().await;
        s.wait_endpoints("echo", 1).await;
    }
    web.wait_endpoints("grpc-echo", 1).await;
    let client = TestClient::http1();
    let get = |s: &Sidecar, path: &str| {
        let url = format!("http://{}{path}", s.outbound);
        let client = client.clone();
        async move { client.get(&url, Some("echo")).await.unwrap() }
    };

    let (status, _, _) = get(&web, "/allowed/x").await;
    assert_eq!(status, 200);
    let (status, headers, body) = get(&web, "/secret").await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["ferrule-error"], "unauthorized");
    assert!(String::from_utf8_lossy(&body).contains(&id("web")));
    let (status, headers, _) = get(&intruder, "/allowed/x").await;
    assert_eq!(status, 403);
    assert_eq!(headers["ferrule-error"], "unauthorized");
    let denied = [("decision", "deny")];
    assert_eq!(
        echo.metric("ferrule_authz_decisions_total", &denied).await,
        2.0
    );

    // gRPC callers get PERMISSION_DENIED (Python grpcio).
    let out = grpc_echo_client("denied", web.outbound, "grpc-echo", &[]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("denied"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(grpc_sidecar);

    // A policy change applies within a second, on the connections already open.
    let applied = Instant::now();
    cp.apply(&policy("    - {action: allow, paths: [\"/secret\"]}\n"));
    let mut allowed_after = None;
    while applied.elapsed() < Duration::from_secs(5) {
        if get(&web, "/secret").await.0 == 200 {
            allowed_after = Some(applied.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = allowed_after.expect("the new rule never applied");
    assert!(
        took < Duration::from_secs(1),
        "the policy took {took:?} to apply"
    );

    // Audit mode: a denial is counted, and the request goes through.
    cp.apply(&policy("").replace(
        "defaultAction: deny\n  rules",
        "defaultAction: deny\n  audit: true\n  rules",
    ));
    let audited = [("decision", "audit_deny")];
    eventually(
        Duration::from_secs(10),
        "audit mode lets the request through",
        || async { get(&intruder, "/allowed/x").await.0 == 200 },
    )
    .await;
    assert!(echo.metric("ferrule_authz_decisions_total", &audited).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_identity_gets_no_request() {
    let dir = TempDir::new("wrong-id");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: echo\n---\nkind: Service\nname: payments\n---\nkind: Service\nname: web\n");
    let app = echo_app("echo-app").await;
    let echo = meshed(&cp, &dir, "echo", app.addr, &[]);
    let web = meshed(&cp, &dir, "web", unused_app(), &[]);
    echo.wait_ready().await;
    // An endpoint of `payments` at the address of echo's sidecar: the sidecar there proves
    // `echo`, not `payments`.
    cp.apply(&format!(
        "kind: Endpoint\nname: fake-payments\nservice: payments\naddress: {}\nsidecar: true\nidentity: {}\n",
        echo.inbound,
        id("payments")
    ));
    web.wait_endpoints("payments", 1).await;
    let before = app.received();
    let (status, headers, body) = TestClient::http1()
        .get(&format!("http://{}/pay", web.outbound), Some("payments"))
        .await
        .unwrap();
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["ferrule-error"], "connect-failed");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(&id("echo")) && text.contains(&id("payments")),
        "{text}"
    );
    assert_eq!(
        app.received(),
        before,
        "the request reached the wrong peer's app"
    );
    let wrong = [("direction", "outbound"), ("result", "wrong_identity")];
    assert!(web.metric("ferrule_tls_handshakes_total", &wrong).await >= 1.0);
}

/// Sends one request with `openssl s_client` presenting `cert`/`key`; returns what it printed.
fn openssl_request(addr: SocketAddr, cert: &PathBuf, key: &PathBuf) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_3",
            "-quiet",
        ])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (apt-get install -y openssl)");
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    let _ =
        stdin.write_all(b"GET /via-openssl HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n");
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_expired_client_certificates_are_refused() {
    let dir = TempDir::new("certs");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: echo\n");
    let app = echo_app("echo-app").await;
    let echo = meshed(&cp, &dir, "echo", app.addr, &[]);
    echo.wait_ready().await;

    let write = |name: &str, chain: &str, key: &[u8]| {
        let cert = dir.path().join(format!("{name}.pem"));
        let key_path = dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, chain).unwrap();
        std::fs::write(&key_path, ferrule_tls::key_pem(key).unwrap()).unwrap();
        (cert, key_path)
    };
    let web = ferrule_config_id("web");

    // The mesh's own CA (the control plane's files), as a positive control: a certificate it
    // signs is let in, and the request reaches the app.
    let real = real_ca(&cp);
    let (issued, key) = real.issue(&web, Duration::from_secs(600), &[]).unwrap();
    let (cert, key) = write("good", &issued.chain_pem, &key);
    let out = openssl_request(echo.inbound, &cert, &key);
    assert!(
        out.contains("HTTP/1.1 200"),
        "a valid mesh certificate was refused:\n{out}"
    );

    // Another CA's certificate, with the same identity: refused, nothing reaches the app.
    let before = app.received();
    let foreign = Authority::generate_root(TD).unwrap();
    let (issued, key) = foreign.issue(&web, Duration::from_secs(600), &[]).unwrap();
    let (cert, key) = write("foreign", &issued.chain_pem, &key);
    let out = openssl_request(echo.inbound, &cert, &key);
    assert!(
        !out.contains("HTTP/1.1"),
        "a foreign certificate got an answer:\n{out}"
    );

    // The mesh's CA, but expired.
    let (issued, key) = real.issue(&web, Duration::ZERO, &[]).unwrap();
    let (cert, key) = write("expired", &issued.chain_pem, &key);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = openssl_request(echo.inbound, &cert, &key);
    assert!(
        !out.contains("HTTP/1.1"),
        "an expired certificate got an answer:\n{out}"
    );
    assert_eq!(app.received(), before);
    let failed = [("direction", "inbound"), ("result", "failed")];
    assert_eq!(
        echo.metric("ferrule_tls_handshakes_total", &failed).await,
        2.0
    );
}

fn ferrule_config_id(service: &str) -> ferrule_config::identity::SpiffeId {
    ferrule_config::identity::SpiffeId::new(TD, "default", service).unwrap()
}

/// The control plane's CA, read from its data directory (one root: the bundle is its
/// certificate, and its key is the one key file).
fn real_ca(cp: &ControlPlane) -> Authority {
    let cert = std::fs::read_to_string(cp.trust_bundle()).unwrap();
    let key_file = std::fs::read_dir(cp.data_dir.join("ca"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "key"))
        .expect("the CA's key file");
    let key = std::fs::read_to_string(key_file).unwrap();
    Authority::from_pem(&cert, &key).unwrap()
}

/// Sends GETs for `host` through `outbound` at `rps` until `stop` turns true (at most
/// `max` requests); returns the number that succeeded and a description of each failure.
async fn steady_load(
    outbound: SocketAddr,
    host: &'static str,
    rps: u32,
    max: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, Vec<String>) {
    let client = TestClient::http1();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < max && !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let client = client.clone();
        let url = format!("http://{outbound}/load/{sent}");
        tasks.spawn(async move {
            match client.get(&url, Some(host)).await {
                Ok((200, _, _)) => Ok(()),
                Ok((status, headers, body)) => Err(format!(
                    "{url}: {status} {:?} {}",
                    headers.get("ferrule-error"),
                    String::from_utf8_lossy(&body)
                )),
                Err(e) => Err(format!("{url}: {e}")),
            }
        });
        sent += 1;
    }
    let mut ok = 0;
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("a load task") {
            Ok(()) => ok += 1,
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}

/// A mesh for the rotation tests: echo (HTTP) and grpc-echo behind sidecars, and web as the
/// caller, all with 1-minute certificates.
struct RotationMesh {
    cp: ControlPlane,
    app: ferrule_integration::apps::EchoApp,
    _grpc: ferrule_integration::apps::GrpcEcho,
    sidecars: Vec<Sidecar>,
    _dir: TempDir,
}

impl RotationMesh {
    async fn start(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let cp = ControlPlane::start(&dir.sub("cp"), &["--cert-ttl", "1m"]);
        cp.apply("kind: Service\nname: echo\nprotocol: http\n---\nkind: Service\nname: grpc-echo\nprotocol: grpc\n---\nkind: Service\nname: web\n");
        let app = echo_app("echo-app").await;
        let grpc = grpc_echo_server();
        let ttl = ["--cert-ttl", "1m"];
        let sidecars = vec![
            meshed(&cp, &dir, "web", unused_app(), &ttl),
            meshed(&cp, &dir, "echo", app.addr, &ttl),
            meshed(&cp, &dir, "grpc-echo", grpc.addr, &ttl),
        ];
        for s in &sidecars {
            s.wait_ready().await;
        }
        sidecars[0].wait_endpoints("echo", 1).await;
        sidecars[0].wait_endpoints("grpc-echo", 1).await;
        RotationMesh {
            cp,
            app,
            _grpc: grpc,
            sidecars,
            _dir: dir,
        }
    }

    fn web(&self) -> &Sidecar {
        &self.sidecars[0]
    }

    /// 200 rps through web to echo until the sender says stop (at most 60,000 requests).
    fn load(
        &self,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<(usize, Vec<String>)>,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let outbound = self.web().outbound;
        let load = tokio::spawn(steady_load(outbound, "echo", 200, 60_000, stop_rx));
        (stop_tx, load)
    }

    /// Certificates each sidecar has installed so far.
    async fn issued(&self) -> Vec<f64> {
        let mut v = Vec::new();
        for s in &self.sidecars {
            v.push(
                s.metric("ferrule_identity_certificates_issued_total", &[])
                    .await,
            );
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let mesh = RotationMesh::start("rotate").await;
    let (stop_tx, load) = mesh.load();
    // One gRPC stream open for the whole run, through both sidecars.
    let stream = grpc_echo_client("stream", mesh.web().outbound, "grpc-echo", &["150"]);
    let stream = tokio::spawn(stream);

    // Three renewals of every sidecar: a 1-minute certificate is renewed at 70% of its life.
    let start = Instant::now();
    while mesh.issued().await.iter().any(|n| *n < 4.0) {
        assert!(
            start.elapsed() < Duration::from_secs(200),
            "renewals so far: {:?}",
            mesh.issued().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_tx.send(true);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok >= 200 * 100,
        "only {ok} requests in {:?}",
        start.elapsed()
    );
    assert!(mesh.app.received() >= ok);
    let out = stream.await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("ok "),
        "the gRPC stream did not survive:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_under_load_without_a_failed_request() {
    let mesh = RotationMesh::start("root").await;
    let (stop_tx, load) = mesh.load();
    let roots = |want: u64| {
        let sidecars = &mesh.sidecars;
        async move {
            for s in sidecars {
                if identity_of(s).await["trustBundleRoots"].as_u64() != Some(want) {
                    return false;
                }
            }
            true
        }
    };
    let ca = |args: &[&str]| {
        let out = mesh.cp.ctl(args);
        assert!(
            out.status.success(),
            "ferrulectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown: serde_json::Value = serde_json::from_slice(
        &ferrule_integration::client::get(&format!("{}/v1/ca", mesh.cp.url), None)
            .await
            .2,
    )
    .unwrap();
    let old = shown["roots"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    // 1. A new root is trusted everywhere before it signs anything.
    ca(&["ca", "add-root"]);
    eventually(
        Duration::from_secs(10),
        "every sidecar trusts two roots",
        || roots(2),
    )
    .await;
    let shown: serde_json::Value = serde_json::from_slice(
        &ferrule_integration::client::get(&format!("{}/v1/ca", mesh.cp.url), None)
            .await
            .2,
    )
    .unwrap();
    let new = shown["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fingerprint"].as_str().unwrap().to_owned())
        .find(|f| *f != old)
        .unwrap();
    // 2. Issuance switches; every sidecar renews onto the new root within a certificate's life.
    let before = mesh.issued().await;
    ca(&["ca", "activate", &new]);
    let renewed = || async {
        let now = mesh.issued().await;
        now.iter().zip(&before).all(|(n, b)| n > b)
    };
    eventually(
        Duration::from_secs(90),
        "every sidecar renewed after the switch",
        renewed,
    )
    .await;
    // 3. The old root goes; the mesh keeps working on the new one.
    ca(&["ca", "remove-root", &old]);
    eventually(
        Duration::from_secs(10),
        "every sidecar trusts one root",
        || roots(1),
    )
    .await;
    let after_removal = Instant::now();
    let web = mesh.web().outbound;
    eventually(
        Duration::from_secs(10),
        "requests after the removal",
        || async move {
            after_removal.elapsed() > Duration::from_secs(3)
                && TestClient::http1()
                    .get(&format!("http://{web}/after"), Some("echo"))
                    .await
                    .is_ok_and(|r| r.0 == 200)
        },
    )
    .await;
    let _ = stop_tx.send(true);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 1000, "only {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_use_a_control_plane_served_over_tls() {
    let dir = TempDir::new("cp-tls");
    let cp = ControlPlane::start_tls(&dir.sub("cp"), &[]);
    assert!(cp.url.starts_with("https://"), "{}", cp.url);
    cp.apply("kind: Service\nname: echo\n---\nkind: Service\nname: web\n");
    let app = echo_app("echo-app").await;
    let bundle = cp.trust_bundle();
    let trust = ["--trust-bundle", bundle.to_str().unwrap()];
    let echo = meshed(&cp, &dir, "echo", app.addr, &trust);
    // web knows only the root's fingerprint: it fetches the bundle and checks it by the pin.
    let (ca, ok) = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        &format!("{}/v1/ca", cp.url),
    ]);
    assert!(ok, "{ca}");
    let ca: serde_json::Value = serde_json::from_str(&ca).unwrap();
    let pin = ca["roots"][0]["fingerprint"].as_str().unwrap().to_owned();
    let web = meshed(
        &cp,
        &dir,
        "web",
        unused_app(),
        &["--trust-bundle-sha256", &pin],
    );
    // A wrong pin: the fetched bundle is refused, so no certificate is ever asked for.
    let wrong = "00".repeat(32);
    let misled = meshed(
        &cp,
        &dir,
        "misled",
        unused_app(),
        &["--trust-bundle-sha256", &wrong],
    );
    web.wait_ready().await;
    web.wait_endpoints("echo", 1).await;
    let (status, _, _) = TestClient::http1()
        .get(&format!("http://{}/x", web.outbound), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The push streams are authenticated by the sidecars' certificates.
    let (proxies, ok) = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        &format!("{}/v1/proxies", cp.url),
    ]);
    assert!(ok, "{proxies}");
    assert!(
        proxies.contains(&id("echo")) && proxies.contains(&id("web")),
        "{proxies}"
    );

    // A sidecar without identity gets nothing from it (no certificate, no token).
    let anonymous = Sidecar::start(SidecarOpts {
        control_plane: &cp.url,
        service: "web",
        app: unused_app(),
        data_dir: &dir.sub("anonymous"),
        labels: "",
        extra: &trust,
    });
    // Its stream is refused as unauthenticated (counted), and it holds no policy.
    let url = format!("{}/v1/streams", cp.url);
    eventually(
        Duration::from_secs(10),
        "the anonymous stream refused",
        || {
            let (streams, _) = curl(&["--cacert", bundle.to_str().unwrap(), &url]);
            async move {
                serde_json::from_str::<serde_json::Value>(&streams)
                    .is_ok_and(|v| v["refused"]["unauthenticated"].as_u64() >= Some(1))
            }
        },
    )
    .await;
    assert_eq!(
        anonymous.version().await,
        0,
        "an anonymous sidecar got a snapshot"
    );
    eventually(Duration::from_secs(10), "the wrong pin refused", || async {
        misled.proc.log_text().contains("pinned SHA-256")
    })
    .await;
    assert!(identity_of(&misled).await["identity"].is_null());
    drop(echo);
}
