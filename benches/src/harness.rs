//! `ferrule-bench run`: the measurement plan.
//!
//! Starts the upstream, then whatever the selected targets need (the Ferrule mesh; nginx and
//! HAProxy, installed first if missing; TLS material), and measures every target the same way,
//! one run after another (never overlapping: they share the machine's cores):
//!
//! 1. every proxy process's memory while idle;
//! 2. for each protocol: the Ferrule Service switched to it (both sidecars confirm), a probe
//!    request through every target (a broken path is reported once, and its rows skipped,
//!    instead of producing rows of errors), then open loop at each rate in `rounds` rounds,
//!    each taking every target in turn for `duration / rounds`, then closed loop (maximum
//!    throughput) against each target — with the CPU time of every involved process sampled
//!    around each run. An open-loop row's latency percentiles are the medians over its rounds:
//!    on two shared cores the machine stalls for a few milliseconds now and then (direct runs
//!    show it), and interleaved rounds spread such stalls over every target instead of
//!    charging them to whichever row ran then. The rounds' starting target rotates, so no
//!    target always runs right after another;
//! 3. every proxy process's memory at the end (RSS now, and VmHWM: the peak over all runs);
//! 4. with every load process stopped, the control-plane fan-out at each N (see `fanout`).
//!
//! A row that cannot be measured (a target that fails its probe, a run where not one request
//! succeeded) is recorded as a failure; the report is written anyway and the command exits
//! non-zero. Slow numbers are never a failure.

use std::time::Duration;

use crate::cli::RunArgs;
use crate::client::{once, Endpoint};
use crate::fanout;
use crate::load::{self, LoadSpec, Mode};
use crate::peers::{self, Kind, Peer, Plan};
use crate::procs::{cpu_seconds, memory, Supervisor};
use crate::protocol::Protocol;
use crate::report::{
    CpuUse, Failure, Machine, Measurement, MemoryRow, Report, Settings, Skipped, TargetInfo,
};
use crate::stack::{poll_until, start_upstream, Binaries, MeshStack, TempDir, Upstream};
use crate::target::{Charged, Family, Lane, Target, TargetKey};
use crate::tls;
use crate::Result;

/// Longest warmup of an open-loop round after the first.
const REWARM: Duration = Duration::from_millis(500);
/// Shortest open-loop round: at 1000 rps, 500 requests.
const MIN_ROUND: Duration = Duration::from_millis(500);

