//! The one attempt loop: every request the proxy forwards, on every codec, is sent by
//! [`run`] over a [`Transport`].
//!
//! The loop owns the decisions that are the same whatever carries the bytes: which endpoint
//! next (the balancer, skipping endpoints already tried), how many endpoints a request may try
//! when connects are refused, the in-flight count the balancer reads, the route's deadline over
//! all attempts, and which error a failure becomes. A transport owns only the exchange on one
//! endpoint: get a connection (pooled or new), send, read the response head. Retries with a
//! budget, breakers and outlier ejection (the resilience issue) extend this loop, once, for
//! every codec.

use std::future::Future;
use std::sync::Arc;

use crate::codec::headers::Wire;
use crate::codec::render::ProxyError;
use crate::forward::upstream::{BoxError, Upstream};
use crate::pipeline::{Decision, Dest, Pipeline};

/// Most endpoints one request tries when connects are refused.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// How one attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// No connection could be made; the request is untouched and may go to another endpoint.
    Refused(String),
    /// The endpoint failed the exchange after the request was (possibly) sent.
    Failed(BoxError),
    /// The client broke the exchange (closed, or sent a malformed body): no answer.
    Abort,
}

/// The exchange of one request with one endpoint.
pub trait Transport {
    /// What a successful attempt yields (a response head, and what is needed to relay it).
    type Output;

    /// Sends the request to `upstream` in `wire` and waits for the response head.
    fn attempt(
        &mut self,
        upstream: &Arc<Upstream>,
        wire: Wire,
    ) -> impl Future<Output = Result<Self::Output, AttemptError>>;
}

/// Why a request got no response from upstream.
#[derive(Debug)]
pub enum Failure {
    /// Answer the client with this error.
    Respond(ProxyError),
    /// The client broke the exchange: close, no answer.
    Abort,
}

/// Sends a planned request through `transport`, within the route's deadline.
///
/// The deadline covers every attempt: each attempt is raced against it where it is awaited,
/// rather than a timeout wrapped around the whole loop, because every async layer around the
/// attempt (which holds the transport's exchange, about a kilobyte on the fast path) is one
/// more copy of it per request (measured with callgrind: about 100 instructions per request).
pub async fn run<T: Transport>(
    p: &Pipeline,
    d: &Decision,
    transport: &mut T,
) -> Result<T::Output, Failure> {
    let deadline = d.timeout.map(|t| (tokio::time::Instant::now() + t, t));
    // Injected faults and the destination's breaker slot, held until the loop returns.
    let _slot = match p.admit_now(d) {
        Some(slot) => slot,
        None => p.admit(d, deadline).await.map_err(Failure::Respond)?,
    };
    // Indices tried, on the stack: a request tries at most MAX_CONNECT_ATTEMPTS endpoints.
    let mut tried = [0usize; MAX_CONNECT_ATTEMPTS];
    let mut n_tried = 0;
    let mut last_error = String::new();
    loop {
        let (upstream, wire, index) = match &d.dest {
            Dest::Fixed(u) if n_tried == 0 => (u, p.wire(d, false), 0),
            Dest::Balanced(t) if n_tried < MAX_CONNECT_ATTEMPTS => {
                match t.balancer.pick(&tried[..n_tried]) {
                    Some(i) => {
                        let member = &t.balancer.members()[i];
                        (&member.upstream, p.wire(d, member.sidecar), i)
                    }
                    None => break,
                }
            }
            _ => break,
        };
        let _in_flight = upstream.in_flight_guard();
        let outcome = match deadline {
            Some((at, t)) => {
                match tokio::time::timeout_at(at, transport.attempt(upstream, wire)).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(Failure::Respond(p.timeout(d, t))),
                }
            }
            None => transport.attempt(upstream, wire).await,
        };
        match outcome {
            Ok(out) => return Ok(out),
            Err(AttemptError::Refused(e)) => {
                tracing::debug!(upstream = %upstream.addr(), error = %e, "connect failed, trying another endpoint");
                last_error = e;
                tried[n_tried] = index;
                n_tried += 1;
            }
            Err(AttemptError::Failed(e)) => {
                return Err(Failure::Respond(p.upstream_failure(upstream, &e)))
            }
            Err(AttemptError::Abort) => return Err(Failure::Abort),
        }
    }
    Err(Failure::Respond(p.connect_failure(d, n_tried, &last_error)))
}
