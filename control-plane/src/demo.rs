//! `ferrulectl demo`: a whole mesh on loopback in one command.
//!
//! Starts `ferrule-control` on its embedded store, three demo services each with its own
//! `ferrule-proxy` (`web`, which calls `echo`; `echo` v1 and v2 with a 90/10 split and a `/v2`
//! route; `loadgen`, the caller), sends a steady trickle of traffic through
//! `loadgen -> web -> echo`, and prints where to look and what the traffic does. Each sidecar
//! gets its identity from the control plane's CA with a bootstrap token, every hop between
//! sidecars is mutual TLS, and `echo` authorizes `web` only. The apps are small hyper servers
//! inside this process; the control plane and sidecars are the real binaries, found next to
//! `ferrulectl`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Options of `ferrulectl demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the control plane listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Data directory for the control plane and sidecars (default: a fresh temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
}

const POLICY: &str = r#"
kind: Service
name: web
protocol: http
---
kind: Service
name: echo
protocol: http
trafficPolicy: { loadBalancer: round_robin }
routes:
  - name: v2-only
    match: { pathPrefix: /v2 }
    backends: [ { subset: { version: v2 }, weight: 100 } ]
  - name: canary
    match: { pathPrefix: / }
    backends: [ { subset: { version: v1 }, weight: 90 }, { subset: { version: v2 }, weight: 10 } ]
# Only web may call echo: loadgen calling it directly gets 403 (ferrule-error: unauthorized).
authorization:
  defaultAction: deny
  rules:
    - { action: allow, from: ["spiffe://cluster.local/ns/default/sa/web"] }
---
kind: Service
name: loadgen
protocol: http
"#;

/// Children killed (after a polite SIGTERM) when the demo ends.
#[derive(Default)]
struct Children(Mutex<Vec<Child>>);

impl Children {
    fn add(&self, c: Child) {
        self.0.lock().expect("children lock").push(c);
    }

    fn stop_all(&self) {
        let mut kids = self.0.lock().expect("children lock");
        // Sidecars first (they deregister from the still-running control plane), then it.
        for c in kids.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in kids.iter_mut().rev() {
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        kids.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Runs the demo; the entry point of `ferrulectl demo`.
pub fn main(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let children = Children::default();
    let result = rt.block_on(run(args, &children));
    children.stop_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find ferrulectl's path: {e}"))?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found next to ferrulectl; build everything first: cargo build --release",
            p.display()
        ))
    }
}

/// Starts a binary, sends its stderr to `log`, returns its first stdout line.
fn spawn(children: &Children, mut cmd: Command, what: &str, log: &Path) -> Result<String, String> {
    let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| format!("starting {what}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    children.add(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).map_err(|_| {
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        format!(
            "{what} did not start; its log ({}):\n{log_text}",
            log.display()
        )
    })
}

struct SidecarAddrs {
    outbound: SocketAddr,
    admin: SocketAddr,
}

#[allow(clippy::too_many_arguments)] // one call per sidecar; a struct would only rename them
fn sidecar(
    children: &Children,
    dir: &Path,
    cp_url: &str,
    name: &str,
    service: &str,
    app: SocketAddr,
    labels: &str,
    token: &Path,
) -> Result<SidecarAddrs, String> {
    let data = dir.join(name);
    let mut cmd = Command::new(sibling("ferrule-proxy")?);
    cmd.args([
        "--control-plane",
        cp_url,
        "--service",
        service,
        "--id",
        name,
    ])
    .arg("--data-dir")
    .arg(&data)
    .args(["--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0"])
    .args(["--admin", "127.0.0.1:0", "--app", &app.to_string()])
    .args(["--labels", labels])
    .arg("--token-file")
    .arg(token);
    let line = spawn(children, cmd, name, &dir.join(format!("{name}.log")))?;
    let field = |key: &str| -> Result<SocketAddr, String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unexpected output from ferrule-proxy: {line:?}"))
    };
    Ok(SidecarAddrs {
        outbound: field("outbound=")?,
        admin: field("admin=")?,
    })
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// `GET url` (with `host` as the Host header, if given); returns status, headers and body.
async fn get(
    client: &HttpClient,
    url: String,
    host: Option<&str>,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), hyper_util::client::legacy::Error> {
    let mut req = Request::get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = client
        .request(req.body(Empty::new()).expect("valid request"))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((parts.status, parts.headers, body))
}