impl Settings {
    fn from_args(args: RunArgs) -> Result<Self> {
        let quick = args.quick;
        let or = |given: Option<Duration>, full: Duration, short: Duration| {
            given.unwrap_or(if quick { short } else { full })
        };
        let out = match args.out {
            Some(out) => out,
            None => default_out_dir()?,
        };
        let mut targets = if args.targets.is_empty() {
            TargetKey::ALL.to_vec()
        } else {
            args.targets
        };
        targets.sort_unstable();
        targets.dedup();
        let mut protocols = if args.protocols.is_empty() {
            Protocol::ALL.to_vec()
        } else {
            args.protocols
        };
        protocols.sort_unstable();
        protocols.dedup();
        let rates = match (args.rates.is_empty(), quick) {
            (false, _) => args.rates,
            (true, true) => vec![200.0],
            (true, false) => vec![1000.0, 5000.0],
        };
        if rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
            return Err("--rates must all be above 0".into());
        }
        let fanout = match (args.no_fanout, args.fanout.is_empty(), quick) {
            (true, _, _) => Vec::new(),
            (false, false, _) => args.fanout,
            (false, true, true) => vec![100],
            (false, true, false) => vec![100, 1000],
        };
        if args.proxy_threads == 0 || args.streams == 0 {
            return Err("--proxy-threads and --streams must be at least 1".into());
        }
        let warmup = or(
            args.warmup,
            Duration::from_secs(2),
            Duration::from_millis(500),
        );
        let rounds = args.rounds.unwrap_or(if quick { 1 } else { 5 });
        let duration = or(
            args.duration,
            Duration::from_secs(15),
            Duration::from_secs(2),
        );
        let round = u32::try_from(rounds)
            .ok()
            .filter(|r| *r > 0)
            .map(|r| duration / r);
        if round.is_none_or(|round| round < MIN_ROUND) {
            return Err(format!(
                "--rounds must be at least 1 and leave at least {MIN_ROUND:?} of --duration per round"
            )
            .into());
        }
        Ok(Settings {
            quick,
            targets,
            protocols,
            rates,
            duration,
            max_duration: or(
                args.max_duration,
                Duration::from_secs(10),
                Duration::from_secs(1),
            ),
            warmup,
            rounds,
            rewarm: REWARM.min(warmup),
            timeout: Duration::from_secs(if quick { 5 } else { 10 }),
            connections: args.connections,
            max_connections: args.max_connections,
            streams: args.streams,
            proxy_threads: args.proxy_threads,
            ferrule_sched_slice: args.ferrule_sched_slice,
            fanout,
            install: !args.no_install,
            body_size: args.body_size,
            settle: Duration::from_millis(if quick { 200 } else { 500 }),
            out,
            bin_dir: args.bin_dir,
        })
    }

    /// Measured time of one open-loop round.
    fn round_duration(&self) -> Duration {
        // `from_args` checked that `rounds` fits a u32 and leaves at least `MIN_ROUND`.
        self.duration / u32::try_from(self.rounds).unwrap_or(1)
    }

    /// Connections and streams per connection for `in_flight` requests of `protocol`:
    /// HTTP/1.1 needs a connection per request; h2 multiplexes `streams` per connection.
    fn connections_for(&self, protocol: Protocol, in_flight: usize) -> (usize, usize) {
        if protocol.is_h2() {
            let streams = self.streams.min(in_flight).max(1);
            (in_flight.div_ceil(streams), streams)
        } else {
            (in_flight, 1)
        }
    }
}

/// The default `--out`: `target/bench-results`, beside the release directory that holds this
/// executable (target/release/ferrule-bench -> target/bench-results).
pub(crate) fn default_out_dir() -> Result<std::path::PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .and_then(|release| release.parent())
        .ok_or("cannot derive the default --out directory; pass --out")?
        .join("bench-results"))
}

/// Runs `ferrule-bench run`.
pub(crate) async fn run_cli(args: RunArgs) -> Result<()> {
    let settings = Settings::from_args(args)?;
    // A signal becomes an error here so that `run` is dropped and with it the supervisors,
    // whose Drop kills every child; dying from the signal itself would leave them running.
    tokio::select! {
        result = run(&settings) => result,
        signal = interrupted() => Err(signal?.into()),
    }
}

/// Resolves when the process gets Ctrl-C or SIGTERM, so that the caller can drop (and so
/// kill) its children instead of dying with them still running.
pub(crate) async fn interrupted() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map(|()| "interrupted").map_err(Into::into),
        _ = terminate.recv() => Ok("terminated"),
    }
}

/// The command line as typed, quoted for a shell where needed.
pub(crate) fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The open-files limit the fan-out needs: a socket per simulated proxy plus headroom.
fn ensure_open_files(fanout: &[usize]) -> Result<()> {
    let Some(&largest) = fanout.iter().max() else {
        return Ok(());
    };
    let needed = largest as u64 + 1024;
    // Raise the soft limit to the hard one; children (the control plane) inherit it.
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot read or raise the open-files limit: {e}"))?;
    if limit < needed {
        return Err(format!(
            "the open-files limit is {limit}, and the fan-out to {largest} proxies needs about \
             {needed}: raise it (`ulimit -n {needed}`, as root if the hard limit is lower) or \
             pass smaller --fanout sizes"
        )
        .into());
    }
    Ok(())
}

