//! Observability end to end (issue 14), on the real binaries: `/metrics` read by a real
//! Prometheus parser (Python `prometheus_client`, OpenMetrics) with counts that match the
//! requests sent by status and reason; access-log lines as JSON with the caller's trace id, on
//! both sidecars of a hop and only for services whose policy asks; the log level changed
//! through `POST /log-level`; the failures `/debug/requests` keeps; and the Grafana dashboard,
//! every metric of whose queries must exist in a live sidecar's `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ferrule_integration::apps::{echo_app, EchoApp};
use ferrule_integration::client::{curl, TestClient};
use ferrule_integration::procs::{ControlPlane, Sidecar};
use ferrule_integration::{eventually, TempDir};
use http::Method;

/// `echo` logs every request and has one route, `api` (`/api...`); `quiet` (the same app,
/// reached without a sidecar) logs nothing; `empty` has no endpoints; `dead`'s one endpoint
/// refuses connections.
const POLICY: &str = "\
kind: Service
name: echo
protocol: http
accessLog: {}
routes:
  - name: api
    match: {pathPrefix: /api}
---
kind: Service
name: quiet
protocol: http
---
kind: Service
name: empty
protocol: http
---
kind: Service
name: dead
protocol: http
---
kind: Endpoint
name: dead-1
service: dead
address: 127.0.0.1:1
---
kind: Service
name: client
protocol: http
";

struct Mesh {
    _dir: TempDir,
    _cp: ControlPlane,
    app: EchoApp,
    echo: Sidecar,
    client: Sidecar,
    /// The access logs (`--access-log FILE`) of the two sidecars.
    echo_log: PathBuf,
    client_log: PathBuf,
}

/// A client sidecar and an `echo` sidecar in front of an echo app, each writing its access
/// log to a file.
async fn mesh(tag: &str) -> Mesh {
    let dir = TempDir::new(tag);
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    let app = echo_app("echo-app").await;
    cp.apply(&format!(
        "{POLICY}---\nkind: Endpoint\nname: quiet-1\nservice: quiet\naddress: {}\n",
        app.addr
    ));
    let echo_log = dir.path().join("echo-access.log");
    let client_log = dir.path().join("client-access.log");
    let start = |service: &str, app: SocketAddr, log: &PathBuf| {
        let flags = ["--access-log", log.to_str().expect("utf-8 path")];
        Sidecar::for_service(&cp, &dir, service, app, &flags)
    };
    let echo = start("echo", app.addr, &echo_log);
    let client = start("client", "127.0.0.1:9".parse().unwrap(), &client_log);
    client.wait_ready().await;
    echo.wait_ready().await;
    client.wait_endpoints("echo", 1).await;
    client.wait_endpoints("quiet", 1).await;
    Mesh {
        _dir: dir,
        _cp: cp,
        app,
        echo,
        client,
        echo_log,
        client_log,
    }
}

impl Mesh {
    /// `GET path` through the client sidecar with `host`; the status.
    async fn get(&self, c: &TestClient, host: &str, path: &str) -> u16 {
        let url = format!("http://{}{path}", self.client.outbound);
        c.get(&url, Some(host)).await.expect("a response").0
    }

    /// The mix every test here sends: 7 × 200 from `echo`, 3 × `no-endpoints` (`empty`),
    /// 2 × `connect-failed` (502, `dead`), 1 × `no-route` (`echo`, outside its one route).
    async fn send_mix(&self) {
        let c = TestClient::http1();
        for i in 0..7 {
            assert_eq!(self.get(&c, "echo", &format!("/api/{i}")).await, 200);
        }
        for _ in 0..3 {
            assert_eq!(self.get(&c, "empty", "/").await, 503);
        }
        for _ in 0..2 {
            assert_eq!(self.get(&c, "dead", "/").await, 502);
        }
        assert_eq!(self.get(&c, "echo", "/elsewhere").await, 404);
    }
}

/// One sample of a metric family, as the Python parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One metric family: its name (without `_total` for counters), type and samples.
#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    samples: Vec<Sample>,
}

