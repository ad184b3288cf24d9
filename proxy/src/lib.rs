//! The Ferrule sidecar proxy.
//!
//! # Layout
//! - [`app`]: settings, listeners, lifecycle (start, serve, drain).
//! - [`server`]: the accept loop shared by every listener (HTTP/1.1 + h2c, limits, draining).
//! - [`framing`]: refuses HTTP/1.1 requests with both Content-Length and Transfer-Encoding.
//! - [`outbound`]: the local app's requests to other services: route, split, balance, forward.
//! - [`inbound`]: peers' requests to the local app.
//! - [`policy`]: snapshots compiled into lookup tables and swapped atomically.
//! - [`balance`]: round robin and P2C least-request over a backend's endpoints.
//! - [`upstream`]: connections to one address (HTTP/1.1 pool, shared HTTP/2 connection).
//! - [`discovery`]: the push stream to the control plane, and the persisted snapshot.
//! - [`admin`]: `/live`, `/ready`, `/metrics`, `/config`.
//! - [`metrics`]: the Prometheus registry.
//! - [`errors`]: the one place where failures become responses (`ferrule-error: <reason>`).
//! - [`http`]: header and URI plumbing shared by both directions.

pub mod admin;
pub mod app;
pub mod balance;
pub mod discovery;
pub mod errors;
pub mod framing;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod server;
pub mod upstream;