async fn run(settings: &Settings) -> Result<()> {
    let bins = Binaries::locate(settings.bin_dir.as_deref())?;
    ensure_open_files(&settings.fanout)?;
    let machine = Machine::detect();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let log_dir = settings.out.join("logs");
    let dir = TempDir::new()?;
    let mut report = Report {
        started_unix_s,
        command: command_line(),
        machine,
        settings: settings.clone(),
        software: Vec::new(),
        targets: Vec::new(),
        open_loop: Vec::new(),
        max_throughput: Vec::new(),
        memory: Vec::new(),
        fanout: Vec::new(),
        skipped: Vec::new(),
        failures: Vec::new(),
    };

    eprintln!(
        "starting the system under test (logs in {})",
        log_dir.display()
    );
    let mut supervisor = Supervisor::new(&log_dir)?;
    let measured = measure_load(&mut supervisor, &bins, &dir, settings, &mut report).await;
    // Stop every load-path process before the fan-out, which needs the cores to itself.
    supervisor.shutdown().await;
    measured?;

    for &n in &settings.fanout {
        eprintln!("control-plane fan-out to {n} simulated proxies");
        match fanout::measure(&bins, &log_dir, dir.path(), n).await {
            Ok(row) => report.fanout.push(row),
            Err(e) => {
                eprintln!("  failed: {e}");
                report.failures.push(Failure {
                    what: format!("fan-out to {n} proxies"),
                    error: e.to_string(),
                });
            }
        }
    }

    let markdown = report.markdown();
    println!("{markdown}");
    let (json_path, md_path) = report.write(&settings.out, &markdown)?;
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} measurement(s) failed (listed in the report): {}",
            report.failures.len(),
            report
                .failures
                .iter()
                .map(|f| f.what.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )
        .into())
    }
}

