//! The peers: nginx and HAProxy, installed from Debian if missing, configured from generated
//! files, run in the foreground as children of the harness, and offered as targets.
//!
//! # The instances
//!
//! Each peer runs as up to four independent instances (separate processes, so that every hop
//! is charged and measured on its own, as two sidecars would be):
//!
//! - **server**: in front of the upstream. Its *front* listeners (one per protocol, speaking
//!   what the load generator speaks) are the 1-hop target; its *hop* listeners are the second
//!   hop of the plaintext chain.
//! - **client**: the first hop of the plaintext chain, forwarding to the server's hop listener.
//! - **server-tls** and **client-tls**: the same chain with TLS between the hops; the client
//!   verifies the server's certificate against the run's CA (see `tls`).
//!
//! # What each hop speaks
//!
//! nginx proxies HTTP to upstreams in HTTP/1.1 only (`proxy_pass`, with an upstream keep-alive
//! pool), so for HTTP/1.1 and HTTP/2 clients every hop after the first is HTTP/1.1; gRPC goes
//! through `grpc_pass`, which speaks HTTP/2 (h2c, or h2 over TLS). HAProxy speaks HTTP/2 to its
//! servers with `proto h2` (ALPN `h2` over TLS), used between hops and to the upstream for the
//! HTTP/2 and gRPC protocols; HTTP/1.1 runs use HTTP/1.1 throughout. [`Kind::hop`] and
//! [`Kind::to_upstream`] encode exactly this, and each target's `path` says it in the report.
//!
//! # Fairness
//!
//! Every peer gets the same worker count as Ferrule (`--proxy-threads`), keep-alive connection
//! pools to the next hop (nginx `keepalive` with `proxy_http_version 1.1` and an empty
//! `Connection` header; HAProxy `http-reuse always`), no access logs, no per-connection request
//! limits (nginx's default closes a keep-alive connection after 1000 requests), and otherwise
//! the distribution's defaults.

pub(crate) mod haproxy;
pub(crate) mod nginx;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::Supervisor;
use crate::protocol::Protocol;
use crate::target::{Charged, Lane, Target, TargetKey};
use crate::tls::TlsFiles;
use crate::Result;

/// How long a peer may take to open its ports.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What one listener's clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Wire {
    /// HTTP/1.1.
    H1,
    /// HTTP/2: prior-knowledge h2c in plaintext, ALPN `h2` over TLS.
    H2,
}

/// What a listener carries, which decides how nginx forwards it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Mode {
    /// Plain HTTP requests (nginx `proxy_pass`).
    Http,
    /// gRPC calls (nginx `grpc_pass`).
    Grpc,
}

/// What a listener accepts: a wire protocol and a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Accepts {
    /// Wire protocol.
    pub(crate) wire: Wire,
    /// Mode.
    pub(crate) mode: Mode,
}

impl Accepts {
    /// What the load generator speaks for `protocol`.
    pub(crate) fn front(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http1 => Accepts {
                wire: Wire::H1,
                mode: Mode::Http,
            },
            Protocol::Http2 => Accepts {
                wire: Wire::H2,
                mode: Mode::Http,
            },
            Protocol::Grpc => Accepts {
                wire: Wire::H2,
                mode: Mode::Grpc,
            },
        }
    }

    /// Human name for paths in reports.
    fn describe(self, tls: bool) -> &'static str {
        match (self.mode, self.wire, tls) {
            (Mode::Http, Wire::H1, false) => "HTTP/1.1",
            (Mode::Http, Wire::H1, true) => "HTTP/1.1+TLS",
            (Mode::Http, Wire::H2, false) => "h2c",
            (Mode::Http, Wire::H2, true) => "h2+TLS",
            (Mode::Grpc, Wire::H2, false) => "gRPC/h2c",
            (Mode::Grpc, Wire::H2, true) => "gRPC/h2+TLS",
            (Mode::Grpc, Wire::H1, _) => "gRPC/HTTP/1.1",
        }
    }
}