/// Serves `handler` on a fresh loopback port.
async fn serve<F, Fut>(handler: F) -> Result<SocketAddr, String>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding a demo app: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn text(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// `echo`: answers which version and instance served the request.
async fn echo_app(version: &'static str) -> Result<SocketAddr, String> {
    serve(move |req: Request<Incoming>| async move {
        text(200, format!("echo {version} {}\n", req.uri().path()))
    })
    .await
}

/// `web`: calls `echo` through its own sidecar, as an unchanged app would with HTTP_PROXY.
async fn web_app(
    client: HttpClient,
    outbound: Arc<OnceLock<SocketAddr>>,
) -> Result<SocketAddr, String> {
    serve(move |req: Request<Incoming>| {
        let client = client.clone();
        let outbound = outbound.clone();
        async move {
            let Some(out) = outbound.get() else {
                return text(503, "web: sidecar not started yet\n".into());
            };
            let url = format!("http://{out}{}", req.uri().path());
            match get(&client, url, Some("echo")).await {
                Ok((status, _, body)) => text(
                    status.as_u16(),
                    format!("web -> {}", String::from_utf8_lossy(&body)),
                ),
                Err(e) => text(502, format!("web: calling echo failed: {e}\n")),
            }
        }
    })
    .await
}

/// Polls a sidecar's `/config` until its snapshot lists `n` endpoints of `service`.
async fn wait_for_endpoints(
    client: &HttpClient,
    admin: SocketAddr,
    service: &str,
    n: usize,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((_, _, body)) = get(client, format!("http://{admin}/config"), None).await {
            let cfg: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let have = cfg["snapshot"]["endpoints"]
                .as_array()
                .map(|eps| eps.iter().filter(|e| e["service"] == service).count())
                .unwrap_or(0);
            if have >= n {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the sidecar with admin {admin} did not learn {n} endpoint(s) of {service} within 20 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(args: DemoArgs, children: &Children) -> Result<(), String> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("ferrule-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    // Control plane on its embedded store.
    let mut cmd = Command::new(sibling("ferrule-control")?);
    // Loopback only, so the API is plaintext (a development switch); the sidecars still get
    // their identities from its CA with bootstrap tokens and talk mutual TLS to each other.
    cmd.args(["--listen", &args.listen.to_string(), "--data-dir"])
        .arg(dir.join("control-plane"))
        .arg("--plaintext");
    let line = spawn(
        children,
        cmd,
        "ferrule-control",
        &dir.join("control-plane.log"),
    )?;
    let cp_url = line.rsplit(' ').next().unwrap_or_default().to_owned();

    // Policy, applied with this very CLI.
    let policy_file = dir.join("demo-policy.yaml");
    std::fs::write(&policy_file, POLICY).map_err(|e| e.to_string())?;
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--server", &cp_url, "apply", "-f"])
        .arg(&policy_file)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "applying the demo policy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // A bootstrap token per service, made with this very CLI.
    let mut tokens = BTreeMap::new();
    for service in ["echo", "web", "loadgen"] {
        let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["--server", &cp_url, "token", "create", "--service", service])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "creating a token for {service} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let path = dir.join(format!("{service}.token"));
        std::fs::write(&path, String::from_utf8_lossy(&out.stdout).trim())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        tokens.insert(service, path);
    }

    // Apps and their sidecars.
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let v1 = echo_app("v1").await?;
    let v1b = echo_app("v1").await?;
    let v2 = echo_app("v2").await?;
    let web_outbound = Arc::new(OnceLock::new());
    let web = web_app(client.clone(), web_outbound.clone()).await?;
    let unused: SocketAddr = ([127, 0, 0, 1], 9).into();

    let mut admins = BTreeMap::new();
    for (name, app, labels) in [
        ("echo-v1-a", v1, "version=v1"),
        ("echo-v1-b", v1b, "version=v1"),
        ("echo-v2", v2, "version=v2"),
    ] {
        let s = sidecar(
            children,
            &dir,
            &cp_url,
            name,
            "echo",
            app,
            labels,
            &tokens["echo"],
        )?;
        admins.insert(name, s.admin);
    }
    let w = sidecar(
        children,
        &dir,
        &cp_url,
        "web",
        "web",
        web,
        "",
        &tokens["web"],
    )?;
    let _ = web_outbound.set(w.outbound);
    admins.insert("web", w.admin);
    let lg = sidecar(
        children,
        &dir,
        &cp_url,
        "loadgen",
        "loadgen",
        unused,
        "",
        &tokens["loadgen"],
    )?;
    admins.insert("loadgen", lg.admin);

    // Traffic starts once the callers' sidecars know every endpoint they route to.
    for (admin, service, n) in [(lg.admin, "web", 1), (w.admin, "echo", 3)] {
        wait_for_endpoints(&client, admin, service, n).await?;
    }

    println!(
        "Ferrule demo mesh is up (data and logs in {}).\n",
        dir.display()
    );
    println!("  control plane API   {cp_url}/v1/services   {cp_url}/v1/proxies");
    for (name, admin) in &admins {
        println!("  {name:<10} admin    http://{admin}/config   http://{admin}/metrics");
    }
    println!("\nTraffic: loadgen -> web -> echo (90% v1, 10% v2; /v2 always v2), 10 requests/s,\nmutual TLS between every pair of sidecars; echo lets only web call it.");
    println!("Try:");
    println!("  curl -x http://{} http://web/hello", lg.outbound);
    println!(
        "  curl -i -x http://{} http://echo/v2/anything   (403: only web may call echo)",
        lg.outbound
    );
    println!("  curl http://{}/identity", w.admin);
    println!("  ./target/release/ferrulectl --server {cp_url} status");
    println!("  ./target/release/ferrulectl --server {cp_url} get services -o yaml\n");

    let stop = async {
        match args.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                n += 1;
                let path = if n.is_multiple_of(20) { "/v2/special" } else { "/hello" };
                let url = format!("http://{}{path}", lg.outbound);
                let key = match get(&client, url, Some("web")).await {
                    Ok((status, _, body)) if status.is_success() => {
                        let text = String::from_utf8_lossy(&body);
                        if text.contains("echo v2") { "ok (echo v2)".to_string() } else { "ok (echo v1)".to_string() }
                    }
                    Ok((status, headers, _)) => format!(
                        "HTTP {} ({})",
                        status.as_u16(),
                        headers.get("ferrule-error").and_then(|v| v.to_str().ok()).unwrap_or("from the app")
                    ),
                    Err(e) => format!("client error: {e}"),
                };
                *counts.entry(key).or_default() += 1;
                if n.is_multiple_of(50) {
                    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
                    println!("last 5 s: {}", summary.join(", "));
                    counts.clear();
                }
            }
        }
    }
    println!("stopping the demo mesh");
    Ok(())
}
