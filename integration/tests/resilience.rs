//! What happens when things go wrong: bad policy, a snapshot a proxy refuses, a dead control
//! plane, sidecars restarted without it, and sidecars that die or leave.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrule_integration::apps::echo_app;
use ferrule_integration::client::{get, TestClient};
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::{eventually, TempDir};

const POLICY: &str =
    "kind: Service\nname: echo\nprotocol: http\n---\nkind: Service\nname: client\nprotocol: http\n";

fn start_sidecar(cp_url: &str, service: &str, app: SocketAddr, dir: &std::path::Path) -> Sidecar {
    Sidecar::start(SidecarOpts {
        control_plane: cp_url,
        service,
        app,
        data_dir: dir,
        labels: "",
        extra: &[],
    })
}

async fn assert_echo_works(client: &Sidecar) {
    let (status, headers, body) = TestClient::http1()
        .get(&format!("http://{}/", client.outbound), Some("echo"))
        .await
        .expect("request through the client sidecar");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-app"], "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policy_is_refused_and_a_nacked_snapshot_is_visible() {
    let dir = TempDir::new("badpolicy");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(POLICY);
    let app = echo_app("echo").await;
    let _server = start_sidecar(&cp.url, "echo", app.addr, &dir.sub("echo"));
    let client = start_sidecar(
        &cp.url,
        "client",
        "127.0.0.1:9".parse().unwrap(),
        &dir.sub("client"),
    );
    client.wait_endpoints("echo", 1).await;
    assert_echo_works(&client).await;
    let version_before = client.version().await;

    // Invalid policy: refused whole with every field path, nothing changes.
    let out = cp.try_apply(
        "kind: Service\nname: echo\nprotocol: htp\nroutes:\n  - match: { pathPrefix: / }\n    backends: [ { weight: 101 } ]\n---\nkind: Service\nname: other\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply of a bad policy succeeded");
    assert!(stderr.contains("Service/echo: protocol"), "{stderr}");
    assert!(
        stderr.contains("Service/echo: routes[0].backends[0].weight: must be between 0 and 100"),
        "{stderr}"
    );
    let listed = cp.ctl(&["get", "services", "-o", "json"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("\"other\""),
        "a valid document of a refused apply was stored"
    );

    // Accepted by the control plane, refused by the proxy: a split to a service that does not
    // exist yet. The proxy NACKs and keeps serving its last good snapshot.
    let out = cp.try_apply(
        "kind: Service\nname: echo\nprotocol: http\nroutes:\n  - backends: [ { service: missing, weight: 100 } ]\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: Service/echo: routes[0].backends[0].service: service \"missing\" does not exist"),
        "ferrulectl should warn about the dangling backend: {stderr}"
    );
    eventually(
        Duration::from_secs(10),
        "NACK shown in /v1/proxies",
        || async {
            let (_, _, body) = get(&format!("{}/v1/proxies", cp.url), None).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            v.as_array().into_iter().flatten().any(|p| {
                p["id"].as_str().is_some_and(|id| id.starts_with("client"))
                    && p["lastNack"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("routes[0].backends[0].service"))
            })
        },
    )
    .await;
    let status = cp.ctl(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success());
    assert!(
        text.contains("routes[0].backends[0].service"),
        "ferrulectl status:\n{text}"
    );
    assert_eq!(
        client.version().await,
        version_before,
        "the refused snapshot was applied"
    );
    let cfg = client.config().await;
    assert!(
        cfg["lastNack"]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{cfg}"
    );
    assert_echo_works(&client).await;

    // Creating the missing service makes the next snapshot acceptable.
    cp.apply("kind: Service\nname: missing\n");
    eventually(Duration::from_secs(10), "good snapshot applied", || async {
        client.version().await > version_before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_dead_control_plane_and_restarts() {
    let dir = TempDir::new("stability");
    let cp_dir = dir.sub("cp");
    let mut cp = ControlPlane::start(&cp_dir, &[]);
    cp.apply(POLICY);
    let app = echo_app("echo").await;
    let server = start_sidecar(&cp.url, "echo", app.addr, &dir.sub("echo"));
    let client_dir = dir.sub("client");
    let mut client = start_sidecar(
        &cp.url,
        "client",
        "127.0.0.1:9".parse().unwrap(),
        &client_dir,
    );
    client.wait_endpoints("echo", 1).await;
    let version = client.version().await;

    // Control plane killed: traffic carries on.
    cp.proc.kill9();
    for _ in 0..50 {
        assert_echo_works(&client).await;
    }

    // A sidecar restarted while the control plane is down comes up from its persisted snapshot.
    client.proc.kill9();
    client = start_sidecar(
        &cp.url,
        "client",
        "127.0.0.1:9".parse().unwrap(),
        &client_dir,
    );
    client.wait_ready().await;
    let cfg = client.config().await;
    assert_eq!(cfg["source"], "disk", "{cfg}");
    assert_eq!(cfg["version"].as_u64(), Some(version));
    assert_echo_works(&client).await;
    // Ready, but it says the policy may be stale (issue 15, defect 10), in /ready and metrics.
    let ready = |client: &Sidecar| {
        let url = format!("http://{}/ready", client.admin);
        async move {
            let (status, _, body) = ferrule_integration::client::get(&url, None).await;
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, text) = ready(&client).await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with(&format!(
            "ready (policy version {version}); degraded: serving the persisted snapshot since "
        )),
        "{text}"
    );
    assert_eq!(client.metric("ferrule_snapshot_from_disk", &[]).await, 1.0);

    // A persisted snapshot edited while everything is down (an endpoint pointed elsewhere)
    // fails its checksum and is not served: the sidecar waits for the control plane instead.
    client.proc.kill9();
    let file = client_dir.join("snapshot.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replacen(&server.inbound.to_string(), "127.0.0.1:1", 1);
    assert_ne!(edited, text, "the endpoint's address is in the file");
    std::fs::write(&file, edited).unwrap();
    client = start_sidecar(
        &cp.url,
        "client",
        "127.0.0.1:9".parse().unwrap(),
        &client_dir,
    );
    eventually(
        Duration::from_secs(10),
        "the restarted sidecar's admin",
        || async { ready(&client).await.0 != 0 },
    )
    .await;
    let (status, text) = ready(&client).await;
    assert_eq!(
        (status, text.as_str()),
        (
            503,
            "not ready: no policy snapshot yet (control plane unreachable and none persisted?)\n"
        )
    );

    // The control plane restarted from its data dir still has every resource, and the
    // sidecars reconnect to it.
    let addr = cp.addr.to_string();
    cp = ControlPlane::start_on(&addr, &cp_dir, &[]);
    let listed = cp.ctl(&["get", "services", "-o", "json"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for name in ["\"echo\"", "\"client\""] {
        assert!(text.contains(name), "{name} missing after restart: {text}");
    }
    eventually(Duration::from_secs(20), "sidecar reconnected", || async {
        client.config().await["source"] == "control-plane"
            || client.config().await["controlPlaneConnected"] == true
    })
    .await;
    client.wait_ready().await;
    assert_echo_works(&client).await;
    let (status, text) = ready(&client).await;
    assert_eq!(status, 200);
    assert!(!text.contains("degraded"), "{text}");
    assert_eq!(client.metric("ferrule_snapshot_from_disk", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_leave_on_lease_expiry_and_on_graceful_exit() {
    let dir = TempDir::new("leases");
    let ttl = Duration::from_secs(3);
    let cp = ControlPlane::start(&dir.sub("cp"), &["--lease-ttl", "3s"]);
    cp.apply(POLICY);
    let app1 = echo_app("echo").await;
    let app2 = echo_app("echo").await;
    let mut killed = start_sidecar(&cp.url, "echo", app1.addr, &dir.sub("echo-1"));
    let mut graceful = start_sidecar(&cp.url, "echo", app2.addr, &dir.sub("echo-2"));
    let client = start_sidecar(
        &cp.url,
        "client",
        "127.0.0.1:9".parse().unwrap(),
        &dir.sub("client"),
    );
    client.wait_endpoints("echo", 2).await;

    // kill -9: no goodbye; the lease runs out and the endpoint leaves the client's snapshot.
    let t0 = Instant::now();
    killed.proc.kill9();
    // Meanwhile requests still succeed: a refused connect moves to the other endpoint.
    for _ in 0..20 {
        assert_echo_works(&client).await;
    }
    client.wait_endpoints("echo", 1).await;
    let took = t0.elapsed();
    assert!(
        took <= ttl + Duration::from_millis(1500),
        "endpoint left after {took:?} (lease {ttl:?})"
    );
    eprintln!("killed sidecar's endpoint left after {took:?}");

    // SIGTERM: the sidecar deregisters itself at once.
    let t1 = Instant::now();
    assert!(
        graceful.proc.terminate(Duration::from_secs(10)),
        "sidecar did not exit cleanly"
    );
    client.wait_endpoints("echo", 0).await;
    assert!(
        t1.elapsed() < ttl,
        "graceful exit took {:?} to deregister",
        t1.elapsed()
    );
    let (status, headers, _) = TestClient::http1()
        .get(&format!("http://{}/", client.outbound), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["ferrule-error"], "no-endpoints");
}

/// Connections of this machine to `port` in `state` (hex code of /proc/net/tcp: 01 is
/// ESTABLISHED), counted from the connecting side.
fn connections_to(port: u16, state: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16).unwrap() == port && cols[3] == state
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_sidecar_is_dropped_by_keepalive_then_reached_on_a_new_connection() {
    let dir = TempDir::new("h2-keepalive");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: echo\nprotocol: http2\n---\nkind: Service\nname: client\n");
    let app = echo_app("echo").await;
    let server = start_sidecar(&cp.url, "echo", app.addr, &dir.sub("server"));
    let client = start_sidecar(
        &cp.url,
        "client",
        ([127, 0, 0, 1], 9).into(),
        &dir.sub("client"),
    );
    client.wait_endpoints("echo", 1).await;
    let h2 = TestClient::http2();
    let url = format!("http://{}/", client.outbound);
    let (status, _, _) = h2.get(&url, Some("echo")).await.unwrap();
    assert_eq!(status, 200);
    let port = server.inbound.port();
    assert_eq!(
        connections_to(port, "01"),
        1,
        "one HTTP/2 connection between the sidecars"
    );

    // A peer that stops answering (frozen, or its host gone) keeps its TCP connection open:
    // only the client sidecar's pings notice, within 10 s + 5 s.
    let pid = server.proc.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let frozen = Instant::now();
    eventually(
        Duration::from_secs(25),
        "the connection to the frozen peer closed",
        || async { connections_to(port, "01") == 0 },
    )
    .await;
    assert!(
        frozen.elapsed() >= Duration::from_secs(9),
        "closed after {:?}",
        frozen.elapsed()
    );
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());

    // Awake again, the peer gets requests on a fresh connection: the closed one is not reused.
    let (status, headers, _) = h2.get(&url, Some("echo")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-app"], "echo");
    assert_eq!(connections_to(port, "01"), 1);
    drop(server);
}