/// Parses an OpenMetrics exposition with `prometheus_client`'s strict parser (it raises on any
/// line a Prometheus server would refuse) and returns its families.
const PARSE: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels,
         "value": s.value if math.isfinite(s.value) else str(s.value)}
        for s in f.samples]})
print(json.dumps(out))
"#;

fn parse_metrics(text: &str) -> Vec<Family> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics (is prometheus-client installed? \
         pip install prometheus-client):\n{}\n--- /metrics ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Family {
            name: f["name"].as_str().unwrap().to_owned(),
            kind: f["type"].as_str().unwrap().to_owned(),
            samples: f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap().to_owned(),
                    labels: s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect(),
                    value: s["value"].as_f64().unwrap_or(f64::INFINITY),
                })
                .collect(),
        })
        .collect()
}

async fn families(s: &Sidecar) -> Vec<Family> {
    let url = format!("http://{}/metrics", s.admin);
    let (status, headers, body) = TestClient::http1().get(&url, None).await.unwrap();
    assert_eq!(status, 200);
    assert!(headers[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    parse_metrics(std::str::from_utf8(&body).unwrap())
}

/// The sum of the samples named `name` whose labels include `want`.
fn sum(fams: &[Family], name: &str, want: &[(&str, &str)]) -> f64 {
    fams.iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn debug_requests(s: &Sidecar) -> serde_json::Value {
    let url = format!("http://{}/debug/requests", s.admin);
    let (status, _, body) = TestClient::http1().get(&url, None).await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("/debug/requests is JSON")
}

/// Issue 14, tests 2 and 3 (second half): the counts a Prometheus parser reads match what was
/// sent, by status and reason, on both sidecars; `/debug/requests` holds exactly the proxy's
/// own failures, with their reason, endpoint and attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_and_the_failures_are_listed() {
    let m = mesh("obs-metrics").await;
    m.send_mix().await;

    let out = families(&m.client).await;
    let responses = |service, status, error| {
        sum(
            &out,
            "ferrule_responses_total",
            &[
                ("direction", "outbound"),
                ("service", service),
                ("status", status),
                ("error", error),
            ],
        )
    };
    assert_eq!(responses("echo", "200", ""), 7.0);
    assert_eq!(responses("empty", "503", "no-endpoints"), 3.0);
    assert_eq!(responses("dead", "502", "connect-failed"), 2.0);
    assert_eq!(responses("echo", "404", "no-route"), 1.0);
    assert_eq!(sum(&out, "ferrule_responses_total", &[]), 13.0);
    let requests = |service| {
        sum(
            &out,
            "ferrule_requests_total",
            &[("direction", "outbound"), ("service", service)],
        )
    };
    assert_eq!(
        (requests("echo"), requests("empty"), requests("dead")),
        (8.0, 3.0, 2.0)
    );
    let echo = [("direction", "outbound"), ("service", "echo")];
    assert_eq!(
        sum(&out, "ferrule_response_latency_seconds_count", &echo),
        8.0
    );
    let inf = [("service", "echo"), ("le", "+Inf")];
    assert_eq!(
        sum(&out, "ferrule_response_latency_seconds_bucket", &inf),
        8.0
    );
    // Only the 7 that passed the plan reached the echo sidecar.
    let inbound = families(&m.echo).await;
    let into_echo = [("direction", "inbound"), ("service", "echo")];
    assert_eq!(sum(&inbound, "ferrule_responses_total", &into_echo), 7.0);
    assert_eq!(
        sum(
            &inbound,
            "ferrule_responses_total",
            &[("service", "echo"), ("status", "200"), ("error", "")]
        ),
        7.0
    );
    assert_eq!(m.app.received(), 7);

    // The ring: the 6 proxy-made answers, newest first, and none of the successes.
    let ring = debug_requests(&m.client).await;
    assert_eq!(ring["recorded"], 6, "{ring:#}");
    let listed = ring["requests"].as_array().unwrap();
    let reasons: Vec<&str> = listed
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "no-route",
            "connect-failed",
            "connect-failed",
            "no-endpoints",
            "no-endpoints",
            "no-endpoints"
        ]
    );
    let dead = &listed[1];
    assert_eq!(dead["service"], "dead");
    assert_eq!(dead["direction"], "outbound");
    assert_eq!(dead["status"], 502);
    assert_eq!(dead["endpoint"], "127.0.0.1:1");
    assert_eq!(dead["attempts"], 1);
    assert!(
        dead["detail"]
            .as_str()
            .unwrap()
            .contains("could not connect to any of 1 endpoint(s) of dead"),
        "{dead:#}"
    );
    let empty = &listed[3];
    assert_eq!(
        (&empty["service"], &empty["attempts"], &empty["endpoint"]),
        (&"empty".into(), &0.into(), &serde_json::Value::Null)
    );
    assert!(empty["detail"].as_str().unwrap().contains("no endpoints"));
    let no_route = &listed[0];
    assert_eq!(
        (&no_route["service"], &no_route["status"]),
        (&"echo".into(), &404.into())
    );
    assert!(no_route["time"].as_str().unwrap().ends_with('Z'));
    assert!(no_route["durationMs"].as_f64().unwrap() >= 0.0);
    // The echo sidecar answered nothing itself.
    assert_eq!(debug_requests(&m.echo).await["recorded"], 0);
}