/// Starts everything the targets need and runs every load measurement into `report`.
async fn measure_load(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    dir: &TempDir,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let wanted = &settings.targets;
    let upstream = start_upstream(supervisor, bins, settings.body_size).await?;

    // Ferrule: a plaintext mesh and a mesh with mutual TLS between its sidecars, each with
    // its own control plane, as the selected targets need.
    let plaintext_wanted = wanted
        .iter()
        .any(|t| matches!(t, TargetKey::Ferrule1 | TargetKey::Ferrule2));
    let mtls_wanted = wanted.contains(&TargetKey::Ferrule2Mtls);
    let mut meshes = Vec::new();
    for (mtls, name) in [(false, "ferrule"), (true, "ferrule-mtls")] {
        if !(if mtls { mtls_wanted } else { plaintext_wanted }) {
            continue;
        }
        let mesh = MeshStack::start(
            supervisor,
            bins,
            &dir.path().join(name),
            upstream.addr,
            settings.proxy_threads,
            settings.ferrule_sched_slice.as_deref(),
            settings.protocols[0],
            mtls,
        )
        .await?;
        meshes.push(mesh);
    }
    if let Some(mesh) = meshes.first() {
        let slice = match &settings.ferrule_sched_slice {
            Some(slice) => format!(" --sched-slice {slice}"),
            None => " (--sched-slice off, its default)".into(),
        };
        report.software.push(match mesh.threads {
            Some(n) => format!("ferrule-proxy --threads {n}{slice}"),
            None => format!("ferrule-proxy{slice} (no --threads flag in this build: its default)"),
        });
    }

    // Peers: install if needed, then start.
    let kinds: Vec<Kind> = [Kind::Nginx, Kind::Haproxy]
        .into_iter()
        .filter(|k| k.targets().iter().any(|t| wanted.contains(t)))
        .collect();
    let found = peers::ensure_installed(&kinds, settings.install, supervisor.log_dir()).await;
    let mut available = Vec::new();
    for kind in kinds {
        match &found[kind.program()] {
            Ok(binary) => available.push((kind, binary.clone())),
            Err(reason) => {
                eprintln!("  {}: {reason}; its rows are left out", kind.program());
                for target in kind.targets().into_iter().filter(|t| wanted.contains(t)) {
                    report.skipped.push(Skipped {
                        target,
                        reason: reason.clone(),
                    });
                }
            }
        }
    }
    let tls = if available.iter().any(|(kind, _)| {
        kind.targets()
            .iter()
            .any(|t| t.uses_tls() && wanted.contains(t))
    }) {
        Some(tls::generate(&dir.path().join("tls"))?)
    } else {
        None
    };
    let mut started_peers = Vec::new();
    for (kind, binary) in available {
        let plan = Plan::new(
            kind,
            wanted,
            &settings.protocols,
            upstream.addr,
            settings.proxy_threads,
        )?;
        let peer = Peer::start(supervisor, &binary, plan, dir.path(), tls.as_ref()).await?;
        report.software.push(format!(
            "{} ({} {})",
            peer.version,
            match kind {
                Kind::Nginx => "worker_processes",
                Kind::Haproxy => "nbthread",
            },
            settings.proxy_threads
        ));
        started_peers.push(peer);
    }

    // The targets, in report order.
    let mut targets = Vec::new();
    if wanted.contains(&TargetKey::Direct) {
        targets.push(direct(&upstream, &settings.protocols));
    }
    for mesh in &meshes {
        targets.extend(mesh.targets(wanted, &settings.protocols));
    }
    for peer in &started_peers {
        targets.extend(peer.targets());
    }
    targets.sort_by_key(|t| t.key);
    report.targets = targets
        .iter()
        .map(|t| TargetInfo {
            key: t.key,
            label: t.key.label().into(),
            paths: t
                .lanes
                .iter()
                .map(|(p, lane)| (*p, lane.path.clone()))
                .collect(),
            processes: t.charged.clone(),
        })
        .collect();

    // Idle memory of every proxy process.
    let processes = proxy_processes(&targets);
    let idle: Vec<_> = processes
        .iter()
        .map(|p| memory(p.pid).map(|m| (p.clone(), m)))
        .collect::<Result<_>>()?;

    let context = [
        ("upstream".to_string(), upstream.pid),
        ("load generator".to_string(), std::process::id()),
    ]
    .into_iter()
    .chain(
        meshes
            .iter()
            // Off the data path; listed so that unexpected control-plane work under load shows.
            .map(|m| (m.control_label().to_string(), m.control_pid)),
    )
    .collect::<Vec<_>>();

    for &protocol in &settings.protocols {
        for mesh in &mut meshes {
            mesh.use_protocol(protocol).await?;
        }
        let mut ready = Vec::new();
        for target in &targets {
            match probe(target, protocol).await {
                Ok(()) => ready.push(target),
                Err(e) => {
                    eprintln!("  {} over {protocol} does not work: {e}", target.key);
                    report.failures.push(Failure {
                        what: format!("{} over {protocol}: probe", target.key),
                        error: e.to_string(),
                    });
                }
            }
        }
        for &rate in &settings.rates {
            // Round-robin over the targets, so that a noisy stretch of the shared CPUs falls on
            // one slice of every target rather than on a whole row (see `Settings::rounds`).
            let mut rounds: Vec<Result<Vec<Measurement>>> =
                ready.iter().map(|_| Ok(Vec::new())).collect();
            let (connections, streams) = settings.connections_for(protocol, settings.connections);
            let n = ready.len();
            for round in 0..settings.rounds {
                for i in (0..n).map(|i| (i + round) % n) {
                    let (target, measured) = (ready[i], &mut rounds[i]);
                    let Ok(done) = measured else { continue };
                    eprintln!(
                        "open loop   {protocol:<5} {rate:>6} rps -> {} (round {}/{})",
                        target.key.label(),
                        round + 1,
                        settings.rounds
                    );
                    let run = Run {
                        mode: Mode::Open { rate },
                        connections,
                        streams,
                        duration: settings.round_duration(),
                        warmup: if round == 0 {
                            settings.warmup
                        } else {
                            settings.rewarm
                        },
                    };
                    match measure_one(target, protocol, run, settings, &context).await {
                        Ok(row) => done.push(row),
                        // A failed round fails the row; its other rounds are not run.
                        Err(e) => *measured = Err(e),
                    }
                    tokio::time::sleep(settings.settle).await;
                }
            }
            for (target, measured) in ready.iter().zip(rounds) {
                record(
                    measured.and_then(|rows| {
                        Measurement::combine(rows).ok_or_else(|| "no round was run".into())
                    }),
                    &mut report.open_loop,
                    &mut report.failures,
                    format!("{} over {protocol} at {rate} rps", target.key),
                );
            }
        }
        for target in &ready {
            eprintln!(
                "closed loop {protocol:<5} {:>3} in flight -> {}",
                settings.max_connections,
                target.key.label()
            );
            let (connections, streams) =
                settings.connections_for(protocol, settings.max_connections);
            let run = Run {
                mode: Mode::Closed,
                connections,
                streams,
                duration: settings.max_duration,
                warmup: settings.warmup,
            };
            record(
                measure_one(target, protocol, run, settings, &context).await,
                &mut report.max_throughput,
                &mut report.failures,
                format!("{} over {protocol}, closed loop", target.key),
            );
            tokio::time::sleep(settings.settle).await;
        }
    }

    report.memory = idle
        .into_iter()
        .map(|(process, idle)| {
            Ok(MemoryRow {
                targets: targets
                    .iter()
                    .filter(|t| t.charged.iter().any(|c| c.pid == process.pid))
                    .map(|t| t.key)
                    .collect(),
                end: memory(process.pid)?,
                process: process.name,
                idle,
            })
        })
        .collect::<Result<_>>()?;
    add_overheads(&mut report.open_loop);
    add_overheads(&mut report.max_throughput);
    Ok(())
}

