//! `ferrule-bench`: load benchmarks for Ferrule.
//!
//! It answers one question with real measurements: what does putting Ferrule sidecars on the
//! request path cost, in latency, throughput, CPU and memory, compared with calling the
//! application directly and with the proxies users compare us with (HAProxy, nginx), over
//! HTTP/1.1, HTTP/2 and gRPC? And how fast does the control plane push a change to N proxies?
//!
//! # Subcommands
//!
//! - `upstream`: a minimal, fast HTTP server (HTTP/1.1 and prior-knowledge h2c; gRPC unary)
//!   that returns a fixed body, so the application itself costs as little as possible.
//! - `load`: an open-loop (fixed rate, coordinated-omission corrected) or closed-loop (max
//!   throughput) load generator.
//! - `run`: the harness that starts the upstream, the Ferrule mesh and the peers, runs `load`
//!   against each way of reaching the upstream, measures the control plane's fan-out, and
//!   prints and saves the results.
//! - `failover`: the "kill one of three" scenario: three upstream instances behind Ferrule,
//!   nginx and HAProxy in turn, one killed and restarted during an open-loop run.
//!
//! # Layout
//!
//! - [`cli`]: the command line: subcommands, flags, duration parsing.
//! - [`protocol`]: HTTP/1.1, HTTP/2, gRPC, and what each means for a target.
//! - [`grpc`]: gRPC message framing and status trailers.
//! - [`client`]: HTTP client plumbing shared by the load generator and the harness (connect,
//!   requests per protocol, judging responses, one-shot calls).
//! - [`upstream`]: the fixed-body upstream server.
//! - [`load`]: the load generator: pacing, connection workers, histograms, its report.
//! - [`procs`]: child processes (a guard that kills them all, process groups included, on exit)
//!   and `/proc` sampling (RSS, CPU time, children).
//! - [`target`]: a *target*, one way of reaching the upstream, and what is charged to it.
//! - [`stack`]: starting the upstream and the Ferrule mesh (control plane, policy, sidecars)
//!   and switching the Service's protocol.
//! - [`peers`]: nginx and HAProxy: install, configuration, start, their targets.
//! - [`tls`]: the CA and server certificate for TLS between hops.
//! - [`fanout`]: the control-plane fan-out measurement with simulated proxies.
//! - [`failover`]: the kill-one-of-three scenario and its report.
//! - [`harness`]: the `run` plan: which measurements run against which targets, in which order.
//! - [`report`]: the results: machine description, markdown tables, JSON file.

mod cli;
mod client;
mod failover;
mod fanout;
mod grpc;
mod harness;
mod load;
mod peers;
mod procs;
mod protocol;
mod report;
mod stack;
mod target;
mod tls;
mod upstream;

use clap::Parser;

/// The error type of this binary: every failure ends the command with a message, so a boxed
/// error carrying a message that says what went wrong (and what to do) is all it needs.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Shorthand for results with [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferrule-bench: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Upstream(args) => upstream::run(args).await,
            cli::Command::Load(args) => load::run_cli(args).await,
            cli::Command::Run(args) => harness::run_cli(args).await,
            cli::Command::Failover(args) => failover::run_cli(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrule-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