/// The access lines in `path` once there are `n` (the writer is a thread of its own).
async fn access_lines(path: &PathBuf, n: usize) -> Vec<serde_json::Value> {
    let what = format!("{n} lines in {}", path.display());
    eventually(Duration::from_secs(10), &what, || async {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
            >= n
    })
    .await;
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// Issue 14, test 4: access lines are JSON and carry the trace id of the request's
/// `traceparent`, on both sidecars of the hop; only services whose policy asks are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_are_json_with_the_trace_id_on_both_sides() {
    let m = mesh("obs-access").await;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REFUSED: &str = "0af7651916cd43dd8448eb211c80319c";
    let send = |path: &str, host: &str, trace: Option<&str>| {
        let url = format!("http://{}{path}", m.client.outbound);
        let mut args = vec![
            "-o".to_owned(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        args.extend(["-H".into(), format!("Host: {host}")]);
        if let Some(t) = trace {
            args.extend([
                "-H".into(),
                format!("traceparent: 00-{t}-00f067aa0ba902b7-01"),
            ]);
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, ok) = curl(&refs);
        assert!(ok, "curl failed");
        code
    };
    assert_eq!(send("/api/traced", "echo", Some(TRACE)), "200");
    assert_eq!(send("/api/plain", "echo", None), "200");
    assert_eq!(send("/nowhere", "echo", Some(REFUSED)), "404");
    // No policy, no line: a service that does not ask, and one without endpoints.
    assert_eq!(send("/", "quiet", Some(TRACE)), "200");
    assert_eq!(send("/", "empty", None), "503");

    let out = access_lines(&m.client_log, 3).await;
    assert_eq!(out.len(), 3, "{out:#?}");
    let traced = &out[0];
    assert_eq!(traced["traceId"], TRACE);
    assert_eq!(traced["direction"], "outbound");
    assert_eq!(traced["service"], "echo");
    assert_eq!(traced["route"], "api");
    assert_eq!(traced["status"], 200);
    assert_eq!(traced["reason"], serde_json::Value::Null);
    assert_eq!(traced["attempts"], 1);
    assert_eq!(traced["endpoint"], m.echo.inbound.to_string());
    assert_eq!(traced["client"], serde_json::Value::Null, "no mTLS here");
    assert!(traced["clientAddress"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(traced["requestBytes"], 0);
    assert!(traced["responseBytes"].as_u64().unwrap() > 0);
    assert_eq!(traced["codec"], "fast");
    assert!(traced["durationMs"].as_f64().unwrap() > 0.0);
    assert!(traced["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(out[1]["traceId"], serde_json::Value::Null);
    assert_eq!(out[1]["status"], 200);
    let refused = &out[2];
    assert_eq!(refused["traceId"], REFUSED);
    assert_eq!(
        (&refused["status"], &refused["reason"], &refused["attempts"]),
        (&404.into(), &"no-route".into(), &0.into())
    );
    assert_eq!(refused["endpoint"], serde_json::Value::Null);

    // The callee's sidecar logged the two requests that reached it, by its own service's
    // policy, with the same trace id.
    let inbound = access_lines(&m.echo_log, 2).await;
    assert_eq!(inbound.len(), 2, "{inbound:#?}");
    assert_eq!(inbound[0]["traceId"], TRACE);
    assert_eq!(inbound[0]["direction"], "inbound");
    assert_eq!(inbound[0]["service"], "echo");
    assert_eq!(inbound[0]["endpoint"], m.app.addr.to_string());
    assert_eq!(inbound[0]["status"], 200);
    assert_eq!(inbound[1]["traceId"], serde_json::Value::Null);

    assert_eq!(
        m.client.metric("ferrule_access_log_lines_total", &[]).await,
        3.0
    );
    assert_eq!(
        m.client
            .metric("ferrule_access_log_dropped_total", &[])
            .await,
        0.0
    );
    // Nothing more arrives (the quiet and empty requests were finished before the lines
    // above were read, so their lines would be there already).
    assert_eq!(
        std::fs::read_to_string(&m.client_log)
            .unwrap()
            .lines()
            .count(),
        3
    );
}

async fn admin(s: &Sidecar, method: Method, path: &str, body: &str) -> (u16, String, String) {
    let url = format!("http://{}{path}", s.admin);
    let (status, headers, body) = TestClient::http1()
        .send(method, &url, None, Bytes::from(body.to_owned()))
        .await
        .unwrap();
    let allow = headers
        .get(http::header::ALLOW)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, String::from_utf8(body.to_vec()).unwrap(), allow)
}

/// Issue 14 (logs): `POST /log-level` changes what is logged at once; a bad filter is refused
/// and the one in force stays; mutation is POST only; stderr is JSON when it is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time() {
    let dir = TempDir::new("obs-level");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(POLICY);
    let s = Sidecar::for_service(&cp, &dir, "client", "127.0.0.1:9".parse().unwrap(), &[]);
    s.wait_ready().await;
    let c = TestClient::http1();
    let ask = |host: &'static str| {
        let c = c.clone();
        let url = format!("http://{}/", s.outbound);
        async move { c.get(&url, Some(host)).await.unwrap().0 }
    };

    // The tests' harness starts sidecars with FERRULE_LOG=info,ferrule_proxy=debug.
    let (status, now, _) = admin(&s, Method::GET, "/log-level", "").await;
    assert_eq!(status, 200);
    assert!(now.contains("ferrule_proxy=debug"), "{now}");
    assert_eq!(
        admin(&s, Method::POST, "/log-level", "info\n").await,
        (200, "info\n".into(), String::new())
    );
    assert_eq!(admin(&s, Method::GET, "/log-level", "").await.1, "info\n");
    // A failed request is logged at debug ("request failed", with its detail, which names
    // the host): not now...
    assert_eq!(ask("quiet-marker-one").await, 404);
    let (status, now, _) = admin(&s, Method::POST, "/log-level", "ferrule_proxy=debug,info").await;
    assert_eq!(status, 200, "{now}");
    // ... and at once after.
    assert_eq!(ask("loud-marker-two").await, 404);
    eventually(
        Duration::from_secs(5),
        "the debug line after the change",
        || async { s.proc.log_text().contains("loud-marker-two") },
    )
    .await;
    assert!(
        !s.proc.log_text().contains("quiet-marker-one"),
        "a debug line was written while the level was info"
    );

    // A bad filter is refused with why, and the filter in force stays.
    let (status, why, _) = admin(&s, Method::POST, "/log-level", "verbose").await;
    assert_eq!(status, 400);
    assert!(why.contains("\"verbose\" is not a level"), "{why}");
    let (status, why, _) = admin(&s, Method::POST, "/log-level", "ferrule_proxy=loud").await;
    assert_eq!(status, 400, "{why}");
    assert!(admin(&s, Method::GET, "/log-level", "")
        .await
        .1
        .contains("ferrule_proxy=debug"));
    // Mutations are POST only, and reads are not POST.
    assert_eq!(
        admin(&s, Method::PUT, "/log-level", "warn").await,
        (405, "use GET, POST\n".into(), "GET, POST".into())
    );
    assert_eq!(admin(&s, Method::POST, "/metrics", "").await.0, 405);
    assert_eq!(admin(&s, Method::POST, "/config", "").await.2, "GET");
    assert!(admin(&s, Method::GET, "/log-level", "")
        .await
        .1
        .contains("ferrule_proxy=debug"));

    // stderr is a file here, so the format is JSON (`--log-format auto`): every line parses.
    let log = s.proc.log_text();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 3, "{log}");
    assert!(log.contains("\"message\":\"log level changed through the admin endpoint\""));
}

/// The metric names a PromQL expression uses: every identifier that starts with `ferrule_`
/// (the sidecar's registry prefix). Label values are quoted, so a quoted name is not one.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut quoted = false;
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted
            && expr[i..].starts_with("ferrule_")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            names.push(expr[i..end].to_owned());
            i = end;
            continue;
        }
        i += 1;
    }
    names
}

