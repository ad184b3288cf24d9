//! `ferrule-bench run`: the measurement plan.
//!
//! Starts the stack, then measures every target the same way, in this order (each run after
//! the previous one, never overlapping, since they share the machine's cores):
//!
//! 1. a probe request through every target, so a broken path fails the run up front with its
//!    reason instead of producing a row of errors;
//! 2. sidecar memory while idle;
//! 3. open loop at `--rate` for `--duration` against each target (direct, 1 sidecar,
//!    2 sidecars), sampling the CPU time of every process around each run;
//! 4. sidecar memory right after the two-sidecar load;
//! 5. closed loop (maximum throughput) against the targets that ask for it.
//!
//! Adding a target (a peer proxy, TLS) means adding it to the list `measure` receives; the plan
//! and the report need no change.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::cli::RunArgs;
use crate::client::{get, Endpoint};
use crate::load::{self, LoadSpec, Mode};
use crate::procs::{cpu_seconds, memory};
use crate::report::{CpuUse, Machine, Measurement, MemoryRow, Report};
use crate::stack::{poll_until, Binaries, MeshStack};
use crate::target::Target;
use crate::Result;

/// Pause between runs, so that one run's stragglers (closing connections, freed buffers) do
/// not land in the next.
const SETTLE: Duration = Duration::from_millis(500);

/// The resolved parameters of a harness run (flags with `--quick` and defaults applied).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Settings {
    /// Short smoke-test runs.
    pub(crate) quick: bool,
    /// Open-loop rate, requests per second.
    pub(crate) rate: f64,
    /// Measured duration of every run, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) duration: Duration,
    /// Warmup of every run, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) warmup: Duration,
    /// Per-request timeout, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) timeout: Duration,
    /// Open-loop connections.
    pub(crate) connections: usize,
    /// Closed-loop connections.
    pub(crate) max_connections: usize,
    /// Upstream response body size, bytes.
    pub(crate) body_size: usize,
    /// Where results and logs go.
    #[serde(skip)]
    pub(crate) out: PathBuf,
    /// Where the Ferrule binaries are (`None`: next to this executable).
    #[serde(skip)]
    pub(crate) bin_dir: Option<PathBuf>,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Settings {
    fn from_args(args: RunArgs) -> Result<Self> {
        let (rate, duration, warmup) = if args.quick {
            (200.0, Duration::from_secs(2), Duration::from_millis(500))
        } else {
            (1000.0, Duration::from_secs(20), Duration::from_secs(2))
        };
        let out = match args.out {
            Some(out) => out,
            // target/release/ferrule-bench -> target/bench-results
            None => std::env::current_exe()?
                .parent()
                .and_then(|release| release.parent())
                .ok_or("cannot derive the default --out directory; pass --out")?
                .join("bench-results"),
        };
        Ok(Settings {
            quick: args.quick,
            rate: args.rate.unwrap_or(rate),
            duration: args.duration.unwrap_or(duration),
            warmup: args.warmup.unwrap_or(warmup),
            timeout: Duration::from_secs(if args.quick { 5 } else { 10 }),
            connections: args.connections,
            max_connections: args.max_connections,
            body_size: args.body_size,
            out,
            bin_dir: args.bin_dir,
        })
    }
}

/// Runs `ferrule-bench run`.
pub(crate) async fn run_cli(args: RunArgs) -> Result<()> {
    let settings = Settings::from_args(args)?;
    // A signal becomes an error here so that `run` is dropped and with it the stack, whose
    // Drop kills every child; dying from the signal itself would leave them running.
    tokio::select! {
        result = run(&settings) => result,
        signal = interrupted() => Err(signal?.into()),
    }
}

async fn interrupted() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map(|()| "interrupted").map_err(Into::into),
        _ = terminate.recv() => Ok("terminated"),
    }
}

