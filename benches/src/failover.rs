//! `ferrule-bench failover`: the "kill one of three" scenario of the resilience issue.
//!
//! For each target in turn, with fresh processes: three upstream instances, each on its own
//! port, behind the target; an open-loop load at a fixed rate for a fixed time (the same load
//! generator as `run`, latency from each request's intended send time); at `--kill-at` one
//! instance is killed with SIGKILL, at `--restart-at` it is started again on the same port.
//! Reported per target: requests, success rate (2xx), p50/p99 over the whole run and over the
//! failure window (kill to restart), and the failed responses and transport errors.
//!
//! The targets, each with its failure handling as its documentation advises:
//!
//! - `ferrule`: a control plane, a sidecar in front of each instance (service `upstream`, three
//!   endpoints) and a client sidecar; Ferrule's defaults only (retries of gateway errors,
//!   resets and connect failures for idempotent requests, within the retry budget; outlier
//!   ejection after 5 failures in a row, peak-EWMA balancing). What is
//!   killed is the instance's *app* process: its sidecar stays up and answers 502/503 for it,
//!   which the client sidecar retries elsewhere.
//! - `ferrule-sidecar`: the same mesh, but the instance's sidecar is killed with its app (the
//!   client sidecar then sees connect failures and resets) and both are started again on the
//!   same ports.
//! - `nginx`: one nginx, `max_fails`/`fail_timeout` on each server, `proxy_next_upstream
//!   error timeout http_502 http_503`, `proxy_next_upstream_tries 3` (see `peers::nginx`).
//! - `haproxy`: one HAProxy, HTTP health checks (`inter 1s fall 2 rise 2`), `retries 3`,
//!   `option redispatch 1`, `retry-on conn-failure empty-response response-timeout 502 503`
//!   (see `peers::haproxy`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::{FailoverArgs, FailoverTarget};
use crate::client::{once, Endpoint};
use crate::harness::{command_line, default_out_dir};
use crate::load::{self, LoadReport, LoadSpec, Mode, Sample, SampleOutcome};
use crate::peers::{self, InstanceConfig, Kind};
use crate::procs::Supervisor;
use crate::protocol::Protocol;
use crate::report::{Failure, Machine};
use crate::stack::{
    apply_policy_text, config_json, endpoint_addresses, poll_until, start_control_plane,
    start_sidecar, start_upstream_at, subdir, supports_threads, wait_ready, Binaries, Sidecar,
    TempDir, Upstream,
};
use crate::Result;

/// Name of the Ferrule service the three instances make up.
const SERVICE: &str = "upstream";
/// Which of the three instances is killed (0-based): the middle one.
const VICTIM: usize = 1;
/// How many upstream instances.
const INSTANCES: usize = 3;

