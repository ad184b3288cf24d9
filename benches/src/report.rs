//! The results of `ferrule-bench run`: what machine ran them and how, the rows measured, and
//! their two renderings — a markdown summary (printed and saved) and the full JSON (saved),
//! both in the `--out` directory under one timestamped name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::fanout::FanoutRow;
use crate::load::LoadReport;
use crate::procs::Memory;
use crate::protocol::Protocol;
use crate::target::{Charged, TargetKey};
use crate::Result;

/// CPU time one process used during one run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CpuUse {
    /// Process name, e.g. `client sidecar`.
    pub(crate) process: String,
    /// Whether it counts toward the target's CPU per request (proxies do; the upstream and the
    /// load generator are on every path and are listed for context).
    pub(crate) charged: bool,
    /// User + system seconds.
    pub(crate) seconds: f64,
}

/// The resolved parameters of a harness run (`harness.rs` makes them from the flags) (flags with `--quick` and defaults applied).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Settings {
    /// Short smoke-test runs.
    pub(crate) quick: bool,
    /// Targets, in report order.
    pub(crate) targets: Vec<TargetKey>,
    /// Protocols, in report order.
    pub(crate) protocols: Vec<Protocol>,
    /// Open-loop rates, requests per second.
    pub(crate) rates: Vec<f64>,
    /// Measured duration of every open-loop run, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) duration: Duration,
    /// Measured duration of every closed-loop run, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) max_duration: Duration,
    /// Warmup of every run (of the first round of an open-loop row), seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) warmup: Duration,
    /// Open-loop rounds: every open-loop row is measured in this many slices of
    /// `duration / rounds`, interleaved with the other targets' slices.
    pub(crate) rounds: usize,
    /// Warmup of every open-loop round after the first, seconds: the proxies' pools are warm
    /// by then, only the load generator's new connections need it.
    #[serde(serialize_with = "seconds")]
    pub(crate) rewarm: Duration,
    /// Per-request timeout, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) timeout: Duration,
    /// Open-loop requests in flight.
    pub(crate) connections: usize,
    /// Closed-loop requests in flight.
    pub(crate) max_connections: usize,
    /// HTTP/2 and gRPC requests per connection.
    pub(crate) streams: usize,
    /// Worker threads/processes of every proxy.
    pub(crate) proxy_threads: usize,
    /// `--sched-slice` for the Ferrule sidecars, when not their default.
    pub(crate) ferrule_sched_slice: Option<String>,
    /// Fan-out sizes.
    pub(crate) fanout: Vec<usize>,
    /// Whether missing peers may be installed with apt-get.
    pub(crate) install: bool,
    /// Upstream response body size, bytes.
    pub(crate) body_size: usize,
    /// Pause between runs, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) settle: Duration,
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

/// One load run against one target.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Measurement {
    /// Target key, e.g. `ferrule-2`.
    pub(crate) key: TargetKey,
    /// Row label, e.g. `Ferrule, 2 sidecars`.
    pub(crate) label: String,
    /// The protocol the load generator spoke.
    pub(crate) protocol: Protocol,
    /// Open-loop rate (absent for closed loop).
    pub(crate) rate: Option<f64>,
    /// Whether this is the direct baseline.
    #[serde(skip)]
    pub(crate) family_direct: bool,
    /// What the load generator measured.
    pub(crate) load: LoadReport,
    /// p50 minus the direct run's p50 (same protocol and rate), over all requests, ms.
    pub(crate) added_p50_ms: Option<f64>,
    /// p99 minus the direct run's p99, over all requests, ms: the headline figure.
    pub(crate) added_p99_ms: Option<f64>,
    /// The median of the rounds' p99s minus the direct run's, ms (open loop in rounds).
    pub(crate) added_p99_round_median_ms: Option<f64>,
    /// CPU time of each involved process during the run (warmup included).
    pub(crate) cpu: Vec<CpuUse>,
    /// Charged CPU seconds per 1000 completed requests (= vCPUs per 1000 rps); absent when
    /// nothing is charged.
    pub(crate) cpu_s_per_1000_req: Option<f64>,
    /// The p99 of each round, in the order run (one entry for a run measured in one go).
    pub(crate) p99_rounds_ms: Vec<f64>,
}

