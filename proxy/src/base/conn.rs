//! What the proxy knows about a connection once it is accepted: produced once, by the accept
//! loop, and lent to every request the connection carries.

use std::net::SocketAddr;

/// The listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The local app's requests to other services.
    Outbound,
    /// Requests for the local app, from peers.
    Inbound,
    /// The admin endpoint.
    Admin,
}

impl Listener {
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
            Listener::Admin => "admin",
        }
    }
}

/// The wire protocol a connection was detected to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Not known yet (nothing read).
    Unknown,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (the client preface).
    Http2,
}

/// A connection's context.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// Where the connection came from.
    pub peer: SocketAddr,
    /// The address it was accepted on.
    pub local: SocketAddr,
    /// Which listener accepted it.
    pub listener: Listener,
    /// What it speaks, once detected.
    pub protocol: Protocol,
    /// The peer's workload identity (SPIFFE ID), once mutual TLS authenticates it; `None` on a
    /// plaintext connection.
    pub peer_identity: Option<std::sync::Arc<str>>,
    /// The destination the client meant, when the connection was redirected to the proxy
    /// (transparent interception); `None` when the client addressed the proxy itself.
    pub original_dst: Option<SocketAddr>,
}

impl ConnCtx {
    /// A plaintext connection accepted on `listener`.
    pub fn new(listener: Listener, peer: SocketAddr, local: SocketAddr) -> Self {
        ConnCtx {
            peer,
            local,
            listener,
            protocol: Protocol::Unknown,
            peer_identity: None,
            original_dst: None,
        }
    }
}