/// The scenario's parameters, as run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Scenario {
    /// Targets, in order.
    pub(crate) targets: Vec<FailoverTarget>,
    /// Open-loop rate, requests per second.
    pub(crate) rate: f64,
    /// What the client speaks.
    pub(crate) protocol: Protocol,
    /// Measured time.
    #[serde(serialize_with = "seconds")]
    pub(crate) duration: Duration,
    /// Unmeasured load before it.
    #[serde(serialize_with = "seconds")]
    pub(crate) warmup: Duration,
    /// When (from the start of the measured window) the instance is killed.
    #[serde(serialize_with = "seconds")]
    pub(crate) kill_at: Duration,
    /// When it is started again.
    #[serde(serialize_with = "seconds")]
    pub(crate) restart_at: Duration,
    /// Per-request timeout of the load generator.
    #[serde(serialize_with = "seconds")]
    pub(crate) timeout: Duration,
    /// HTTP/1.1 connections, or h2 connections × streams = requests in flight at most.
    pub(crate) connections: usize,
    /// h2 streams per connection.
    pub(crate) streams: usize,
    /// Workers of every proxy.
    pub(crate) proxy_threads: usize,
    /// Response body size.
    pub(crate) body_size: usize,
    /// Whether nginx and HAProxy may be installed.
    pub(crate) install: bool,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Scenario {
    fn from_args(args: &FailoverArgs) -> Result<Self> {
        let mut targets = if args.targets.is_empty() {
            FailoverTarget::ALL.to_vec()
        } else {
            args.targets.clone()
        };
        targets.sort_unstable();
        targets.dedup();
        if args.rate.is_nan() || args.rate <= 0.0 {
            return Err("--rate must be above 0".into());
        }
        if args.kill_at >= args.restart_at || args.restart_at >= args.duration {
            return Err(
                "--kill-at must come before --restart-at, and both within --duration".into(),
            );
        }
        if args.proxy_threads == 0 || args.streams == 0 || args.connections == 0 {
            return Err("--proxy-threads, --connections and --streams must be at least 1".into());
        }
        Ok(Scenario {
            targets,
            rate: args.rate,
            protocol: if args.http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
            duration: args.duration,
            warmup: args.warmup,
            kill_at: args.kill_at,
            restart_at: args.restart_at,
            timeout: args.timeout,
            connections: args.connections,
            streams: args.streams,
            proxy_threads: args.proxy_threads,
            body_size: args.body_size,
            install: !args.no_install,
        })
    }
}

/// Counts and latency of the requests whose intended send time falls in one part of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct WindowStats {
    /// Start of the part, seconds into the measured window.
    pub(crate) from_s: f64,
    /// End of the part (exclusive).
    pub(crate) to_s: f64,
    /// Requests scheduled in it.
    pub(crate) requests: u64,
    /// Successful (2xx) responses.
    pub(crate) ok: u64,
    /// Complete responses that are not a success (non-2xx).
    pub(crate) failed: u64,
    /// Connect failures, protocol errors and timeouts.
    pub(crate) transport_errors: u64,
    /// Requests not finished by the run's hard deadline.
    pub(crate) unfinished: u64,
    /// `ok / requests` in percent (100 when there were no requests).
    pub(crate) success_percent: f64,
    /// Latency percentiles of the successful responses, ms (intended send to response end).
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_ms: Option<f64>,
    /// Slowest.
    pub(crate) max_ms: Option<f64>,
}

impl WindowStats {
    /// The statistics of the samples with `from <= at < to`.
    pub(crate) fn of(samples: &[Sample], from: Duration, to: Duration) -> Self {
        let mut stats = WindowStats {
            from_s: from.as_secs_f64(),
            to_s: to.as_secs_f64(),
            requests: 0,
            ok: 0,
            failed: 0,
            transport_errors: 0,
            unfinished: 0,
            success_percent: 100.0,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
        };
        let mut latencies = Vec::new();
        for sample in samples.iter().filter(|s| s.at >= from && s.at < to) {
            stats.requests += 1;
            match sample.outcome {
                SampleOutcome::Ok => {
                    stats.ok += 1;
                    latencies.push(sample.latency_us);
                }
                SampleOutcome::Failed => stats.failed += 1,
                SampleOutcome::Transport => stats.transport_errors += 1,
                SampleOutcome::Unfinished => stats.unfinished += 1,
            }
        }
        if stats.requests > 0 {
            stats.success_percent = stats.ok as f64 * 100.0 / stats.requests as f64;
        }
        latencies.sort_unstable();
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let quantile = |q: f64| -> Option<f64> {
            let n = latencies.len();
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
            latencies.get(rank - 1).map(|&us| us as f64 / 1000.0)
        };
        stats.p50_ms = quantile(0.50);
        stats.p99_ms = quantile(0.99);
        stats.max_ms = latencies.last().map(|&us| us as f64 / 1000.0);
        stats
    }

    /// Requests that did not succeed.
    pub(crate) fn errors(&self) -> u64 {
        self.failed + self.transport_errors + self.unfinished
    }
}

