//! The system under test: the upstream, the control plane with the benchmark policy, a server
//! sidecar in front of the upstream and a client sidecar for the caller, all on 127.0.0.1 with
//! ports chosen by the kernel and data directories in a fresh temporary directory.
//!
//! Starting is done in dependency order and each step waits for its readiness signal with a
//! deadline: the line each process prints once it listens, `ferrulectl apply` succeeding, each
//! sidecar's `/ready`, and finally the client sidecar's `/config` listing an endpoint of
//! `bench-upstream` (the server sidecar registered itself and the control plane pushed it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::client::{get, Endpoint};
use crate::procs::{Started, Supervisor};
use crate::target::{Charged, Target};
use crate::Result;

/// How long any one process may take to come up, and the mesh to converge.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Name of the benchmark's destination service.
pub(crate) const SERVICE: &str = "bench-upstream";
/// The policy the harness applies: just the destination service, all defaults.
const POLICY: &str = "kind: Service\nname: bench-upstream\nprotocol: http\n";

/// Paths of the release binaries the harness runs.
#[derive(Clone, Debug)]
pub(crate) struct Binaries {
    /// This executable (runs the upstream).
    pub(crate) bench: PathBuf,
    /// The sidecar.
    pub(crate) proxy: PathBuf,
    /// The control plane.
    pub(crate) control: PathBuf,
    /// The operator CLI.
    pub(crate) ctl: PathBuf,
}

impl Binaries {
    /// Finds the binaries in `dir`, by default the directory of this executable (where cargo
    /// puts every binary of the workspace).
    pub(crate) fn locate(dir: Option<&Path>) -> Result<Self> {
        let bench = std::env::current_exe()?;
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => bench
                .parent()
                .ok_or("this executable has no parent directory")?
                .to_path_buf(),
        };
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{} not found: run `cargo build --release --workspace` first \
                     (benches/run.sh does both), or pass --bin-dir",
                    path.display()
                ))
            }
        };
        Ok(Binaries {
            proxy: find("ferrule-proxy")?,
            control: find("ferrule-control")?,
            ctl: find("ferrulectl")?,
            bench,
        })
    }
}

/// The listeners of a running sidecar.
#[derive(Clone, Debug)]
pub(crate) struct Sidecar {
    /// Process id.
    pub(crate) pid: u32,
    /// Where peer sidecars connect.
    pub(crate) inbound: SocketAddr,
    /// Where the local app sends its outbound requests.
    pub(crate) outbound: SocketAddr,
    /// Admin endpoint (`/ready`, `/config`, metrics).
    pub(crate) admin: SocketAddr,
}

/// A running mesh. Dropping it kills every process and removes the temporary directory.
pub(crate) struct MeshStack {
    // Declared first so it drops first: children die before their data directories vanish.
    supervisor: Supervisor,
    /// The upstream's pid.
    pub(crate) upstream_pid: u32,
    /// The upstream's address.
    pub(crate) upstream: SocketAddr,
    /// The control plane's pid.
    pub(crate) control_pid: u32,
    /// The sidecar in front of the upstream.
    pub(crate) server: Sidecar,
    /// The caller's sidecar.
    pub(crate) client: Sidecar,
    _dir: TempDir,
}