/// Keeps a measured row, or records why it could not be measured.
fn record(
    result: Result<Measurement>,
    rows: &mut Vec<Measurement>,
    failures: &mut Vec<Failure>,
    what: String,
) {
    match result {
        Ok(row) if row.load.ok == 0 => {
            let error = format!(
                "no request succeeded ({} errors; {})",
                row.load.errors(),
                row.load.error_samples.join("; ")
            );
            eprintln!("  {error}");
            failures.push(Failure { what, error });
            rows.push(row);
        }
        Ok(row) => rows.push(row),
        Err(e) => {
            eprintln!("  failed: {e}");
            failures.push(Failure {
                what,
                error: e.to_string(),
            });
        }
    }
}

/// The upstream itself, for every protocol.
fn direct(upstream: &Upstream, protocols: &[Protocol]) -> Target {
    Target {
        key: TargetKey::Direct,
        lanes: protocols
            .iter()
            .map(|&p| {
                let wire = match p {
                    Protocol::Http1 => "HTTP/1.1",
                    Protocol::Http2 => "h2c",
                    Protocol::Grpc => "gRPC/h2c",
                };
                let lane = Lane {
                    addr: upstream.addr,
                    path: format!("client → {wire} → upstream"),
                };
                (p, lane)
            })
            .collect(),
        host: None,
        charged: Vec::new(),
    }
}

