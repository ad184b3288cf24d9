//! Traffic mirroring through real sidecars: a route of service `primary` copies a share of its
//! requests to service `shadow`, whose app (`recorder::Recorder`) keeps every request it reads.
//!
//! Checked: at 100% every request reaches the shadow with its method, path and body and a
//! `-shadow` host, over HTTP/1.1 and HTTP/2 and through the shadow's own sidecar; a 1 KiB
//! binary body byte for byte, and a body over the 64 KiB recording limit not at all (counted);
//! at 0% nothing, and the requests stay on the fast path; at 50% a share within a binomial
//! bound; and a shadow that stalls, or is down, changes neither the primary's statuses nor its
//! latency beyond a small bound, while the copies in flight stay under the cap.
//!
//! Copies are asynchronous, so arrivals at the shadow are polled for with a deadline. Every
//! load loop is bounded in count and in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrule_integration::client::TestClient;
use ferrule_integration::procs::{ControlPlane, Sidecar};
use ferrule_integration::recorder::{recorder, Recorder, Seen};
use ferrule_integration::{eventually, TempDir};
use http::Method;

/// The cap on copies in flight per shadow service (`plan::mirror::MAX_IN_FLIGHT`).
const CAP: usize = 64;

/// `primary`, whose one route mirrors `percent`% to `shadow` (and, with a route timeout of
/// 30 s, lets a stalled copy hold its place for the whole test); a route `/barrier` that
/// mirrors everything to the same shadow; and a `client` service.
fn policy(percent: u32) -> String {
    format!(
        "kind: Service\nname: primary\nprotocol: http\nroutes:\n  \
         - name: barrier\n    match: {{pathPrefix: /barrier}}\n    \
         mirror: {{service: shadow, percent: 100}}\n  \
         - name: copied\n    match: {{pathPrefix: /}}\n    timeout: 30s\n    \
         mirror: {{service: shadow, percent: {percent}}}\n\
         ---\nkind: Service\nname: shadow\nprotocol: http\n\
         ---\nkind: Service\nname: client\nprotocol: http\n"
    )
}

struct Mesh {
    _dir: TempDir,
    _cp: ControlPlane,
    /// Sidecars in front of the apps, when the apps are reached through theirs.
    _apps: Vec<Sidecar>,
    client: Sidecar,
    primary: Recorder,
    shadow: Recorder,
}

/// A control plane with `policy(percent)`, the two recording apps, and a client sidecar that
/// sees an endpoint of each. The apps are registered as plain endpoints, or, `behind_sidecars`,
/// each sits behind a sidecar of its own that registers it (the full mesh path).
/// `shadow_addr` replaces the shadow app's address (a port nobody listens on).
async fn mesh(
    tag: &str,
    percent: u32,
    behind_sidecars: bool,
    shadow_addr: Option<SocketAddr>,
) -> Mesh {
    let dir = TempDir::new(tag);
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    let primary = recorder("primary").await;
    let shadow = recorder("shadow").await;
    let mut yaml = policy(percent);
    let mut apps = Vec::new();
    if behind_sidecars {
        cp.apply(&yaml);
        apps.push(Sidecar::for_service(
            &cp,
            &dir,
            "primary",
            primary.addr,
            &[],
        ));
        apps.push(Sidecar::for_service(&cp, &dir, "shadow", shadow.addr, &[]));
    } else {
        let shadow_at = shadow_addr.unwrap_or(shadow.addr);
        yaml += &format!(
            "---\nkind: Endpoint\nname: primary-1\nservice: primary\naddress: {}\n\
             ---\nkind: Endpoint\nname: shadow-1\nservice: shadow\naddress: {shadow_at}\n",
            primary.addr
        );
        cp.apply(&yaml);
    }
    let client = Sidecar::for_service(&cp, &dir, "client", "127.0.0.1:9".parse().unwrap(), &[]);
    client.wait_endpoints("primary", 1).await;
    client.wait_endpoints("shadow", 1).await;
    for s in &apps {
        s.wait_ready().await;
    }
    Mesh {
        _dir: dir,
        _cp: cp,
        _apps: apps,
        client,
        primary,
        shadow,
    }
}

