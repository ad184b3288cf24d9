//! Wiring: parses the sidecar's settings, binds its three listeners, starts the discovery
//! client, and runs until SIGTERM/SIGINT, then drains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrule_config::Endpoint;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::base::{Identity, Lifecycle, Limits, Listener};
use crate::listen;
use crate::pipeline::intercept::UnknownDestination;
use crate::pipeline::Pipeline;
use crate::plan::policy::Policy;
use crate::sync::certs::{self, CertSource};
use crate::sync::connect::ControlPlane;
use crate::sync::{self, Registration};
use crate::telemetry::metrics::Metrics;

/// Settings of one sidecar; every flag can also come from a `FERRULE_*` variable.
#[derive(Debug, Parser)]
#[command(
    name = "ferrule-proxy",
    version,
    about = "Ferrule sidecar proxy",
    after_help = "`ferrule-proxy init --help`: the command that installs a pod's interception rules."
)]
pub struct Args {
    /// Control plane URL, e.g. https://ferrule-control:7070 (http:// for local development).
    #[arg(long, env = "FERRULE_CONTROL_PLANE")]
    pub control_plane: http::Uri,
    /// File holding the bootstrap token that proves this sidecar's service to the control
    /// plane's CA (`ferrulectl token create --service NAME`).
    #[arg(long, env = "FERRULE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The mesh's root certificates (PEM), to verify an https:// control plane with until the
    /// first certificate brings the bundle in use.
    #[arg(long, env = "FERRULE_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// SHA-256 of one root certificate of the mesh (hex, as `ferrulectl ca show` prints it):
    /// instead of `--trust-bundle`, the bundle is fetched once from the control plane and
    /// accepted only if one of its roots has this fingerprint.
    #[arg(long, env = "FERRULE_TRUST_BUNDLE_SHA256")]
    pub trust_bundle_sha256: Option<String>,
    /// Trust domain of the mesh (the control plane's identity is checked in it).
    #[arg(long, env = "FERRULE_TRUST_DOMAIN", default_value = ferrule_config::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Certificate lifetime to ask for (the control plane caps it), e.g. 24h or 10m.
    #[arg(long, env = "FERRULE_CERT_TTL", value_parser = parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// Run without a workload identity: plaintext between sidecars, no authorization by
    /// identity. For local development only; a mesh's strict services refuse such a caller.
    #[arg(long, env = "FERRULE_IDENTITY_DISABLED")]
    pub identity_disabled: bool,
    /// Service this instance belongs to.
    #[arg(long, env = "FERRULE_SERVICE")]
    pub service: String,
    /// Where the last good snapshot is kept.
    #[arg(long, env = "FERRULE_DATA_DIR", default_value = "ferrule-proxy-data")]
    pub data_dir: PathBuf,
    /// Inbound listener: peers' requests for the local app.
    #[arg(long, env = "FERRULE_INBOUND", default_value = "127.0.0.1:4143")]
    pub inbound: SocketAddr,
    /// The local app's address.
    #[arg(long, env = "FERRULE_APP")]
    pub app: SocketAddr,
    /// Outbound listener: the local app's requests to other services (an HTTP proxy).
    #[arg(long, env = "FERRULE_OUTBOUND", default_value = "127.0.0.1:4140")]
    pub outbound: SocketAddr,
    /// Admin listener: /ready, /live, /metrics, /config.
    #[arg(long, env = "FERRULE_ADMIN", default_value = "127.0.0.1:4191")]
    pub admin: SocketAddr,
    /// Address peers should use to reach the inbound listener (default: its bound address).
    #[arg(long, env = "FERRULE_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Zone (locality) of this instance.
    #[arg(long, env = "FERRULE_ZONE")]
    pub zone: Option<String>,
    /// Labels of this instance, `k=v,k2=v2` (route subsets select on them).
    #[arg(long, env = "FERRULE_LABELS", value_parser = parse_labels, default_value = "")]
    pub labels: BTreeMap<String, String>,
    /// Stable proxy identity (default: service, address and port).
    #[arg(long, env = "FERRULE_PROXY_ID")]
    pub id: Option<String>,
    /// How long in-flight requests get to finish on shutdown.
    #[arg(long, env = "FERRULE_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Time a client has to send a complete request head (slowloris protection).
    #[arg(long, env = "FERRULE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Worker threads; 1 runs everything on one thread, which suits a sidecar that shares its
    /// pod's CPU with the app (no cross-thread wakeups, no idle workers spinning).
    #[arg(long, env = "FERRULE_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Log format on stderr: `json`, `text`, or `auto`: text at a terminal, JSON otherwise
    /// (a collector reading the container's stderr then gets fields, not text to parse). The
    /// level is `FERRULE_LOG` (default `info`), changeable at run time: `POST /log-level`.
    #[arg(long, env = "FERRULE_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "json", "text"])]
    pub log_format: String,
    /// Where access lines go: `stdout` or a file to append to. Which requests are logged is
    /// policy (`accessLog` on a service; off by default).
    #[arg(long, env = "FERRULE_ACCESS_LOG", default_value = "stdout")]
    pub access_log: crate::telemetry::access::Destination,
    /// CPU time slice to ask the kernel for (Linux 6.12+ EEVDF), from `100us` to `100ms`, or
    /// `off` to leave the slice the process started with (normally the kernel's default). A
    /// short slice lets the sidecar preempt longer-running work as soon as a request wakes it;
    /// it does not raise its share of the CPU. Measured, it helps a chain of two sidecars and
    /// costs a single sidecar CPU (ARCHITECTURE.md, "Waking up on time"), hence off by default.
    #[arg(long, env = "FERRULE_SCHED_SLICE", default_value = "off", value_parser = parse_slice)]
    pub sched_slice: SchedSlice,
    // --- Transparent interception (ARCHITECTURE.md, "Interception") ---
    /// What an intercepted connection gets when its original destination is no address of a
    /// service or endpoint: `passthrough` (sent on unchanged, in plaintext) or `refuse`
    /// (answered 404 `unknown-service`).
    #[arg(long, env = "FERRULE_UNKNOWN_DESTINATION", default_value = "passthrough", value_parser = UnknownDestination::parse)]
    pub unknown_destination: UnknownDestination,
}

