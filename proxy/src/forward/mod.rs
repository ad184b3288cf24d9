//! Forwarding: connections to upstream endpoints. [`upstream`] holds one endpoint's pools (raw
//! HTTP/1.1 sockets for the fast path, hyper's HTTP/1.1 client, one shared HTTP/2 connection),
//! its connect rule, and the load the balancer reads. The TLS connector (mTLS) goes here.

pub mod upstream;
