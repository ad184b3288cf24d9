//! Retries, the retry budget, timeouts and deadlines, through real sidecars: a client sidecar
//! in front of upstreams (each behind its own sidecar) that fail, stall or answer on command.
//! Every count the tests assert is read at the upstreams themselves, so a retry the sidecar
//! makes cannot hide.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrule_integration::apps::{grpc_echo_client, grpc_echo_server};
use ferrule_integration::client::TestClient;
use ferrule_integration::misbehave::{misbehaving, Misbehaving};
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::TempDir;
use http::Method;

struct Mesh {
    _dir: TempDir,
    _cp: ControlPlane,
    apps: Vec<Misbehaving>,
    _servers: Vec<Sidecar>,
    client: Sidecar,
}

impl Mesh {
    /// `n` upstreams of `service`, each behind its own sidecar, under `policy`, and a client
    /// sidecar that knows them all.
    async fn start(tag: &str, service: &str, n: usize, policy: &str) -> Mesh {
        let dir = TempDir::new(tag);
        let cp = ControlPlane::start(&dir.sub("cp"), &[]);
        cp.apply(policy);
        let mut apps = Vec::new();
        let mut servers = Vec::new();
        for i in 0..n {
            let app = misbehaving(&format!("{service}-{i}")).await;
            servers.push(Sidecar::start(SidecarOpts {
                control_plane: &cp.url,
                service,
                app: app.addr,
                data_dir: &dir.sub(&format!("{service}-{i}")),
                labels: "",
                extra: &[],
            }));
            apps.push(app);
        }
        let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let client = Sidecar::start(SidecarOpts {
            control_plane: &cp.url,
            service: "client",
            app: unused,
            data_dir: &dir.sub("client"),
            labels: "",
            extra: &[],
        });
        client.wait_ready().await;
        client.wait_endpoints(service, n).await;
        Mesh {
            _dir: dir,
            _cp: cp,
            apps,
            _servers: servers,
            client,
        }
    }

    fn hits(&self) -> usize {
        self.apps.iter().map(Misbehaving::hits).sum()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.client.outbound)
    }

    async fn retries(&self, service: &str) -> f64 {
        self.client
            .metric("ferrule_retries_total", &[("service", service)])
            .await
    }
}

/// Sends `n` requests, `concurrency` at a time, and returns their statuses.
async fn load(
    c: &TestClient,
    method: Method,
    url: &str,
    host: &str,
    n: usize,
    concurrency: usize,
) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < n {
        assert!(Instant::now() < deadline, "load did not finish in 60 s");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency.min(n - sent) {
            let (c, method, url, host) =
                (c.clone(), method.clone(), url.to_owned(), host.to_owned());
            set.spawn(async move {
                let body = if method == Method::POST {
                    Bytes::from_static(b"payload")
                } else {
                    Bytes::new()
                };
                c.send(method, &url, Some(&host), body).await.map(|r| r.0)
            });
            sent += 1;
        }
        while let Some(r) = set.join_next().await {
            statuses.push(r.expect("request task").expect("a response"));
        }
    }
    statuses
}

const FLAKY: &str = "
kind: Service
name: flaky
protocol: http
trafficPolicy: {loadBalancer: round_robin}
routes:
  - name: opt-in
    match: {pathPrefix: /opt}
    retries: {nonIdempotent: true}
  - name: all
    match: {pathPrefix: /}
";