/// One target's run of the scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetResult {
    /// Which target.
    pub(crate) target: FailoverTarget,
    /// Its failure handling.
    pub(crate) config: String,
    /// What was killed.
    pub(crate) killed: String,
    /// When the kill was done (the process had exited), seconds into the measured window.
    pub(crate) killed_at_s: f64,
    /// When the instance listened again, seconds into the measured window.
    pub(crate) restarted_at_s: f64,
    /// The whole measured window.
    pub(crate) whole: WindowStats,
    /// Before the kill.
    pub(crate) before: WindowStats,
    /// From the kill to the restart.
    pub(crate) failure: WindowStats,
    /// After the restart.
    pub(crate) after: WindowStats,
    /// Each second of the measured window.
    pub(crate) per_second: Vec<WindowStats>,
    /// The load generator's own report (whole window).
    pub(crate) load: LoadReport,
}

/// Everything one `ferrule-bench failover` produced.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FailoverReport {
    /// Start time, seconds since the Unix epoch.
    pub(crate) started_unix_s: u64,
    /// The command that produced it.
    pub(crate) command: String,
    /// Where it ran.
    pub(crate) machine: Machine,
    /// With which parameters.
    pub(crate) scenario: Scenario,
    /// Versions of the peers.
    pub(crate) software: Vec<String>,
    /// One per target that ran.
    pub(crate) results: Vec<TargetResult>,
    /// Targets that could not run, and why.
    pub(crate) failures: Vec<Failure>,
}

/// Runs `ferrule-bench failover`.
pub(crate) async fn run_cli(args: FailoverArgs) -> Result<()> {
    let scenario = Scenario::from_args(&args)?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => default_out_dir()?,
    };
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let mut report = FailoverReport {
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        command: command_line(),
        machine: Machine::detect(),
        scenario: scenario.clone(),
        software: Vec::new(),
        results: Vec::new(),
        failures: Vec::new(),
    };
    let log_dir = out.join("logs");
    let kinds: Vec<Kind> = scenario
        .targets
        .iter()
        .filter_map(|t| match t {
            FailoverTarget::Ferrule | FailoverTarget::FerruleSidecar => None,
            FailoverTarget::Nginx => Some(Kind::Nginx),
            FailoverTarget::Haproxy => Some(Kind::Haproxy),
        })
        .collect();
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let found = peers::ensure_installed(&kinds, scenario.install, &log_dir).await;

    for &target in &scenario.targets {
        eprintln!(
            "failover scenario through {} (logs in {})",
            target.key(),
            log_dir.display()
        );
        let binary = match target {
            FailoverTarget::Ferrule | FailoverTarget::FerruleSidecar => None,
            FailoverTarget::Nginx | FailoverTarget::Haproxy => {
                let program = if target == FailoverTarget::Nginx {
                    "nginx"
                } else {
                    "haproxy"
                };
                match &found[program] {
                    Ok(binary) => Some(binary.clone()),
                    Err(reason) => {
                        eprintln!("  {reason}; left out");
                        report.failures.push(Failure {
                            what: target.key().into(),
                            error: reason.clone(),
                        });
                        continue;
                    }
                }
            }
        };
        let run = tokio::select! {
            result = run_target(&bins, &log_dir, &scenario, target, binary.as_deref()) => result,
            // The dropped run's supervisor kills its children.
            signal = crate::harness::interrupted() => return Err(signal?.into()),
        };
        match run {
            Ok((result, software)) => {
                report.software.extend(software);
                report.results.push(result);
            }
            Err(e) => {
                eprintln!("  failed: {e}");
                report.failures.push(Failure {
                    what: target.key().into(),
                    error: e.to_string(),
                });
            }
        }
    }

    let markdown = markdown(&report);
    println!("{markdown}");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let stem = format!("ferrule-bench-failover-{}", report.started_unix_s);
    let json_path = out.join(format!("{stem}.json"));
    let md_path = out.join(format!("{stem}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&md_path, &markdown)?;
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} target(s) could not be measured (listed in the report)",
            report.failures.len()
        )
        .into())
    }
}

