//! Telemetry: what the pipeline's finish step records into, and the sidecar's own log.
//!
//! - [`metrics`]: the Prometheus registry (`/metrics`), which also holds the two below.
//! - [`access`]: the access log: sampling by policy, the W3C trace id, the writer thread.
//! - [`recent`]: the ring of recent proxy-made responses (`/debug/requests`).
//! - [`logs`]: the diagnostic log's format and its level, changeable at run time.

pub mod access;
pub mod logs;
pub mod metrics;
pub mod recent;
