//! Control-plane fan-out: how long one policy change takes to reach N connected proxies, and
//! what the control plane's memory is at that size.
//!
//! # Method
//!
//! A fresh `ferrule-control` (its own data directory, nothing else connected) gets a small
//! policy. Then N simulated proxies connect, each exactly as a sidecar does: its own TCP
//! connection and one HTTP/2 `POST /v1/stream` (so N connections and N streams), a `hello`
//! that registers its own endpoint under a lease (so the snapshot holds N endpoints, as a real
//! mesh's does, since snapshots are not yet scoped per proxy), an `ack` for every snapshot
//! (with its nonce), and a `heartbeat` at the interval the control plane asks for. The simulated
//! proxies read each snapshot line whole but parse only its envelope (type, version, nonce),
//! not the snapshot: what is measured is the control plane's delivery, not a proxy's apply
//! (which the `hot_paths` microbenchmark's snapshot load measures).
//!
//! Once every proxy has acknowledged the same version and `GET /v1/proxies` shows it, one
//! change is applied (`POST /v1/apply`, the Service's load balancer flipped) and the clock
//! starts just before that request. Reported: the time until each proxy has *received* a
//! snapshot at or after the change's revision (p50, p99, all) and the time until
//! `GET /v1/proxies` (polled every 20 ms) shows *every* proxy's ACK of it. Everything runs on
//! this machine, so the simulated proxies' own reading competes with the control plane for the
//! same cores.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrule_config::push::{take_lines, to_line, ProxyMessage, STREAM_PATH};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::client::call;
use crate::procs::{memory, Memory, Supervisor};
use crate::stack::Binaries;
use crate::Result;

/// The service the simulated proxies belong to (and whose policy changes).
const SERVICE: &str = "fanout-app";
/// Connections opened at once while the proxies connect (a fleet does not connect in one
/// instant either, and this keeps the accept queue from overflowing).
const CONNECT_CONCURRENCY: usize = 32;
/// How long connecting and settling N proxies may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the change may take to reach everyone before the measurement fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of the `GET /v1/proxies` polls.
const ACK_POLL: Duration = Duration::from_millis(20);
/// Timeout of one API call.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Milliseconds from the change to delivery.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Spread {
    /// Median proxy.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// The last proxy: the time until all had it.
    pub(crate) max: f64,
}

/// The result of one fan-out measurement.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FanoutRow {
    /// Simulated proxies.
    pub(crate) proxies: usize,
    /// HTTP/2 connections they used (one per proxy, as sidecars do).
    pub(crate) connections: usize,
    /// Size of the pushed snapshot line carrying the change, bytes.
    pub(crate) snapshot_bytes: usize,
    /// Revision of the change.
    pub(crate) revision: u64,
    /// Seconds to connect every proxy and settle on one acknowledged version.
    pub(crate) setup_s: f64,
    /// From just before `POST /v1/apply` until each proxy had received the change, ms.
    pub(crate) received_ms: Spread,
    /// From the same instant until `GET /v1/proxies` showed every proxy's ACK of it, ms.
    pub(crate) all_acked_visible_ms: f64,
    /// The control plane's memory with N proxies connected, before the change.
    pub(crate) control_plane_before: Memory,
    /// And right after every proxy acknowledged it (RSS now, peak so far).
    pub(crate) control_plane_after: Memory,
}

/// What the simulated proxies have seen, shared with the measuring task.
struct Shared {
    /// Latest snapshot version each proxy received.
    latest: Vec<AtomicU64>,
    /// Every (version, arrival) each proxy received after `recording` was set.
    history: Vec<Mutex<Vec<(u64, Instant)>>>,
    /// Size of the last snapshot line received.
    snapshot_bytes: AtomicUsize,
    /// Set once the change is about to be applied.
    recording: std::sync::atomic::AtomicBool,
}

/// The envelope of a pushed snapshot line; the snapshot itself is skipped, not parsed.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    version: u64,
    nonce: String,
    heartbeat_ms: u64,
}

/// A request body fed from a channel: the simulated proxy's side of the NDJSON stream.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