impl Mesh {
    /// One request to `primary` through the client sidecar: status and how long it took.
    async fn call(
        &self,
        c: &TestClient,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> (u16, Duration) {
        let url = format!("http://{}{path}", self.client.outbound);
        let start = Instant::now();
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(10),
            c.send(method, &url, Some("primary"), body),
        )
        .await
        .unwrap_or_else(|_| panic!("no answer to {path} within 10 s"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        (status, start.elapsed())
    }

    /// The client sidecar's count of mirrored copies with `outcome`.
    async fn mirrored(&self, outcome: &str) -> u64 {
        self.client
            .metric(
                "ferrule_mirror_requests_total",
                &[("service", "shadow"), ("outcome", outcome)],
            )
            .await as u64
    }

    /// Requests the client sidecar's outbound listener carried on the fast path.
    async fn fast(&self) -> f64 {
        self.client
            .metric(
                "ferrule_requests_by_codec_total",
                &[("direction", "outbound"), ("codec", "fast")],
            )
            .await
    }

    /// Waits until the shadow app has read and answered `n` requests (and stops there: it is
    /// checked again once every copy has ended).
    async fn shadow_saw(&self, n: usize) -> Vec<Seen> {
        let what = format!("{n} copies read by the shadow app");
        eventually(Duration::from_secs(10), &what, || async {
            self.shadow.seen().len() >= n
        })
        .await;
        let seen = self.shadow.seen();
        assert_eq!(seen.len(), n, "copies at the shadow: {seen:#?}");
        seen
    }
}

/// The bytes 0..=255 four times over: 1 KiB that is not text.
fn kib() -> Bytes {
    (0..1024)
        .map(|i| (i % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn sorted(mut v: Vec<Seen>) -> Vec<Seen> {
    v.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    v
}

/// At 100%, through a sidecar in front of each app: every request of HTTP/1.1 and HTTP/2
/// clients, GET and POST, reaches the shadow as it reached the primary, but for the host,
/// which is `primary-shadow`; the primary's answers are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_100_percent_every_request_reaches_the_shadow_as_sent() {
    let m = mesh("mirror-all", 100, true, None).await;
    let mut sent = Vec::new();
    for (proto, c) in [("h1", TestClient::http1()), ("h2", TestClient::http2())] {
        for i in 0..10 {
            let path = format!("/{proto}/{i}?q={i}");
            let (method, body) = if i % 2 == 0 {
                (Method::GET, Bytes::new())
            } else {
                (Method::POST, Bytes::from(format!("body {proto} {i}")))
            };
            let (status, _) = m.call(&c, method.clone(), &path, body.clone()).await;
            assert_eq!(status, 200, "{path}");
            sent.push(Seen {
                method: method.to_string(),
                path,
                host: "primary-shadow".into(),
                body,
            });
        }
    }
    let copies = sorted(m.shadow_saw(sent.len()).await);
    assert_eq!(copies, sorted(sent.clone()));
    // The primary got the originals, its host untouched.
    let originals = sorted(m.primary.seen());
    let want: Vec<Seen> = sorted(sent)
        .into_iter()
        .map(|s| Seen {
            host: "primary".into(),
            ..s
        })
        .collect();
    assert_eq!(originals, want);
    assert_eq!(m.mirrored("sent").await, 20);
    eventually(
        Duration::from_secs(5),
        "20 copies counted as answered",
        || async { m.mirrored("succeeded").await == 20 },
    )
    .await;
    assert_eq!(m.mirrored("failed").await, 0);
    assert_eq!(m.mirrored("skipped_body").await, 0);
    assert_eq!(m.mirrored("dropped_busy").await, 0);
}

/// A 1 KiB binary POST body reaches the shadow byte for byte, from an HTTP/1.1 client (whose
/// request the fast path hands to the general path) and an HTTP/2 client. A body over the
/// 64 KiB recording limit still reaches the primary whole, but is not mirrored, and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_kib_post_body_is_mirrored_byte_exact_and_a_large_one_is_skipped() {
    let m = mesh("mirror-body", 100, false, None).await;
    let body = kib();
    for (proto, c) in [("h1", TestClient::http1()), ("h2", TestClient::http2())] {
        let (status, _) = m
            .call(&c, Method::POST, &format!("/{proto}"), body.clone())
            .await;
        assert_eq!(status, 200);
    }
    let copies = m.shadow_saw(2).await;
    for c in &copies {
        assert_eq!(c.method, "POST");
        assert_eq!(c.host, "primary-shadow");
        assert_eq!(c.body.len(), 1024, "{}", c.path);
        assert!(c.body == body, "the body of {} differs", c.path);
    }

    let large: Bytes = vec![7u8; 100 * 1024].into();
    let (status, _) = m
        .call(&TestClient::http1(), Method::POST, "/large", large.clone())
        .await;
    assert_eq!(status, 200);
    assert!(m
        .primary
        .seen()
        .iter()
        .any(|s| s.path == "/large" && s.body == large));
    assert_eq!(m.mirrored("skipped_body").await, 1);
    assert_eq!(m.mirrored("sent").await, 2);
    // The barrier: one more copy arrives after it, and the large body never did.
    let (status, _) = m
        .call(&TestClient::http1(), Method::GET, "/barrier", Bytes::new())
        .await;
    assert_eq!(status, 200);
    let copies = m.shadow_saw(3).await;
    assert!(copies.iter().all(|c| c.path != "/large"), "{copies:#?}");
}

/// At 0% nothing is copied, and the requests stay on the fast path: the plan draws no copy,
/// so the fast path has nothing to hand over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_0_percent_nothing_is_mirrored_and_the_fast_path_keeps_the_requests() {
    let m = mesh("mirror-none", 0, false, None).await;
    let fast_before = m.fast().await;
    let c = TestClient::http1();
    for i in 0..50 {
        let (status, _) = m
            .call(&c, Method::GET, &format!("/n/{i}"), Bytes::new())
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        m.fast().await - fast_before,
        50.0,
        "every request on the fast path"
    );
    assert_eq!(m.mirrored("sent").await, 0);
    assert_eq!(m.primary.seen().len(), 50);
    // The barrier route copies everything: once its copy is in, none of the others came.
    let (status, _) = m.call(&c, Method::GET, "/barrier", Bytes::new()).await;
    assert_eq!(status, 200);
    let copies = m.shadow_saw(1).await;
    assert_eq!(copies[0].path, "/barrier");
    assert_eq!(m.mirrored("sent").await, 1);
}

/// At 50%, of 400 requests the shadow gets a binomial share: mean 200, standard deviation
/// 10, so [150, 250] (±5 standard deviations) fails by chance about once in 1.7 million runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_50_percent_the_share_is_within_a_binomial_bound() {
    const N: usize = 400;
    let m = mesh("mirror-half", 50, false, None).await;
    let c = TestClient::http1();
    let started = Instant::now();
    for i in 0..N {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "400 requests in 60 s"
        );
        let (status, _) = m
            .call(&c, Method::GET, &format!("/h/{i}"), Bytes::new())
            .await;
        assert_eq!(status, 200);
    }
    // Every copy is counted as sent before its request's answer leaves the sidecar.
    let sent = m.mirrored("sent").await as usize;
    let copies = m.shadow_saw(sent).await;
    assert!(
        (150..=250).contains(&copies.len()),
        "{} of {N} requests mirrored at 50%",
        copies.len()
    );
    assert_eq!(m.primary.seen().len(), N);
    eventually(
        Duration::from_secs(5),
        "every copy counted as answered",
        || async { m.mirrored("succeeded").await as usize == sent },
    )
    .await;
}