impl MeshStack {
    /// Starts everything and waits until a request through both sidecars can be routed.
    pub(crate) async fn start(bins: &Binaries, log_dir: &Path, body_size: usize) -> Result<Self> {
        let dir = TempDir::new()?;
        let mut supervisor = Supervisor::new(log_dir)?;

        let mut upstream = Command::new(&bins.bench);
        upstream.args(["upstream", "--listen", "127.0.0.1:0", "--body-size"]);
        upstream.arg(body_size.to_string());
        let up = supervisor
            .start(
                "upstream",
                upstream,
                "upstream listening on ",
                STARTUP_TIMEOUT,
            )
            .await?;
        let upstream_addr: SocketAddr = parse_after(&up, "upstream listening on ")?;
        eprintln!("  upstream        {upstream_addr} (pid {})", up.pid);

        let control_data = dir.subdir("control")?;
        let mut control = child_command(&bins.control);
        control.args(["--listen", "127.0.0.1:0", "--data-dir"]);
        control.arg(&control_data);
        let prefix = "ferrule-control listening on ";
        let cp = supervisor
            .start("ferrule-control", control, prefix, STARTUP_TIMEOUT)
            .await?;
        let control_url = cp.line[prefix.len()..].trim().to_string();
        eprintln!("  control plane   {control_url} (pid {})", cp.pid);

        apply_policy(bins, &control_url, dir.path()).await?;

        let server = start_sidecar(
            &mut supervisor,
            bins,
            &control_url,
            "server-sidecar",
            "bench-upstream",
            &dir.subdir("server-sidecar")?,
            &upstream_addr.to_string(),
        )
        .await?;
        // The client sidecar's app is never called in these runs; port 1 makes that explicit.
        let client = start_sidecar(
            &mut supervisor,
            bins,
            &control_url,
            "client-sidecar",
            "bench-client",
            &dir.subdir("client-sidecar")?,
            "127.0.0.1:1",
        )
        .await?;

        for (name, sidecar) in [("server sidecar", &server), ("client sidecar", &client)] {
            wait_ready(name, sidecar).await?;
        }
        wait_for_endpoint(&client).await?;

        Ok(MeshStack {
            supervisor,
            upstream_pid: up.pid,
            upstream: upstream_addr,
            control_pid: cp.pid,
            server,
            client,
            _dir: dir,
        })
    }

    /// The targets this stack offers, baseline first: direct, one sidecar, two sidecars.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let server = Charged {
            name: "server sidecar".into(),
            pid: self.server.pid,
        };
        let client = Charged {
            name: "client sidecar".into(),
            pid: self.client.pid,
        };
        vec![
            Target {
                key: "direct",
                label: "direct".into(),
                url: format!("http://{}/", self.upstream),
                host: None,
                charged: Vec::new(),
                max_rps: true,
            },
            Target {
                key: "sidecar-1",
                label: "1 sidecar".into(),
                url: format!("http://{}/", self.server.inbound),
                host: None,
                charged: vec![server.clone()],
                max_rps: false,
            },
            Target {
                key: "sidecar-2",
                label: "2 sidecars".into(),
                url: format!("http://{}/", self.client.outbound),
                host: Some(SERVICE.into()),
                charged: vec![client, server],
                max_rps: true,
            },
        ]
    }

    /// The sidecars, named, for memory sampling.
    pub(crate) fn sidecars(&self) -> [(&'static str, u32); 2] {
        [
            ("server sidecar", self.server.pid),
            ("client sidecar", self.client.pid),
        ]
    }

    /// Stops every process and waits for them to exit.
    pub(crate) async fn shutdown(self) {
        self.supervisor.shutdown().await;
    }
}

/// A command for a Ferrule binary. The environment (log filters included) is inherited and
/// nothing is tuned: the benchmark measures the binaries as users run them by default.
fn child_command(program: &Path) -> Command {
    Command::new(program)
}

/// Parses what follows `prefix` in a started child's line.
fn parse_after<T>(started: &Started, prefix: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let rest = started.line[prefix.len()..].trim();
    rest.parse()
        .map_err(|e| format!("cannot parse `{rest}` in `{}`: {e}", started.line).into())
}

