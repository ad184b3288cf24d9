//! Pods on one machine: Linux network namespaces on a bridge, each with one address, running
//! unmodified apps and, where a test wants one, a Ferrule sidecar with `ferrule-proxy init`'s
//! iptables rules (transparent interception), beside a real control plane.
//!
//! - [`Net`]: a bridge in the root namespace with the first address of a /24 of its own
//!   (`10.77.X.0/24`, X chosen so that no address of the machine is in it); the test process
//!   reaches the pods (admin endpoints) through it. Removed when dropped.
//! - [`Pod`]: a namespace with a veth pair to the bridge and the next address of the /24.
//!   Processes started in it are killed and the namespace deleted when it is dropped, also
//!   when a test panics.
//! - [`Mesh`]: the control plane, in the root namespace on the bridge's address: TLS, an admin
//!   token (it listens beyond loopback), sidecars proving their service with bootstrap tokens.
//!
//! Names are unique per test process and per `Net`/namespace (the process id and a counter),
//! so tests running in parallel never share a bridge, a namespace or a subnet.
//!
//! Sidecars run as [`PROXY_UID`], a user of their own: `init` tells their connections from the
//! app's by owner. It is a bare number on purpose (no account is created on the machine;
//! the kernel needs none), the same one in every pod, as Linkerd's 2102 is.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bins::bin;
use crate::procs::{ControlPlane, Proc, Sidecar};
use crate::TempDir;

/// The UID sidecars run as in pods.
pub const PROXY_UID: u32 = 2102;
/// The sidecar's listener ports in a pod (`ferrule-proxy init`'s defaults).
pub const INBOUND_PORT: u16 = 4143;
/// See [`INBOUND_PORT`].
pub const OUTBOUND_PORT: u16 = 4140;
/// See [`INBOUND_PORT`].
pub const ADMIN_PORT: u16 = 4191;

/// Why pods cannot be built here (not root, a program missing), or `None` when they can.
pub fn missing_prerequisites() -> Option<String> {
    // The effective user from `id -u`: this crate does not depend on libc.
    let uid = match Command::new("id").arg("-u").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(e) => return Some(format!("cannot run id -u: {e}")),
    };
    if uid != "0" {
        return Some("not running as root (network namespaces, veth and iptables need it)".into());
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables-save", "iptables"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
        ("python3", "python3"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{program} is missing (apt-get install -y {package})"
            ));
        }
    }
    None
}

/// Runs a command to completion; panics with its output if it fails.
fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    must(Command::new("ip").args(args))
}

/// A tag no other `Net` or namespace of this machine's running tests has: this process's id
/// and a counter, in hex (short, because interface names have 15 bytes).
fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() & 0xfffff, n)
}

/// A bridge and its /24; pods are added with [`Net::pod`].
#[derive(Debug)]
pub struct Net {
    bridge: String,
    tag: String,
    /// The subnet's third octet (`10.77.X.0/24`).
    x: u8,
    next_host: u8,
    /// Where pods' data dirs and logs go.
    pub dir: TempDir,
}

impl Net {
    /// A new bridge, up, with `10.77.X.1/24`.
    pub fn new() -> Net {
        let tag = unique_tag();
        let bridge = format!("frb{tag}");
        let x = free_subnet(&tag);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let net = Net {
            bridge,
            tag,
            x,
            next_host: 2,
            dir: TempDir::new("pods"),
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", &net.bridge, "up"]);
        net
    }

    /// The bridge's address: the root namespace, as the pods see it.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.x, 1)
    }

    /// An address of the subnet that no pod has (e.g. a service's virtual address).
    pub fn spare(&self, host: u8) -> Ipv4Addr {
        assert!(host > 200, "pods take the low addresses; use 201..=254");
        Ipv4Addr::new(10, 77, self.x, host)
    }

