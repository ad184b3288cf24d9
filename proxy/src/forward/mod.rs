//! Forwarding: connections to upstream endpoints. [`upstream`] holds one endpoint's pools (raw
//! HTTP/1.1 sockets for the fast path, hyper's HTTP/1.1 client, one shared HTTP/2 connection),
//! its connect rule, and the load the balancer reads; [`health`] is an endpoint's ejection
//! state and latency estimate; [`conn`] makes each connection, plain or mutual TLS with the
//! peer's identity checked.

pub mod conn;
pub mod health;
pub mod upstream;
