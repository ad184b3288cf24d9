//! The inbound listener's first step: mutual TLS from a peer sidecar, or plaintext where the
//! service's mTLS mode lets it in.
//!
//! The first byte tells them apart (a TLS connection opens with a handshake record, 0x16; no
//! HTTP request starts with it), so one port serves both during a migration (`permissive`).
//! A TLS peer must present a certificate of the mesh; its SPIFFE ID goes into the connection
//! context, where authorization reads it. A plaintext connection to a `strict` service is
//! closed before a byte of it is read, so nothing of it reaches the app.

use ferrule_config::MtlsMode;
use ferrule_tls::tokio_rustls::server::TlsStream;
use ferrule_tls::tokio_rustls::TlsAcceptor;
use tokio::net::TcpStream;

use crate::base::{ConnCtx, Limits};
use crate::pipeline::Pipeline;
use crate::telemetry::metrics::Direction;

/// The first byte of a TLS record that carries a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// What became of an inbound connection.
pub(super) enum Accepted {
    /// Mutual TLS, the peer authenticated (its identity is in the context).
    Tls(Box<TlsStream<TcpStream>>),
    /// Plaintext, allowed by the service's mode.
    Plain(TcpStream),
    /// Closed: refused plaintext, a failed handshake, or nothing sent in time.
    Refused,
}

/// Tells TLS from plaintext and applies the mode (see the module documentation).
pub(super) async fn accept(
    pipeline: &Pipeline,
    ctx: &mut ConnCtx,
    stream: TcpStream,
    limits: Limits,
) -> Accepted {
    let policy = &pipeline.policy;
    let identity = &policy.identity;
    let count = |result| policy.metrics.handshake(Direction::Inbound, result);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) => {}
        // Closed, failed, or silent for the whole header timeout.
        _ => return Accepted::Refused,
    }
    if first[0] != TLS_HANDSHAKE {
        // Without an identity (development), nothing can be mutual TLS, so plaintext is all
        // there is; otherwise the service's mode decides, strict until a snapshot says.
        let mode = match identity.is_enabled() {
            false => MtlsMode::Disabled,
            true => policy
                .load()
                .local
                .as_ref()
                .map(|s| s.mtls)
                .unwrap_or_default(),
        };
        if mode == MtlsMode::Strict {
            count("plaintext_refused");
            tracing::debug!(peer = %ctx.peer, "plaintext connection refused: the service's mTLS mode is strict");
            return Accepted::Refused;
        }
        return Accepted::Plain(stream);
    }
    let Some(mesh) = identity.tls() else {
        count("no_certificate");
        tracing::debug!(peer = %ctx.peer, "TLS connection refused: this sidecar holds no certificate");
        return Accepted::Refused;
    };
    let handshake = TlsAcceptor::from(mesh.server.clone()).accept(stream);
    let tls = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            count("failed");
            tracing::debug!(peer = %ctx.peer, error = %e, "mutual TLS handshake failed");
            return Accepted::Refused;
        }
        Err(_) => {
            count("timeout");
            return Accepted::Refused;
        }
    };
    match ferrule_tls::peer_identity(tls.get_ref().1) {
        Ok(id) => {
            count("ok");
            ctx.peer_identity = Some(id.to_string().into());
            Accepted::Tls(Box::new(tls))
        }
        Err(e) => {
            count("bad_identity");
            tracing::debug!(peer = %ctx.peer, error = %e, "peer certificate carries no workload identity");
            Accepted::Refused
        }
    }
}