/// Every PromQL query of a dashboard: the panels' targets and the templating variables'.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(q)) => out.push(q.clone()),
                    ("query", serde_json::Value::String(q)) if q.contains("ferrule_") => {
                        out.push(q.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The series names a family can be queried by, from its type.
fn series_names(f: &Family) -> Vec<String> {
    match f.kind.as_str() {
        "counter" => vec![format!("{}_total", f.name), format!("{}_created", f.name)],
        "histogram" => ["_bucket", "_sum", "_count", "_created"]
            .iter()
            .map(|s| format!("{}{s}", f.name))
            .collect(),
        _ => vec![f.name.clone()],
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(ferrule_response_latency_seconds_bucket{service=~"$service",x="ferrule_no"}[5m]))) / ferrule_b"#
        ),
        ["ferrule_response_latency_seconds_bucket", "ferrule_b"]
    );
    assert!(metric_names("sum(rate(not_ours_total[1m]))").is_empty());
}

/// Issue 14 (dashboards): every query of `deploy/grafana/ferrule-mesh.json` names metrics
/// that a live sidecar exposes, and the ones the traffic here produces have samples
/// (histogram buckets included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_live_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/ferrule-mesh.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).unwrap();
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(
            !names.is_empty(),
            "a query that names no Ferrule metric: {e}"
        );
        used.extend(names);
    }
    // Every panel has a title and queries, over the dashboard's Prometheus variable.
    for p in dashboard["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(
            !p["targets"].as_array().unwrap().is_empty(),
            "{}",
            p["title"]
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }

    let m = mesh("obs-dashboard").await;
    m.send_mix().await;
    let mut live = families(&m.client).await;
    live.extend(families(&m.echo).await);
    let declared: BTreeSet<String> = live.iter().flat_map(series_names).collect();
    let sampled: BTreeSet<&str> = live
        .iter()
        .flat_map(|f| &f.samples)
        .map(|s| s.name.as_str())
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !declared.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no sidecar has: {missing:?}"
    );
    // What this traffic must have produced samples of.
    for name in [
        "ferrule_requests_total",
        "ferrule_responses_total",
        "ferrule_response_latency_seconds_bucket",
        "ferrule_snapshot_version",
        "ferrule_snapshot_pushes_received_total",
        "ferrule_control_plane_connected",
        "ferrule_requests_by_codec_total",
    ] {
        assert!(used.contains(name), "the dashboard does not use {name}");
        assert!(sampled.contains(name), "no samples of {name}");
    }
}
