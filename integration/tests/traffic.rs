//! Load balancing, traffic splits and hot reload under load, measured on real traffic through
//! a client sidecar to three server sidecars.

use std::collections::HashMap;
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
    _apps: Vec<EchoApp>,
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
        _apps: apps,
        _servers: servers,
        client,
    }
}

/// Sends `n` requests one after another and counts answers by app.
async fn count_by_app(client: &Sidecar, n: usize) -> HashMap<String, usize> {
    let c = TestClient::http1();
    let url = format!("http://{}/", client.outbound);
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, headers, body) = c.get(&url, Some("echo")).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let app = headers["x-app"].to_str().unwrap().to_owned();
        *counts.entry(app).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_splits_follow_weights() {
    let m = mesh(
        "kind: Service\nname: echo\nprotocol: http\ntrafficPolicy: { loadBalancer: round_robin }\n",
    )
    .await;
    let counts = count_by_app(&m.client, 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (app, n) in &counts {
        let share = *n as f64 / 300.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.10,
            "{app} got {:.1}% of 300 requests: {counts:?}",
            share * 100.0
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
    let counts = count_by_app(&m.client, 1000).await;
    let v2: usize = counts
        .iter()
        .filter(|(k, _)| k.ends_with("v2"))
        .map(|(_, n)| n)
        .sum();
    let share = v2 as f64 / 1000.0;
    assert!(
        (share - 0.10).abs() <= 0.04,
        "v2 got {:.1}% of 1000 requests: {counts:?}",
        share * 100.0
    );
}

fn route_to(version: &str) -> String {
    format!(
        "kind: Service\nname: echo\nprotocol: http\nroutes:\n  - match: {{ pathPrefix: / }}\n    backends: [ {{ subset: {{ version: {version} }}, weight: 100 }} ]\n"
    )
}

#[derive(Debug, Clone)]
struct Sample {
    sent: Instant,
    status: u16,
    version: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pushes_under_load_lose_nothing_and_take_effect_quickly() {
    let m = mesh(&route_to("v1")).await;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(30);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Load: 8 workers, one request every 25 ms each (about 300 rps), bounded in time.
    let mut workers = Vec::new();
    for _ in 0..8 {
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
                    sent,
                    status,
                    version,
                });
            }
        }));
    }

    // 50 pushes flipping the route between v1 and v2, 300 ms apart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pushes: Vec<(Instant, &str)> = Vec::new();
    for i in 0..50 {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        let policy = route_to(version);
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
        pushes.push((Instant::now(), version));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let end = Instant::now();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let mut samples = samples.lock().unwrap().clone();
    samples.sort_by_key(|s| s.sent);

    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    let span = end.duration_since(pushes[0].0 - Duration::from_millis(500));
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
    // the push.
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
    let started = Instant::now();
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { TestClient::http1().get(&url, Some("echo")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...then the route flips to v2 while they are still waiting for their responses.
    let version = m.client.version().await;
    m.cp.apply(&route_to("v2"));
    ferrule_integration::eventually(Duration::from_secs(5), "flip applied", || async {
        m.client.version().await > version
    })
    .await;
    // Otherwise the requests might have finished before the flip and prove nothing.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the flip took {:?}; the slow requests were no longer in flight",
        started.elapsed()
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
