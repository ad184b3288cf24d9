//! The inbound direction: requests from peer sidecars or direct clients, forwarded to the
//! local app.
//!
//! The app is spoken to in its own service's protocol from the snapshot; for `auto` (or before
//! any snapshot) in the protocol the request arrived in, which peer sidecars keep from the
//! original client.
//! Authorization and rate limits slot in before the forward when their issues land.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ferrule_config::Protocol;
use http::{Request, Response, Version};
use http_body_util::Either;

use crate::errors::{ProxyError, Reason};
use crate::fastpath::{Dest, Plan};
use crate::h1;
use crate::http::{self as h, ProxyBody, RequestBody, Wire};
use crate::metrics::{Direction, ServiceMetrics};
use crate::policy::Policy;
use crate::upstream::{SendError, Upstream};

/// Forwards inbound requests to the local app.
#[derive(Debug, Clone)]
pub struct Inbound {
    policy: Arc<Policy>,
    app: Arc<Upstream>,
    metrics: ServiceMetrics,
}

impl Inbound {
    /// A handler that forwards to the app at `app`.
    pub fn new(policy: Arc<Policy>, service: &str, app: SocketAddr) -> Self {
        let metrics = policy.metrics.service(Direction::Inbound, service);
        Inbound {
            policy,
            app: Upstream::new(app),
            metrics,
        }
    }

    /// Forwards one request; every failure becomes a response here.
    pub async fn handle(&self, req: Request<RequestBody>) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = h::is_grpc(req.headers());
        let from_http1 = req.version() < Version::HTTP_2;
        let protocol = self.local_protocol();
        let wire = match protocol {
            Protocol::Http => Wire::Http1,
            Protocol::Http2 | Protocol::Grpc => Wire::Http2,
            Protocol::Auto | Protocol::Tcp if from_http1 && !grpc => Wire::Http1,
            Protocol::Auto | Protocol::Tcp => Wire::Http2,
        };
        let result = self.forward(req, wire).await;
        let (resp, error) = match result {
            Ok(r) => (r, ""),
            Err(e) => {
                tracing::debug!(reason = e.reason.as_str(), detail = %e.detail, "inbound request failed");
                let reason = e.reason.as_str();
                (e.into_response(grpc), reason)
            }
        };
        self.policy
            .metrics
            .record(&self.metrics, resp.status().as_u16(), error, start);
        resp
    }

    /// The protocol of this sidecar's own service (`auto` before any snapshot).
    fn local_protocol(&self) -> Protocol {
        self.policy
            .load()
            .local
            .as_ref()
            .map(|s| s.protocol)
            .unwrap_or_default()
    }

    /// Plans an HTTP/1.1 request for the fast path when the app speaks HTTP/1.1 to it; `None`
    /// leaves it to the general path.
    pub(crate) fn plan_h1(&self, head: &h1::RequestHead<'_>, out: &mut Vec<u8>) -> Option<Plan> {
        let protocol = self.local_protocol();
        if !matches!(protocol, Protocol::Http | Protocol::Auto | Protocol::Tcp) {
            return None;
        }
        h1::write_request_head(out, head, head.authority?);
        Some(Plan {
            dest: Dest::Fixed(self.app.clone()),
            service: None,
            timeout: None,
        })
    }

    /// Records a fast-path request in this service's inbound metrics.
    pub(crate) fn record_h1(&self, status: u16, error: &'static str, start: Instant) {
        self.policy
            .metrics
            .record(&self.metrics, status, error, start);
    }

    async fn forward(
        &self,
        mut req: Request<RequestBody>,
        wire: Wire,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let downstream = req.version();
        let authority = h::authority(&req)
            .map(str::to_owned)
            .unwrap_or_else(|| self.app.addr().to_string());
        h::strip_hop_by_hop(req.headers_mut(), wire == Wire::Http2);
        h::set_wire(&mut req, wire, &authority)
            .map_err(|e| ProxyError::new(Reason::BadRequest, e))?;
        match self.app.send(wire, req).await {
            Ok(mut resp) => {
                h::strip_hop_by_hop(resp.headers_mut(), false);
                // The client gets its own HTTP version back, whatever the upstream spoke.
                *resp.version_mut() = downstream;
                Ok(resp.map(Either::Left))
            }
            Err(SendError::Connect(e, _)) => Err(ProxyError::new(
                Reason::AppUnavailable,
                format!("the local app is not accepting connections: {e}"),
            )),
            Err(SendError::Failed(e)) => Err(ProxyError::new(
                Reason::UpstreamError,
                format!("the local app failed the request: {e}"),
            )),
        }
    }
}