/// The scenario through one target, with its own processes (stopped at the end, whatever
/// happens). Returns the result and the peer's version line, if any.
async fn run_target(
    bins: &Binaries,
    log_dir: &Path,
    scenario: &Scenario,
    target: FailoverTarget,
    peer_binary: Option<&Path>,
) -> Result<(TargetResult, Vec<String>)> {
    let dir = TempDir::new()?;
    let mut supervisor = Supervisor::new(&log_dir.join(format!("failover-{}", target.key())))?;
    let result = drive(
        &mut supervisor,
        bins,
        dir.path(),
        scenario,
        target,
        peer_binary,
    )
    .await;
    supervisor.shutdown().await;
    result
}

async fn drive(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    dir: &Path,
    scenario: &Scenario,
    target: FailoverTarget,
    peer_binary: Option<&Path>,
) -> Result<(TargetResult, Vec<String>)> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut upstreams: Vec<Upstream> = Vec::with_capacity(INSTANCES);
    for i in 1..=INSTANCES {
        let name = format!("upstream-{i}");
        upstreams.push(start_upstream_at(supervisor, bins, scenario.body_size, &name, any).await?);
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let mut software = Vec::new();
    let mut mesh = None;
    let (front, host) = match (target, peer_binary) {
        (FailoverTarget::Ferrule | FailoverTarget::FerruleSidecar, _) => {
            let started = start_ferrule(supervisor, bins, dir, &addrs, scenario).await?;
            let outbound = started.outbound;
            mesh = Some(started);
            (outbound, Some(SERVICE.to_string()))
        }
        (FailoverTarget::Nginx | FailoverTarget::Haproxy, Some(binary)) => {
            let kind = if target == FailoverTarget::Nginx {
                Kind::Nginx
            } else {
                Kind::Haproxy
            };
            let version = peers::version_of(binary, kind).await;
            let config =
                InstanceConfig::failover(kind, scenario.protocol, &addrs, scenario.proxy_threads)?;
            let name = format!("{}-failover", kind.program());
            peers::start_instance(
                supervisor, binary, kind, &name, &config, dir, None, &version,
            )
            .await?;
            software.push(version);
            let port = config.front[&scenario.protocol];
            (SocketAddr::from(([127, 0, 0, 1], port)), None)
        }
        _ => return Err(format!("{} is not installed", target.key()).into()),
    };

    let url = format!("http://{front}{}", scenario.protocol.path());
    let endpoint = Endpoint::resolve(&url, host.as_deref(), scenario.protocol, false).await?;
    poll_until(
        &format!("a successful request through {}", target.key()),
        || {
            let endpoint = endpoint.clone();
            async move { once(&endpoint, Duration::from_secs(2)).await.map(|()| true) }
        },
    )
    .await?;

    let (connections, streams) = if scenario.protocol.is_h2() {
        (
            scenario.connections.div_ceil(scenario.streams),
            scenario.streams,
        )
    } else {
        (scenario.connections, 1)
    };
    let (tell, mut told) = mpsc::unbounded_channel();
    let spec = LoadSpec {
        endpoint,
        mode: Mode::Open {
            rate: scenario.rate,
        },
        connections,
        streams,
        duration: scenario.duration,
        warmup: scenario.warmup,
        timeout: scenario.timeout,
        timeline: true,
        window_start: Some(tell),
    };
    let load = tokio::spawn(async move { load::run(&spec).await });

    // The measured window's start, once the load generator has connected and set its clock.
    let window = match told.recv().await {
        Some(window) => window,
        None => {
            return Err(match load.await? {
                Ok(_) => "the load generator did not say when its window starts".into(),
                Err(e) => e,
            })
        }
    };
    let victim = format!("upstream-{}", VICTIM + 1);
    tokio::time::sleep_until((window + scenario.kill_at).into()).await;
    supervisor.kill(&victim).await?;
    let with_sidecar = match (&mesh, target) {
        (Some(mesh), FailoverTarget::FerruleSidecar) => {
            let (name, sidecar) = &mesh.servers[VICTIM];
            supervisor.kill(name).await?;
            Some((name.clone(), sidecar.inbound))
        }
        _ => None,
    };
    let killed_at = Instant::now().saturating_duration_since(window);
    eprintln!(
        "  killed {victim} ({}) at {:.3}s",
        addrs[VICTIM],
        killed_at.as_secs_f64()
    );
    tokio::time::sleep_until((window + scenario.restart_at).into()).await;
    let restarted = start_upstream_at(
        supervisor,
        bins,
        scenario.body_size,
        &format!("{victim}-restarted"),
        addrs[VICTIM],
    )
    .await?;
    if let (Some((name, inbound)), Some(mesh)) = (&with_sidecar, &mesh) {
        // Same data directory and inbound port: the endpoint it registers is the old one.
        start_sidecar(
            supervisor,
            bins,
            &mesh.control_url,
            &format!("{name}-restarted"),
            SERVICE,
            &subdir(dir, name)?,
            &addrs[VICTIM].to_string(),
            &inbound.to_string(),
            mesh.threads,
            None,
            None,
        )
        .await?;
    }
    let restarted_at = Instant::now().saturating_duration_since(window);
    eprintln!(
        "  restarted {victim} on {} at {:.3}s",
        restarted.addr,
        restarted_at.as_secs_f64()
    );
    let mut load = load.await??;

    let samples = std::mem::take(&mut load.timeline);
    let zero = Duration::ZERO;
    let per_second = (0..scenario.duration.as_secs_f64().ceil() as u64)
        .map(|s| {
            let from = Duration::from_secs(s);
            WindowStats::of(
                &samples,
                from,
                (from + Duration::from_secs(1)).min(scenario.duration),
            )
        })
        .collect();
    let killed = match target {
        FailoverTarget::Ferrule => format!(
            "the app behind sidecar {} (its sidecar stays up)",
            VICTIM + 1
        ),
        FailoverTarget::FerruleSidecar => {
            format!("the app behind sidecar {0} and sidecar {0}", VICTIM + 1)
        }
        _ => format!("upstream instance {}", VICTIM + 1),
    };
    let result = TargetResult {
        target,
        config: target.config().into(),
        killed,
        killed_at_s: killed_at.as_secs_f64(),
        restarted_at_s: restarted_at.as_secs_f64(),
        whole: WindowStats::of(&samples, zero, scenario.duration),
        before: WindowStats::of(&samples, zero, scenario.kill_at),
        failure: WindowStats::of(&samples, scenario.kill_at, scenario.restart_at),
        after: WindowStats::of(&samples, scenario.restart_at, scenario.duration),
        per_second,
        load,
    };
    eprintln!(
        "  {}: {} requests, {:.2}% ok; failure window {:.2}% ok, p99 {}",
        target.key(),
        result.whole.requests,
        result.whole.success_percent,
        result.failure.success_percent,
        ms(result.failure.p99_ms)
    );
    Ok((result, software))
}