/// Every distinct process charged to some target.
fn proxy_processes(targets: &[Target]) -> Vec<Charged> {
    let mut out: Vec<Charged> = Vec::new();
    for target in targets {
        for c in &target.charged {
            if !out.iter().any(|o| o.pid == c.pid) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// Waits until one request of `protocol` through `target` succeeds.
async fn probe(target: &Target, protocol: Protocol) -> Result<()> {
    let url = target
        .url(protocol)
        .ok_or_else(|| format!("{} does not serve {protocol}", target.key))?;
    let endpoint = Endpoint::resolve(&url, target.host.as_deref(), protocol, false).await?;
    poll_until(
        &format!("a successful {protocol} request through {}", target.key),
        || async {
            once(&endpoint, Duration::from_secs(2))
                .await
                .map(|()| true)
                .map_err(|e| format!("{}: {e}", endpoint.describe()))
        },
    )
    .await
}

/// The shape of one load run.
struct Run {
    mode: Mode,
    connections: usize,
    streams: usize,
    duration: Duration,
    warmup: Duration,
}

/// One load run against `target`, with the CPU time of every involved process sampled around
/// it. CPU covers warmup and measured window alike, so it is divided by every request completed
/// in both.
async fn measure_one(
    target: &Target,
    protocol: Protocol,
    run: Run,
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

    let url = target
        .url(protocol)
        .ok_or_else(|| format!("{} does not serve {protocol}", target.key))?;
    let spec = LoadSpec {
        endpoint: Endpoint::resolve(&url, target.host.as_deref(), protocol, false).await?,
        mode: run.mode,
        connections: run.connections,
        streams: run.streams,
        duration: run.duration,
        warmup: run.warmup,
        timeout: settings.timeout,
        timeline: false,
        window_start: None,
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
    let rate = match run.mode {
        Mode::Open { rate } => Some(rate),
        Mode::Closed => None,
    };
    Ok(Measurement {
        key: target.key,
        label: target.key.label().into(),
        protocol,
        rate,
        family_direct: target.key.family() == Family::Direct,
        added_p50_ms: None,
        added_p99_ms: None,
        added_p99_round_median_ms: None,
        cpu,
        cpu_s_per_1000_req,
        // A run without a successful request has no latency to show.
        p99_rounds_ms: (report.ok > 0)
            .then_some(report.latency_ms.p99)
            .into_iter()
            .collect(),
        load: report,
    })
}

/// Fills in the latency added over the direct run of the same protocol and rate: p50 and p99
/// over all requests of the rows (the headline figures), and the p99 as the median of the
/// rounds' p99s beside it.
fn add_overheads(rows: &mut [Measurement]) {
    type Base = (crate::load::Percentiles, crate::load::Percentiles);
    let baselines: Vec<(Protocol, Option<f64>, Base)> = rows
        .iter()
        .filter(|r| r.family_direct && r.load.ok > 0)
        .map(|r| {
            let base = (r.load.latency_all_ms, r.load.latency_ms);
            (r.protocol, r.rate, base)
        })
        .collect();
    for row in rows.iter_mut().filter(|r| !r.family_direct) {
        let base = baselines
            .iter()
            .find(|(p, rate, _)| *p == row.protocol && *rate == row.rate);
        if let (Some((_, _, (all, rounds))), true) = (base, row.load.ok > 0) {
            row.added_p50_ms = Some(row.load.latency_all_ms.p50 - all.p50);
            row.added_p99_ms = Some(row.load.latency_all_ms.p99 - all.p99);
            row.added_p99_round_median_ms = Some(row.load.latency_ms.p99 - rounds.p99);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["ferrule-bench", "run", "--out", "/tmp/x"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run")
        };
        Settings::from_args(args).unwrap()
    }

    #[test]
    fn defaults_cover_everything_and_quick_is_short() {
        let full = settings(&[]);
        assert_eq!(full.targets.len(), TargetKey::ALL.len());
        assert_eq!(full.protocols, Protocol::ALL);
        assert_eq!(full.rates, [1000.0, 5000.0]);
        assert!(full.duration >= Duration::from_secs(15));
        assert_eq!(full.fanout, [100, 1000]);
        let quick = settings(&["--quick"]);
        assert_eq!(quick.targets.len(), TargetKey::ALL.len());
        assert_eq!(quick.rates, [200.0]);
        assert_eq!(quick.fanout, [100]);
        assert!(quick.duration <= Duration::from_secs(2));
        let subset = settings(&["--targets", "nginx-2,direct", "--no-fanout"]);
        assert_eq!(subset.targets, [TargetKey::Direct, TargetKey::Nginx2]);
        assert!(subset.fanout.is_empty());
    }

    #[test]
    fn h2_in_flight_is_spread_over_multiplexed_connections() {
        let s = settings(&[]);
        assert_eq!(s.connections_for(Protocol::Http1, 32), (32, 1));
        assert_eq!(s.connections_for(Protocol::Http2, 32), (4, 8));
        assert_eq!(s.connections_for(Protocol::Grpc, 64), (8, 8));
        assert_eq!(s.connections_for(Protocol::Grpc, 3), (1, 3));
    }
}