async fn apply_policy(bins: &Binaries, control_url: &str, dir: &Path) -> Result<()> {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, POLICY)?;
    let mut ctl = child_command(&bins.ctl);
    ctl.args(["--server", control_url, "apply", "-f"])
        .arg(&file)
        .kill_on_drop(true);
    let output = tokio::time::timeout(STARTUP_TIMEOUT, ctl.output())
        .await
        .map_err(|_| "ferrulectl apply did not finish in time")??;
    if !output.status.success() {
        return Err(format!(
            "ferrulectl apply failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    eprintln!("  policy          applied service {SERVICE}");
    Ok(())
}

async fn start_sidecar(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    control_url: &str,
    name: &str,
    service: &str,
    data_dir: &Path,
    app: &str,
) -> Result<Sidecar> {
    let mut proxy = child_command(&bins.proxy);
    proxy
        .args([
            "--control-plane",
            control_url,
            "--service",
            service,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--inbound", "127.0.0.1:0", "--app", app])
        .args(["--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let prefix = "ferrule-proxy listening ";
    let started = supervisor
        .start(name, proxy, prefix, STARTUP_TIMEOUT)
        .await?;
    let sidecar = parse_proxy_line(started.pid, &started.line)?;
    eprintln!(
        "  {name:<15} inbound={} outbound={} admin={} (pid {})",
        sidecar.inbound, sidecar.outbound, sidecar.admin, sidecar.pid
    );
    Ok(sidecar)
}

/// Parses `ferrule-proxy listening inbound=IP:PORT outbound=IP:PORT admin=IP:PORT`.
fn parse_proxy_line(pid: u32, line: &str) -> Result<Sidecar> {
    let field = |key: &str| -> Result<SocketAddr> {
        let value = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("no {key}= in `{line}`"))?;
        value
            .parse()
            .map_err(|e| format!("bad {key} address `{value}` in `{line}`: {e}").into())
    };
    Ok(Sidecar {
        pid,
        inbound: field("inbound")?,
        outbound: field("outbound")?,
        admin: field("admin")?,
    })
}

/// Polls until `check` says yes or the startup deadline passes; `what` names the wait, and the
/// last observation goes into the error.
pub(crate) async fn poll_until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last = String::from("no answer yet");
    // Bounded by the deadline; each check is itself bounded by a request timeout.
    while Instant::now() < deadline {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(observed) => last = observed,
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Err(format!("timed out after {STARTUP_TIMEOUT:?} waiting for {what}; last: {last}").into())
}

async fn wait_ready(name: &str, sidecar: &Sidecar) -> Result<()> {
    let ready = Endpoint::http1(sidecar.admin, "/ready")?;
    poll_until(&format!("{name} /ready"), || async {
        match get(&ready, Duration::from_secs(2)).await {
            Ok((status, _)) if status.is_success() => Ok(true),
            Ok((status, body)) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Waits until the client sidecar's applied snapshot (`/config`) holds an endpoint of
/// `bench-upstream`: only then can the two-hop path route.
async fn wait_for_endpoint(client: &Sidecar) -> Result<()> {
    let config = Endpoint::http1(client.admin, "/config")?;
    poll_until(
        "an endpoint of bench-upstream in the client sidecar's /config",
        || async {
            let (status, body) = get(&config, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("/config answered {status}"));
            }
            let json: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("/config is not JSON: {e}"))?;
            if has_endpoint_of(&json, SERVICE, false) {
                Ok(true)
            } else {
                Err("no endpoint of bench-upstream yet".into())
            }
        },
    )
    .await
}

/// Whether `json` holds, somewhere under a key naming endpoints, an object whose `service` is
/// `service`. The snapshot's exact shape belongs to the proxy; this only relies on endpoints
/// living under an `endpoints`-like key and naming their service.
fn has_endpoint_of(json: &serde_json::Value, service: &str, under_endpoints: bool) -> bool {
    use serde_json::Value;
    match json {
        Value::Object(map) => {
            if under_endpoints && map.get("service").and_then(Value::as_str) == Some(service) {
                return true;
            }
            map.iter().any(|(key, value)| {
                let endpoints = under_endpoints || key.to_ascii_lowercase().contains("endpoint");
                has_endpoint_of(value, service, endpoints)
            })
        }
        Value::Array(items) => items
            .iter()
            .any(|item| has_endpoint_of(item, service, under_endpoints)),
        _ => false,
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("ferrule-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_proxy_listening_line() {
        let line = "ferrule-proxy listening inbound=127.0.0.1:1001 outbound=127.0.0.1:1002 \
                    admin=127.0.0.1:1003";
        let sidecar = parse_proxy_line(7, line).unwrap();
        assert_eq!(sidecar.inbound.port(), 1001);
        assert_eq!(sidecar.outbound.port(), 1002);
        assert_eq!(sidecar.admin.port(), 1003);
        assert!(parse_proxy_line(7, "ferrule-proxy listening inbound=x").is_err());
    }

    #[test]
    fn finds_endpoints_of_the_service_in_a_snapshot() {
        let flat = json!({"version": 3, "endpoints": [
            {"service": "other", "address": "127.0.0.1:1"},
            {"service": "bench-upstream", "address": "127.0.0.1:2"}]});
        assert!(has_endpoint_of(&flat, SERVICE, false));
        let nested = json!({"services": [{"name": "bench-upstream",
            "endpoints": [{"service": "bench-upstream", "port": 2}]}]});
        assert!(has_endpoint_of(&nested, SERVICE, false));
        // The Service resource alone is not an endpoint.
        let no_endpoint = json!({"services": [{"service": "bench-upstream"}], "endpoints": []});
        assert!(!has_endpoint_of(&no_endpoint, SERVICE, false));
    }
}