/// Which peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// nginx.
    Nginx,
    /// HAProxy.
    Haproxy,
}

impl Kind {
    /// Program (and Debian package) name.
    pub(crate) fn program(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// The targets this peer offers: 1 hop, 2 hops, 2 hops with TLS between.
    pub(crate) fn targets(self) -> [TargetKey; 3] {
        match self {
            Kind::Nginx => [TargetKey::Nginx1, TargetKey::Nginx2, TargetKey::Nginx2Tls],
            Kind::Haproxy => [
                TargetKey::Haproxy1,
                TargetKey::Haproxy2,
                TargetKey::Haproxy2Tls,
            ],
        }
    }

    /// What the second hop of a chain accepts for `protocol` (what the first hop sends it).
    pub(crate) fn hop(self, protocol: Protocol) -> Accepts {
        match (self, protocol) {
            // nginx's proxy_pass speaks HTTP/1.1 only.
            (Kind::Nginx, Protocol::Http2) => Accepts::front(Protocol::Http1),
            _ => Accepts::front(protocol),
        }
    }

    /// What a listener accepting `accepts` speaks to the next hop or the upstream.
    pub(crate) fn to_upstream(self, accepts: Accepts) -> Wire {
        match (self, accepts.mode) {
            (Kind::Nginx, Mode::Http) => Wire::H1,
            (Kind::Nginx, Mode::Grpc) => Wire::H2,
            (Kind::Haproxy, _) => accepts.wire,
        }
    }
}

/// One listener of an instance and where it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listener {
    /// Port on 127.0.0.1.
    pub(crate) port: u16,
    /// What it accepts.
    pub(crate) accepts: Accepts,
    /// Whether it terminates TLS (with the run's server certificate).
    pub(crate) tls_in: bool,
    /// Where it forwards: one next hop, or (the failover scenario) several servers of one
    /// pool, balanced round robin.
    pub(crate) servers: Vec<SocketAddr>,
    /// What it speaks there.
    pub(crate) next_wire: Wire,
    /// Whether it speaks TLS there, verifying the certificate against the run's CA.
    pub(crate) tls_out: bool,
}

/// The configuration of one instance, independent of the peer's syntax.
#[derive(Clone, Debug, Default)]
pub(crate) struct InstanceConfig {
    /// Worker processes (nginx) or threads (HAProxy).
    pub(crate) threads: usize,
    /// Distinct listeners.
    pub(crate) listeners: Vec<Listener>,
    /// Per protocol: the port a load generator speaking it connects to.
    pub(crate) front: BTreeMap<Protocol, u16>,
    /// Per protocol: the port the first hop of a chain forwards to.
    pub(crate) hop: BTreeMap<Protocol, u16>,
    /// Health checking and retries across the servers as the peer's documentation advises
    /// (see [`InstanceConfig::failover`]); off for the latency benchmark's single next hop.
    pub(crate) failover: bool,
}

impl InstanceConfig {
    /// Adds a listener unless an identical one exists; returns its port.
    fn listener(
        &mut self,
        accepts: Accepts,
        tls_in: bool,
        next: SocketAddr,
        next_wire: Wire,
        tls_out: bool,
    ) -> Result<u16> {
        if let Some(l) = self.listeners.iter().find(|l| {
            l.accepts == accepts
                && l.tls_in == tls_in
                && l.servers == [next]
                && l.next_wire == next_wire
                && l.tls_out == tls_out
        }) {
            return Ok(l.port);
        }
        let port = free_port()?;
        self.listeners.push(Listener {
            port,
            accepts,
            tls_in,
            servers: vec![next],
            next_wire,
            tls_out,
        });
        Ok(port)
    }

