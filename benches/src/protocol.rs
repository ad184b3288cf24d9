//! The application protocols the load generator speaks, and what each means on the wire.
//!
//! Every target is measured once per protocol: the client's side of the first hop speaks it,
//! and each target's configuration (Ferrule's Service `protocol`, nginx's `proxy_pass` or
//! `grpc_pass`, HAProxy's `proto h2`) decides what the later hops speak.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::grpc;

/// One application protocol of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c), requests multiplexed per connection.
    Http2,
    /// gRPC unary calls: HTTP/2 POSTs of a length-prefixed message, status in the trailers.
    Grpc,
}

impl Protocol {
    /// Every protocol, in report order.
    pub(crate) const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Grpc];

    /// Name on the command line and in JSON.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }

    /// Name in reports.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1 keep-alive",
            Protocol::Http2 => "HTTP/2 (h2c, prior knowledge)",
            Protocol::Grpc => "gRPC unary",
        }
    }

    /// Whether the client speaks HTTP/2 (h2c) to the first hop.
    pub(crate) fn is_h2(self) -> bool {
        !matches!(self, Protocol::Http1)
    }

    /// Path the load generator requests: `/` for plain HTTP, a method path for gRPC.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Protocol::Grpc => grpc::METHOD_PATH,
            _ => "/",
        }
    }

    /// The `protocol` of the benchmark's Ferrule Service for runs of this protocol, which is
    /// what the server sidecar speaks to the upstream.
    pub(crate) fn ferrule_service_protocol(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http1" | "http/1.1" | "h1" => Ok(Protocol::Http1),
            "http2" | "h2" | "h2c" => Ok(Protocol::Http2),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(format!(
                "unknown protocol `{other}` (use http1, http2 or grpc)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_from_their_keys() {
        for p in Protocol::ALL {
            assert_eq!(p.key().parse::<Protocol>(), Ok(p));
        }
        assert_eq!("h2c".parse::<Protocol>(), Ok(Protocol::Http2));
        assert!("spdy".parse::<Protocol>().is_err());
    }
}