    /// A new pod named `name`: a namespace with loopback up and `eth0` on the bridge.
    pub fn pod(&mut self, name: &str) -> Pod {
        let host = self.next_host;
        self.next_host += 1;
        let addr = Ipv4Addr::new(10, 77, self.x, host);
        let ns = Netns::new(&format!("ferrule-{}-{name}", self.tag));
        let (outside, inside) = (
            format!("frv{}h{host:x}", self.tag),
            format!("frv{}p{host:x}", self.tag),
        );
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns.0]);
        ip(&["link", "set", &outside, "master", &self.bridge, "up"]);
        ip(&["-n", &ns.0, "link", "set", &inside, "name", "eth0"]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        Pod {
            dir: self.dir.sub(name),
            procs: Vec::new(),
            ns,
            name: name.to_owned(),
            addr,
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A third octet X such that no address of this machine is in `10.77.X.0/24`, starting from
/// one the tag picks (so parallel test processes start apart).
fn free_subnet(tag: &str) -> u8 {
    let out = ip(&["-4", "-o", "addr", "show"]);
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = tag
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    (0..256u32)
        .map(|i| ((start + i) % 256) as u8)
        .find(|x| !used.contains(&format!(" 10.77.{x}.")))
        .expect("every 10.77.X.0/24 is in use on this machine")
}

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// Creates `ip netns add name`.
    pub fn new(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        Netns(name.to_owned())
    }

    /// A namespace with a unique name and nothing in it but loopback (down).
    pub fn isolated(what: &str) -> Netns {
        Netns::new(&format!("ferrule-{}-{what}", unique_tag()))
    }

    /// `program` to be run in the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Runs `program args` in the namespace to completion.
    pub fn run(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }

    /// `iptables-save -t nat` in the namespace, without its comment lines (which carry the
    /// time).
    pub fn nat_table(&self) -> String {
        let out = self.run("iptables-save", &["-t", "nat"]);
        assert!(out.status.success(), "iptables-save: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One pod: a namespace with an address on the bridge, and the processes started in it.
#[derive(Debug)]
pub struct Pod {
    /// Its name in the test.
    pub name: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its data dirs and logs.
    pub dir: PathBuf,
    // Killed before the namespace goes (fields drop in this order).
    procs: Vec<Proc>,
    /// The namespace.
    pub ns: Netns,
}

impl Pod {
    /// Starts the unmodified app, Python's `http.server`, on `port`, serving `index.html`
    /// with `body`; returns once it listens.
    pub fn http_server(&mut self, port: u16, body: &str) {
        let root = self.dir.join("www");
        std::fs::create_dir_all(&root).expect("creating the app's directory");
        std::fs::write(root.join("index.html"), body).expect("writing index.html");
        let mut cmd = self.ns.command("python3");
        // `-u`: its "Serving HTTP on ..." line is what says it listens.
        cmd.args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
        ])
        .arg("--directory")
        .arg(&root);
        let (proc, line) =
            Proc::spawn(cmd, &format!("{} app", self.name), self.dir.join("app.log"));
        assert!(
            line.starts_with("Serving HTTP"),
            "python3 http.server said {line:?}"
        );
        self.procs.push(proc);
    }

    /// Installs the interception rules in the pod (`ferrule-proxy init`), leaving the
    /// control plane at `control_plane` alone.
    pub fn intercept(&self, control_plane: &str) {
        let out = self.ns.run(
            bin("ferrule-proxy"),
            &[
                "init",
                "--proxy-uid",
                &PROXY_UID.to_string(),
                "--control-plane",
                control_plane,
            ],
        );
        assert!(
            out.status.success(),
            "ferrule-proxy init in pod {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs curl in the pod (as the app would: no proxy settings, nothing of the mesh).
    pub fn curl(&self, url: &str) -> (String, bool) {
        let out = self
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "*", url])
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .output()
            .expect("running curl in the pod");
        let text = if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        (text, out.status.success())
    }
}

/// The control plane of the pods, in the root namespace on the bridge's address.
#[derive(Debug)]
pub struct Mesh {
    /// The process and its client (`cp.apply`, `cp.ctl` send the admin token).
    pub cp: ControlPlane,
}

impl Mesh {
    /// Starts `ferrule-control` with TLS on the bridge's address; it makes its admin token.
    pub fn start(net: &Net) -> Mesh {
        let dir = net.dir.sub("control-plane");
        let admin_token = net.dir.path().join("admin.token");
        let gateway = net.gateway().to_string();
        let token = admin_token.to_str().expect("utf-8 path");
        let mut cp = ControlPlane::launch(
            &format!("{gateway}:0"),
            &dir,
            &[],
            &[
                "--admin-token-file",
                token,
                "--init-admin-token",
                "--tls-san",
                &gateway,
            ],
        );
        cp.admin_token = Some(admin_token);
        Mesh { cp }
    }

    /// Starts the sidecar of `service` in `pod`, in front of the app on `app_port`, as
    /// [`PROXY_UID`], with its bootstrap token, listening where `init`'s rules send traffic:
    /// inbound on every address, outbound on loopback, admin on the pod's address (so the test
    /// reaches it through the bridge). Its endpoint is the pod's address and the app's port,
    /// which is what peers connect to; the pod's rules hand those connections to the sidecar.
    pub fn sidecar(&self, pod: &Pod, service: &str, app_port: u16) -> Sidecar {
        let out = self.cp.ctl(&["token", "create", "--service", service]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = pod.dir.join("sidecar");
        std::fs::create_dir_all(&data).expect("creating the sidecar's data dir");
        let token = pod.dir.join("bootstrap.token");
        std::fs::write(&token, String::from_utf8_lossy(&out.stdout).trim())
            .expect("writing the token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
            .expect("token mode");
        let bundle = pod.dir.join("trust-bundle.pem");
        std::fs::copy(self.cp.trust_bundle(), &bundle).expect("copying the trust bundle");
        for p in [&data, &token, &bundle] {
            give_to_proxy(p);
        }
        let admin = SocketAddr::from((pod.addr, ADMIN_PORT));
        let advertise = SocketAddr::from((pod.addr, app_port));
        let mut cmd = pod.ns.command("setpriv");
        cmd.args([
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
            "--",
        ])
        .arg(bin("ferrule-proxy"))
        .args(["--control-plane", &self.cp.url, "--service", service])
        .arg("--trust-bundle")
        .arg(&bundle)
        .arg("--token-file")
        .arg(&token)
        .arg("--data-dir")
        .arg(&data)
        .args(["--inbound", &format!("0.0.0.0:{INBOUND_PORT}")])
        .args(["--outbound", &format!("127.0.0.1:{OUTBOUND_PORT}")])
        .args(["--admin", &admin.to_string()])
        .args(["--app", &format!("127.0.0.1:{app_port}")])
        .args(["--advertise", &advertise.to_string()])
        .args(["--id", &format!("{service}-{}", pod.name)])
        .env_remove("FERRULE_SCHED_SLICE")
        .env("FERRULE_LOG", "info,ferrule_proxy=debug");
        let log = pod.dir.join("sidecar.log");
        let (proc, line) = Proc::spawn(cmd, &format!("{} sidecar", pod.name), log);
        Sidecar::started(proc, &line, &data)
    }
}

/// Hands a file or directory to the sidecar's user.
fn give_to_proxy(p: &Path) {
    std::os::unix::fs::chown(p, Some(PROXY_UID), Some(PROXY_UID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}