    /// The instance of the failover scenario: one listener for `protocol` in front of
    /// `servers` (the upstream instances), balanced round robin, with the peer's failure
    /// handling configured as its documentation advises (nginx: `max_fails`/`fail_timeout`,
    /// `proxy_next_upstream`; HAProxy: health checks, `retries`, `redispatch`, `retry-on`).
    pub(crate) fn failover(
        kind: Kind,
        protocol: Protocol,
        servers: &[SocketAddr],
        threads: usize,
    ) -> Result<Self> {
        let accepts = Accepts::front(protocol);
        let port = free_port()?;
        let mut config = InstanceConfig {
            threads,
            failover: true,
            ..InstanceConfig::default()
        };
        config.listeners.push(Listener {
            port,
            accepts,
            tls_in: false,
            servers: servers.to_vec(),
            next_wire: kind.to_upstream(accepts),
            tls_out: false,
        });
        config.front.insert(protocol, port);
        Ok(config)
    }

    /// Whether any listener uses TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.tls_in || l.tls_out)
    }
}

/// The instances of one peer a run needs, configured (ports chosen) but not started.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Which peer.
    pub(crate) kind: Kind,
    /// By role: `server`, `client`, `server-tls`, `client-tls`; only those the targets need.
    pub(crate) instances: BTreeMap<&'static str, InstanceConfig>,
    /// The targets and, per protocol, their paths.
    pub(crate) targets: Vec<TargetKey>,
    /// The protocols.
    pub(crate) protocols: Vec<Protocol>,
}

impl Plan {
    /// Chooses ports and forwarding for `targets` (of this peer) and `protocols`.
    pub(crate) fn new(
        kind: Kind,
        targets: &[TargetKey],
        protocols: &[Protocol],
        upstream: SocketAddr,
        threads: usize,
    ) -> Result<Self> {
        let [one, two, two_tls] = kind.targets();
        let want = |t: TargetKey| targets.contains(&t);
        let mut instances = BTreeMap::new();
        let blank = || InstanceConfig {
            threads,
            ..InstanceConfig::default()
        };
        let local = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));

        // The server instances, in front of the upstream.
        for (role, tls, front, hop) in [
            ("server", false, want(one), want(two)),
            ("server-tls", true, false, want(two_tls)),
        ] {
            if !front && !hop {
                continue;
            }
            let mut server = blank();
            for &p in protocols {
                if front {
                    let accepts = Accepts::front(p);
                    let port = server.listener(
                        accepts,
                        tls,
                        upstream,
                        kind.to_upstream(accepts),
                        false,
                    )?;
                    server.front.insert(p, port);
                }
                if hop {
                    let accepts = kind.hop(p);
                    let port = server.listener(
                        accepts,
                        tls,
                        upstream,
                        kind.to_upstream(accepts),
                        false,
                    )?;
                    server.hop.insert(p, port);
                }
            }
            instances.insert(role, server);
        }
        // The client instances: first hops of the chains.
        for (role, server_role, tls, wanted) in [
            ("client", "server", false, want(two)),
            ("client-tls", "server-tls", true, want(two_tls)),
        ] {
            if !wanted {
                continue;
            }
            let mut client = blank();
            for &p in protocols {
                let hop_port = instances[server_role].hop[&p];
                let port = client.listener(
                    Accepts::front(p),
                    false,
                    local(hop_port),
                    kind.hop(p).wire,
                    tls,
                )?;
                client.front.insert(p, port);
            }
            instances.insert(role, client);
        }
        Ok(Plan {
            kind,
            instances,
            targets: targets
                .iter()
                .copied()
                .filter(|t| kind.targets().contains(t))
                .collect(),
            protocols: protocols.to_vec(),
        })
    }

    /// The hops of `target` for `protocol`, e.g. `h2c → nginx → HTTP/1.1 → upstream`.
    pub(crate) fn path(&self, target: TargetKey, protocol: Protocol) -> String {
        let name = self.kind.program();
        let front = Accepts::front(protocol);
        let last = |accepts: Accepts| {
            Accepts {
                wire: self.kind.to_upstream(accepts),
                mode: accepts.mode,
            }
            .describe(false)
        };
        let [one, _, two_tls] = self.kind.targets();
        if target == one {
            return format!(
                "client → {} → {name} → {} → upstream",
                front.describe(false),
                last(front)
            );
        }
        let hop = self.kind.hop(protocol);
        let tls = target == two_tls;
        format!(
            "client → {} → {name} → {} → {name} → {} → upstream",
            front.describe(false),
            hop.describe(tls),
            last(hop)
        )
    }
}

