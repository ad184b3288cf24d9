//! The Ferrule sidecar proxy.
//!
//! # Layout
//! - [`app`]: settings, listeners, lifecycle (start, serve, drain).
//! - [`server`]: the accept loop shared by every listener (fast path, then h2c or hyper's
//!   HTTP/1.1 for the rest; limits, draining).
//! - [`fastpath`]: plain HTTP/1.1 forwarded by one task per connection, bytes passed through;
//!   everything else goes to the general (hyper) path.
//! - [`h1`]: the fast path's HTTP/1.1 head parsing, rewriting and body framing.
//! - [`framing`]: refuses HTTP/1.1 requests with both Content-Length and Transfer-Encoding.
//! - [`outbound`]: the local app's requests to other services: route, split, balance, forward.
//! - [`inbound`]: peers' requests to the local app.
//! - [`policy`]: snapshots compiled into lookup tables and swapped atomically.
//! - [`balance`]: round robin and P2C least-request over a backend's endpoints.
//! - [`upstream`]: connections to one address (HTTP/1.1 pool, shared HTTP/2 connection).
//! - [`h2client`]: the HTTP/2 client connection, on the h2 crate directly, with keepalive.
//! - [`h2server`]: HTTP/2 (h2c) connections from downstream, on the h2 crate directly.
//! - [`h2stream`]: message bodies over HTTP/2 streams, received and sent, for both.
//! - [`discovery`]: the push stream to the control plane, and the persisted snapshot.
//! - [`admin`]: `/live`, `/ready`, `/metrics`, `/config`.
//! - [`metrics`]: the Prometheus registry.
//! - [`sched`]: the short CPU time slice the sidecar can ask the kernel for (`--sched-slice`).
//! - [`errors`]: the one place where failures become responses (`ferrule-error: <reason>`).
//! - [`http`]: header and URI plumbing shared by both directions.

pub mod admin;
pub mod app;
pub mod balance;
pub mod discovery;
pub mod errors;
pub mod fastpath;
pub mod framing;
pub mod h1;
pub mod h2client;
pub mod h2server;
pub mod h2stream;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod sched;
pub mod server;
pub mod upstream;
