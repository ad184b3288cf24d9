//! The results of `ferrule-bench run`: what machine ran them, the rows measured, and their two
//! renderings — a markdown summary (printed and saved) and the full JSON (saved), both in the
//! `--out` directory under one timestamped name.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::harness::Settings;
use crate::load::LoadReport;
use crate::procs::Memory;
use crate::Result;

/// CPU time one process used during one run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CpuUse {
    /// Process name, e.g. `client sidecar`.
    pub(crate) process: String,
    /// Whether it counts toward the target's CPU per request (sidecars do; the upstream and the
    /// load generator are on every path and are listed for context).
    pub(crate) charged: bool,
    /// User + system seconds.
    pub(crate) seconds: f64,
}

/// One load run against one target.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Measurement {
    /// Target key, e.g. `sidecar-2`.
    pub(crate) key: &'static str,
    /// Row label, e.g. `2 sidecars`.
    pub(crate) label: String,
    /// What the load generator measured.
    pub(crate) load: LoadReport,
    /// p50 minus the direct run's p50, ms (absent on the direct row itself).
    pub(crate) added_p50_ms: Option<f64>,
    /// p99 minus the direct run's p99, ms.
    pub(crate) added_p99_ms: Option<f64>,
    /// CPU time of each involved process during the run (warmup included).
    pub(crate) cpu: Vec<CpuUse>,
    /// Charged CPU seconds per 1000 completed requests (absent when nothing is charged).
    pub(crate) cpu_s_per_1000_req: Option<f64>,
}

/// Memory of one sidecar.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MemoryRow {
    /// Which sidecar.
    pub(crate) process: String,
    /// Before any load.
    pub(crate) idle: Memory,
    /// Right after the two-sidecar open-loop run.
    pub(crate) after_load: Memory,
}

/// The machine the numbers come from; results from different machines do not compare.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    /// CPUs this process may use (what `nproc` prints).
    pub(crate) nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu_model: String,
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
        let loadavg = read("/proc/loadavg");
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
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
    /// Where it ran.
    pub(crate) machine: Machine,
    /// With which parameters.
    pub(crate) settings: Settings,
    /// Open-loop runs, direct first.
    pub(crate) open_loop: Vec<Measurement>,
    /// Closed-loop runs, direct first.
    pub(crate) max_throughput: Vec<Measurement>,
    /// Sidecar memory.
    pub(crate) memory: Vec<MemoryRow>,
}

impl Report {
    /// The human summary: machine, parameters, the latency table, max throughput, memory.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let m = &self.machine;
        // Writing to a String cannot fail; the results are ignored for readability.
        let _ = writeln!(
            md,
            "## Ferrule load benchmark{}\n",
            if s.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            md,
            "Machine: {} CPUs (nproc), {}, Linux {}; load average at start {}.\n",
            m.nproc, m.cpu_model, m.kernel, m.load_average_at_start
        );
        let _ = writeln!(
            md,
            "Open loop at {} rps over {} HTTP/1.1 connections, {:.1} s measured after {:.1} s \
             warmup, {}-byte responses. Latency in ms from each request's intended send time \
             (coordinated-omission corrected); CPU is the sidecars' user+system time from /proc, \
             in {} ms clock ticks, over warmup and measured window.\n",
            s.rate,
            s.connections,
            s.duration.as_secs_f64(),
            s.warmup.as_secs_f64(),
            s.body_size,
            1000.0 / crate::procs::clock_ticks_per_second()
        );
        md.push_str(
            "| target | rps achieved | p50 | p90 | p99 | p99.9 | added p50 | added p99 | errors | CPU s/1000 req |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n");
        for row in &self.open_loop {
            let l = &row.load.latency_ms;
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
                row.label,
                row.load.rps,
                l.p50,
                l.p90,
                l.p99,
                l.p99_9,
                signed(row.added_p50_ms),
                signed(row.added_p99_ms),
                errors(&row.load),
                row.cpu_s_per_1000_req
                    .map_or("–".into(), |c| format!("{c:.4}")),
            );
        }
        if let Some((direct, others)) = self.max_throughput.split_first() {
            let _ = write!(
                md,
                "\nMax throughput (closed loop, {} connections, {:.1} s): {} {:.0} rps",
                s.max_connections,
                s.duration.as_secs_f64(),
                direct.label,
                direct.load.rps
            );
            for row in others {
                let share = if direct.load.rps > 0.0 {
                    100.0 * row.load.rps / direct.load.rps
                } else {
                    0.0
                };
                let _ = write!(
                    md,
                    "; {} {:.0} rps ({share:.0}% of direct, CPU {} s/1000 req)",
                    row.label,
                    row.load.rps,
                    row.cpu_s_per_1000_req
                        .map_or("–".into(), |c| format!("{c:.4}"))
                );
            }
            let failed: u64 = self.max_throughput.iter().map(|r| r.load.errors()).sum();
            let _ = writeln!(
                md,
                "{}.",
                if failed > 0 {
                    format!("; {failed} errors")
                } else {
                    String::new()
                }
            );
        }
        md.push('\n');
        for row in &self.memory {
            let _ = writeln!(
                md,
                "Memory of the {}: idle RSS {} (peak {}), after the 2-sidecar load RSS {} (peak {}).  ",
                row.process,
                mib(row.idle.rss_kib),
                mib(row.idle.hwm_kib),
                mib(row.after_load.rss_kib),
                mib(row.after_load.hwm_kib)
            );
        }
        md
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

fn signed(ms: Option<f64>) -> String {
    ms.map_or("–".into(), |ms| format!("{ms:+.3}"))
}

fn errors(load: &LoadReport) -> String {
    match load.errors() {
        0 => "0".into(),
        n => format!(
            "{n} (non-2xx {}, transport {}, unfinished {})",
            load.status_errors, load.transport_errors, load.unfinished
        ),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
