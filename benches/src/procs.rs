//! Child processes and what `/proc` says about them.
//!
//! [`Supervisor`] starts every child the harness needs, waits for the line each prints once it
//! is listening (or, for programs that print none, such as nginx and HAProxy, lets the caller
//! poll their ports), sends their output to log files, and kills them all when it is dropped —
//! on success, on error, on Ctrl-C (the harness turns signals into errors so drops run) and,
//! via a panic hook, on panic (a panic on another thread, or one that aborts, skips drops). A child
//! that forks workers (nginx) is started in its own process group and killed as a group, so
//! no worker outlives the harness.
//!
//! [`memory`] and [`cpu_seconds`] read VmRSS/VmHWM and utime+stime of a process;
//! [`children_of`] finds a process's children (nginx's workers).

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

/// Pids of live children and whether each leads its own process group, for the panic hook
/// (which cannot reach the [`Supervisor`]).
static LIVE_PIDS: Mutex<Vec<(u32, bool)>> = Mutex::new(Vec::new());

/// Sends SIGKILL to a process, or to its whole process group. There is no signal API without
/// `unsafe`; kill(1) is always there on Linux.
fn kill_hard(pid: u32, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills the children started by this process if it panics.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let pids = LIVE_PIDS.lock().map(|p| p.clone()).unwrap_or_default();
            for (pid, group) in pids {
                kill_hard(pid, group);
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

/// A child process the supervisor owns.
struct Owned {
    name: String,
    child: Child,
    /// Its pid, kept after it exits.
    pid: u32,
    /// Whether it leads its own process group (killed as a group).
    group: bool,
}

/// Owns every child process the harness started; dropping it kills them.
pub(crate) struct Supervisor {
    children: Vec<Owned>,
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

    /// The directory of the children's logs.
    pub(crate) fn log_dir(&self) -> &Path {
        &self.log_dir
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
        self.adopt(name, child, pid, false);

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

    /// Starts `command` as child `name` without waiting for any output (for programs that
    /// print nothing when ready: the caller polls their ports, and [`Supervisor::check`] tells
    /// whether the child is still running). stdout and stderr go to its log file. With
    /// `own_group`, the child leads a new process group, and the group is what gets killed:
    /// use it for programs that fork workers.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        mut command: Command,
        own_group: bool,
    ) -> Result<u32> {
        let log_path = self.log_path(name);
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if own_group {
            command.process_group(0);
        }
        let program = format!("{:?}", command.as_std().get_program());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name} ({program}): {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        self.adopt(name, child, pid, own_group);
        Ok(pid)
    }

    fn adopt(&mut self, name: &str, child: Child, pid: u32, group: bool) {
        self.children.push(Owned {
            name: name.to_string(),
            child,
            pid,
            group,
        });
        if let Ok(mut live) = LIVE_PIDS.lock() {
            live.push((pid, group));
        }
    }

    /// `Ok` while child `name` runs; once it has exited, an error with its exit status and the
    /// end of its log.
    pub(crate) fn check(&mut self, name: &str) -> Result<()> {
        let log_path = self.log_path(name);
        let owned = self
            .children
            .iter_mut()
            .find(|o| o.name == name)
            .ok_or_else(|| format!("no child named {name}"))?;
        match owned.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!(
                "{name} exited ({status}); its log {} ends with:\n{}",
                log_path.display(),
                tail(&log_path, 20)
            )
            .into()),
        }
    }

    /// Kills child `name` at once with SIGKILL (its group too, for a group leader), as a crash
    /// would, waits until it has exited, and forgets it: a scenario that kills a process on
    /// purpose may start another one under a new name. Returns how long after the call it had
    /// exited.
    pub(crate) async fn kill(&mut self, name: &str) -> Result<Duration> {
        let asked = std::time::Instant::now();
        let index = self
            .children
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| format!("no child named {name}"))?;
        let mut owned = self.children.remove(index);
        if owned.group {
            kill_hard(owned.pid, true);
        }
        owned.child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(5), owned.child.wait())
            .await
            .map_err(|_| {
                format!(
                    "{name} (pid {}) did not die within 5s of SIGKILL",
                    owned.pid
                )
            })??;
        if let Ok(mut live) = LIVE_PIDS.lock() {
            live.retain(|(pid, _)| *pid != owned.pid);
        }
        Ok(asked.elapsed())
    }

    /// Kills every child and waits (briefly) until each has exited. A group leader (nginx's
    /// master) first gets SIGTERM and a moment to stop and reap its workers itself.
    pub(crate) async fn shutdown(mut self) {
        for owned in self.children.iter().filter(|o| o.group) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &owned.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for owned in self.children.iter_mut().filter(|o| o.group) {
            let _ = tokio::time::timeout(Duration::from_secs(2), owned.child.wait()).await;
        }
        for owned in self.children.iter_mut().rev() {
            if owned.group {
                kill_hard(owned.pid, true);
            }
            let _ = owned.child.start_kill();
        }
        for owned in self.children.iter_mut().rev() {
            let _ = tokio::time::timeout(Duration::from_secs(5), owned.child.wait()).await;
        }
        self.forget_all();
    }

    fn forget_all(&mut self) {
        let pids: Vec<u32> = self.children.iter().map(|o| o.pid).collect();
        if let Ok(mut live) = LIVE_PIDS.lock() {
            live.retain(|(pid, _)| !pids.contains(pid));
        }
        self.children.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The error path: no await possible here, so SIGKILL now; tokio reaps in the background.
        for owned in self.children.iter_mut().rev() {
            if owned.group {
                kill_hard(owned.pid, true);
            }
            let _ = owned.child.start_kill();
        }
        self.forget_all();
    }
}

/// The pids of the live children of `parent` (from each process's `/proc/PID/stat`).
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_ppid(&stat))
                == Some(parent)
        })
        .collect();
    children.sort_unstable();
    children
}

fn parse_ppid(stat: &str) -> Option<u32> {
    // Field 4; fields after the command name start at 3 (state).
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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
        assert_eq!(parse_ppid(stat), Some(1));
    }

    #[tokio::test]
    async fn spawned_groups_are_killed_whole_and_exits_are_seen() {
        let dir = std::env::temp_dir().join(format!("ferrule-bench-procs-{}", std::process::id()));
        let mut supervisor = Supervisor::new(&dir).unwrap();
        // A parent with a child of its own, like nginx's master and worker.
        let mut parent = Command::new("sh");
        parent.args(["-c", "sleep 30 & wait"]);
        let pid = supervisor.spawn("parent", parent, true).unwrap();
        let mut children = Vec::new();
        for _ in 0..100 {
            children = children_of(pid);
            if !children.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(children.len(), 1, "the sleep child of {pid}");
        assert!(supervisor.check("parent").is_ok());

        let mut short = Command::new("sh");
        short.args(["-c", "echo bye; exit 3"]);
        supervisor.spawn("short", short, false).unwrap();
        let mut exited = None;
        for _ in 0..100 {
            if let Err(e) = supervisor.check("short") {
                exited = Some(e.to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let exited = exited.expect("the short child exits");
        assert!(exited.contains("bye"), "{exited}");

        supervisor.shutdown().await;
        let grandchild = children[0];
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{grandchild}")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Killed with its group (a zombie until reaped by init counts as gone: no `State: S`).
        let state =
            std::fs::read_to_string(format!("/proc/{grandchild}/status")).unwrap_or_default();
        assert!(!state.contains("State:\tS"), "{state}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(memory(pid).unwrap().rss_kib > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