/// Test 2 of the resilience issue: an upstream failing 100%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_gets_at_most_the_budget_and_posts_are_not_retried() {
    let m = Mesh::start("budget", "flaky", 2, FLAKY).await;
    for app in &m.apps {
        app.answer(503);
    }
    let c = TestClient::http1();

    // POSTs may have reached the app: never retried on a 503...
    let statuses = load(&c, Method::POST, &m.url("/x"), "flaky", 20, 5).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(m.hits(), 20, "a POST was retried");
    // ...unless the route opts in: three attempts each, well within the budget's floor.
    let statuses = load(&c, Method::POST, &m.url("/opt"), "flaky", 20, 5).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(m.hits(), 20 + 60);
    assert_eq!(m.retries("flaky").await, 40.0);

    // GETs are retried up to 3 attempts each until the budget (20% of requests + 10/s over
    // 10 s) runs out; the rest get their single attempt. Over HTTP/1.1 (the fast path) and
    // HTTP/2 (the general path).
    let started = Instant::now();
    let mut statuses = load(&c, Method::GET, &m.url("/"), "flaky", 300, 20).await;
    let h2 = TestClient::http2();
    statuses.extend(load(&h2, Method::GET, &m.url("/"), "flaky", 100, 20).await);
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let took = started.elapsed();
    let requests = 20 + 20 + 400;
    let retries = m.retries("flaky").await as usize;
    // Every attempt the upstreams saw is a request or a counted retry.
    assert_eq!(m.hits(), requests + retries);
    let refused = m
        .client
        .metric(
            "ferrule_retries_refused_by_budget_total",
            &[("service", "flaky")],
        )
        .await;
    assert!(refused > 0.0, "the budget never refused a retry");
    // Within one budget window the bound is exact: 20% of the requests plus 10/s × 10 s.
    assert!(
        took < Duration::from_secs(9),
        "took {took:?}: the window slid"
    );
    assert!(
        retries <= requests / 5 + 100,
        "{retries} retries for {requests} requests"
    );
    assert!(m.hits() <= requests * 6 / 5 + 100);
}

const HALF: &str = "
kind: Service
name: half
protocol: http
# No ejection: this test is about retries, so the failing endpoint must keep getting picked.
trafficPolicy:
  loadBalancer: round_robin
  outlierDetection: {consecutiveFailures: 0, failurePercent: 0}
routes:
  - name: echo
    match: {pathPrefix: /echo}
    retries: {nonIdempotent: true}
  - name: all
    match: {pathPrefix: /}
";

/// A request that meets a 503 goes to the healthy endpoint, on both paths, its body with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_retried_on_a_healthy_one_with_the_body() {
    let m = Mesh::start("half", "half", 2, HALF).await;
    let (bad, good) = (&m.apps[0], &m.apps[1]);
    bad.answer(503);
    for client in [TestClient::http1(), TestClient::http2()] {
        let before = bad.hits();
        let statuses = load(&client, Method::GET, &m.url("/"), "half", 40, 4).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        assert!(bad.hits() > before, "the failing endpoint was never tried");

        // A body the proxy kept (1 KiB) is sent again, whole.
        let body = Bytes::from(vec![b'x'; 1024]);
        for _ in 0..10 {
            let (status, headers, got) = client
                .send(Method::POST, &m.url("/echo"), Some("half"), body.clone())
                .await
                .unwrap();
            assert_eq!(status, 200);
            assert_eq!(headers["x-app"], "half-1");
            assert_eq!(got, body);
        }
    }
    // A body over the 64 KiB the proxy keeps cannot be sent again: what the failing endpoint
    // answered is what the client gets.
    let h2 = TestClient::http2();
    let big = Bytes::from(vec![b'y'; 100 * 1024]);
    let (bad_before, good_before) = (bad.hits(), good.hits());
    let mut failed = 0;
    for _ in 0..4 {
        let (status, _, _) = h2
            .send(Method::POST, &m.url("/echo"), Some("half"), big.clone())
            .await
            .unwrap();
        failed += usize::from(status == 503);
    }
    assert!(
        failed > 0,
        "round robin never picked the failing endpoint first"
    );
    assert_eq!(bad.hits() - bad_before, failed);
    assert_eq!(good.hits() - good_before, 4 - failed);
}

const SLOW: &str = "
kind: Service
name: slow
protocol: http
trafficPolicy: {loadBalancer: round_robin}
routes:
  - name: short
    match: {pathPrefix: /short}
    timeout: 300ms
  - name: per-try
    match: {pathPrefix: /per-try}
    timeout: 3s
    retries: {perTryTimeout: 150ms}
  - name: long
    match: {pathPrefix: /}
    timeout: 5s
";

