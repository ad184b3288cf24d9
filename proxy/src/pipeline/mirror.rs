//! Traffic mirroring: a copy of a share of a route's requests goes to one endpoint of a shadow
//! service, and its answer is read and thrown away. What users of Istio (`mirror`,
//! `mirrorPercentage`) and Envoy (`request_mirror_policies`) expect:
//!
//! - the share is drawn once, in `Pipeline::plan` (`Decision::mirror`);
//! - the endpoint is chosen by the shadow service's own balancer, and the copy travels on the
//!   same connections as any request (`forward::upstream::Upstream::send`: pools, mutual TLS,
//!   HTTP/1.1 or HTTP/2 as the shadow service and its endpoint call for);
//! - the copy's `Host` / `:authority` is the original's host with `-shadow` appended (the port
//!   kept), as Envoy names shadow traffic, so the shadow's logs tell copies apart;
//! - it runs on a task of its own and the primary exchange never waits for it, nor sees its
//!   failures: they are only counted (`ferrule_mirror_requests_total{service,outcome}`), and fed
//!   to the shadow endpoints' health like any attempt's;
//! - copies in flight towards one shadow service are bounded (`plan::mirror::MAX_IN_FLIGHT`);
//!   past that, copies are dropped and counted, so a slow shadow grows neither memory nor the
//!   primary's latency; each copy is bounded in time by the route's timeout (or
//!   [`COPY_TIMEOUT`]), response body included.
//!
//! **Only a body in hand is copied.** The copy is made from the general path's recording of the
//! request body (`codec::body`, the one a retry replays), so it is limited the same way: a body
//! larger than 64 KiB (`codec::body::REPLAY_LIMIT`), or one still arriving when the primary's
//! response head came, is not mirrored, and is counted as `skipped_body`. A request whose body
//! had ended when it was planned (none, or HTTP/2 `END_STREAM` with the head) is copied at once,
//! beside its first attempt; any other once the attempts are over. The fast path hands a request
//! the plan drew to the general path (`Pipeline::fast_can_carry`), so this is the one sender.
//!
//! Inbound requests are not mirrored: a route's policy is applied by the sidecar that plans it,
//! the caller's, and mirroring again on the callee's side would copy a request twice.
//!
//! Here rather than in `forward/`: making the copy needs the decision, the shadow's balancer
//! (`plan/`) and the body recording (`codec/`), which only the pipeline floor sees together.
//! The bound and the counters are state kept across snapshots, so they live in `plan::mirror`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request, Uri};
use http_body_util::BodyExt;

use crate::base::ConnCtx;
use crate::codec::headers::{self as h, RequestBody, UpstreamBody, Wire};
use crate::forward::upstream::{SendError, Upstream};
use crate::pipeline::{request_key, wire_to, Decision};
use crate::plan::mirror::Ticket;
use crate::plan::policy::{RouteMirror, Target};

/// How long a copy may take, response body included, on a route without a timeout.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// The route's mirror, when the plan drew this request for it.
pub(super) fn drawn(d: &Decision) -> Option<&RouteMirror> {
    if !d.mirror {
        return None;
    }
    d.route.as_ref()?.mirror.as_ref()
}

