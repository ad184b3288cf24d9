//! HTTP/1.1, h2c and gRPC through two sidecars (client sidecar -> HTTP/2 -> server sidecar ->
//! app), with curl, hyper and a Python grpcio client and server.

use std::net::SocketAddr;

use bytes::Bytes;
use ferrule_integration::apps::{echo_app, grpc_echo_client, grpc_echo_server};
use ferrule_integration::client::{curl, TestClient};
use ferrule_integration::procs::{ControlPlane, Sidecar};
use ferrule_integration::TempDir;
use http::Method;

const POLICY: &str = r#"
kind: Service
name: echo
protocol: http
---
kind: Service
name: echo2
protocol: http2
---
kind: Service
name: client
protocol: http
"#;

fn unused_app() -> SocketAddr {
    // The client sidecar's own app is never called in these tests.
    "127.0.0.1:9".parse().unwrap()
}

fn sidecar(cp: &ControlPlane, dir: &TempDir, service: &str, app: SocketAddr) -> Sidecar {
    Sidecar::for_service(cp, dir, service, app, &[])
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_cross_two_sidecars() {
    let dir = TempDir::new("protocols");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(POLICY);
    let app = echo_app("echo-app").await;
    let app2 = echo_app("echo2-app").await;
    let server = sidecar(&cp, &dir, "echo", app.addr);
    let server2 = sidecar(&cp, &dir, "echo2", app2.addr);
    let client = sidecar(&cp, &dir, "client", unused_app());
    client.wait_ready().await;
    client.wait_endpoints("echo", 1).await;
    client.wait_endpoints("echo2", 1).await;
    let out = client.outbound;

    // curl as an unchanged app using HTTP_PROXY.
    let (body, ok) = curl(&["-x", &format!("http://{out}"), "http://echo/hello?x=1"]);
    assert!(ok, "curl through HTTP_PROXY failed: {body}");
    let seen = json(body.as_bytes());
    assert_eq!(seen["app"], "echo-app");
    // The app speaks HTTP/1.1 and sees HTTP/1.1 with its Host restored.
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["host"], "echo");
    assert_eq!(seen["uri"], "/hello?x=1");

    // curl routed by Host, and over h2c prior knowledge.
    let (body, ok) = curl(&["-H", "Host: echo", &format!("http://{out}/by-host")]);
    assert!(ok, "{body}");
    assert_eq!(json(body.as_bytes())["path"], "/by-host");
    let (body, ok) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: echo",
        &format!("http://{out}/h2c"),
    ]);
    assert!(ok, "{body}");
    let seen = json(body.as_bytes());
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "an http service gets HTTP/1.1: {seen}"
    );
    assert_eq!(seen["host"], "echo");
    // The admin listener has no fast path: it tells h2c from HTTP/1.1 by the first bytes.
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let admin = format!("http://{}/live", client.admin);
        let (body, ok) = curl(&[proto, "-w", " %{http_version}", &admin]);
        assert!(ok, "{proto}: {body}");
        let want = if proto == "--http1.1" {
            "live\n 1.1"
        } else {
            "live\n 2"
        };
        assert_eq!(body, want, "{proto}");
    }

    // hyper clients, both protocols, both services.
    for (client_kind, c) in [("h1", TestClient::http1()), ("h2", TestClient::http2())] {
        let (status, headers, body) = c
            .get(&format!("http://{out}/hyper"), Some("echo"))
            .await
            .unwrap();
        assert_eq!(
            status,
            200,
            "{client_kind}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(headers["x-app"], "echo-app");
        let (status, _, body) = c
            .get(&format!("http://{out}/two"), Some("echo2"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let seen = json(&body);
        assert_eq!(seen["app"], "echo2-app");
        assert_eq!(
            seen["version"], "HTTP/2.0",
            "an http2 service gets HTTP/2: {seen}"
        );

        // A 3 MiB body, more than the HTTP/2 flow-control windows on the way (1 MiB at each
        // hyper server), streams through both sidecars and back unchanged.
        let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        for svc in ["echo", "echo2"] {
            let (status, _, body) = c
                .send(
                    Method::POST,
                    &format!("http://{out}/upload"),
                    Some(svc),
                    Bytes::from(big.clone()),
                )
                .await
                .unwrap();
            assert_eq!(status, 200, "{client_kind} POST to {svc}");
            assert!(
                body == big,
                "{client_kind}: echoed body differs ({} bytes)",
                body.len()
            );
        }
    }

    // Hop-by-hop headers never reach the app.
    let (body, ok) = curl(&[
        "-H",
        "Host: echo",
        "-H",
        "Connection: x-private",
        "-H",
        "X-Private: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Kept: yes",
        &format!("http://{out}/hop"),
    ]);
    assert!(ok);
    let seen = json(body.as_bytes());
    assert!(seen["headers"].get("x-private").is_none(), "{seen}");
    assert!(seen["headers"].get("keep-alive").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-kept"], "yes");

    // An endpoint registered through the API, with no sidecar in front of it: the client
    // sidecar talks to the app directly, in the service's protocol.
    let plain = echo_app("plain-app").await;
    cp.apply(&format!(
        "kind: Service\nname: plain\nprotocol: http\n---\nkind: Endpoint\nname: plain-1\nservice: plain\naddress: {}\n",
        plain.addr
    ));
    client.wait_endpoints("plain", 1).await;
    let (status, _, body) = TestClient::http2()
        .get(&format!("http://{out}/direct"), Some("plain"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = json(&body);
    assert_eq!(seen["app"], "plain-app");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["host"], "plain");

    // A route's timeout answers 504 when the app is slower; other paths match no route.
    cp.apply(
        "kind: Service\nname: echo\nprotocol: http\nroutes:\n  - match: { pathPrefix: /slow }\n    timeout: 200ms\n  - match: { pathPrefix: /hyper }\n",
    );
    let url = format!("http://{}/config", client.admin);
    ferrule_integration::eventually(
        std::time::Duration::from_secs(10),
        "timeout route applied",
        || {
            let url = url.clone();
            async move {
                let (_, _, body) = ferrule_integration::client::get(&url, None).await;
                String::from_utf8_lossy(&body).contains("200ms")
            }
        },
    )
    .await;
    let c = TestClient::http1();
    let started = std::time::Instant::now();
    let (status, headers, _) = c
        .get(&format!("http://{out}/slow/2000"), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 504);
    assert_eq!(headers["ferrule-error"], "timeout");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    let (status, _, _) = c
        .get(&format!("http://{out}/slow/10"), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, headers, _) = c
        .get(&format!("http://{out}/elsewhere"), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(headers["ferrule-error"], "no-route");

    // Proxy-made responses say why.
    let (status, headers, body) = TestClient::http1()
        .get(&format!("http://{out}/"), Some("nope"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(headers["ferrule-error"], "unknown-service");
    assert!(String::from_utf8_lossy(&body).contains("no service named \"nope\""));

    drop((server, server2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_all_call_types_cross_two_sidecars() {
    let dir = TempDir::new("grpc");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: grpc-echo\nprotocol: grpc\n---\nkind: Service\nname: client\n");
    let server = grpc_echo_server();
    let srv = sidecar(&cp, &dir, "grpc-echo", server.addr);
    let client = sidecar(&cp, &dir, "client", unused_app());
    client.wait_ready().await;
    client.wait_endpoints("grpc-echo", 1).await;

    let out = grpc_echo_client("client", client.outbound, "grpc-echo", &[]).await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "grpc client failed:\n{}\n{}\nclient sidecar log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        client.proc.log_text()
    );
    drop(srv);
}