/// Starts the Ferrule side: a control plane with the Service `upstream`, a sidecar in front of
/// each instance, and a client sidecar; waits until the client sidecar knows all three
/// endpoints.
async fn start_ferrule(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    dir: &Path,
    upstreams: &[SocketAddr],
    scenario: &Scenario,
) -> Result<FerruleMesh> {
    let (_, control_url) = start_control_plane(supervisor, bins, dir).await?;
    apply_policy_text(&bins.ctl, &control_url, dir, &policy(scenario.protocol)).await?;
    let threads = supports_threads(&bins.proxy)
        .await
        .then_some(scenario.proxy_threads);
    let mut sidecars = Vec::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        let name = format!("server-sidecar-{}", i + 1);
        let sidecar = start_sidecar(
            supervisor,
            bins,
            &control_url,
            &name,
            SERVICE,
            &subdir(dir, &name)?,
            &upstream.to_string(),
            "127.0.0.1:0",
            threads,
            None,
            None,
        )
        .await?;
        sidecars.push((name, sidecar));
    }
    // The client sidecar's app is never called; port 1 makes that explicit.
    let client = start_sidecar(
        supervisor,
        bins,
        &control_url,
        "client-sidecar",
        "failover-client",
        &subdir(dir, "client-sidecar")?,
        "127.0.0.1:1",
        "127.0.0.1:0",
        threads,
        None,
        None,
    )
    .await?;
    for (name, sidecar) in &sidecars {
        wait_ready(name, sidecar).await?;
    }
    wait_ready("client sidecar", &client).await?;
    let config = Endpoint::http1(client.admin, "/config")?;
    poll_until(
        &format!("{INSTANCES} endpoints of {SERVICE} in the client sidecar's /config"),
        || async {
            let json = config_json(&config).await?;
            let found = endpoint_addresses(&json, SERVICE);
            if found.len() >= INSTANCES {
                Ok(true)
            } else {
                Err(format!("endpoints of {SERVICE}: {found:?}"))
            }
        },
    )
    .await?;
    Ok(FerruleMesh {
        outbound: client.outbound,
        control_url,
        threads,
        servers: sidecars,
    })
}

