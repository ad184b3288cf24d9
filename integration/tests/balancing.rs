//! Load balancing against real binaries: ring hash keeps a key on one endpoint, locality keeps
//! traffic in the caller's zone and fails over, and an endpoint that starts failing is ejected
//! (visible in `/endpoints` and the metrics), avoided, and re-admitted once it recovers.
//!
//! One client sidecar calls service `echo`, whose endpoints are in-process instances
//! (`fleet::Instance`) registered through the API as plain endpoints, so the test controls each
//! one: make it answer 503, stop it, start it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use ferrule_integration::fleet::Instance;
use ferrule_integration::procs::{ControlPlane, Sidecar};
use ferrule_integration::{eventually, TempDir};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET /` to `echo` through the sidecar, with extra headers: (status, which instance answered).
async fn call(c: &HttpClient, sidecar: &Sidecar, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = Request::builder()
        .uri(format!("http://{}/", sidecar.outbound))
        .header("host", "echo");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).expect("valid request");
    let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .expect("a response within 5 s")
        .expect("a response");
    let status = resp.status().as_u16();
    let app = resp
        .headers()
        .get("x-app")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let _ = resp.into_body().collect().await;
    (status, app)
}

/// Starts the instances and a control plane that knows `echo` (with `policy` as its
/// `trafficPolicy`) and the instances as its endpoints (each with its zone), and a client
/// sidecar started with `extra` flags, once it sees every endpoint.
async fn setup(
    tag: &str,
    policy: &str,
    zones: &[(&str, Option<&str>)],
    extra: &[&str],
) -> (TempDir, ControlPlane, Vec<Instance>, Sidecar) {
    let dir = TempDir::new(tag);
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    let mut insts = Vec::new();
    let mut yaml = format!(
        "kind: Service\nname: echo\nprotocol: http\ntrafficPolicy: {policy}\n---\nkind: Service\nname: client\nprotocol: http\n"
    );
    for (name, zone) in zones {
        let inst = Instance::start(name).await;
        yaml += &format!(
            "---\nkind: Endpoint\nname: {name}\nservice: echo\naddress: {}\n",
            inst.addr
        );
        if let Some(z) = zone {
            yaml += &format!("zone: {z}\n");
        }
        insts.push(inst);
    }
    cp.apply(&yaml);
    let sidecar = Sidecar::for_service(&cp, &dir, "client", "127.0.0.1:9".parse().unwrap(), extra);
    sidecar.wait_endpoints("echo", zones.len()).await;
    (dir, cp, insts, sidecar)
}

/// The sidecar's `/endpoints` entry for endpoint `name` of `echo`'s whole-service target, and
/// that destination's entry.
async fn endpoint_state(sidecar: &Sidecar, name: &str) -> (serde_json::Value, serde_json::Value) {
    let (status, _, body) =
        ferrule_integration::client::get(&format!("http://{}/endpoints", sidecar.admin), None)
            .await;
    assert_eq!(status, 200, "admin /endpoints");
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("/endpoints is JSON");
    let dest = doc["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["service"] == "echo" && d["subset"] == serde_json::json!({}))
        .expect("echo in /endpoints")
        .clone();
    let ep = dest["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} in /endpoints"))
        .clone();
    (ep, dest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
    let (_dir, _cp, insts, sidecar) = setup(
        "ringhash",
        "{loadBalancer: ring_hash, hashKey: {header: x-user}}",
        &[("echo-1", None), ("echo-2", None), ("echo-3", None)],
        &[],
    )
    .await;
    let c = client();
    // 30 keys, each sent 5 times: every time to the same instance. Key hashes and ring
    // positions are fixed functions of the key and endpoint names, so this is deterministic.
    let mut home: HashMap<String, String> = HashMap::new();
    for k in 0..30 {
        let key = format!("user-{k}");
        for _ in 0..5 {
            let (status, app) = call(&c, &sidecar, &[("x-user", &key)]).await;
            assert_eq!(status, 200);
            let first = home.entry(key.clone()).or_insert_with(|| app.clone());
            assert_eq!(*first, app, "key {key} moved");
        }
    }
    // Different keys land on different endpoints: all three have some.
    for inst in &insts {
        let n = home.values().filter(|a| **a == *inst.name).count();
        assert!(n > 0, "{} got none of 30 keys: {home:?}", inst.name);
    }
    // A request without the key is still served (by any endpoint).
    assert_eq!(call(&c, &sidecar, &[]).await.0, 200);
    let (_, dest) = endpoint_state(&sidecar, "echo-1").await;
    assert_eq!(dest["loadBalancer"], "ring_hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_prefers_the_local_zone_and_fails_over() {
    let (_dir, _cp, insts, sidecar) = setup(
        "locality",
        // Round robin, so that both local endpoints are tried in turn: peak-EWMA under one
        // request at a time sends everything to whichever answered fastest first, and would
        // not notice the other one die.
        "{loadBalancer: round_robin, outlierDetection: {baseEjectionTime: 300ms}}",
        &[
            ("a-1", Some("zone-a")),
            ("a-2", Some("zone-a")),
            ("b-1", Some("zone-b")),
        ],
        &["--zone", "zone-a"],
    )
    .await;
    let c = client();
    let served = |insts: &[Instance]| insts.iter().map(Instance::served).collect::<Vec<_>>();

    // Both local endpoints healthy: nothing leaves the zone.
    for _ in 0..60 {
        let (status, app) = call(&c, &sidecar, &[]).await;
        assert_eq!(status, 200);
        assert!(app.starts_with("a-"), "{app} answered from another zone");
    }
    assert_eq!(insts[2].served(), 0);
    let (_, dest) = endpoint_state(&sidecar, "a-1").await;
    assert_eq!(dest["endpoints"][0]["zone"], "zone-a");

    // The sidecar's own zone reaches the control plane on the endpoint it registers.
    sidecar.wait_endpoints("client", 1).await;
    let (status, _, body) =
        ferrule_integration::client::get(&format!("http://{}/endpoints", sidecar.admin), None)
            .await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("/endpoints is JSON");
    assert_eq!(doc["zone"], "zone-a");
    let own = doc["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["service"] == "client")
        .expect("client in /endpoints");
    assert_eq!(own["endpoints"][0]["zone"], "zone-a", "{own}");
    assert_eq!(own["endpoints"][0]["sidecar"], true);

    // One of the two local endpoints dies: 50% of the zone is below failoverBelow (70%), so
    // requests spread over every zone. Every request still succeeds (a refused connect moves
    // to another endpoint).
    insts[0].stop().await;
    let before = served(&insts);
    for _ in 0..60 {
        assert_eq!(call(&c, &sidecar, &[]).await.0, 200);
    }
    let after = served(&insts);
    assert!(
        after[2] > before[2],
        "no request failed over to zone-b: {before:?} -> {after:?}"
    );

    // It comes back: once it is re-admitted (probe after the 300 ms ejection, or the connect
    // failure forgotten), traffic stays in the zone again.
    insts[0].restart().await;
    eventually(
        Duration::from_secs(10),
        "traffic back in zone-a only",
        || {
            let (c, sidecar, insts) = (&c, &sidecar, &insts);
            async move {
                let remote = insts[2].served();
                for _ in 0..40 {
                    if call(c, sidecar, &[]).await.0 != 200 {
                        return false;
                    }
                }
                insts[2].served() == remote
            }
        },
    )
    .await;
    assert!(insts[0].served() > 0);
}

/// One outcome of the load loop.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    app: String,
}

/// A load loop: a request every 5 ms (200 a second) for at most 20 s or 4,000 requests, until
/// `stop` is set; each outcome is logged.
struct Load {
    log: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Closed loop: one request at a time, so none is in flight when a failure starts.
    fn start(sidecar: Arc<Sidecar>) -> Load {
        Load::run(sidecar, false)
    }

    /// Open loop: each request is sent on its tick whether or not the earlier ones have been
    /// answered, as real callers do, so a kill finds some of them in flight.
    fn start_open(sidecar: Arc<Sidecar>) -> Load {
        Load::run(sidecar, true)
    }

    fn run(sidecar: Arc<Sidecar>, open: bool) -> Load {
        let log: Arc<Mutex<Vec<Outcome>>> = Default::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                tick.set_missed_tick_behavior(if open {
                    tokio::time::MissedTickBehavior::Burst
                } else {
                    tokio::time::MissedTickBehavior::Delay
                });
                let end = Instant::now() + Duration::from_secs(20);
                let mut sent = tokio::task::JoinSet::new();
                for _ in 0..4000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) || Instant::now() > end {
                        break;
                    }
                    tick.tick().await;
                    let (c, sidecar, log) = (c.clone(), sidecar.clone(), log.clone());
                    let one = async move {
                        let (status, app) = call(&c, &sidecar, &[]).await;
                        log.lock().unwrap().push(Outcome { status, app });
                    };
                    if open {
                        sent.spawn(one);
                        // Reap what has finished so the set stays small.
                        while sent.try_join_next().is_some() {}
                    } else {
                        one.await;
                    }
                }
                while sent.join_next().await.is_some() {}
            })
        };
        Load { log, stop, task }
    }

    /// Stops the loop and returns every outcome.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("load loop");
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_avoided_and_readmitted() {
    let (_dir, _cp, insts, sidecar) = setup(
        "ejection",
        // Random, so that echo-3 keeps its third of the traffic until it is ejected: with
        // peak-EWMA a failing endpoint's raised estimate steers requests away from it before
        // ejection does, and how fast depends on loopback latency noise.
        "{loadBalancer: random, outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 2s}}",
        &[("echo-1", None), ("echo-2", None), ("echo-3", None)],
        &[],
    )
    .await;
    let sidecar = Arc::new(sidecar);
    let insts = Arc::new(insts);
    let load = Load::start(sidecar.clone());
    let log = load.log.clone();
    eventually(Duration::from_secs(5), "every instance serving", || {
        let insts = insts.clone();
        async move { insts.iter().all(|i| i.served() > 5) }
    })
    .await;
    let (ep, dest) = endpoint_state(&sidecar, "echo-3").await;
    assert_eq!(ep["state"], "healthy");
    assert_eq!(dest["loadBalancer"], "random");

    // echo-3 starts answering 503: ejected within a second.
    let failing_since = Instant::now();
    insts[2].fail_with(Some(503));
    eventually(Duration::from_secs(1), "echo-3 ejected", || {
        let sidecar = sidecar.clone();
        async move { endpoint_state(&sidecar, "echo-3").await.0["state"] == "ejected" }
    })
    .await;
    let took = failing_since.elapsed();
    assert!(took < Duration::from_secs(1), "ejected after {took:?}");
    let (ep, dest) = endpoint_state(&sidecar, "echo-3").await;
    assert_eq!(ep["reason"], "consecutive-failures");
    assert_eq!(ep["ejections"], 1);
    assert!(ep["ejectedUntil"].is_string(), "{ep}");
    assert_eq!(dest["panic"], false);
    assert_eq!(
        sidecar
            .metric(
                "ferrule_outlier_ejections_total",
                &[("service", "echo"), ("reason", "consecutive-failures")]
            )
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("ferrule_endpoints_ejected", &[("service", "echo")])
            .await,
        1.0
    );

    // While it is out (2 s), the next 100 requests all go to the other two and succeed.
    let mark = log.lock().unwrap().len();
    let served = insts[2].served();
    eventually(
        Duration::from_secs(2),
        "100 requests after the ejection",
        || {
            let log = log.clone();
            async move { log.lock().unwrap().len() >= mark + 100 }
        },
    )
    .await;
    {
        let log = log.lock().unwrap();
        let window = &log[mark..mark + 100];
        assert!(
            window.iter().all(|o| o.status == 200 && o.app != "echo-3"),
            "{window:?}"
        );
    }
    assert_eq!(
        insts[2].served(),
        served,
        "an ejected endpoint got requests"
    );
    // One ejected of three is within maxEjectedPercent (50%): no panic mode.
    assert_eq!(
        sidecar
            .metric("ferrule_lb_panic_total", &[("service", "echo")])
            .await,
        0.0
    );

    // It recovers: after its ejection time one probe goes there, succeeds, and it is back.
    insts[2].fail_with(None);
    eventually(Duration::from_secs(6), "echo-3 re-admitted", || {
        let sidecar = sidecar.clone();
        async move { endpoint_state(&sidecar, "echo-3").await.0["state"] == "healthy" }
    })
    .await;
    let served = insts[2].served();
    eventually(Duration::from_secs(3), "echo-3 serving again", || {
        let insts = insts.clone();
        async move { insts[2].served() > served + 10 }
    })
    .await;
    assert_eq!(
        sidecar
            .metric("ferrule_endpoints_ejected", &[("service", "echo")])
            .await,
        0.0
    );
    let log = load.finish().await;
    // The client saw no failure: each of the five 503s that ejected echo-3 was retried on
    // another endpoint (requests go one at a time, so none was in flight at the ejection; its
    // probe came after it had recovered). The retries are what the loop counted.
    let failed: Vec<&Outcome> = log.iter().filter(|o| o.status != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        sidecar
            .metric(
                "ferrule_retries_total",
                &[("service", "echo"), ("condition", "5xx")]
            )
            .await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_ejected_within_a_second_and_readmitted_when_back() {
    let (_dir, _cp, insts, sidecar) = setup(
        "kill",
        // Random, as above: echo-3 keeps its third of the picks until it is ejected.
        "{loadBalancer: random, outlierDetection: {baseEjectionTime: 1s}}",
        &[("echo-1", None), ("echo-2", None), ("echo-3", None)],
        &[],
    )
    .await;
    let sidecar = Arc::new(sidecar);
    let insts = Arc::new(insts);
    let load = Load::start_open(sidecar.clone());
    eventually(Duration::from_secs(5), "every instance serving", || {
        let insts = insts.clone();
        async move { insts.iter().all(|i| i.served() > 5) }
    })
    .await;

    // Killed: connects are refused. Each refused connect counts against it (and the request
    // moves to another endpoint); five in a row eject it.
    let killed_at = Instant::now();
    insts[2].stop().await;
    eventually(Duration::from_secs(1), "echo-3 ejected", || {
        let sidecar = sidecar.clone();
        async move { endpoint_state(&sidecar, "echo-3").await.0["state"] == "ejected" }
    })
    .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(1), "ejected after {took:?}");
    assert_eq!(
        endpoint_state(&sidecar, "echo-3").await.0["reason"],
        "consecutive-failures"
    );

    // Back on the same port: the probe after its 1 s ejection succeeds and it takes traffic.
    insts[2].restart().await;
    eventually(Duration::from_secs(5), "echo-3 re-admitted", || {
        let sidecar = sidecar.clone();
        async move { endpoint_state(&sidecar, "echo-3").await.0["state"] == "healthy" }
    })
    .await;
    let served = insts[2].served();
    eventually(Duration::from_secs(3), "echo-3 serving again", || {
        let insts = insts.clone();
        async move { insts[2].served() > served + 10 }
    })
    .await;
    // Enough requests that 99.9% means at most one failure (5 s of load at 200 a second).
    let log = load.log.clone();
    eventually(Duration::from_secs(10), "1,000 requests answered", || {
        let log = log.clone();
        async move { log.lock().unwrap().len() >= 1000 }
    })
    .await;
    let log = load.finish().await;
    // A refused connect never reaches the client: the request moves to another endpoint. A
    // request in flight on echo-3 when it was killed sees its connection reset, and a GET is
    // retried on another endpoint. The issue asks for at least 99.9% success.
    let failed: Vec<&Outcome> = log.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.len() * 1000 <= log.len(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        log.len()
    );
}
