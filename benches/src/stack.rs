//! The Ferrule side of the system under test: the upstream, the control plane with the
//! benchmark policy, a server sidecar in front of the upstream and a client sidecar for the
//! caller, all on 127.0.0.1 with ports chosen by the kernel and data directories in the run's
//! temporary directory.
//!
//! Starting is done in dependency order and each step waits for its readiness signal with a
//! deadline: the line each process prints once it listens, `ferrulectl apply` succeeding, each
//! sidecar's `/ready`, and finally the client sidecar's `/config` listing an endpoint of
//! `bench-upstream` (the server sidecar registered itself and the control plane pushed it).
//!
//! The benchmark's Service is re-applied with the protocol of each protocol's runs (`http`,
//! `http2`, `grpc`: what the server sidecar speaks to the upstream), and the harness waits
//! until both sidecars' `/config` show it before measuring.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::client::{get, Endpoint};
use crate::procs::{Started, Supervisor};
use crate::protocol::Protocol;
use crate::target::{Charged, Lane, Target, TargetKey};
use crate::Result;

/// How long any one process may take to come up, and the mesh to converge.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Name of the benchmark's destination service.
pub(crate) const SERVICE: &str = "bench-upstream";

/// The policy the harness applies: just the destination service, in `protocol`.
fn policy(protocol: Protocol) -> String {
    format!(
        "kind: Service\nname: {SERVICE}\nprotocol: {}\n",
        protocol.ferrule_service_protocol()
    )
}

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

/// The running upstream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Upstream {
    /// Process id.
    pub(crate) pid: u32,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

/// Starts the upstream (`ferrule-bench upstream`) and waits until it listens.
pub(crate) async fn start_upstream(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    body_size: usize,
) -> Result<Upstream> {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    start_upstream_at(supervisor, bins, body_size, "upstream", any_port).await
}