/// A started instance.
#[derive(Debug)]
pub(crate) struct Instance {
    /// Its processes (nginx: master and workers; HAProxy: one process).
    pub(crate) processes: Vec<Charged>,
}

/// A started peer: its instances, and the targets they make up.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The plan it was started from.
    pub(crate) plan: Plan,
    /// By role.
    pub(crate) instances: BTreeMap<&'static str, Instance>,
    /// The program's version line, for the report.
    pub(crate) version: String,
}

impl Peer {
    /// Starts every instance of `plan` and waits until each listens.
    pub(crate) async fn start(
        supervisor: &mut Supervisor,
        binary: &Path,
        plan: Plan,
        dir: &Path,
        tls: Option<&TlsFiles>,
    ) -> Result<Peer> {
        let version = version_of(binary, plan.kind).await;
        let mut instances = BTreeMap::new();
        // Servers first, so that a client's next hop is already there.
        let mut roles: Vec<_> = plan.instances.iter().collect();
        roles.sort_by_key(|(role, _)| !role.starts_with("server"));
        for (role, config) in roles {
            let name = format!("{}-{role}", plan.kind.program());
            let instance = start_instance(
                supervisor, binary, plan.kind, &name, config, dir, tls, &version,
            )
            .await?;
            instances.insert(*role, instance);
        }
        Ok(Peer {
            plan,
            instances,
            version,
        })
    }

    /// The targets this peer offers, each with its lanes and charged processes.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let [one, two, two_tls] = self.plan.kind.targets();
        let mut out = Vec::new();
        for key in self.plan.targets.iter().copied() {
            let (entry, roles): (&str, &[&str]) = if key == one {
                ("server", &["server"])
            } else if key == two {
                ("client", &["client", "server"])
            } else if key == two_tls {
                ("client-tls", &["client-tls", "server-tls"])
            } else {
                continue;
            };
            let config = &self.plan.instances[entry];
            let lanes = self
                .plan
                .protocols
                .iter()
                .map(|&p| {
                    let port = config.front[&p];
                    let lane = Lane {
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        path: self.plan.path(key, p),
                    };
                    (p, lane)
                })
                .collect();
            let charged = roles
                .iter()
                .flat_map(|role| self.instances[role].processes.iter().cloned())
                .collect();
            out.push(Target {
                key,
                lanes,
                host: None,
                charged,
            });
        }
        out
    }
}

/// Starts one instance of peer `kind` as child `name` with `config` (files in `dir/name`),
/// waits until each of its listeners accepts, and returns its processes. `version` is the
/// peer's version line (nginx's HTTP/2 syntax depends on it).
#[allow(clippy::too_many_arguments)] // two call sites; a struct would only rename them
pub(crate) async fn start_instance(
    supervisor: &mut Supervisor,
    binary: &Path,
    kind: Kind,
    name: &str,
    config: &InstanceConfig,
    dir: &Path,
    tls: Option<&TlsFiles>,
    version: &str,
) -> Result<Instance> {
    let tls = if config.uses_tls() {
        Some(tls.ok_or("TLS listeners need TLS material")?)
    } else {
        None
    };
    let prefix = dir.join(name);
    std::fs::create_dir_all(&prefix)?;
    let pid = match kind {
        Kind::Nginx => {
            let style = nginx::Http2Style::for_version(version);
            let conf = nginx::config(config, &prefix, tls, style);
            nginx::start(supervisor, binary, name, &prefix, &conf)?
        }
        Kind::Haproxy => {
            let conf = haproxy::config(config, tls);
            haproxy::start(supervisor, binary, name, &prefix, &conf)?
        }
    };
    for listener in &config.listeners {
        wait_listening(supervisor, name, listener.port).await?;
    }
    let processes = match kind {
        Kind::Nginx => nginx::processes(supervisor, name, pid, config.threads).await?,
        Kind::Haproxy => vec![Charged {
            name: name.to_string(),
            pid,
            serving: true,
        }],
    };
    let pids: Vec<String> = processes
        .iter()
        .map(|p| format!("{} {}", p.name, p.pid))
        .collect();
    eprintln!(
        "  {name:<15} ports {:?} ({})",
        ports(config),
        pids.join(", ")
    );
    Ok(Instance { processes })
}