/// The Ferrule side of the scenario, as started.
struct FerruleMesh {
    /// The client sidecar's outbound listener: where the load goes.
    outbound: SocketAddr,
    /// The control plane.
    control_url: String,
    /// `--threads` of every sidecar, if this build has the flag.
    threads: Option<usize>,
    /// The sidecars in front of the instances, by child name, in instance order.
    servers: Vec<(String, Sidecar)>,
}

/// The scenario's policy: the Service alone, so every resilience setting is Ferrule's default.
fn policy(protocol: Protocol) -> String {
    format!(
        "kind: Service\nname: {SERVICE}\nprotocol: {}\n",
        protocol.ferrule_service_protocol()
    )
}

fn ms(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.2}"))
}

/// The report: the scenario, one table row per target, each target's configuration, and what
/// could not be measured.
pub(crate) fn markdown(report: &FailoverReport) -> String {
    let s = &report.scenario;
    let m = &report.machine;
    let mut md = String::new();
    md.push_str("# Failover: kill one of three upstream instances\n\n");
    md.push_str(&format!(
        "`{}`\n\n{} vCPUs ({}), {} MiB, kernel {}, load average at start {}.\n\n",
        report.command, m.nproc, m.cpu_model, m.memory_mib, m.kernel, m.load_average_at_start
    ));
    md.push_str(&format!(
        "Open loop at {} rps over {}, {} measured after {} warmup, {} requests in flight at \
         most, {} timeout per request. At {} one of the three instances is killed (SIGKILL); at \
         {} it is started again on the same port. Latency of successful responses from each \
         request's intended send time; windows by intended send time.\n\n",
        s.rate,
        s.protocol.label(),
        secs(s.duration),
        secs(s.warmup),
        s.connections,
        secs(s.timeout),
        secs(s.kill_at),
        secs(s.restart_at),
    ));
    md.push_str(&format!(
        "| target | requests | success | errors (non-2xx / transport / unfinished) | p50 ms | \
         p99 ms | failure window {}–{}: requests | success | errors | p50 ms | p99 ms |\n",
        secs(s.kill_at),
        secs(s.restart_at)
    ));
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.results {
        let (w, f) = (&r.whole, &r.failure);
        md.push_str(&format!(
            "| {} | {} | {:.2}% | {} ({} / {} / {}) | {} | {} | {} | {:.2}% | {} | {} | {} |\n",
            r.target.key(),
            w.requests,
            w.success_percent,
            w.errors(),
            w.failed,
            w.transport_errors,
            w.unfinished,
            ms(w.p50_ms),
            ms(w.p99_ms),
            f.requests,
            f.success_percent,
            f.errors(),
            ms(f.p50_ms),
            ms(f.p99_ms),
        ));
    }
    md.push_str("\n| target | killed | failure handling | error samples |\n|---|---|---|---|\n");
    for r in &report.results {
        md.push_str(&format!(
            "| {} | {} (at {:.2}s, back at {:.2}s) | {} | {} |\n",
            r.target.key(),
            r.killed,
            r.killed_at_s,
            r.restarted_at_s,
            r.config,
            if r.load.error_samples.is_empty() {
                "–".to_string()
            } else {
                r.load.error_samples.join("; ").replace('|', "\\|")
            }
        ));
    }
    if !report.software.is_empty() {
        md.push_str(&format!("\nPeers: {}.\n", report.software.join("; ")));
    }
    if !report.failures.is_empty() {
        md.push_str("\n## Not measured\n\n");
        for f in &report.failures {
            md.push_str(&format!("- {}: {}\n", f.what, f.error));
        }
    }
    md
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, outcome: SampleOutcome, latency_us: u64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            outcome,
            latency_us,
        }
    }

    #[test]
    fn window_statistics_count_only_their_part_of_the_run() {
        // 100 requests a second for 20 s: 1 ms each, except that in 5–15 s every tenth fails
        // and every other takes 10 ms.
        let mut samples = Vec::new();
        for i in 0..2000u64 {
            let at = i * 10;
            let failing = (5000..15000).contains(&at);
            let s = if failing && i % 10 == 0 {
                sample(at, SampleOutcome::Failed, 500)
            } else if failing && i % 2 == 1 {
                sample(at, SampleOutcome::Ok, 10_000)
            } else {
                sample(at, SampleOutcome::Ok, 1_000)
            };
            samples.push(s);
        }
        samples.push(sample(19_999, SampleOutcome::Unfinished, 5_000_000));
        let before = WindowStats::of(&samples, Duration::ZERO, Duration::from_secs(5));
        assert_eq!((before.requests, before.ok, before.errors()), (500, 500, 0));
        assert_eq!(before.success_percent, 100.0);
        assert_eq!(before.p99_ms, Some(1.0));

        let failure = WindowStats::of(&samples, Duration::from_secs(5), Duration::from_secs(15));
        assert_eq!(failure.requests, 1000);
        assert_eq!((failure.ok, failure.failed), (900, 100));
        assert!((failure.success_percent - 90.0).abs() < 1e-9);
        // 400 fast, 500 slow successes: the median is slow, and failures carry no latency.
        assert_eq!(failure.p50_ms, Some(10.0));
        assert_eq!(failure.p99_ms, Some(10.0));
        assert_eq!(failure.max_ms, Some(10.0));

        let whole = WindowStats::of(&samples, Duration::ZERO, Duration::from_secs(20));
        assert_eq!(whole.requests, 2001);
        assert_eq!(whole.unfinished, 1);
        assert_eq!(whole.errors(), 101);
        assert_eq!(whole.p50_ms, Some(1.0));

        let empty = WindowStats::of(&[], Duration::ZERO, Duration::from_secs(1));
        assert_eq!(empty.requests, 0);
        assert_eq!(empty.success_percent, 100.0);
        assert_eq!(empty.p99_ms, None);
    }

    #[test]
    fn the_policy_is_the_service_alone() {
        assert_eq!(
            policy(Protocol::Http1),
            "kind: Service\nname: upstream\nprotocol: http\n"
        );
    }
}