async fn run(settings: &Settings) -> Result<()> {
    let bins = Binaries::locate(settings.bin_dir.as_deref())?;
    let machine = Machine::detect();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let log_dir = settings.out.join("logs");
    eprintln!("starting the mesh (logs in {})", log_dir.display());
    let stack = MeshStack::start(&bins, &log_dir, settings.body_size).await?;
    let measured = measure(&stack, stack.targets(), settings).await;
    stack.shutdown().await;
    let (open_loop, max_throughput, memory) = measured?;

    let report = Report {
        started_unix_s,
        machine,
        settings: settings.clone(),
        open_loop,
        max_throughput,
        memory,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    let (json_path, md_path) = report.write(&settings.out, &markdown)?;
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

/// Everything `run` measures: open-loop rows, max-throughput rows, memory rows.
type Measured = (Vec<Measurement>, Vec<Measurement>, Vec<MemoryRow>);

async fn measure(stack: &MeshStack, targets: Vec<Target>, settings: &Settings) -> Result<Measured> {
    // Processes on every path (or none): reported for context, not charged to a target.
    let context = [
        ("upstream".to_string(), stack.upstream_pid),
        ("load generator".to_string(), std::process::id()),
        // Off the data path; listed so that unexpected control-plane work under load shows.
        ("control plane".to_string(), stack.control_pid),
    ];
    for target in &targets {
        probe(target).await?;
    }
    let idle: Vec<_> = stack
        .sidecars()
        .into_iter()
        .map(|(name, pid)| Ok((name, pid, memory(pid)?)))
        .collect::<Result<_>>()?;

    let mut open_loop = Vec::new();
    for target in &targets {
        eprintln!("open loop {:>7} rps -> {}", settings.rate, target.label);
        let mode = Mode::Open {
            rate: settings.rate,
        };
        let row = measure_one(target, mode, settings.connections, settings, &context).await?;
        open_loop.push(row);
        tokio::time::sleep(SETTLE).await;
    }
    // The two-sidecar run was the last open-loop run: sample now, before the closed loop
    // pushes the peaks higher.
    let memory_rows = idle
        .into_iter()
        .map(|(name, pid, idle)| {
            Ok(MemoryRow {
                process: name.to_string(),
                idle,
                after_load: memory(pid)?,
            })
        })
        .collect::<Result<_>>()?;

    let mut max_throughput = Vec::new();
    for target in targets.iter().filter(|t| t.max_rps) {
        eprintln!(
            "closed loop {} connections -> {}",
            settings.max_connections, target.label
        );
        let row = measure_one(
            target,
            Mode::Closed,
            settings.max_connections,
            settings,
            &context,
        )
        .await?;
        max_throughput.push(row);
        tokio::time::sleep(SETTLE).await;
    }

    add_overheads(&mut open_loop);
    add_overheads(&mut max_throughput);
    Ok((open_loop, max_throughput, memory_rows))
}

/// Waits until one request through `target` gets a 2xx.
async fn probe(target: &Target) -> Result<()> {
    let endpoint = Endpoint::resolve(&target.url, target.host.as_deref(), false, false).await?;
    poll_until(&format!("a 2xx through {}", target.label), || async {
        match get(&endpoint, Duration::from_secs(2)).await {
            Ok((status, _)) if status.is_success() => Ok(true),
            Ok((status, body)) => Err(format!(
                "{} answered {status}: {}",
                endpoint.describe(),
                String::from_utf8_lossy(&body).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// One load run against `target`, with the CPU time of every involved process sampled around
/// it. CPU covers warmup and measured window alike, so it is divided by every request completed
/// in both.
async fn measure_one(
    target: &Target,
    mode: Mode,
    connections: usize,
    settings: &Settings,
    context: &[(String, u32)],
) -> Result<Measurement> {
    let processes: Vec<(String, u32, bool)> = target
        .charged
        .iter()
        .map(|c| (c.name.clone(), c.pid, true))
        .chain(
            context
                .iter()
                .map(|(name, pid)| (name.clone(), *pid, false)),
        )
        .collect();
    let before = processes
        .iter()
        .map(|(_, pid, _)| cpu_seconds(*pid))
        .collect::<Result<Vec<_>>>()?;

    let spec = LoadSpec {
        endpoint: Endpoint::resolve(&target.url, target.host.as_deref(), false, false).await?,
        mode,
        connections,
        streams: 1,
        duration: settings.duration,
        warmup: settings.warmup,
        timeout: settings.timeout,
    };
    let report = load::run(&spec).await?;

    let mut cpu = Vec::with_capacity(processes.len());
    for ((name, pid, charged), before) in processes.into_iter().zip(before) {
        cpu.push(CpuUse {
            process: name,
            charged,
            seconds: cpu_seconds(pid)? - before,
        });
    }
    let charged_seconds: f64 = cpu.iter().filter(|c| c.charged).map(|c| c.seconds).sum();
    let cpu_s_per_1000_req = (!target.charged.is_empty() && report.completed_total > 0)
        .then(|| charged_seconds / (report.completed_total as f64 / 1000.0));
    if report.errors() > 0 {
        eprintln!(
            "  {} errors; first: {}",
            report.errors(),
            report.error_samples.first().map_or("-", String::as_str)
        );
    }
    Ok(Measurement {
        key: target.key,
        label: target.label.clone(),
        added_p50_ms: None,
        added_p99_ms: None,
        cpu,
        cpu_s_per_1000_req,
        load: report,
    })
}

/// Fills in the latency added over the first row (the direct baseline).
fn add_overheads(rows: &mut [Measurement]) {
    let Some((baseline, rest)) = rows.split_first_mut() else {
        return;
    };
    let base = baseline.load.latency_ms;
    for row in rest {
        row.added_p50_ms = Some(row.load.latency_ms.p50 - base.p50);
        row.added_p99_ms = Some(row.load.latency_ms.p99 - base.p99);
    }
}