/// Test 4 of the resilience issue: route timeouts, per-try timeouts and propagated deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_end_stalled_requests_and_deadlines_travel() {
    let m = Mesh::start("slow", "slow", 2, SLOW).await;
    let (stalled, fine) = (&m.apps[0], &m.apps[1]);
    stalled.stall();
    for client in [TestClient::http1(), TestClient::http2()] {
        // One attempt in two meets the stalled endpoint and is retried after 150 ms.
        for _ in 0..6 {
            let t = Instant::now();
            let (status, headers, _) = client.get(&m.url("/per-try"), Some("slow")).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(headers["x-app"], "slow-1");
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        }
    }
    assert!(
        m.client
            .metric("ferrule_retries_total", &[("condition", "per-try-timeout")])
            .await
            >= 1.0
    );

    // Both endpoints stalled: the route's 300 ms ends it, with the proxy's reason.
    fine.stall();
    let c = TestClient::http1();
    let t = Instant::now();
    let (status, headers, _) = c.get(&m.url("/short"), Some("slow")).await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, 504);
    assert_eq!(headers["ferrule-error"], "timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    // The caller's deadline (200 ms) is sooner than the route's 5 s: it ends the call, and
    // the app is told the time left.
    let seen_before = stalled.deadlines().len() + fine.deadlines().len();
    for client in [TestClient::http1(), TestClient::http2()] {
        let uri: http::Uri = m.url("/").parse().unwrap();
        let req = http::Request::builder()
            .uri(uri)
            .header("host", "slow")
            .header("ferrule-deadline", "200");
        let t = Instant::now();
        let status = send_with_headers(&client, req, &m.client).await;
        let took = t.elapsed();
        assert_eq!(status, 504);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(1200),
            "{took:?}"
        );
    }
    let mut seen: Vec<String> = stalled.deadlines();
    seen.extend(fine.deadlines());
    assert_eq!(seen.len(), seen_before + 2, "{seen:?}");
    for d in &seen[seen_before..] {
        let ms: u64 = d.parse().expect("milliseconds");
        assert!(ms > 0 && ms <= 200, "the app was told {ms} ms");
    }
}

const IDLE: &str = "
kind: Service
name: stuck
protocol: http
routes:
  - idleTimeout: 1s
";

/// A response whose body stops moving is ended after the route's idle timeout, on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_moving_is_ended_by_the_idle_timeout() {
    let m = Mesh::start("idle", "stuck", 1, IDLE).await;
    m.apps[0].stall_body();
    for client in [TestClient::http1(), TestClient::http2()] {
        let t = Instant::now();
        // The head and the first bytes arrive; the body never completes: the client sees an
        // error reading it, about a second later.
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(&m.url("/"), Some("stuck")),
        )
        .await
        .expect("the stuck body was never ended");
        let took = t.elapsed();
        let err = got.expect_err("a body that never ends cannot be read whole");
        assert!(err.contains("reading body"), "{err}");
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(3000),
            "{took:?}"
        );
    }
}

/// Sends `req` (with its headers) through the client sidecar with `client`'s protocol.
async fn send_with_headers(
    client: &TestClient,
    req: http::request::Builder,
    sidecar: &Sidecar,
) -> u16 {
    // The test client sends no extra headers, so this request goes out on its own connection.
    let req = req.body(http_body_util::Full::new(Bytes::new())).unwrap();
    let h2 = client.is_http2();
    let stream = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.uri = format!("http://slow{}", parts.uri.path()).parse().unwrap();
        parts.headers.remove("host");
        sender
            .send_request(http::Request::from_parts(parts, body))
            .await
            .unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.uri = parts.uri.path().parse().unwrap();
        sender
            .send_request(http::Request::from_parts(parts, body))
            .await
            .unwrap()
    };
    resp.status().as_u16()
}

/// Test 4 of the resilience issue, its last part: the route timeout bounds the wait for a
/// response head, so a long stream that keeps moving is never cut by it, nor by an idle
/// timeout shorter than the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_grpc_stream_survives_a_short_request_timeout() {
    let dir = TempDir::new("stream");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(
        "kind: Service\nname: grpc-echo\nprotocol: grpc\nroutes:\n  - {timeout: 1s, idleTimeout: 2s}\n",
    );
    let grpc = grpc_echo_server();
    let _server = Sidecar::for_service(&cp, &dir, "grpc-echo", grpc.addr, &[]);
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let client = Sidecar::for_service(&cp, &dir, "client", unused, &[]);
    client.wait_ready().await;
    client.wait_endpoints("grpc-echo", 1).await;
    let out = grpc_echo_client("stream", client.outbound, "grpc-echo", &["60"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n: usize = stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the stream failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // One message every 50 ms for 60 s.
    assert!(n > 600, "only {n} messages");
}
