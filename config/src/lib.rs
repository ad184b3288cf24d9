//! Ferrule's policy model, shared by the control plane, the sidecar and the CLI.
//!
//! # Layout
//! - [`resource`]: the typed resources (`Service`, `Endpoint`, routes, traffic policy) and the
//!   rules that make them valid.
//! - [`decode`]: a reader over generic JSON values that reports every bad field with its path.
//! - [`document`]: multi-document YAML and JSON files.
//! - [`snapshot`]: the versioned set of resources one proxy needs.
//! - [`push`]: the messages of the sidecar <-> control plane stream.
//! - [`duration`]: `250ms`-style durations.
//! - [`names`]: the rule for names (services, endpoints, namespaces).
//! - [`identity`]: SPIFFE IDs of workloads and the patterns rules match them with.
//! - [`time`]: RFC 3339 timestamps.
//! - [`authz`]: a service's authorization policy, and its evaluation.
//! - [`resilience`]: retries and their budget, timeouts, circuit breaking, outlier ejection,
//!   locality, rate limits, faults, fallbacks and mirroring.
//! - [`access_log`]: whether, and for which share of requests, a service's traffic is written
//!   to the sidecars' access log.

pub mod access_log;
pub mod authz;
pub mod decode;
pub mod document;
pub mod duration;
pub mod identity;
pub mod names;
pub mod push;
pub mod resilience;
pub mod resource;
pub mod snapshot;
pub mod time;

pub use decode::{Errors, FieldError};
pub use document::parse_documents;
pub use resource::{
    Backend, Endpoint, Kind, LoadBalancer, MtlsMode, Protocol, Resource, Route, RouteMatch,
    Service, TrafficPolicy,
};
pub use snapshot::Snapshot;

#[cfg(test)]
mod tests;