/// Sends `n` GETs to `primary` (paths `/<tag>/<i>`) and checks that each is answered 200 by
/// the primary, and fast: the median under 100 ms, the slowest under 1 s (a request that waited
/// for its copy would take the route's 30 s timeout, or fail).
async fn primary_answers_fast(m: &Mesh, tag: &str, n: usize) {
    let c = TestClient::http1();
    let mut took = Vec::new();
    for i in 0..n {
        let (status, t) = m
            .call(&c, Method::GET, &format!("/{tag}/{i}"), Bytes::new())
            .await;
        assert_eq!(status, 200, "request {i}");
        took.push(t);
    }
    took.sort_unstable();
    let (median, max) = (took[n / 2], took[n - 1]);
    eprintln!("{tag}: {n} answers, median {median:?}, slowest {max:?}");
    assert!(median < Duration::from_millis(100), "median {median:?}");
    assert!(max < Duration::from_secs(1), "slowest {max:?}");
    assert_eq!(m.primary.seen().len(), n);
}

/// A shadow that takes every copy and never answers: the primary's 100 answers are all 200 and
/// fast (the copies are held for the route's 30 s timeout), the shadow never holds more than
/// the cap of 64 copies, and the copies beyond it are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shadow_neither_slows_nor_fails_the_primary() {
    const N: usize = 100;
    let m = mesh("mirror-stall", 100, false, None).await;
    m.shadow.stall();
    primary_answers_fast(&m, "s", N).await;
    eventually(
        Duration::from_secs(10),
        "the cap of copies held at the shadow",
        || async { m.shadow.arrived() >= CAP },
    )
    .await;
    assert_eq!(m.mirrored("sent").await, CAP as u64);
    assert_eq!(m.mirrored("dropped_busy").await, (N - CAP) as u64);
    assert_eq!(
        m.shadow.arrived(),
        CAP,
        "no copy beyond the cap reached the shadow"
    );
    assert_eq!(m.shadow.peak_held(), CAP);
}

/// A shadow service whose endpoint refuses connections: the primary's answers are all 200 and
/// fast, and every copy is counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_is_down_neither_slows_nor_fails_the_primary() {
    const N: usize = 50;
    // A loopback port that was just free: nobody listens there.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let m = mesh("mirror-down", 100, false, Some(down)).await;
    primary_answers_fast(&m, "d", N).await;
    eventually(
        Duration::from_secs(10),
        "every copy counted as failed",
        || async { m.mirrored("failed").await == N as u64 },
    )
    .await;
    assert_eq!(m.mirrored("sent").await, N as u64);
    assert_eq!(m.mirrored("succeeded").await, 0);
}
