//! The command line: the `upstream`, `load`, `run` and `failover` subcommands, their flags and defaults,
//! and the duration syntax (`500ms`, `2s`, `1.5m`) the flags accept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::protocol::Protocol;
use crate::target::TargetKey;

/// Load benchmarks for Ferrule: direct, through sidecars, and through HAProxy and nginx.
#[derive(Debug, Parser)]
#[command(name = "ferrule-bench", version, about, long_about = None)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve a fixed body over HTTP/1.1 and prior-knowledge h2c (the benchmark's application).
    Upstream(UpstreamArgs),
    /// Generate load against one URL and report throughput, errors and latency percentiles.
    Load(LoadArgs),
    /// Measure every target (direct, Ferrule, nginx, HAProxy; 1 and 2 hops, TLS between hops)
    /// over HTTP/1.1, HTTP/2 and gRPC, plus the control plane's fan-out.
    ///
    /// Needs the release binaries next to this executable: run `cargo build --release
    /// --workspace` first, or use `benches/run.sh`, which does both.
    Run(RunArgs),
    /// The resilience issue's "kill one of three" scenario: three upstream instances behind
    /// Ferrule, nginx and HAProxy in turn, one killed during an open-loop run and started
    /// again; success rate and latency over the whole run and over the failure window.
    ///
    /// Needs the release binaries next to this executable, as `run` does.
    Failover(FailoverArgs),
}

/// Flags of `ferrule-bench upstream`.
#[derive(Debug, Args)]
pub(crate) struct UpstreamArgs {
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// Size in bytes of the body every response carries.
    #[arg(long, default_value_t = 1024)]
    pub(crate) body_size: usize,
}

/// Flags of `ferrule-bench load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// URL to request (`http://IP:PORT/path`): a GET of it (HTTP/1.1, HTTP/2) or a unary
    /// call to its path (gRPC).
    #[arg(long)]
    pub(crate) url: String,
    /// Value of the Host header (HTTP/1.1) or :authority (h2); defaults to the URL's authority.
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Open loop: requests per second, sent on a fixed schedule whatever the responses do.
    #[arg(
        long,
        required_unless_present = "closed_loop",
        conflicts_with = "closed_loop"
    )]
    pub(crate) rate: Option<f64>,
    /// Closed loop: every connection sends its next request as soon as the last one finished.
    #[arg(long)]
    pub(crate) closed_loop: bool,
    /// TCP connections [default: 32 open loop, 64 closed loop].
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// HTTP/2 and gRPC: requests in flight at once on each connection.
    #[arg(long, default_value_t = 8)]
    pub(crate) streams: usize,
    /// How long to measure, after the warmup (e.g. `20s`, `500ms`, `1m`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// How long to send load before measuring (warms connections, caches, allocators).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// Per-request timeout; a request that takes longer counts as a transport error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// `http1` (keep-alive), `http2` (h2c with prior knowledge, requests multiplexed on each
    /// connection) or `grpc` (unary calls over h2c; ok only with grpc-status 0).
    #[arg(long, default_value = "http1")]
    pub(crate) protocol: Protocol,
    /// Print one JSON object instead of the human-readable summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Allow a URL whose address is not loopback (refused by default so that a typo cannot
    /// point a load generator at someone else's server).
    #[arg(long)]
    pub(crate) allow_non_loopback: bool,
}

