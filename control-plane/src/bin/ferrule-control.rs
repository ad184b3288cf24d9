//! `ferrule-control`: the Ferrule control plane (see [`ferrule_control`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ferrule_control::ca::CaConfig;
use ferrule_control::{Config, Server};

/// Command line of `ferrule-control`.
#[derive(Debug, Parser)]
#[command(name = "ferrule-control", version, about = "The Ferrule control plane")]
struct Args {
    /// Address for the API and the push streams (TLS, or HTTP/1.1 and h2c with --plaintext,
    /// on one port). Beyond loopback, an admin token is required.
    #[arg(long, env = "FERRULE_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory of the store (ferrule.redb); created if missing.
    #[arg(long, env = "FERRULE_DATA_DIR", default_value = "./ferrule-data")]
    data_dir: PathBuf,
    /// File holding the token that writes, the CA and token APIs need (`Authorization:
    /// Bearer`); without it, they are open, which is allowed on loopback only.
    #[arg(long, env = "FERRULE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// If the admin token file does not exist, create it (mode 0600) with a random token
    /// (for container images: read it back from the data volume).
    #[arg(long, env = "FERRULE_INIT_ADMIN_TOKEN", requires = "admin_token_file")]
    init_admin_token: bool,
    /// Serve plain HTTP/1.1 and h2c instead of TLS: local development only.
    #[arg(long, env = "FERRULE_PLAINTEXT")]
    plaintext: bool,
    /// Trust domain of every identity the CA signs.
    #[arg(long, env = "FERRULE_TRUST_DOMAIN", default_value = ferrule_config::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Longest life of a workload certificate (a request may ask for less; minimum 1m).
    #[arg(long, env = "FERRULE_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// The operator's CA certificate (PEM; a root, or an intermediate followed by its parents
    /// up to but not including the root); without it, a root is generated in the data dir.
    #[arg(long, env = "FERRULE_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM).
    #[arg(long, env = "FERRULE_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the server certificate (besides localhost,
    /// 127.0.0.1 and the listen address); repeat or separate with commas.
    #[arg(long, env = "FERRULE_TLS_SANS", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Serve push streams to sidecars without a certificate or bootstrap token (development
    /// only); they can never register an endpoint with an identity.
    #[arg(long, env = "FERRULE_ALLOW_ANONYMOUS_PROXIES")]
    allow_anonymous_proxies: bool,
    /// The most push streams open at once; more are refused with 503.
    #[arg(long, env = "FERRULE_MAX_STREAMS", default_value_t = ferrule_control::server::DEFAULT_MAX_STREAMS)]
    max_streams: usize,
    /// The most endpoints sidecars may register; more are refused with 503.
    #[arg(long, env = "FERRULE_MAX_REGISTRATIONS", default_value_t = ferrule_control::server::DEFAULT_MAX_REGISTRATIONS)]
    max_registrations: usize,
    /// How long a sidecar's endpoint lease lasts without a heartbeat (e.g. 15s, 5s; at least
    /// 1s). After a restart, stored leases last at least 12 s, the sidecars' reconnect backoff.
    #[arg(long, env = "FERRULE_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Log format on stderr.
    #[arg(long, env = "FERRULE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    ferrule_config::duration::parse(s)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    if args.init_admin_token {
        if let Some(path) = &args.admin_token_file {
            match ferrule_control::auth::init_token_file(path) {
                Ok(true) => tracing::info!(path = %path.display(), "created an admin token file"),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let admin_token = match &args.admin_token_file {
        Some(path) => match ferrule_control::auth::read_token_file(path) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => {
            tracing::warn!("no --admin-token-file: API writes are not authenticated");
            None
        }
    };
    let operator = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            match (read(cert), read(key)) {
                (Ok(c), Ok(k)) => Some((c, k)),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    if args.plaintext {
        tracing::warn!(
            "--plaintext: the API and push streams are not encrypted (local development only)"
        );
    }
    if args.allow_anonymous_proxies {
        tracing::warn!("--allow-anonymous-proxies: sidecars without identity receive snapshots (development only)");
    }
    let config = Config {
        admin_token,
        lease_ttl: args.lease_ttl,
        plaintext: args.plaintext,
        ca: CaConfig {
            trust_domain: args.trust_domain,
            max_ttl: args.cert_ttl,
            operator,
        },
        tls_sans: args.tls_san,
        allow_anonymous_proxies: args.allow_anonymous_proxies,
        max_streams: args.max_streams,
        max_registrations: args.max_registrations,
        ..Config::new(args.listen, args.data_dir)
    };
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one line on stdout: scripts and tests read the real port and scheme from it.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "ferrule-control listening on {}", server.url());
    let _ = stdout.flush();
    drop(stdout);
    server.run(shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