/// Sends `copy` to an endpoint of `m`'s shadow service on a task of its own, and returns at
/// once. `copy` is `None` when the request's body was not in hand (then it is only counted);
/// `authority` is the original request's.
pub(super) fn send(
    m: &RouteMirror,
    d: &Decision,
    ctx: &ConnCtx,
    copy: Option<Request<RequestBody>>,
    authority: &str,
) {
    let counts = &m.gate.counts;
    let Some(mut req) = copy else {
        counts.skipped_body.inc();
        return;
    };
    // Counted as `dropped_busy` when the shadow has its bound in flight.
    let Some(ticket) = m.gate.enter() else {
        return;
    };
    let t = &m.target;
    let Some(index) = t.balancer.pick(&[], request_key(t, ctx, &req)) else {
        tracing::debug!(shadow = %t.service, "mirror: the shadow service has no endpoints");
        counts.failed.inc();
        return;
    };
    let member = &t.balancer.members()[index];
    let wire = wire_to(t.protocol, d.wants_h2, member.sidecar);
    // The copy names the shadow, in the form its wire takes (`set_wire` writes `Host` for
    // HTTP/1.1 and `:authority` for HTTP/2 from an origin-form target).
    let origin = req.uri().path_and_query().cloned();
    *req.uri_mut() = origin.map_or_else(|| Uri::from_static("/"), Uri::from);
    req.headers_mut().remove(header::HOST);
    if let Err(e) = h::set_wire(&mut req, wire, &shadow_authority(authority)) {
        tracing::debug!(shadow = %t.service, error = %e, "mirror: the copy cannot be addressed");
        counts.failed.inc();
        return;
    }
    counts.sent.inc();
    let shadow = Shadow {
        target: t.clone(),
        index,
        upstream: member.upstream.clone(),
        wire,
        limit: d.timeout.unwrap_or(COPY_TIMEOUT),
        ticket,
    };
    tokio::spawn(shadow.run(req));
}

/// One copy on its way, holding its place under the shadow's bound until it ends.
struct Shadow {
    target: Arc<Target>,
    /// The endpoint's index in `target`'s balancer.
    index: usize,
    upstream: Arc<Upstream>,
    wire: Wire,
    limit: Duration,
    ticket: Ticket,
}

impl Shadow {
    async fn run(self, req: Request<RequestBody>) {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limit;
        let head = {
            let _in_flight = self.upstream.in_flight_guard();
            tokio::time::timeout_at(deadline, self.upstream.send(self.wire, req)).await
        };
        let rtt = start.elapsed();
        let ok = match head {
            Ok(Ok(resp)) => {
                let answered = resp.status().as_u16() < 500;
                self.target.balancer.observe(self.index, answered, rtt);
                let drained = tokio::time::timeout_at(deadline, drain(resp.into_body())).await;
                answered && matches!(drained, Ok(true))
            }
            Ok(Err(e)) => {
                let e = match e {
                    SendError::Connect(e, _) => e.to_string(),
                    SendError::Failed(e) => e.to_string(),
                };
                tracing::debug!(upstream = %self.upstream.addr(), error = %e, "mirror: the copy failed");
                self.target.balancer.observe(self.index, false, rtt);
                false
            }
            Err(_) => {
                tracing::debug!(upstream = %self.upstream.addr(), limit = ?self.limit, "mirror: no answer to the copy in time");
                self.target.balancer.observe(self.index, false, rtt);
                false
            }
        };
        let counts = &self.ticket.gate().counts;
        if ok {
            counts.succeeded.inc();
        } else {
            counts.failed.inc();
        }
    }
}

/// Reads a response body to its end, keeping nothing; whether it ended cleanly.
async fn drain(mut body: UpstreamBody) -> bool {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}

/// The authority a copy carries: the original's host with `-shadow` appended and its port
/// kept (`echo:8080` → `echo-shadow:8080`). An IPv6 literal cannot take a suffix and is kept.
fn shadow_authority(authority: &str) -> String {
    if authority.starts_with('[') {
        return authority.to_owned();
    }
    let (host, port) = authority.split_at(authority.rfind(':').unwrap_or(authority.len()));
    format!("{host}-shadow{port}")
}

#[cfg(test)]
mod tests {
    use super::shadow_authority;

    #[test]
    fn the_shadow_authority_suffixes_the_host_and_keeps_the_port() {
        assert_eq!(shadow_authority("echo"), "echo-shadow");
        assert_eq!(shadow_authority("echo:8080"), "echo-shadow:8080");
        assert_eq!(shadow_authority("10.0.0.7:80"), "10.0.0.7-shadow:80");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]:80");
    }
}