/// Flags of `ferrule-bench run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Every target and protocol for ~2 s at a low rate, and the fan-out at N=100: checks that
    /// the harness works (CI); the numbers mean little.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Targets to measure, comma-separated [default: all]: direct, ferrule-1, ferrule-2,
    /// ferrule-2-mtls, nginx-1, nginx-2, nginx-2-tls, haproxy-1, haproxy-2, haproxy-2-tls.
    #[arg(long, value_delimiter = ',')]
    pub(crate) targets: Vec<TargetKey>,
    /// Protocols, comma-separated [default: all]: http1, http2, grpc.
    #[arg(long, value_delimiter = ',')]
    pub(crate) protocols: Vec<Protocol>,
    /// Open-loop rates in requests per second, comma-separated [default: 1000,5000; 200 with
    /// --quick].
    #[arg(long, value_delimiter = ',')]
    pub(crate) rates: Vec<f64>,
    /// Measured duration of every open-loop row, over all its rounds [default: 15s; 2s with
    /// --quick].
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Measured duration of every closed-loop (max throughput) run [default: 10s; 1s with
    /// --quick].
    #[arg(long, value_parser = parse_duration)]
    pub(crate) max_duration: Option<Duration>,
    /// Warmup before every run [default: 2s; 500ms with --quick]. Open-loop rounds after the
    /// first warm up for at most 500ms: the proxies are warm by then.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) warmup: Option<Duration>,
    /// Open loop: measure every row in this many rounds of `--duration / --rounds`, taking the
    /// targets in turn, and report the median of each latency percentile over the rounds
    /// [default: 5; 1 with --quick]. The load generator, upstream and proxies share the
    /// machine's CPUs, so a noisy moment would otherwise land on whichever row ran then.
    #[arg(long)]
    pub(crate) rounds: Option<usize>,
    /// Requests in flight in the open-loop runs: HTTP/1.1 connections, or HTTP/2 streams
    /// spread over connections of --streams each.
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// Requests in flight in the closed-loop runs (same rule as --connections).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_connections: usize,
    /// HTTP/2 and gRPC: requests multiplexed on each connection.
    #[arg(long, default_value_t = 8)]
    pub(crate) streams: usize,
    /// Worker threads of every proxy in the comparison: nginx worker_processes, HAProxy
    /// nbthread, ferrule-proxy --threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) proxy_threads: usize,
    /// ferrule-proxy --sched-slice for both sidecars (e.g. `off` to measure without the short
    /// scheduler slice) [default: ferrule-proxy's own default].
    #[arg(long)]
    pub(crate) ferrule_sched_slice: Option<String>,
    /// Control-plane fan-out sizes (simulated proxies), comma-separated [default: 100,1000;
    /// 100 with --quick].
    #[arg(long, value_delimiter = ',')]
    pub(crate) fanout: Vec<usize>,
    /// Skip the control-plane fan-out.
    #[arg(long)]
    pub(crate) no_fanout: bool,
    /// Do not try `apt-get install haproxy nginx` when they are missing (their rows are then
    /// left out, and the report says why).
    #[arg(long)]
    pub(crate) no_install: bool,
    /// Size of the upstream's response body (and gRPC reply message) in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) body_size: usize,
    /// Directory for the JSON and markdown results and the children's logs
    /// [default: target/bench-results, next to the release directory].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Directory holding ferrule-proxy, ferrule-control and ferrulectl
    /// [default: the directory of this executable].
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
}

/// Flags of `ferrule-bench failover`.
#[derive(Debug, Args)]
pub(crate) struct FailoverArgs {
    /// Targets, comma-separated, run one after another [default: all]: ferrule,
    /// ferrule-sidecar (the app's sidecar is killed with it), nginx, haproxy.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(crate) targets: Vec<FailoverTarget>,
    /// Open-loop rate in requests per second.
    #[arg(long, default_value_t = 200.0)]
    pub(crate) rate: f64,
    /// Speak HTTP/2 (h2c, prior knowledge) to the target instead of HTTP/1.1.
    #[arg(long)]
    pub(crate) http2: bool,
    /// Measured time.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Load before the measured time (not counted).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// When one upstream instance is killed (SIGKILL), from the start of the measured time.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) kill_at: Duration,
    /// When it is started again on the same port, from the start of the measured time.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) restart_at: Duration,
    /// Per-request timeout; a request that takes longer counts as a transport error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Requests in flight at most: HTTP/1.1 connections, or HTTP/2 streams spread over
    /// connections of --streams each.
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// HTTP/2: requests multiplexed on each connection.
    #[arg(long, default_value_t = 8)]
    pub(crate) streams: usize,
    /// Worker threads of every proxy: nginx worker_processes, HAProxy nbthread,
    /// ferrule-proxy --threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) proxy_threads: usize,
    /// Do not try `apt-get install haproxy nginx` when they are missing (they are then left
    /// out, and the report says why).
    #[arg(long)]
    pub(crate) no_install: bool,
    /// Size of the upstream's response body in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) body_size: usize,
    /// Directory for the JSON and markdown results and the children's logs
    /// [default: target/bench-results, next to the release directory].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Directory holding ferrule-proxy, ferrule-control and ferrulectl
    /// [default: the directory of this executable].
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
}

/// Parses a duration: a number followed by `h`, `m`/`min`, `s` (the default), `ms` or `us`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try `20s`, `500ms` or `1m`)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}` (use h, m, s, ms or us)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{text}` is not a non-negative, finite duration"))
}

