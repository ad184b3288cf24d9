//! `ferrule-bench`: load benchmarks for Ferrule.
//!
//! It answers one question with real measurements: what does putting Ferrule sidecars on the
//! request path cost, in latency, throughput, CPU and memory, compared with calling the
//! application directly?
//!
//! # Subcommands
//!
//! - `upstream`: a minimal, fast HTTP server (HTTP/1.1 and prior-knowledge h2c) that returns a
//!   fixed body, so the application itself costs as little as possible.
//! - `load`: an open-loop (fixed rate, coordinated-omission corrected) or closed-loop (max
//!   throughput) load generator.
//! - `run`: the harness that starts the upstream, the control plane and two sidecars, runs `load`
//!   against each way of reaching the upstream, and prints and saves the results.
//!
//! # Layout
//!
//! - [`cli`]: the command line: subcommands, flags, duration parsing.
//! - [`client`]: HTTP client plumbing shared by the load generator and the harness (connect,
//!   HTTP/1.1 and h2 senders, one-shot GETs).
//! - [`upstream`]: the fixed-body upstream server.
//! - [`load`]: the load generator: pacing, connection workers, histograms, its report.
//! - [`procs`]: child processes (a guard that kills them all on exit) and `/proc` sampling
//!   (RSS, CPU time).
//! - [`target`]: a *target*, one way of reaching the upstream (direct, through sidecars; later
//!   peers such as HAProxy or nginx, or TLS variants), and what is charged to it.
//! - [`stack`]: starting the system under test (upstream, control plane, policy, sidecars) and
//!   waiting until it is ready.
//! - [`harness`]: the `run` plan: which measurements run against which targets, in which order.
//! - [`report`]: the results: machine description, markdown table, JSON file.

mod cli;
mod client;
mod harness;
mod load;
mod procs;
mod report;
mod stack;
mod target;
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
