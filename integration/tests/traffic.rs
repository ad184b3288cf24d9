//! Load balancing, traffic splits and hot reload under load, measured on real traffic through
//! a client sidecar to three server sidecars.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrule_integration::apps::{echo_app, EchoApp};
use ferrule_integration::client::TestClient;
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::TempDir;

struct Mesh {
    _dir: TempDir,
    cp: ControlPlane,
    /// `echo-0-v1`, `echo-1-v1`, `echo-2-v2`, in that order.
    apps: Vec<EchoApp>,
    _servers: Vec<Sidecar>,
    client: Sidecar,
}

/// Three instances of `echo` (labels version=v1, v1, v2), each behind its own sidecar, and a
/// client sidecar that knows all three.
async fn mesh(policy: &str) -> Mesh {
    let dir = TempDir::new("traffic");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(policy);
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    for (i, version) in ["v1", "v1", "v2"].iter().enumerate() {
        let app = echo_app(&format!("echo-{i}-{version}")).await;
        servers.push(Sidecar::start(SidecarOpts {
            control_plane: &cp.url,
            service: "echo",
            app: app.addr,
            data_dir: &dir.sub(&format!("echo-{i}")),
            labels: &format!("version={version}"),
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
    client.wait_endpoints("echo", 3).await;
    Mesh {
        _dir: dir,
        cp,
        apps,
        _servers: servers,
        client,
    }
}

/// The control plane's store revision: the version of the first snapshot that includes every
/// write made so far.
async fn revision(cp: &ControlPlane) -> u64 {
    let (status, _, body) =
        ferrule_integration::client::get(&format!("{}/v1/version", cp.url), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("/v1/version is JSON");
    v["revision"].as_u64().expect("/v1/version has a revision")
}

/// Sends `n` requests one after another and returns the app that answered each, in order.
async fn apps_in_order(client: &Sidecar, n: usize) -> Vec<String> {
    let c = TestClient::http1();
    let url = format!("http://{}/", client.outbound);
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, headers, body) = c.get(&url, Some("echo")).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        apps.push(headers["x-app"].to_str().unwrap().to_owned());
    }
    apps
}

fn count(apps: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for app in apps {
        *counts.entry(app.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_splits_follow_weights() {
    let m = mesh(
        "kind: Service\nname: echo\nprotocol: http\ntrafficPolicy: { loadBalancer: round_robin }\n",
    )
    .await;
    // Round robin over three endpoints of equal weight, requests one after another: each
    // request goes to the endpoint after the previous request's, so the answers repeat one
    // order of the three apps and each app gets exactly 100 of 300. (Both are needed: a
    // balancer that skips an endpoint every 7th pick still gives 100/100/100, because 7 and 3
    // are coprime and the skips fall evenly on the three.)
    let apps = apps_in_order(&m.client, 300).await;
    let counts = count(&apps);
    let expected: HashMap<&str, usize> =
        [("echo-0-v1", 100), ("echo-1-v1", 100), ("echo-2-v2", 100)]
            .into_iter()
            .collect();
    assert_eq!(counts, expected, "300 requests, round robin over 3");
    for (k, app) in apps.iter().enumerate() {
        assert_eq!(
            app,
            &apps[k % 3],
            "request {k} broke the round-robin order {:?}; answers {:?}",
            &apps[..3],
            &apps[k.saturating_sub(6)..(k + 3).min(apps.len())]
        );
    }

    // 90/10 between the v1 and v2 subsets.
    m.cp.apply(
        r#"
kind: Service
name: echo
protocol: http
trafficPolicy: { loadBalancer: round_robin }
routes:
  - match: { pathPrefix: / }
    backends: [ { subset: { version: v1 }, weight: 90 }, { subset: { version: v2 }, weight: 10 } ]
"#,
    );
    let url = format!("http://{}/config", m.client.admin);
    ferrule_integration::eventually(Duration::from_secs(10), "split applied", || {
        let url = url.clone();
        async move {
            let (_, _, body) = ferrule_integration::client::get(&url, None).await;
            String::from_utf8_lossy(&body).contains("\"weight\": 90")
        }
    })
    .await;
    let apps = apps_in_order(&m.client, 1000).await;
    let counts = count(&apps);
    // Within the v1 subset, round robin again: its answers alternate between the two v1 apps.
    let v1: Vec<&String> = apps.iter().filter(|a| a.ends_with("v1")).collect();
    assert!(v1.len() >= 2, "{counts:?}");
    assert_ne!(v1[0], v1[1], "{counts:?}");
    for k in 2..v1.len() {
        assert_eq!(
            v1[k],
            v1[k - 2],
            "v1 answer {k} broke the alternation: {counts:?}"
        );
    }
    // The subset is a weighted random draw per request (0..100 from a thread-local CSPRNG,
    // v2 when at least 90), so v2's count X is Binomial(1000, 0.1): mean 100, sd 9.5. The
    // bound 40..=170 fails by chance with P(X < 40) + P(X > 170) = 3.8e-13 + 4.0e-12 =
    // 4.3e-12 (exact binomial sums), about once in 2e11 runs, never in practice; it still
    // catches weights ignored (about 500 or 333) or swapped (about 900).
    let v2 = apps.len() - v1.len();
    assert!(
        (40..=170).contains(&v2),
        "v2 got {v2} of 1000 requests (expected about 100): {counts:?}"
    );
}

fn route_to(version: &str) -> String {
    format!(
        "kind: Service\nname: echo\nprotocol: http\nroutes:\n  - match: {{ pathPrefix: / }}\n    backends: [ {{ subset: {{ version: {version} }}, weight: 100 }} ]\n"
    )
}

#[derive(Debug, Clone)]
struct Sample {
    worker: usize,
    sent: Instant,
    status: u16,
    version: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pushes_under_load_lose_nothing_and_take_effect_quickly() {
    let m = mesh(&route_to("v1")).await;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    // A bound on the load's length whatever happens to the test: the pushes take about 15 s,
    // and at most 50 x (1 s + a request) before a slow one fails the test below.
    let stop_at = Instant::now() + Duration::from_secs(90);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Load: 8 workers, one request every 25 ms each (about 300 rps), bounded in time.
    let mut workers = Vec::new();
    for worker in 0..8 {
        let url = format!("http://{}/", m.client.outbound);
        let samples = samples.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let c = TestClient::http1();
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < stop_at {
                tick.tick().await;
                let sent = Instant::now();
                let (status, version) = match c.get(&url, Some("echo")).await {
                    Ok((status, headers, _)) => (
                        status,
                        headers
                            .get("x-app")
                            .and_then(|v| v.to_str().ok())
                            .map(|a| a.rsplit('-').next().unwrap_or("").to_owned())
                            .unwrap_or_default(),
                    ),
                    Err(e) => (0, e),
                };
                samples.lock().unwrap().push(Sample {
                    worker,
                    sent,
                    status,
                    version,
                });
            }
        }));
    }

    // The load is running: every worker has had an answer.
    ferrule_integration::eventually(Duration::from_secs(10), "every worker answered", || async {
        let samples = samples.lock().unwrap();
        let answered: HashSet<usize> = samples
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.worker)
            .collect();
        answered.len() == 8
    })
    .await;

    // 50 pushes flipping the route between v1 and v2. Each is waited for until it has taken
    // effect (below); on top of that they are paced, at most one every 300 ms, so that the 50
    // pushes meet at least 15 s of load. The pacing sets the push rate only: nothing relies
    // on a push having taken effect by the next tick.
    let mut pace = tokio::time::interval(Duration::from_millis(300));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pushes: Vec<(Instant, &str)> = Vec::new();
    for i in 0..50 {
        pace.tick().await;
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        let policy = route_to(version);
        // Taken before ferrulectl starts: a request sent earlier cannot see this push, so it
        // belongs to the previous push's window.
        let at = Instant::now();
        let cp_url = m.cp.url.clone();
        let dir = m.cp.data_dir.clone();
        // ferrulectl blocks; keep it off the runtime's workers.
        let out = tokio::task::spawn_blocking(move || {
            let file = dir.with_extension(format!("push{i}.yaml"));
            std::fs::write(&file, policy).unwrap();
            ferrule_integration::procs::ferrulectl(
                &cp_url,
                &["apply", "-f", file.to_str().unwrap()],
            )
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pushes.push((at, version));
        // The push has taken effect: the client sidecar, which routes, runs a snapshot that
        // includes it...
        let pushed = revision(&m.cp).await;
        let what = format!("push {i} applied by the client sidecar");
        ferrule_integration::eventually(Duration::from_secs(5), &what, || async {
            m.client.version().await >= pushed
        })
        .await;
        let applied = Instant::now();
        // Fail now rather than push on: the check after the load would fail anyway, since
        // requests keep going to the old subset until the client has the push.
        assert!(
            applied.duration_since(at) < Duration::from_secs(1),
            "push {i} took {:?} to reach the client sidecar",
            applied.duration_since(at)
        );
        // ...and traffic has run on it: a request sent since then has been answered (so the
        // push's window holds requests that could only take the new route).
        let what = format!("a request sent after push {i} was applied");
        ferrule_integration::eventually(Duration::from_secs(5), &what, || async {
            samples.lock().unwrap().iter().any(|s| s.sent >= applied)
        })
        .await;
    }
    let end = Instant::now();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let mut samples = samples.lock().unwrap().clone();
    samples.sort_by_key(|s| s.sent);

    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    let span = end.duration_since(samples[0].sent);
    let rate = samples.len() as f64 / span.as_secs_f64();
    assert!(span >= Duration::from_secs(10), "load lasted only {span:?}");
    assert!(rate >= 200.0, "only {rate:.0} requests/s");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(3)]
    );

    // After each push, traffic must settle on the new subset within 1 s (and before the next
    // push): the last request that still went to the old subset was sent less than 1 s after
    // the push started.
    let mut worst = Duration::ZERO;
    for (i, (at, version)) in pushes.iter().enumerate() {
        let next = pushes.get(i + 1).map(|p| p.0).unwrap_or(end);
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.sent >= *at && s.sent < next)
            .collect();
        assert!(!window.is_empty(), "no traffic after push {i}");
        let last_old = window
            .iter()
            .filter(|s| s.version != *version)
            .map(|s| s.sent.duration_since(*at))
            .max()
            .unwrap_or(Duration::ZERO);
        assert!(
            last_old < Duration::from_secs(1) && window.last().unwrap().version == *version,
            "push {i} to {version}: old subset still served {last_old:?} after the push"
        );
        worst = worst.max(last_old);
    }
    eprintln!(
        "{} requests at {rate:.0}/s over {span:?}, 0 failed; slowest switch {worst:?}",
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_on_the_policy_they_started_with() {
    let m = mesh(&route_to("v1")).await;
    // 20 slow requests start on v1...
    let url = format!("http://{}/slow/1000", m.client.outbound);
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { TestClient::http1().get(&url, Some("echo")).await })
        })
        .collect();
    // They have been routed: all 20 have reached the v1 apps, which answer 1 s later.
    let (v1a, v1b) = (&m.apps[0], &m.apps[1]);
    ferrule_integration::eventually(Duration::from_secs(5), "20 requests at the v1 apps", || {
        std::future::ready(v1a.received() + v1b.received() == 20)
    })
    .await;
    // ...then the route flips to v2 while they are still waiting for their responses.
    let version = m.client.version().await;
    m.cp.apply(&route_to("v2"));
    ferrule_integration::eventually(Duration::from_secs(5), "flip applied", || async {
        m.client.version().await > version
    })
    .await;
    // Otherwise the requests might have finished before the flip and prove nothing.
    let finished = in_flight.iter().filter(|r| r.is_finished()).count();
    assert_eq!(
        finished, 0,
        "{finished} of the slow requests finished before the flip was applied"
    );
    for r in in_flight {
        let (status, headers, _) = r.await.unwrap().expect("in-flight request failed");
        assert_eq!(status, 200);
        assert!(headers["x-app"].to_str().unwrap().ends_with("v1"));
    }
    let (status, headers, _) = TestClient::http1()
        .get(&format!("http://{}/", m.client.outbound), Some("echo"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(headers["x-app"].to_str().unwrap().ends_with("v2"));
}