/// The `--sched-slice` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedSlice {
    /// Leave the slice as inherited.
    Off,
    /// Ask for this slice.
    Request(Duration),
}

fn parse_slice(s: &str) -> Result<SchedSlice, String> {
    if s == "off" {
        return Ok(SchedSlice::Off);
    }
    let slice = match s.strip_suffix("us") {
        Some(us) => us
            .parse()
            .map(Duration::from_micros)
            .map_err(|_| format!("{s:?} is not a duration (use e.g. 300us, 1ms, or off)"))?,
        None => parse_duration(s)?,
    };
    if slice < crate::sched::RANGE.0 || slice > crate::sched::RANGE.1 {
        return Err(format!(
            "{s:?} is outside the slices Linux accepts: 100us to 100ms (or off)"
        ));
    }
    Ok(SchedSlice::Request(slice))
}

/// Applies `--sched-slice` to the calling thread, before the runtime starts its threads (they
/// inherit it), and logs what the kernel made of it. Failing to set it is not fatal: a
/// container's seccomp profile may forbid the call, and the sidecar works without it.
pub fn apply_sched_slice(setting: SchedSlice) {
    use crate::sched::{self, Slice};
    let SchedSlice::Request(wanted) = setting else {
        let slice = sched::of_thread(0);
        tracing::debug!(
            ?slice,
            "scheduler slice left as inherited (--sched-slice off)"
        );
        return;
    };
    match sched::request(wanted) {
        Ok(Slice::Length(got)) if got == wanted => {
            tracing::info!(?wanted, ?got, "scheduler slice set")
        }
        Ok(Slice::Length(got)) => {
            tracing::warn!(
                ?wanted,
                ?got,
                "scheduler slice not set: the kernel kept another"
            )
        }
        Ok(Slice::Unsupported) => tracing::info!(
            ?wanted,
            "scheduler slice not set: this kernel has no custom slices (Linux 6.12+)"
        ),
        Ok(Slice::OtherPolicy) => tracing::info!(
            ?wanted,
            "scheduler slice not set: the proxy runs under a policy without slices \
             (real-time, deadline, idle or sched_ext)"
        ),
        Err(error) => tracing::warn!(?wanted, %error, "scheduler slice not set"),
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not k=v"))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    ferrule_config::duration::parse(s)
}

/// Sets up logging to stderr in the chosen format (`json`, `text` or `auto`), with a level
/// the admin endpoint can change (`telemetry::logs`).
pub fn init_logging(format: &str) {
    use crate::telemetry::logs::{self, LogFormat};
    let format = format.parse().unwrap_or_else(|_| LogFormat::detect());
    logs::init(format);
}

/// Runs the sidecar until a shutdown signal.
pub async fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", args.data_dir.display()))?;
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot bind the {what} listener on {addr}: {e}"))
    };
    let inbound_l = bind(args.inbound, "inbound").await?;
    let outbound_l = bind(args.outbound, "outbound").await?;
    let admin_l = bind(args.admin, "admin").await?;
    let local = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
    let (inbound_addr, outbound_addr, admin_addr) =
        (local(&inbound_l), local(&outbound_l), local(&admin_l));

    let advertise = args.advertise.unwrap_or(inbound_addr);
    if advertise.ip().is_unspecified() {
        return Err(format!(
            "the inbound listener is bound to {inbound_addr}; pass --advertise IP:PORT so peers know where to reach it"
        ));
    }
    let proxy_id = args
        .id
        .clone()
        .unwrap_or_else(|| default_id(&args.service, advertise));
    ferrule_config::resource::check_name(&proxy_id).map_err(|e| format!("--id: {e}"))?;
    ferrule_config::resource::check_name(&args.service).map_err(|e| format!("--service: {e}"))?;

    let token = match (&args.token_file, args.identity_disabled) {
        (Some(path), _) => Some(read_token(path)?),
        (None, true) => None,
        (None, false) => {
            return Err(
                "--token-file is required to obtain this sidecar's identity \
                 (`ferrulectl token create --service NAME`), or pass --identity-disabled \
                 for local development without mTLS"
                    .into(),
            )
        }
    };
    let bundle = match &args.trust_bundle {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --trust-bundle {}: {e}", path.display()))?;
            Some(
                ferrule_tls::Bundle::from_pem(&pem)
                    .map_err(|e| format!("--trust-bundle {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let control_plane = ControlPlane::new(
        args.control_plane.clone(),
        bundle,
        args.trust_bundle_sha256.clone(),
        &args.trust_domain,
    )?;
    let identity = if args.identity_disabled {
        tracing::warn!("--identity-disabled: this sidecar speaks plaintext to its peers and has no identity; for local development only");
        Identity::disabled()
    } else {
        Identity::enabled()
    };
    let metrics = Arc::new(Metrics::new());
    metrics.access.start(&args.access_log)?;
    let policy = Arc::new(
        Policy::new(&args.service, metrics.clone(), identity.clone()).with_zone(args.zone.clone()),
    );
    let life = Arc::new(Lifecycle::default());
    sync::load_persisted(&policy, &args.data_dir);

    let (stop_tx, stop_rx) = watch::channel(false);
    let outbound = Arc::new(
        Pipeline::outbound(policy.clone()).with_unknown_destination(args.unknown_destination),
    );
    let inbound = Arc::new(Pipeline::inbound(policy.clone(), &args.service, args.app));
    let admin = Admin::new(policy.clone(), life.clone(), &proxy_id);
    let grace = args.drain_timeout;
    let limits = Limits {
        header_read_timeout: args.header_read_timeout,
    };
    let serve_pipeline = |listener, kind, p: &Arc<Pipeline>| {
        let general = p.clone();
        tokio::spawn(listen::serve(
            listener,
            kind,
            move |ctx, req| {
                let p = general.clone();
                async move { p.handle(&ctx, req).await }
            },
            Some(p.clone()),
            stop_rx.clone(),
            grace,
            limits,
        ))
    };
    let servers = [
        serve_pipeline(outbound_l, Listener::Outbound, &outbound),
        serve_pipeline(inbound_l, Listener::Inbound, &inbound),
    ];
    // The admin listener outlives the drain so /ready can say "draining".
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(listen::serve(
        admin_l,
        Listener::Admin,
        move |_ctx, req| {
            let a = admin.clone();
            async move { a.handle(req).await }
        },
        None,
        admin_stop_rx,
        Duration::from_millis(100),
        limits,
    ));
    life.listening.store(true, Ordering::Relaxed);
    println!("ferrule-proxy listening inbound={inbound_addr} outbound={outbound_addr} admin={admin_addr}");
    tracing::info!(%proxy_id, service = %args.service, %inbound_addr, %outbound_addr, %admin_addr, app = %args.app, "sidecar started");

    let registration = Registration {
        proxy_id: proxy_id.clone(),
        service: args.service.clone(),
        endpoint: Endpoint {
            name: proxy_id.clone(),
            revision: 0,
            service: args.service.clone(),
            address: advertise,
            zone: args.zone.clone(),
            weight: 1,
            labels: args.labels.clone(),
            sidecar: true,
            identity: None,
        },
        token: token.clone(),
    };
    let certs = token.filter(|_| identity.is_enabled()).map(|token| {
        let src = CertSource {
            control_plane: control_plane.clone(),
            token,
            ttl: args.cert_ttl,
        };
        tokio::spawn(certs::run(
            src,
            identity.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ))
    });
    let discovery = tokio::spawn(sync::run(
        control_plane,
        registration,
        policy.clone(),
        life.clone(),
        args.data_dir.clone(),
        stop_rx.clone(),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down: deregistering and draining");
    life.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = discovery.await;
    if let Some(c) = certs {
        let _ = c.await;
    }
    for s in servers {
        let _ = s.await;
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}

/// Reads a token file: its first line, trimmed (never from a flag, which `ps` would show).
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("--token-file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

fn default_id(service: &str, addr: SocketAddr) -> String {
    let ip: String = addr
        .ip()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{service}-{ip}-{}", addr.port()).to_ascii_lowercase()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sched_slice_accepts_microseconds_durations_and_off() {
        assert_eq!(parse_slice("off"), Ok(SchedSlice::Off));
        assert_eq!(
            parse_slice("300us"),
            Ok(SchedSlice::Request(Duration::from_micros(300)))
        );
        assert_eq!(
            parse_slice("2ms"),
            Ok(SchedSlice::Request(Duration::from_millis(2)))
        );
        for bad in ["99us", "1s", "0us", "fast", "-1us", ""] {
            let e = parse_slice(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
