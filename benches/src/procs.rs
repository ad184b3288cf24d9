//! Child processes and what `/proc` says about them.
//!
//! [`Supervisor`] starts every child the harness needs, waits for the line each prints once it
//! is listening, sends their output to log files, and kills them all when it is dropped — on
//! success, on error, on Ctrl-C (the harness turns signals into errors so drops run) and, via a
//! panic hook, on panic (the release profile aborts on panic, which skips drops).
//!
//! [`memory`] and [`cpu_seconds`] read VmRSS/VmHWM and utime+stime of a process.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Result;

/// Pids of live children, for the panic hook (which cannot reach the [`Supervisor`]).
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills the children started by this process if it panics.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let pids = LIVE_PIDS.lock().map(|p| p.clone()).unwrap_or_default();
            for pid in pids {
                // No signal API without `unsafe`; kill(1) is always there on Linux.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            previous(info);
        }));
    });
}

/// A child that is running and listening.
#[derive(Debug)]
pub(crate) struct Started {
    /// Its process id.
    pub(crate) pid: u32,
    /// The line it printed to say it is listening.
    pub(crate) line: String,
}

/// Owns every child process the harness started; dropping it kills them.
pub(crate) struct Supervisor {
    children: Vec<(String, Child)>,
    log_dir: PathBuf,
}

impl Supervisor {
    /// A supervisor that writes each child's stdout and stderr to `log_dir/NAME.log`.
    pub(crate) fn new(log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir)
            .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
        install_panic_hook();
        Ok(Supervisor {
            children: Vec::new(),
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// Path of the log file of child `name`.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Starts `command` as child `name` and waits (until `timeout`) for a stdout line starting
    /// with `prefix`. Everything it prints goes to its log file; the error names that file and
    /// quotes its end, which usually says why a child did not come up.
    pub(crate) async fn start(
        &mut self,
        name: &str,
        mut command: Command,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Started> {
        let log_path = self.log_path(name);
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true);
        let program = format!("{:?}", command.as_std().get_program());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name} ({program}): {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{name}: no stdout pipe"))?;
        self.children.push((name.to_string(), child));
        if let Ok(mut live) = LIVE_PIDS.lock() {
            live.push(pid);
        }

        let mut lines = BufReader::new(stdout).lines();
        let mut log = OpenOptions::new().append(true).open(&log_path)?;
        let wait = async {
            // Bounded by the timeout around it and by the child's stdout closing.
            while let Some(line) = lines.next_line().await? {
                writeln!(log, "{line}")?;
                if line.starts_with(prefix) {
                    return Ok::<_, crate::Error>(Some(line));
                }
            }
            Ok(None)
        };
        let found = tokio::time::timeout(timeout, wait).await;
        let failure = match found {
            Ok(Ok(Some(line))) => {
                // Keep draining stdout into the log: a child blocked on a full pipe would stall.
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = writeln!(log, "{line}");
                    }
                });
                return Ok(Started { pid, line });
            }
            Ok(Ok(None)) => "exited before saying it was listening".to_string(),
            Ok(Err(e)) => format!("failed while reading its output: {e}"),
            Err(_) => format!("did not print `{prefix}…` within {timeout:?}"),
        };
        Err(format!(
            "{name} {failure}; its log {} ends with:\n{}",
            log_path.display(),
            tail(&log_path, 20)
        )
        .into())
    }

    /// Kills every child and waits (briefly) until each has exited.
    pub(crate) async fn shutdown(mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.start_kill();
        }
        for (_, child) in self.children.iter_mut().rev() {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.forget_all();
    }

    fn forget_all(&mut self) {
        let pids: Vec<u32> = self.children.iter().filter_map(|(_, c)| c.id()).collect();
        if let Ok(mut live) = LIVE_PIDS.lock() {
            live.retain(|pid| !pids.contains(pid));
        }
        self.children.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The error path: no await possible here, so SIGKILL now; tokio reaps in the background.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.start_kill();
        }
        self.forget_all();
    }
}

/// The last `lines` lines of a file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    if all.is_empty() {
        return "    (empty)".to_string();
    }
    all[from..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Resident memory of a process.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Memory {
    /// Current resident set (VmRSS), KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set so far (VmHWM), KiB.
    pub(crate) hwm_kib: u64,
}

/// Reads VmRSS and VmHWM from `/proc/PID/status`.
pub(crate) fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_memory(&status).ok_or_else(|| format!("no VmRSS/VmHWM in {path}").into())
}

fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user + system) a process has used so far, in seconds, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| format!("cannot parse {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    // What follows starts at field 3 (state); utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// USER_HZ, the unit of utime/stime. `sysconf` would need `unsafe`; `getconf` answers the same,
/// and 100 is what Linux uses on every mainstream architecture if `getconf` is missing.
pub(crate) fn clock_ticks_per_second() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|hz: &f64| *hz > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status_memory() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    6789 kB\n";
        let memory = parse_memory(status).unwrap();
        assert_eq!((memory.rss_kib, memory.hwm_kib), (6789, 12345));
        assert!(parse_memory("Name:\tx\n").is_none());
    }

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let stat = "42 (a) b)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(10));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(memory(pid).unwrap().rss_kib > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
