//! The control plane and sidecars as child processes: started on `127.0.0.1:0`, their bound
//! addresses read from the line each prints on stdout, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::bins::bin;

/// A child process that is killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `cmd`, waits (up to 20 s) for its first stdout line, and returns both.
    pub fn spawn(mut cmd: Command, name: &str, log: PathBuf) -> (Proc, String) {
        let err = std::fs::File::create(&log).expect("creating a log file");
        cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stdout after the first line so the child never blocks on it.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let proc = Proc {
            child: Some(child),
            log,
            name: name.to_owned(),
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => (proc, line),
            Err(_) => panic!(
                "{name} printed nothing within 20 s; its log:\n{}",
                proc.log_text()
            ),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What it wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                eprintln!("{} did not exit within {timeout:?}; killing it", self.name);
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `ferrule-control`.
#[derive(Debug)]
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its bound address.
    pub addr: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// The admin token file `ctl` sends, when the control plane has one.
    pub admin_token: Option<PathBuf>,
}

impl ControlPlane {
    /// Starts a control plane on a fresh port with `data_dir`; `extra` adds flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", data_dir, extra)
    }

    /// Starts a control plane on `listen` (used to restart it on the same port).
    pub fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Self {
        // Most sidecars of these tests run without identity, so this control plane serves
        // plaintext and anonymous push streams (both development-only switches).
        Self::launch(
            listen,
            data_dir,
            &["--plaintext", "--allow-anonymous-proxies"],
            extra,
        )
    }

    /// Starts a control plane as in production: TLS, push streams for the mesh's
    /// certificates and tokens only. `ctl` then verifies it with its trust bundle.
    pub fn start_tls(data_dir: &Path, extra: &[&str]) -> Self {
        Self::launch("127.0.0.1:0", data_dir, &[], extra)
    }

    /// Starts a control plane on `listen` with `mode` flags (`--plaintext`, ...) and `extra`.
    pub fn launch(listen: &str, data_dir: &Path, mode: &[&str], extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin("ferrule-control"));
        cmd.args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(mode)
            .args(extra);
        let log = data_dir.with_extension("log");
        let (proc, line) = Proc::spawn(cmd, "ferrule-control", log);
        let url = line
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .unwrap_or_else(|| panic!("unexpected first line from ferrule-control: {line:?}"))
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .parse()
            .expect("control plane URL holds IP:port");
        ControlPlane {
            proc,
            url,
            addr,
            data_dir: data_dir.to_owned(),
            admin_token: None,
        }
    }

    /// The trust bundle (PEM file) of this control plane's CA: every root it trusts.
    pub fn trust_bundle(&self) -> PathBuf {
        self.data_dir.join("ca").join("trust-bundle.pem")
    }

    /// Runs `ferrulectl --server <url> args...` (with `--ca-file` over https, and
    /// `--token-file` with an admin token).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let bundle = self.trust_bundle();
        let mut all = Vec::new();
        if self.url.starts_with("https://") {
            all.extend(["--ca-file", bundle.to_str().expect("utf-8 path")]);
        }
        if let Some(token) = &self.admin_token {
            all.extend(["--token-file", token.to_str().expect("utf-8 path")]);
        }
        all.extend_from_slice(args);
        ferrulectl(&self.url, &all)
    }

    /// Applies a YAML document with `ferrulectl apply -f`; panics with its output if refused.
    pub fn apply(&self, yaml: &str) {
        let out = self.try_apply(yaml);
        assert!(
            out.status.success(),
            "apply failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Applies a YAML document and returns ferrulectl's output whatever happened.
    pub fn try_apply(&self, yaml: &str) -> Output {
        let file = self.data_dir.with_extension(format!(
            "{}.yaml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&file, yaml).expect("writing a policy file");
        let out = self.ctl(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&file);
        out
    }
}

/// Runs `ferrulectl --server URL args...`.
pub fn ferrulectl(server: &str, args: &[&str]) -> Output {
    Command::new(bin("ferrulectl"))
        .args(["--server", server])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ferrulectl")
}

/// A running `ferrule-proxy`.
#[derive(Debug)]
pub struct Sidecar {
    /// The process.
    pub proc: Proc,
    /// Inbound listener (what peers call).
    pub inbound: SocketAddr,
    /// Outbound listener (what the local app calls).
    pub outbound: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
}

/// How to start a sidecar.
#[derive(Debug, Clone)]
pub struct SidecarOpts<'a> {
    /// Control plane URL.
    pub control_plane: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Local app address.
    pub app: SocketAddr,
    /// Data dir.
    pub data_dir: &'a Path,
    /// `k=v,...` labels.
    pub labels: &'a str,
    /// More flags.
    pub extra: &'a [&'a str],
}

impl Sidecar {
    /// A sidecar for `service` in front of `app`, connected to `cp`, with its data dir under
    /// `dir` and no labels.
    pub fn for_service(
        cp: &ControlPlane,
        dir: &crate::TempDir,
        service: &str,
        app: SocketAddr,
        extra: &[&str],
    ) -> Self {
        Self::start(SidecarOpts {
            control_plane: &cp.url,
            service,
            app,
            data_dir: &dir.sub(service),
            labels: "",
            extra,
        })
    }

    /// Starts a sidecar with every listener on a fresh loopback port.
    pub fn start(o: SidecarOpts<'_>) -> Self {
        let mut cmd = Command::new(bin("ferrule-proxy"));
        cmd.args(["--control-plane", o.control_plane, "--service", o.service])
            .arg("--data-dir")
            .arg(o.data_dir)
            .args(["--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .args(["--app", &o.app.to_string()])
            .args(["--labels", o.labels])
            .args(o.extra)
            // Tests choose their flags; a setting in the caller's environment must not leak in.
            .env_remove("FERRULE_SCHED_SLICE")
            .env("FERRULE_LOG", "info,ferrule_proxy=debug");
        // Without a bootstrap token, a sidecar runs without identity (plaintext), which is what
        // the tests of everything but mTLS want.
        if !o.extra.contains(&"--token-file") {
            cmd.arg("--identity-disabled");
        }
        let log = o.data_dir.with_extension("log");
        let (proc, line) = Proc::spawn(cmd, "ferrule-proxy", log);
        Self::started(proc, &line, o.data_dir)
    }

    /// A sidecar process that printed `line` first (its bound listeners), with `data_dir`.
    pub fn started(proc: Proc, line: &str, data_dir: &Path) -> Self {
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in ferrule-proxy's first line {line:?}"))
        };
        Sidecar {
            inbound: field("inbound="),
            outbound: field("outbound="),
            admin: field("admin="),
            proc,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The admin `/config` document.
    pub async fn config(&self) -> serde_json::Value {
        let (status, _, body) =
            crate::client::get(&format!("http://{}/config", self.admin), None).await;
        assert_eq!(status, 200, "admin /config");
        serde_json::from_slice(&body).expect("/config is JSON")
    }

    /// The applied snapshot version (0 if none).
    pub async fn version(&self) -> u64 {
        self.config().await["version"].as_u64().unwrap_or(0)
    }

    /// Names of the endpoints of `service` in the applied snapshot.
    pub async fn endpoints_of(&self, service: &str) -> Vec<String> {
        let cfg = self.config().await;
        let mut v: Vec<String> = cfg["snapshot"]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["service"] == service)
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        v
    }

    /// The value of the sample `name{labels...}` in `/metrics` (0 if absent), summed over
    /// every label set that has all the given labels.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, _, body) =
            crate::client::get(&format!("http://{}/metrics", self.admin), None).await;
        assert_eq!(status, 200, "admin /metrics");
        let text = String::from_utf8_lossy(&body);
        let mut found = 0.0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => match r.split_once("} ") {
                    Some((set, value)) => (set, value),
                    None => continue,
                },
                // Another metric whose name starts with `name`.
                None if !rest.starts_with(' ') => continue,
                None => ("", rest.trim()),
            };
            let have: Vec<&str> = set.split(',').collect();
            if labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
            {
                found += value
                    .trim()
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad sample line {line:?}"));
            }
        }
        found
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.admin);
        crate::eventually(Duration::from_secs(20), "sidecar ready", || {
            let url = url.clone();
            async move { crate::client::get(&url, None).await.0 == 200 }
        })
        .await;
    }

    /// Waits until the applied snapshot lists `n` endpoints of `service`.
    pub async fn wait_endpoints(&self, service: &str, n: usize) {
        let what = format!("{n} endpoint(s) of {service} in the sidecar's snapshot");
        crate::eventually(Duration::from_secs(20), &what, || async move {
            self.endpoints_of(service).await.len() == n
        })
        .await;
    }
}
