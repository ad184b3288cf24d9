//! The outbound direction: the local app's requests to other services.
//!
//! The listener is both an explicit HTTP proxy (`HTTP_PROXY=http://127.0.0.1:PORT`, absolute-form
//! requests) and a plain HTTP/1.1 + h2c server that routes by `Host` / `:authority`. The path of
//! a request, in order:
//!
//! 1. sanity checks (a host, a framing hyper accepted) -> `bad-request`;
//! 2. destination service from the host -> `unknown-service`;
//! 3. first matching route -> `no-route`; its timeout wraps everything below -> `timeout`;
//! 4. weighted backend (traffic split) -> balancer over that backend's endpoints;
//! 5. connection: the client's protocol to a peer sidecar, else the service's; a refused connect
//!    moves the request to another endpoint -> `connect-failed` when none is left.
//!
//! Retries, breakers and fault injection slot in between 3 and 5 when their issue lands.

use std::sync::Arc;
use std::time::Instant;

use ferrule_config::Protocol;
use http::{Request, Response, Version};
use http_body_util::Either;

use crate::errors::{ProxyError, Reason};
use crate::fastpath::{Dest, Plan};
use crate::h1;
use crate::http::{self as h, ProxyBody, RequestBody, Wire};
use crate::metrics::ServiceMetrics;
use crate::policy::{Policy, Tables, Target};
use crate::upstream::SendError;

/// Most endpoints one request tries when connects are refused.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Handles outbound requests against the current policy.
#[derive(Debug, Clone)]
pub struct Outbound {
    policy: Arc<Policy>,
}

impl Outbound {
    /// A handler over `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Outbound { policy }
    }

    /// Proxies one request; every failure becomes a response here.
    pub async fn handle(&self, req: Request<RequestBody>) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = h::is_grpc(req.headers());
        let tables = self.policy.load();
        let (result, svc_metrics) = forward(&tables, req, grpc).await;
        let svc_metrics = svc_metrics.unwrap_or(&tables.unknown_metrics);
        let (resp, error) = match result {
            Ok(resp) => (resp, ""),
            Err(e) => {
                tracing::debug!(reason = e.reason.as_str(), detail = %e.detail, "outbound request failed");
                let reason = e.reason.as_str();
                (e.into_response(grpc), reason)
            }
        };
        self.policy
            .metrics
            .record(svc_metrics, resp.status().as_u16(), error, start);
        resp
    }
}

impl Outbound {
    /// Plans an HTTP/1.1 request for the fast path: destination, route timeout, and the head to
    /// send written into `out`. `None` leaves the request to the general path, which also
    /// answers every request that fails before it is forwarded (no config, unknown service, no
    /// route, no endpoints), so those errors are built in one place.
    pub(crate) fn plan_h1(&self, head: &h1::RequestHead<'_>, out: &mut Vec<u8>) -> Option<Plan> {
        let tables = self.policy.load();
        if tables.version == 0 {
            return None;
        }
        let authority = head.authority?;
        let svc = tables.service(&h::host_of(authority))?;
        let route = svc.route(head).ok()?;
        // An HTTP/1.1 client and an HTTP/2 service need translating, and an empty backend gets
        // its error from the general path. Decided from the route before the weighted draw, so
        // declining never draws twice and a split keeps its weights.
        let general = route.targets().any(|t| {
            matches!(t.protocol, Protocol::Http2 | Protocol::Grpc)
                || t.balancer.members().is_empty()
        });
        if general {
            return None;
        }
        let target = route.pick_backend()?;
        h1::write_request_head(out, head, authority);
        Some(Plan {
            dest: Dest::Balanced(target.clone()),
            service: Some(svc.clone()),
            timeout: route.timeout,
        })
    }

    /// Records a fast-path request in the destination service's metrics.
    pub(crate) fn record_h1(&self, plan: &Plan, status: u16, error: &'static str, start: Instant) {
        if let Some(svc) = &plan.service {
            self.policy
                .metrics
                .record(&svc.metrics, status, error, start);
        }
    }
}