fn ports(config: &InstanceConfig) -> Vec<u16> {
    config.listeners.iter().map(|l| l.port).collect()
}

/// A port that was free a moment ago on 127.0.0.1: bind port 0, read the port, release it.
/// (A peer binds it itself; the kernel does not hand the same port out again that soon.)
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind a free port on 127.0.0.1: {e}"))?;
    Ok(listener.local_addr()?.port())
}

/// Polls until something accepts on 127.0.0.1:`port`, failing early if the child exits.
async fn wait_listening(supervisor: &mut Supervisor, name: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        supervisor.check(name)?;
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} does not listen on 127.0.0.1:{port} after {STARTUP_TIMEOUT:?}; see {}",
                supervisor.log_path(name).display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first line of `PROGRAM -v` (nginx prints it on stderr, HAProxy on stdout).
pub(crate) async fn version_of(binary: &Path, kind: Kind) -> String {
    let out = tokio::process::Command::new(binary)
        .arg("-v")
        .kill_on_drop(true)
        .output()
        .await;
    let Ok(out) = out else {
        return format!("{} (version unknown)", kind.program());
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Finds `program` on PATH or in the sbin directories (where Debian installs both peers, and
/// which a non-root PATH often lacks).
pub(crate) fn find_binary(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Finds each peer's binary, installing the missing ones with apt-get when allowed and
/// running as root (`apt-get update` first if the install fails for lack of package lists).
/// Returns, per program, its path or why it is not available.
pub(crate) async fn ensure_installed(
    kinds: &[Kind],
    allow_install: bool,
    log_dir: &Path,
) -> BTreeMap<&'static str, Result<PathBuf, String>> {
    let mut found: BTreeMap<&'static str, Result<PathBuf, String>> = kinds
        .iter()
        .map(|k| {
            let program = k.program();
            (
                program,
                find_binary(program).ok_or_else(|| format!("{program} is not installed")),
            )
        })
        .collect();
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return found;
    }
    let why_not = if !allow_install {
        Some("--no-install was given".to_string())
    } else if !is_root() {
        Some(format!(
            "not running as root, so the harness cannot install it: run `sudo apt-get install -y {}`",
            missing.join(" ")
        ))
    } else if find_binary("apt-get").is_none() {
        Some("apt-get is not available on this machine".to_string())
    } else {
        eprintln!(
            "installing {} with apt-get (log in {})",
            missing.join(" "),
            log_dir.join("apt-get.log").display()
        );
        apt_install(&missing, log_dir).await.err()
    };
    for program in missing {
        let entry = found.get_mut(program).expect("listed above");
        *entry = match (find_binary(program), &why_not) {
            (Some(path), _) => Ok(path),
            (None, Some(reason)) => Err(format!("{program} is not installed ({reason})")),
            (None, None) => Err(format!(
                "{program} is still missing after apt-get install; see {}",
                log_dir.join("apt-get.log").display()
            )),
        };
    }
    found
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

async fn apt_install(packages: &[&str], log_dir: &Path) -> Result<(), String> {
    let log_path = log_dir.join("apt-get.log");
    let install: Vec<&str> = ["install", "-y"]
        .into_iter()
        .chain(packages.iter().copied())
        .collect();
    if apt_get(&install, &log_path).await? {
        return Ok(());
    }
    // Usually a fresh machine without package lists.
    if !apt_get(&["update"], &log_path).await? {
        return Err(format!("apt-get update failed; see {}", log_path.display()));
    }
    if apt_get(&install, &log_path).await? {
        Ok(())
    } else {
        Err(format!(
            "apt-get install {} failed; see {}",
            packages.join(" "),
            log_path.display()
        ))
    }
}

/// Runs `apt-get ARGS` non-interactively with its output appended to `log_path`; returns
/// whether it succeeded.
async fn apt_get(args: &[&str], log_path: &Path) -> Result<bool, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let status = tokio::process::Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn nginx_chains_speak_http1_between_hops_except_grpc() {
        let plan = Plan::new(
            Kind::Nginx,
            &[TargetKey::Nginx1, TargetKey::Nginx2, TargetKey::Nginx2Tls],
            &Protocol::ALL,
            upstream(),
            1,
        )
        .unwrap();
        assert_eq!(
            plan.instances.keys().copied().collect::<Vec<_>>(),
            ["client", "client-tls", "server", "server-tls"]
        );
        let server = &plan.instances["server"];
        // Front: h1, h2c (→ HTTP/1.1 upstream), gRPC; hop: the h2 chain reuses the h1 listener.
        assert_eq!(server.listeners.len(), 3);
        assert_eq!(server.hop[&Protocol::Http2], server.front[&Protocol::Http1]);
        let client = &plan.instances["client"];
        let h2 = client
            .listeners
            .iter()
            .find(|l| l.port == client.front[&Protocol::Http2])
            .unwrap();
        assert_eq!((h2.accepts.wire, h2.next_wire), (Wire::H2, Wire::H1));
        assert_eq!(h2.servers[0].port(), server.front[&Protocol::Http1]);
        let client_tls = &plan.instances["client-tls"];
        assert!(client_tls.listeners.iter().all(|l| l.tls_out && !l.tls_in));
        assert!(plan.instances["server-tls"]
            .listeners
            .iter()
            .all(|l| l.tls_in && !l.tls_out && l.servers == [upstream()]));
        assert_eq!(
            plan.path(TargetKey::Nginx2Tls, Protocol::Http2),
            "client → h2c → nginx → HTTP/1.1+TLS → nginx → HTTP/1.1 → upstream"
        );
        assert_eq!(
            plan.path(TargetKey::Nginx2, Protocol::Grpc),
            "client → gRPC/h2c → nginx → gRPC/h2c → nginx → gRPC/h2c → upstream"
        );
    }

    #[test]
    fn haproxy_chains_speak_h2_between_hops_for_h2_and_grpc() {
        let plan = Plan::new(
            Kind::Haproxy,
            &[TargetKey::Haproxy2, TargetKey::Direct],
            &[Protocol::Http1, Protocol::Http2],
            upstream(),
            2,
        )
        .unwrap();
        assert_eq!(
            plan.instances.keys().copied().collect::<Vec<_>>(),
            ["client", "server"]
        );
        assert_eq!(plan.targets, [TargetKey::Haproxy2]);
        let client = &plan.instances["client"];
        assert_eq!(client.threads, 2);
        for l in &client.listeners {
            assert_eq!(l.accepts.wire, l.next_wire);
        }
        assert_eq!(
            plan.path(TargetKey::Haproxy2, Protocol::Http2),
            "client → h2c → haproxy → h2c → haproxy → h2c → upstream"
        );
        assert_eq!(
            plan.path(TargetKey::Haproxy1, Protocol::Http1),
            "client → HTTP/1.1 → haproxy → HTTP/1.1 → upstream"
        );
    }
}