/// Measures the fan-out to `proxies` simulated proxies of a fresh control plane.
pub(crate) async fn measure(
    bins: &Binaries,
    log_dir: &Path,
    dir: &Path,
    proxies: usize,
) -> Result<FanoutRow> {
    let mut supervisor = Supervisor::new(log_dir)?;
    let data = dir.join(format!("fanout-{proxies}"));
    std::fs::create_dir_all(&data)?;
    let mut control = Command::new(&bins.control);
    // The simulated proxies have no identity: plaintext and anonymous push streams
    // (development-only switches), with caps that fit however many the run asks for.
    let cap = (proxies + 100).max(10_000).to_string();
    control
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--plaintext", "--allow-anonymous-proxies"])
        .args(["--max-streams", &cap, "--max-registrations", &cap]);
    let prefix = "ferrule-control listening on ";
    let name = format!("fanout-control-{proxies}");
    let started = supervisor
        .start(&name, control, prefix, Duration::from_secs(30))
        .await?;
    let url = started.line[prefix.len()..].trim();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("cannot parse the control plane's address in `{url}`: {e}"))?;
    let result = run(addr, started.pid, proxies).await;
    supervisor.shutdown().await;
    result
}

async fn run(control: SocketAddr, control_pid: u32, n: usize) -> Result<FanoutRow> {
    apply(control, &services(false)).await?;

    let shared = Arc::new(Shared {
        latest: (0..n).map(|_| AtomicU64::new(0)).collect(),
        history: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
        snapshot_bytes: AtomicUsize::new(0),
        recording: false.into(),
    });
    let setup_started = Instant::now();
    let connecting = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut sims = JoinSet::new();
    for i in 0..n {
        sims.spawn(simulated_proxy(
            i,
            control,
            Arc::clone(&shared),
            Arc::clone(&connecting),
        ));
    }
    // Every proxy must be connected and on the same acknowledged version before the change.
    let settled = async {
        let deadline = setup_started + SETUP_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err::<u64, crate::Error>(
                    format!("{n} simulated proxies did not settle within {SETUP_TIMEOUT:?}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let version = current_version(control).await?;
            let all_received = shared
                .latest
                .iter()
                .all(|v| v.load(Ordering::Relaxed) == version);
            if all_received && acked(control, version).await? == n {
                return Ok(version);
            }
        }
    };
    let baseline = tokio::select! {
        settled = settled => settled?,
        ended = sims.join_next() => return Err(sim_ended(ended)),
    };
    let setup_s = setup_started.elapsed().as_secs_f64();
    eprintln!("  {n} simulated proxies connected and on version {baseline} after {setup_s:.1} s");
    let control_plane_before = memory(control_pid)?;

    shared.recording.store(true, Ordering::SeqCst);
    let changed_at = Instant::now();
    let revision = apply(control, &services(true)).await?;
    let wait_received = async {
        loop {
            if shared
                .latest
                .iter()
                .all(|v| v.load(Ordering::Relaxed) >= revision)
            {
                return Ok::<(), crate::Error>(());
            }
            if changed_at.elapsed() > CHANGE_TIMEOUT {
                let missing = shared
                    .latest
                    .iter()
                    .filter(|v| v.load(Ordering::Relaxed) < revision)
                    .count();
                return Err(format!(
                    "{missing} of {n} proxies had not received revision {revision} after {CHANGE_TIMEOUT:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let wait_acked = async {
        loop {
            if acked(control, revision).await? == n {
                return Ok::<f64, crate::Error>(ms(changed_at.elapsed()));
            }
            if changed_at.elapsed() > CHANGE_TIMEOUT {
                return Err(format!(
                    "GET /v1/proxies did not show every ACK of revision {revision} after {CHANGE_TIMEOUT:?}"
                )
                .into());
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    };
    let (received, all_acked_visible_ms) = tokio::select! {
        both = async { tokio::join!(wait_received, wait_acked) } => (both.0, both.1?),
        ended = sims.join_next() => return Err(sim_ended(ended)),
    };
    received?;
    let control_plane_after = memory(control_pid)?;

    let mut delays: Vec<f64> = shared
        .history
        .iter()
        .map(|h| {
            let h = h.lock().expect("history lock");
            h.iter()
                .find(|(version, _)| *version >= revision)
                .map_or(f64::NAN, |(_, at)| {
                    ms(at.saturating_duration_since(changed_at))
                })
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    sims.abort_all();
    Ok(FanoutRow {
        proxies: n,
        connections: n,
        snapshot_bytes: shared.snapshot_bytes.load(Ordering::Relaxed),
        revision,
        setup_s,
        received_ms: Spread {
            p50: quantile(&delays, 0.50),
            p99: quantile(&delays, 0.99),
            max: delays.last().copied().unwrap_or(f64::NAN),
        },
        all_acked_visible_ms,
        control_plane_before,
        control_plane_after,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sim_ended(
    ended: Option<std::result::Result<Result<(), String>, tokio::task::JoinError>>,
) -> crate::Error {
    match ended {
        Some(Ok(Err(e))) => format!("a simulated proxy failed: {e}").into(),
        Some(Ok(Ok(()))) => "a simulated proxy's stream ended unexpectedly".into(),
        Some(Err(e)) => format!("a simulated proxy task failed: {e}").into(),
        None => "no simulated proxies".into(),
    }
}

/// The policy: the proxies' own service (its load balancer is what the change flips) and a
/// second service with a few routes, so the snapshot is not trivially small.
fn services(changed: bool) -> String {
    let lb = if changed {
        "round_robin"
    } else {
        "least_request"
    };
    serde_json::json!([
        {"kind": "Service", "name": SERVICE, "protocol": "http",
         "trafficPolicy": {"loadBalancer": lb}},
        {"kind": "Service", "name": "fanout-web", "protocol": "http", "routes": [
            {"match": {"pathPrefix": "/api"}, "backends": [{"service": SERVICE, "weight": 100}],
             "timeout": "2s"},
            {"match": {"pathPrefix": "/"}, "backends": [{"service": SERVICE, "weight": 100}]}
        ]}
    ])
    .to_string()
}

/// `POST /v1/apply`; returns the highest revision written.
async fn apply(control: SocketAddr, json: &str) -> Result<u64> {
    let body = Bytes::from(json.to_string());
    let (status, reply) = call(control, Method::POST, "/v1/apply", Some(body), API_TIMEOUT).await?;
    if !status.is_success() {
        return Err(format!(
            "POST /v1/apply answered {status}: {}",
            String::from_utf8_lossy(&reply)
        )
        .into());
    }
    let applied: Vec<serde_json::Value> = serde_json::from_slice(&reply)?;
    applied
        .iter()
        .filter_map(|a| a.get("revision").and_then(serde_json::Value::as_u64))
        .max()
        .ok_or_else(|| format!("no revision in {}", String::from_utf8_lossy(&reply)).into())
}

/// The control plane's current snapshot version (`GET /v1/version`).
async fn current_version(control: SocketAddr) -> Result<u64> {
    let (status, body) = call(control, Method::GET, "/v1/version", None, API_TIMEOUT).await?;
    if !status.is_success() {
        return Err(format!("GET /v1/version answered {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    json.get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("no version in {}", String::from_utf8_lossy(&body)).into())
}

/// How many proxies `GET /v1/proxies` shows at `version` or later.
async fn acked(control: SocketAddr, version: u64) -> Result<usize> {
    let (status, body) = call(control, Method::GET, "/v1/proxies", None, API_TIMEOUT).await?;
    if !status.is_success() {
        return Err(format!("GET /v1/proxies answered {status}").into());
    }
    #[derive(Deserialize)]
    struct Proxy {
        version: u64,
    }
    let proxies: Vec<Proxy> = serde_json::from_slice(&body)?;
    Ok(proxies.iter().filter(|p| p.version >= version).count())
}

/// One simulated proxy: connects, says hello, ACKs every snapshot, heartbeats; runs until
/// aborted or the stream fails.
async fn simulated_proxy(
    i: usize,
    control: SocketAddr,
    shared: Arc<Shared>,
    connecting: Arc<Semaphore>,
) -> Result<(), String> {
    let permit = connecting
        .acquire()
        .await
        .map_err(|e| format!("connect limiter: {e}"))?;
    let tcp = TcpStream::connect(control)
        .await
        .map_err(|e| format!("proxy {i}: cannot connect to {control}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        http2::handshake::<_, _, ChannelBody>(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("proxy {i}: h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let id = format!("sim-{i:05}");
    let hello = ProxyMessage::Hello {
        proxy: id.clone(),
        service: SERVICE.into(),
        endpoint: Some(ferrule_config::Endpoint {
            name: id.clone(),
            revision: 0,
            service: SERVICE.into(),
            // Never dialled: nothing in this control plane's mesh sends traffic.
            address: SocketAddr::from(([127, 0, 0, 1], 10_000 + (i % 50_000) as u16)),
            zone: None,
            weight: 1,
            labels: BTreeMap::new(),
            sidecar: true,
            identity: None,
        }),
        version: 0,
    };
    tx.send(Bytes::from(to_line(&hello)))
        .map_err(|_| "stream body closed".to_string())?;
    let mut request = Request::new(ChannelBody(rx));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("http://{control}{STREAM_PATH}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    request.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("proxy {i}: POST {STREAM_PATH}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "proxy {i}: POST {STREAM_PATH} answered {}",
            response.status()
        ));
    }
    drop(permit);

    let mut body = response.into_body();
    let mut buf = Vec::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut heartbeat_ms = 0;
    loop {
        tokio::select! {
            frame = body.frame() => {
                let Some(frame) = frame else {
                    return Err(format!("proxy {i}: the control plane ended the stream"));
                };
                let frame = frame.map_err(|e| format!("proxy {i}: stream error: {e}"))?;
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                for line in take_lines(&mut buf) {
                    let arrived = Instant::now();
                    let envelope: Envelope = serde_json::from_slice(&line)
                        .map_err(|e| format!("proxy {i}: unreadable push line: {e}"))?;
                    if envelope.kind != "snapshot" {
                        continue;
                    }
                    if shared.recording.load(Ordering::Relaxed) {
                        shared.history[i]
                            .lock()
                            .expect("history lock")
                            .push((envelope.version, arrived));
                    }
                    shared.snapshot_bytes.store(line.len() + 1, Ordering::Relaxed);
                    shared.latest[i].store(envelope.version, Ordering::Relaxed);
                    let ack = ProxyMessage::Ack { version: envelope.version, nonce: envelope.nonce };
                    tx.send(Bytes::from(to_line(&ack)))
                        .map_err(|_| format!("proxy {i}: stream body closed"))?;
                    if envelope.heartbeat_ms != heartbeat_ms && envelope.heartbeat_ms > 0 {
                        heartbeat_ms = envelope.heartbeat_ms;
                        let every = Duration::from_millis(heartbeat_ms);
                        heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    }
                }
            }
            _ = heartbeat.tick() => {
                tx.send(Bytes::from(to_line(&ProxyMessage::Heartbeat)))
                    .map_err(|_| format!("proxy {i}: stream body closed"))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_policy_documents_are_valid_resources() {
        for changed in [false, true] {
            let docs: Vec<serde_json::Value> = serde_json::from_str(&services(changed)).unwrap();
            for doc in &docs {
                ferrule_config::Resource::from_value(doc, None, "test").unwrap();
            }
        }
    }

    #[test]
    fn the_envelope_skips_the_snapshot() {
        let line = br#"{"type":"snapshot","version":7,"nonce":"7-ab","snapshot":{"version":7,"services":[],"endpoints":[]},"heartbeat_ms":5000}"#;
        let envelope: Envelope = serde_json::from_slice(line).unwrap();
        assert_eq!((envelope.version, envelope.nonce.as_str()), (7, "7-ab"));
        assert_eq!(envelope.heartbeat_ms, 5000);
    }
}