impl Measurement {
    /// One row for several rounds of the same target, protocol and rate: the load reports are
    /// combined (`LoadReport::combine`: counts add up, latency quantiles are medians over
    /// rounds), CPU seconds add up per process and are divided by every request of every round.
    /// `None` for no rounds.
    pub(crate) fn combine(rounds: Vec<Measurement>) -> Option<Measurement> {
        let loads: Vec<LoadReport> = rounds.iter().map(|r| r.load.clone()).collect();
        let load = LoadReport::combine(&loads)?;
        let mut combined = rounds.first()?.clone();
        for (i, cpu) in combined.cpu.iter_mut().enumerate() {
            cpu.seconds = rounds
                .iter()
                .filter_map(|r| r.cpu.get(i))
                .map(|c| c.seconds)
                .sum();
        }
        let charged: f64 = combined
            .cpu
            .iter()
            .filter(|c| c.charged)
            .map(|c| c.seconds)
            .sum();
        let any_charged = combined.cpu.iter().any(|c| c.charged);
        combined.cpu_s_per_1000_req = (any_charged && load.completed_total > 0)
            .then(|| charged / (load.completed_total as f64 / 1000.0));
        combined.p99_rounds_ms = rounds
            .iter()
            .flat_map(|r| r.p99_rounds_ms.iter().copied())
            .collect();
        combined.load = load;
        Some(combined)
    }
}

/// Memory of one proxy process.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MemoryRow {
    /// Which process, e.g. `nginx-client worker 1`.
    pub(crate) process: String,
    /// The targets it is on.
    pub(crate) targets: Vec<TargetKey>,
    /// Before any load.
    pub(crate) idle: Memory,
    /// After every run: RSS now, and the peak over the whole run (VmHWM).
    pub(crate) end: Memory,
}

/// A target, the hops it has for each protocol, and its processes.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetInfo {
    /// Key.
    pub(crate) key: TargetKey,
    /// Label.
    pub(crate) label: String,
    /// Per protocol, what each hop speaks.
    pub(crate) paths: BTreeMap<Protocol, String>,
    /// Processes charged to it.
    pub(crate) processes: Vec<Charged>,
}

/// A selected target that was not run, and why.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Skipped {
    /// Which.
    pub(crate) target: TargetKey,
    /// Why (a peer that could not be installed, a feature not built yet).
    pub(crate) reason: String,
}

/// A measurement that could not be made.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Failure {
    /// Which measurement.
    pub(crate) what: String,
    /// What went wrong.
    pub(crate) error: String,
}

/// The machine the numbers come from; results from different machines do not compare.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    /// CPUs this process may use (what `nproc` prints).
    pub(crate) nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// Memory, from /proc/meminfo, in MiB.
    pub(crate) memory_mib: u64,
    /// Kernel release.
    pub(crate) kernel: String,
    /// /proc/loadavg when the run started: other work on the machine skews results.
    pub(crate) load_average_at_start: String,
}

impl Machine {
    /// Reads the description from /proc; unknown fields say so rather than failing the run.
    pub(crate) fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let loadavg = read("/proc/loadavg");
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_average_at_start: loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Everything one `ferrule-bench run` produced.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// Start time, seconds since the Unix epoch.
    pub(crate) started_unix_s: u64,
    /// The command that produced it.
    pub(crate) command: String,
    /// Where it ran.
    pub(crate) machine: Machine,
    /// With which parameters.
    pub(crate) settings: Settings,
    /// Versions and worker settings of the proxies.
    pub(crate) software: Vec<String>,
    /// The targets measured and their hops.
    pub(crate) targets: Vec<TargetInfo>,
    /// Open-loop runs.
    pub(crate) open_loop: Vec<Measurement>,
    /// Closed-loop runs.
    pub(crate) max_throughput: Vec<Measurement>,
    /// Memory of every proxy process.
    pub(crate) memory: Vec<MemoryRow>,
    /// Control-plane fan-out.
    pub(crate) fanout: Vec<FanoutRow>,
    /// Targets selected but not run.
    pub(crate) skipped: Vec<Skipped>,
    /// Measurements that failed.
    pub(crate) failures: Vec<Failure>,
}