async fn forward(
    tables: &Tables,
    mut req: Request<RequestBody>,
    grpc: bool,
) -> (
    Result<Response<ProxyBody>, ProxyError>,
    Option<&ServiceMetrics>,
) {
    if tables.version == 0 {
        let e = ProxyError::new(
            Reason::NoConfig,
            "this sidecar has not received a policy snapshot yet; check that the control plane is reachable",
        );
        return (Err(e), None);
    }
    if req.method() == http::Method::CONNECT {
        let e = ProxyError::new(
            Reason::BadRequest,
            "CONNECT tunnels are not supported by the outbound listener in explicit mode",
        );
        return (Err(e), None);
    }
    let Some(authority) = h::authority(&req).map(str::to_owned) else {
        let e = ProxyError::new(
            Reason::BadRequest,
            "request has no Host header or authority",
        );
        return (Err(e), None);
    };
    let host = h::host_of(&authority);
    let Some(svc) = tables.service(&host) else {
        let e = ProxyError::new(
            Reason::UnknownService,
            format!(
                "no service named {host:?} in policy version {} (known: {})",
                tables.version,
                tables.service_names().join(", ")
            ),
        );
        return (Err(e), None);
    };
    let metrics = Some(&svc.metrics);
    let route = match svc.route(&req) {
        Ok(r) => r,
        Err(e) => return (Err(e), metrics),
    };
    let Some(target) = route.pick_backend().cloned() else {
        let e = ProxyError::new(
            Reason::NoEndpoints,
            format!(
                "the matching route of {} has no backend with a weight above 0",
                svc.name
            ),
        );
        return (Err(e), metrics);
    };
    let downstream = req.version();
    h::strip_hop_by_hop(req.headers_mut(), true);
    let send = send_to_target(target, req, authority, downstream, grpc);
    let result = match route.timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::new(
                Reason::Timeout,
                format!(
                    "no response from {} within the route's {t:?} timeout",
                    svc.name
                ),
            )),
        },
        None => send.await,
    };
    (result, metrics)
}

async fn send_to_target(
    target: Arc<Target>,
    mut req: Request<RequestBody>,
    authority: String,
    downstream: Version,
    grpc: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let members = target.balancer.members();
    if members.is_empty() {
        return Err(ProxyError::new(
            Reason::NoEndpoints,
            format!(
                "service {} has no endpoints in the selected subset",
                target.service
            ),
        ));
    }
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = String::new();
    while tried.len() < MAX_CONNECT_ATTEMPTS {
        let Some(i) = target.balancer.pick(&tried) else {
            break;
        };
        let member = &members[i];
        // To a peer sidecar the request keeps the client's protocol (HTTP/1.1 stays HTTP/1.1
        // over a pooled keep-alive connection): see ARCHITECTURE.md, "Between sidecars", for
        // why HTTP/1.1 is not upgraded to HTTP/2 on that hop. Elsewhere the service's
        // protocol decides.
        let protocol = if member.sidecar {
            Protocol::Auto
        } else {
            target.protocol
        };
        let wire = match protocol {
            Protocol::Http => Wire::Http1,
            Protocol::Http2 | Protocol::Grpc => Wire::Http2,
            Protocol::Auto | Protocol::Tcp if grpc || downstream == Version::HTTP_2 => Wire::Http2,
            Protocol::Auto | Protocol::Tcp => Wire::Http1,
        };
        h::set_wire(&mut req, wire, &authority)
            .map_err(|e| ProxyError::new(Reason::BadRequest, e))?;
        match member.upstream.send(wire, req).await {
            Ok(mut resp) => {
                h::strip_hop_by_hop(resp.headers_mut(), false);
                // The client gets its own HTTP version back, whatever the upstream spoke.
                *resp.version_mut() = downstream;
                return Ok(resp.map(Either::Left));
            }
            Err(SendError::Connect(e, back)) => {
                tracing::debug!(endpoint = %member.name, error = %e, "connect failed, trying another endpoint");
                last_error = e.to_string();
                tried.push(i);
                req = *back;
            }
            Err(SendError::Failed(e)) => {
                return Err(ProxyError::new(
                    Reason::UpstreamError,
                    format!("endpoint {} ({}): {e}", member.name, member.upstream.addr()),
                ))
            }
        }
    }
    Err(ProxyError::new(
        Reason::ConnectFailed,
        format!(
            "could not connect to any of {} endpoint(s) of {} tried; last error: {last_error}",
            tried.len(),
            target.service
        ),
    ))
}