/// A target of the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FailoverTarget {
    /// A client sidecar and a sidecar in front of each instance; the app is killed.
    Ferrule,
    /// The same mesh; the app and its sidecar are killed together, and both restarted.
    FerruleSidecar,
    /// One nginx in front of the three instances.
    Nginx,
    /// One HAProxy in front of the three instances.
    Haproxy,
}

impl FailoverTarget {
    pub(crate) const ALL: [FailoverTarget; 4] = [
        FailoverTarget::Ferrule,
        FailoverTarget::FerruleSidecar,
        FailoverTarget::Nginx,
        FailoverTarget::Haproxy,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            FailoverTarget::Ferrule => "ferrule",
            FailoverTarget::FerruleSidecar => "ferrule-sidecar",
            FailoverTarget::Nginx => "nginx",
            FailoverTarget::Haproxy => "haproxy",
        }
    }

    /// What the target does about a failed instance, for the report.
    pub(crate) fn config(self) -> &'static str {
        match self {
            FailoverTarget::Ferrule => {
                "client sidecar → sidecar per instance; defaults only (retries of gateway \
                 errors/resets/connect failures for idempotent requests, retry budget, outlier \
                 ejection, peak-EWMA); the \
                 killed instance's sidecar stays up and answers 502/503 for it"
            }
            FailoverTarget::FerruleSidecar => {
                "as ferrule, but the instance's sidecar dies with it (the client sidecar sees \
                 connect failures and resets) and both come back on the same ports"
            }
            FailoverTarget::Nginx => {
                "max_fails=1 fail_timeout=10s; proxy_next_upstream error timeout http_502 \
                 http_503; proxy_next_upstream_tries 3; keepalive pool"
            }
            FailoverTarget::Haproxy => {
                "httpchk GET / inter 1s fall 2 rise 2; retries 3; option redispatch 1; \
                 retry-on conn-failure empty-response response-timeout 502 503; http-reuse always"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rate_and_closed_loop_are_exclusive() {
        let both = Cli::try_parse_from([
            "ferrule-bench",
            "load",
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "10",
            "--closed-loop",
        ]);
        assert!(both.is_err());
        let neither =
            Cli::try_parse_from(["ferrule-bench", "load", "--url", "http://127.0.0.1:1/"]);
        assert!(neither.is_err());
    }

    #[test]
    fn run_filters_are_comma_separated() {
        let cli = Cli::try_parse_from([
            "ferrule-bench",
            "run",
            "--targets",
            "direct,nginx-2,haproxy-2-tls,ferrule-2",
            "--protocols",
            "http1,grpc",
            "--rates",
            "1000,5000",
            "--duration",
            "5s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not a run")
        };
        assert_eq!(
            args.targets,
            [
                TargetKey::Direct,
                TargetKey::Nginx2,
                TargetKey::Haproxy2Tls,
                TargetKey::Ferrule2
            ]
        );
        assert_eq!(args.protocols, [Protocol::Http1, Protocol::Grpc]);
        assert_eq!(args.rates, [1000.0, 5000.0]);
        assert!(Cli::try_parse_from(["ferrule-bench", "run", "--targets", "envoy"]).is_err());
    }

    #[test]
    fn failover_defaults_follow_the_issue() {
        let cli = Cli::try_parse_from(["ferrule-bench", "failover"]).unwrap();
        let Command::Failover(args) = cli.command else {
            panic!("not a failover")
        };
        assert!(args.targets.is_empty());
        assert_eq!(args.rate, 200.0);
        assert!(!args.http2);
        assert_eq!(args.duration, Duration::from_secs(20));
        assert_eq!(args.kill_at, Duration::from_secs(5));
        assert_eq!(args.restart_at, Duration::from_secs(15));
        let cli = Cli::try_parse_from([
            "ferrule-bench",
            "failover",
            "--targets",
            "nginx,ferrule",
            "--http2",
        ])
        .unwrap();
        let Command::Failover(args) = cli.command else {
            panic!("not a failover")
        };
        assert_eq!(
            args.targets,
            [FailoverTarget::Nginx, FailoverTarget::Ferrule]
        );
        assert!(args.http2);
        assert!(Cli::try_parse_from(["ferrule-bench", "failover", "--targets", "envoy"]).is_err());
    }
}