impl Report {
    /// The human summary: machine, command, parameters, paths, the latency tables, max
    /// throughput, memory, fan-out, and what was not run.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let m = &self.machine;
        // Writing to a String cannot fail; the results are ignored for readability.
        let _ = writeln!(
            md,
            "## Ferrule load benchmark{}\n",
            if s.quick {
                " (quick: checks the harness, the numbers mean little)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "Machine: {} CPUs (nproc), {}, {:.0} GiB, Linux {}; load average at start {}. \
             Load generator, upstream and proxies share these CPUs.  ",
            m.nproc,
            m.cpu_model,
            m.memory_mib as f64 / 1024.0,
            m.kernel,
            m.load_average_at_start
        );
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        if !self.software.is_empty() {
            let _ = writeln!(md, "Proxies: {}.  ", self.software.join("; "));
        }
        let _ = writeln!(
            md,
            "\nOpen loop: {} s measured per row in {} round(s) that take the targets in turn \
             ({} s warmup before the first round, {} s before the others); latency \
             percentiles are over all requests of the row, as other load tools report them; \
             *p99, median of rounds* is the median of the rounds' p99s (less moved by a stall \
             that lands in one round), and *p99 by round* gives the spread. {} requests in \
             flight at \
             most (HTTP/1.1: one connection each; HTTP/2 and gRPC: {} streams per connection), \
             {}-byte responses. Latency in ms from each request's intended send time \
             (coordinated-omission corrected); *added* is over direct at the same protocol and \
             rate. CPU is the user+system time of every process of the target (both hops; \
             nginx master and workers) from /proc, per 1000 requests (= vCPUs per 1000 rps), \
             over warmup and measured window.\n",
            s.duration.as_secs_f64(),
            s.rounds,
            s.warmup.as_secs_f64(),
            s.rewarm.as_secs_f64(),
            s.connections,
            s.streams,
            s.body_size,
        );

        self.paths_table(&mut md);
        for &protocol in &s.protocols {
            let rows: Vec<&Measurement> = self
                .open_loop
                .iter()
                .filter(|r| r.protocol == protocol)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(md, "### Open loop, {}\n", protocol.label());
            md.push_str(
                "| target | rate | rps achieved | p50 | p90 | p99 | p99.9 | added p50 | added p99 | p99, median of rounds | added p99, median of rounds | p99 by round | errors | CPU s/1000 req |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
            );
            for row in rows {
                let l = &row.load.latency_all_ms;
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} | {} | {} | {} | {} |",
                    row.label,
                    row.rate.map_or("–".into(), |r| format!("{r}")),
                    row.load.rps,
                    l.p50,
                    l.p90,
                    l.p99,
                    l.p99_9,
                    signed(row.added_p50_ms),
                    signed(row.added_p99_ms),
                    row.load.latency_ms.p99,
                    signed(row.added_p99_round_median_ms),
                    spread(&row.p99_rounds_ms),
                    errors(&row.load),
                    cpu(row.cpu_s_per_1000_req),
                );
            }
            md.push('\n');
        }
        self.max_table(&mut md);
        self.memory_table(&mut md);
        self.fanout_table(&mut md);
        if !self.skipped.is_empty() || !self.failures.is_empty() {
            md.push_str("### Not measured\n\n");
            for skipped in &self.skipped {
                let _ = writeln!(md, "- {}: {}", skipped.target.label(), skipped.reason);
            }
            for failure in &self.failures {
                let _ = writeln!(md, "- FAILED {}: {}", failure.what, failure.error);
            }
            md.push('\n');
        }
        md
    }

    fn paths_table(&self, md: &mut String) {
        if self.targets.is_empty() {
            return;
        }
        let protocols = &self.settings.protocols;
        md.push_str("### What each hop speaks\n\n| target |");
        for p in protocols {
            let _ = write!(md, " {} |", p.label());
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(protocols.len()));
        md.push('\n');
        for t in &self.targets {
            let _ = write!(md, "| {} |", t.label);
            for p in protocols {
                let _ = write!(md, " {} |", t.paths.get(p).map_or("–", String::as_str));
            }
            md.push('\n');
        }
        md.push('\n');
    }

    fn max_table(&self, md: &mut String) {
        if self.max_throughput.is_empty() {
            return;
        }
        let s = &self.settings;
        let _ = writeln!(
            md,
            "### Max throughput (closed loop, {} requests in flight, {} s)\n",
            s.max_connections,
            s.max_duration.as_secs_f64()
        );
        md.push_str(
            "| target | protocol | rps | of direct | p50 | p99 | errors | CPU s/1000 req |\n\
             |---|---|---:|---:|---:|---:|---|---:|\n",
        );
        for row in &self.max_throughput {
            let direct = self
                .max_throughput
                .iter()
                .find(|r| r.family_direct && r.protocol == row.protocol);
            let share = match direct {
                Some(d) if !row.family_direct && d.load.rps > 0.0 => {
                    format!("{:.0}%", 100.0 * row.load.rps / d.load.rps)
                }
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {share} | {:.3} | {:.3} | {} | {} |",
                row.label,
                row.protocol,
                row.load.rps,
                row.load.latency_ms.p50,
                row.load.latency_ms.p99,
                errors(&row.load),
                cpu(row.cpu_s_per_1000_req),
            );
        }
        md.push('\n');
    }

    fn memory_table(&self, md: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        md.push_str(
            "### Memory per proxy process\n\n\
             | process | targets | idle RSS | RSS at end | peak RSS (VmHWM) |\n\
             |---|---|---:|---:|---:|\n",
        );
        for row in &self.memory {
            let targets: Vec<&str> = row.targets.iter().map(|t| t.key()).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                row.process,
                targets.join(", "),
                mib(row.idle.rss_kib),
                mib(row.end.rss_kib),
                mib(row.end.hwm_kib)
            );
        }
        md.push('\n');
    }

    fn fanout_table(&self, md: &mut String) {
        if self.fanout.is_empty() {
            return;
        }
        md.push_str(
            "### Control-plane fan-out: one policy change to N proxies\n\n\
             Each simulated proxy has its own HTTP/2 connection and push stream, registers its \
             endpoint, ACKs every snapshot and heartbeats; the clock starts before \
             `POST /v1/apply`. *ACKs visible*: until `GET /v1/proxies` (polled every 20 ms) \
             shows every ACK.\n\n\
             | proxies | connections | snapshot | received p50 | p99 | all received | all ACKs visible | control plane RSS before | after | peak |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.fanout {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} KiB | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
                row.proxies,
                row.connections,
                row.snapshot_bytes as f64 / 1024.0,
                row.received_ms.p50,
                row.received_ms.p99,
                row.received_ms.max,
                row.all_acked_visible_ms,
                mib(row.control_plane_before.rss_kib),
                mib(row.control_plane_after.rss_kib),
                mib(row.control_plane_after.hwm_kib),
            );
        }
        md.push('\n');
    }

    /// Writes `ferrule-bench-<start>.json` and `.md` into `dir`; returns both paths.
    pub(crate) fn write(&self, dir: &Path, markdown: &str) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let stem = format!("ferrule-bench-{}", self.started_unix_s);
        let json_path = dir.join(format!("{stem}.json"));
        let md_path = dir.join(format!("{stem}.md"));
        std::fs::write(&json_path, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(&md_path, markdown)?;
        Ok((json_path, md_path))
    }
}

/// The lowest and highest of per-round values, `0.41–0.52`; the value alone for one round.
fn spread(values: &[f64]) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        0 => "–".into(),
        1 => format!("{low:.3}"),
        _ => format!("{low:.3}–{high:.3}"),
    }
}

fn signed(ms: Option<f64>) -> String {
    ms.map_or("–".into(), |ms| format!("{ms:+.3}"))
}

fn cpu(seconds: Option<f64>) -> String {
    seconds.map_or("–".into(), |c| format!("{c:.4}"))
}

fn errors(load: &LoadReport) -> String {
    match load.errors() {
        0 => "0".into(),
        n => format!(
            "{n} (failed {}, transport {}, unfinished {})",
            load.status_errors, load.transport_errors, load.unfinished
        ),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
