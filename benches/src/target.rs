//! Targets: the ways of reaching the upstream that the harness compares.
//!
//! A [`Target`] is an address to send load to, the Host header that names the destination, and
//! the processes whose CPU and memory are charged to it. Today's targets are the upstream itself
//! and Ferrule with one and two sidecars (see `stack`); a peer proxy (HAProxy, nginx) or a TLS
//! variant becomes one more `Target` from whatever starts it, and the harness measures it the
//! same way without changes.

/// A process whose resources are charged to a target.
#[derive(Clone, Debug)]
pub(crate) struct Charged {
    /// Name in reports, e.g. `server sidecar`.
    pub(crate) name: String,
    /// Its process id.
    pub(crate) pid: u32,
}

/// One way of reaching the upstream.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// Stable key for JSON and comparisons, e.g. `direct`, `sidecar-1`.
    pub(crate) key: &'static str,
    /// Row label in the table, e.g. `2 sidecars`.
    pub(crate) label: String,
    /// URL the load generator requests.
    pub(crate) url: String,
    /// Host header, when it differs from the URL's authority (names a mesh service).
    pub(crate) host: Option<String>,
    /// Processes on the path whose CPU is charged per request (the upstream and the load
    /// generator are on every path, so they are reported separately, not charged).
    pub(crate) charged: Vec<Charged>,
    /// Whether to also measure its maximum throughput (closed loop).
    pub(crate) max_rps: bool,
}