/// Starts an upstream as child `name` listening on `listen` (port 0: any free port) and waits
/// until it listens.
pub(crate) async fn start_upstream_at(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    body_size: usize,
    name: &str,
    listen: SocketAddr,
) -> Result<Upstream> {
    let mut upstream = Command::new(&bins.bench);
    upstream.args(["upstream", "--listen", &listen.to_string(), "--body-size"]);
    upstream.arg(body_size.to_string());
    let prefix = "upstream listening on ";
    let up = supervisor
        .start(name, upstream, prefix, STARTUP_TIMEOUT)
        .await?;
    let addr: SocketAddr = parse_after(&up, prefix)?;
    eprintln!("  {name:<15} {addr} (pid {})", up.pid);
    Ok(Upstream { pid: up.pid, addr })
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

/// A running mesh; its processes belong to the supervisor it was started with.
pub(crate) struct MeshStack {
    /// The control plane's pid.
    pub(crate) control_pid: u32,
    control_url: String,
    /// The sidecar in front of the upstream.
    pub(crate) server: Sidecar,
    /// The caller's sidecar.
    pub(crate) client: Sidecar,
    /// `--threads` passed to each sidecar, or `None` when this ferrule-proxy has no such flag.
    pub(crate) threads: Option<usize>,
    /// The protocol the Service currently has.
    protocol: Protocol,
    /// Whether the sidecars hold identities and talk mutual TLS to each other.
    mtls: bool,
    ctl: PathBuf,
    dir: PathBuf,
}

impl MeshStack {
    /// Starts the control plane and both sidecars (data in `dir`) with the Service in
    /// `protocol`, and waits until a request through both sidecars can be routed. With
    /// `mtls`, each sidecar gets a workload certificate from the control plane's CA (with a
    /// bootstrap token, as in production) and the hop between them is mutual TLS.
    #[allow(clippy::too_many_arguments)] // two call sites; a struct would only rename them
    pub(crate) async fn start(
        supervisor: &mut Supervisor,
        bins: &Binaries,
        dir: &Path,
        upstream: SocketAddr,
        threads: usize,
        sched_slice: Option<&str>,
        protocol: Protocol,
        mtls: bool,
    ) -> Result<Self> {
        let (control_pid, control_url) = start_control_plane(supervisor, bins, dir).await?;
        apply_policy(&bins.ctl, &control_url, dir, protocol).await?;
        let (server_token, client_token) = if mtls {
            (
                Some(token_file(&bins.ctl, &control_url, dir, SERVICE).await?),
                Some(token_file(&bins.ctl, &control_url, dir, "bench-client").await?),
            )
        } else {
            (None, None)
        };

        let threads = if supports_threads(&bins.proxy).await {
            Some(threads)
        } else {
            eprintln!(
                "  note: {} has no --threads flag; the sidecars run with their default",
                bins.proxy.display()
            );
            None
        };
        let server = start_sidecar(
            supervisor,
            bins,
            &control_url,
            "server-sidecar",
            SERVICE,
            &subdir(dir, "server-sidecar")?,
            &upstream.to_string(),
            "127.0.0.1:0",
            threads,
            sched_slice,
            server_token.as_deref(),
        )
        .await?;
        // The client sidecar's app is never called in these runs; port 1 makes that explicit.
        let client = start_sidecar(
            supervisor,
            bins,
            &control_url,
            "client-sidecar",
            "bench-client",
            &subdir(dir, "client-sidecar")?,
            "127.0.0.1:1",
            "127.0.0.1:0",
            threads,
            sched_slice,
            client_token.as_deref(),
        )
        .await?;

        for (name, sidecar) in [("server sidecar", &server), ("client sidecar", &client)] {
            wait_ready(name, sidecar).await?;
        }
        wait_for_endpoint(&client).await?;
        let mesh = MeshStack {
            control_pid,
            control_url,
            server,
            client,
            threads,
            protocol,
            mtls,
            ctl: bins.ctl.clone(),
            dir: dir.to_path_buf(),
        };
        mesh.wait_for_protocol(protocol).await?;
        Ok(mesh)
    }

    /// How the report names this mesh's control plane.
    pub(crate) fn control_label(&self) -> &'static str {
        if self.mtls {
            "control plane (mTLS mesh)"
        } else {
            "control plane"
        }
    }

    /// Re-applies the benchmark Service with `protocol`'s service protocol and waits until
    /// both sidecars run a snapshot that has it.
    pub(crate) async fn use_protocol(&mut self, protocol: Protocol) -> Result<()> {
        if self.protocol == protocol {
            return Ok(());
        }
        apply_policy(&self.ctl, &self.control_url, &self.dir, protocol).await?;
        self.wait_for_protocol(protocol).await?;
        self.protocol = protocol;
        Ok(())
    }

    async fn wait_for_protocol(&self, protocol: Protocol) -> Result<()> {
        let wanted = protocol.ferrule_service_protocol();
        for (name, sidecar) in [("server", &self.server), ("client", &self.client)] {
            let config = Endpoint::http1(sidecar.admin, "/config")?;
            poll_until(
                &format!("protocol: {wanted} for {SERVICE} in the {name} sidecar's /config"),
                || async {
                    let json = config_json(&config).await?;
                    if service_protocol(&json, SERVICE).as_deref() == Some(wanted) {
                        Ok(true)
                    } else {
                        Err(format!(
                            "{SERVICE} has protocol {:?}",
                            service_protocol(&json, SERVICE)
                        ))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The targets this stack offers among `wanted`, for `protocols`.
    pub(crate) fn targets(&self, wanted: &[TargetKey], protocols: &[Protocol]) -> Vec<Target> {
        let server = Charged {
            name: "server sidecar".into(),
            pid: self.server.pid,
            serving: true,
        };
        let client = Charged {
            name: "client sidecar".into(),
            pid: self.client.pid,
            serving: true,
        };
        let lanes = |addr: SocketAddr, two: bool| -> BTreeMap<Protocol, Lane> {
            protocols
                .iter()
                .map(|&p| {
                    let wire = match p {
                        Protocol::Http1 => "HTTP/1.1",
                        Protocol::Http2 => "h2c",
                        Protocol::Grpc => "gRPC/h2c",
                    };
                    let path = if two && self.mtls {
                        let inner = match p {
                            Protocol::Http1 => "HTTP/1.1",
                            Protocol::Http2 => "HTTP/2",
                            Protocol::Grpc => "gRPC",
                        };
                        format!(
                            "client → {wire} → client sidecar → mTLS ({inner}) → server sidecar → {wire} → upstream"
                        )
                    } else if two {
                        format!(
                            "client → {wire} → client sidecar → {wire} → server sidecar → {wire} → upstream"
                        )
                    } else {
                        format!("client → {wire} → server sidecar → {wire} → upstream")
                    };
                    (p, Lane { addr, path })
                })
                .collect()
        };
        let mut out = Vec::new();
        if self.mtls {
            if wanted.contains(&TargetKey::Ferrule2Mtls) {
                out.push(Target {
                    key: TargetKey::Ferrule2Mtls,
                    lanes: lanes(self.client.outbound, true),
                    host: Some(SERVICE.into()),
                    charged: vec![client, server],
                });
            }
            return out;
        }
        if wanted.contains(&TargetKey::Ferrule1) {
            out.push(Target {
                key: TargetKey::Ferrule1,
                lanes: lanes(self.server.inbound, false),
                host: None,
                charged: vec![server.clone()],
            });
        }
        if wanted.contains(&TargetKey::Ferrule2) {
            out.push(Target {
                key: TargetKey::Ferrule2,
                lanes: lanes(self.client.outbound, true),
                host: Some(SERVICE.into()),
                charged: vec![client, server],
            });
        }
        out
    }
}

/// Starts a control plane with its data in `dir/control` and returns its pid and URL. The
/// benchmark's sidecars run without identity: plaintext control plane, anonymous push streams
/// (development-only switches).
pub(crate) async fn start_control_plane(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    dir: &Path,
) -> Result<(u32, String)> {
    let control_data = subdir(dir, "control")?;
    let mut control = child_command(&bins.control);
    control.args(["--listen", "127.0.0.1:0", "--data-dir"]);
    control.arg(&control_data);
    control.args(["--plaintext", "--allow-anonymous-proxies"]);
    let prefix = "ferrule-control listening on ";
    let cp = supervisor
        .start("ferrule-control", control, prefix, STARTUP_TIMEOUT)
        .await?;
    let control_url = cp.line[prefix.len()..].trim().to_string();
    eprintln!("  control plane   {control_url} (pid {})", cp.pid);
    Ok((cp.pid, control_url))
}

/// Whether this ferrule-proxy has the `--threads` flag (added with the performance work).
pub(crate) async fn supports_threads(proxy: &Path) -> bool {
    let help = Command::new(proxy)
        .arg("--help")
        .kill_on_drop(true)
        .output()
        .await;
    help.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--threads"))
}

pub(crate) fn subdir(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(path)
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

async fn apply_policy(ctl: &Path, control_url: &str, dir: &Path, protocol: Protocol) -> Result<()> {
    apply_policy_text(ctl, control_url, dir, &policy(protocol)).await?;
    eprintln!(
        "  policy          service {SERVICE}, protocol {}",
        protocol.ferrule_service_protocol()
    );
    Ok(())
}

/// Applies the policy document `text` with `ferrulectl apply` (the file goes to `dir`).
pub(crate) async fn apply_policy_text(
    ctl: &Path,
    control_url: &str,
    dir: &Path,
    text: &str,
) -> Result<()> {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, text)?;
    let mut command = child_command(ctl);
    command
        .args(["--server", control_url, "apply", "-f"])
        .arg(&file)
        .kill_on_drop(true);
    let output = tokio::time::timeout(STARTUP_TIMEOUT, command.output())
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
    Ok(())
}

/// Creates a bootstrap token for `service` with ferrulectl and writes it to a file.
async fn token_file(ctl: &Path, control_url: &str, dir: &Path, service: &str) -> Result<PathBuf> {
    let mut command = child_command(ctl);
    command
        .args([
            "--server",
            control_url,
            "token",
            "create",
            "--service",
            service,
        ])
        .kill_on_drop(true);
    let output = tokio::time::timeout(STARTUP_TIMEOUT, command.output())
        .await
        .map_err(|_| "ferrulectl token create did not finish in time")??;
    if !output.status.success() {
        return Err(format!(
            "ferrulectl token create failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let path = dir.join(format!("{service}.token"));
    std::fs::write(&path, String::from_utf8_lossy(&output.stdout).trim())?;
    Ok(path)
}

#[allow(clippy::too_many_arguments)] // one call site per sidecar; a struct would only rename them
pub(crate) async fn start_sidecar(
    supervisor: &mut Supervisor,
    bins: &Binaries,
    control_url: &str,
    name: &str,
    service: &str,
    data_dir: &Path,
    app: &str,
    inbound: &str,
    threads: Option<usize>,
    sched_slice: Option<&str>,
    token: Option<&Path>,
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
        .args(["--inbound", inbound, "--app", app])
        .args(["--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    match token {
        // A workload identity, and mutual TLS to the peer sidecar.
        Some(token) => proxy.arg("--token-file").arg(token),
        // Plaintext between the sidecars (the mTLS chain is its own target).
        None => proxy.arg("--identity-disabled"),
    };
    if let Some(threads) = threads {
        proxy.args(["--threads", &threads.to_string()]);
    }
    if let Some(slice) = sched_slice {
        proxy.args(["--sched-slice", slice]);
    }
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

pub(crate) async fn wait_ready(name: &str, sidecar: &Sidecar) -> Result<()> {
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

/// GETs an admin `/config` and parses it.
pub(crate) async fn config_json(config: &Endpoint) -> Result<serde_json::Value, String> {
    let (status, body) = get(config, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("/config answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("/config is not JSON: {e}"))
}

/// Waits until the client sidecar's applied snapshot (`/config`) holds an endpoint of
/// `bench-upstream`: only then can the two-hop path route.
async fn wait_for_endpoint(client: &Sidecar) -> Result<()> {
    let config = Endpoint::http1(client.admin, "/config")?;
    poll_until(
        "an endpoint of bench-upstream in the client sidecar's /config",
        || async {
            let json = config_json(&config).await?;
            if has_endpoint_of(&json, SERVICE, false) {
                Ok(true)
            } else {
                Err("no endpoint of bench-upstream yet".into())
            }
        },
    )
    .await
}

/// The `protocol` of the Service named `name` anywhere in `json` (an object with both
/// `name` and `protocol`), if there is one.
fn service_protocol(json: &serde_json::Value, name: &str) -> Option<String> {
    use serde_json::Value;
    match json {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some(name) {
                if let Some(protocol) = map.get("protocol").and_then(Value::as_str) {
                    return Some(protocol.to_string());
                }
            }
            map.values().find_map(|v| service_protocol(v, name))
        }
        Value::Array(items) => items.iter().find_map(|v| service_protocol(v, name)),
        _ => None,
    }
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

/// The distinct addresses of the endpoints of `service` in `json` (objects under an
/// `endpoints`-like key whose `service` is `service`, as [`has_endpoint_of`] finds them).
pub(crate) fn endpoint_addresses(json: &serde_json::Value, service: &str) -> Vec<String> {
    fn walk(json: &serde_json::Value, service: &str, under: bool, out: &mut Vec<String>) {
        use serde_json::Value;
        match json {
            Value::Object(map) => {
                if under && map.get("service").and_then(Value::as_str) == Some(service) {
                    if let Some(address) = map.get("address").and_then(Value::as_str) {
                        if !out.iter().any(|a| a == address) {
                            out.push(address.to_string());
                        }
                    }
                }
                for (key, value) in map {
                    let endpoints = under || key.to_ascii_lowercase().contains("endpoint");
                    walk(value, service, endpoints, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, service, under, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(json, service, false, &mut out);
    out
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system's temporary directory.
    pub(crate) fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("ferrule-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
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
        assert!(endpoint_addresses(&no_endpoint, SERVICE).is_empty());
        let three = json!({"snapshot": {"endpoints": [
            {"service": "upstream", "address": "127.0.0.1:1"},
            {"service": "upstream", "address": "127.0.0.1:2"},
            {"service": "other", "address": "127.0.0.1:4"},
            {"service": "upstream", "address": "127.0.0.1:3"},
            {"service": "upstream", "address": "127.0.0.1:3"}]}});
        assert_eq!(endpoint_addresses(&three, "upstream").len(), 3);
    }

    #[test]
    fn finds_the_service_protocol_in_a_snapshot() {
        let config = json!({"version": 4, "snapshot": {"services": [
            {"name": "other", "protocol": "http"},
            {"name": "bench-upstream", "protocol": "grpc"}], "endpoints": [
            {"name": "bench-upstream", "service": "bench-upstream"}]}});
        assert_eq!(service_protocol(&config, SERVICE).as_deref(), Some("grpc"));
        assert_eq!(service_protocol(&json!({"services": []}), SERVICE), None);
        assert_eq!(
            policy(Protocol::Http2),
            "kind: Service\nname: bench-upstream\nprotocol: http2\n"
        );
    }
}
