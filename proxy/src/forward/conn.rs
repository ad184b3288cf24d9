//! One upstream connection's byte stream: plain TCP, or mutual TLS to a peer sidecar, and the
//! connector that makes either.
//!
//! A connection to an endpoint that carries an identity is mutual TLS: the chain is verified
//! against the trust bundle during the handshake, and the peer's SPIFFE ID is compared with
//! the endpoint's before the connection is handed out, so no byte of a request reaches a peer
//! that proved another identity. The ALPN offered tells the peer the protocol inside.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferrule_tls::tokio_rustls::client::TlsStream;
use ferrule_tls::tokio_rustls::TlsConnector;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::base::Identity;
use crate::telemetry::metrics::{Direction, Metrics};

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Tcp {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Fresh connections kept closing before the request could be sent.
    #[error("connections to {addr} closed before the request could be sent")]
    Closed {
        /// Where.
        addr: SocketAddr,
    },
    /// This sidecar has no certificate yet, and the endpoint takes mutual TLS only.
    #[error("{addr} takes mutual TLS and this sidecar holds no certificate yet")]
    NoCertificate {
        /// Where.
        addr: SocketAddr,
    },
    /// The TLS handshake failed (the peer's chain, or ours, was refused).
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The peer proved another identity than the endpoint's: nothing was sent to it.
    #[error("{addr} presented identity {found}, expected {expected}; the request was not sent")]
    WrongIdentity {
        /// Where.
        addr: SocketAddr,
        /// The endpoint's identity in the snapshot.
        expected: Arc<str>,
        /// What the peer's certificate says.
        found: String,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An upstream connection.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// Mutual TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket underneath (for the idle pool's liveness probe).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

/// Where an upstream's connections go through mutual TLS, and whom they must reach.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// This sidecar's identity (certificate, bundle).
    pub identity: Arc<Identity>,
    /// The SPIFFE ID the endpoint must prove.
    pub expected: Arc<str>,
    /// Where handshakes are counted.
    pub metrics: Arc<Metrics>,
}

/// Connects to `addr` within `timeout` (TCP and, for a TLS target, the handshake), offering
/// HTTP/2 or HTTP/1.1 inside.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
    h2: bool,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        // Requests are small and latency-bound: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        let Some(target) = tls else {
            return Ok(Conn::Plain(stream));
        };
        let count = |result| target.metrics.handshake(Direction::Outbound, result);
        let Some(mesh) = target.identity.tls() else {
            count("no_certificate");
            return Err(ConnectError::NoCertificate { addr });
        };
        let config = if h2 {
            mesh.client_h2.clone()
        } else {
            mesh.client_http1.clone()
        };
        let name = ferrule_tls::server_name(addr.ip());
        let tls = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|source| {
                count("failed");
                ConnectError::Tls { addr, source }
            })?;
        let found = match ferrule_tls::peer_identity(tls.get_ref().1) {
            Ok(id) if *id.to_string() == *target.expected => {
                count("ok");
                return Ok(Conn::Tls(Box::new(tls)));
            }
            Ok(id) => id.to_string(),
            Err(e) => e,
        };
        count("wrong_identity");
        Err(ConnectError::WrongIdentity {
            addr,
            expected: target.expected.clone(),
            found,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Tcp {
            addr,
            source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        }),
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
