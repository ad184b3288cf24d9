//! The Ferrule sidecar proxy.
//!
//! # Layout
//!
//! Floors, top to bottom; a module imports only from floors below its own.
//!
//! - [`app`]: wiring: settings, listeners, lifecycle (start, serve, drain). [`sched`]: the CPU
//!   time slice the sidecar can ask the kernel for (`--sched-slice`). [`init`]: the
//!   `ferrule-proxy init` command, which installs the iptables rules of transparent
//!   interception in a pod (a separate run of the binary; nothing else imports it).
//! - [`listen`]: accept once, the connection context (with the original destination of an
//!   intercepted connection), protocol detection, hand-off between codecs, draining. [`admin`]: `/live`, `/ready`, `/metrics`, `/config`. [`sync`]: the push
//!   stream to the control plane, and the persisted snapshot.
//! - [`pipeline`]: per request, plan -> attempts -> finish, over every codec: the fast path
//!   (`pipeline::fast`) and the general path (`pipeline::general`). The only floor that knows
//!   all the floors below.
//! - [`plan`]: policy tables swapped atomically, route matching, balancing.
//! - [`forward`]: connections to upstreams: pools and connectors, per-endpoint load.
//! - [`codec`]: HTTP/1.1 in place, HTTP/2 server and client, bodies, the hop-by-hop rule, the
//!   one renderer of proxy-made responses. No policy.
//! - [`telemetry`]: the Prometheus registry.
//! - [`base`]: limits, reason codes, the connection context, lifecycle flags.

pub mod admin;
pub mod app;
pub mod base;
pub mod codec;
pub mod forward;
pub mod init;
pub mod listen;
pub mod pipeline;
pub mod plan;
pub mod sched;
pub mod sync;
pub mod telemetry;
pub mod wait;
