//! The general path: requests as `http::Request`s, from hyper's HTTP/1.1 server or the HTTP/2
//! server, through the pipeline's plan, attempt loop and finish, with hyper's HTTP/1.1 client
//! or the h2 client as the transport. It carries what the fast path does not: HTTP/2 and gRPC,
//! protocol translation between HTTP/1.1 and HTTP/2, upgrades and `Expect`, HTTP/1.0, and the
//! rest of a connection the fast path handed over.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Version};
use http_body_util::Either;

use crate::base::Reason;
use crate::base::{ConnCtx, MAX_HEADER_BYTES, MAX_HEADER_FIELDS};
use crate::codec::headers::{self as h, ProxyBody, RequestBody, UpstreamBody, Wire};
use crate::codec::render::ProxyError;
use crate::forward::upstream::{SendError, Upstream};
use crate::pipeline::attempt::{self, AttemptError, Failure, Transport};
use crate::pipeline::{Decision, Pipeline, PlanError, Planned};
use crate::telemetry::metrics::Codec;

impl Pipeline {
    /// Proxies one request; every failure becomes a response here, through the renderer.
    pub async fn handle(
        &self,
        ctx: &ConnCtx,
        mut req: Request<RequestBody>,
    ) -> Response<ProxyBody> {
        let grpc = h::is_grpc(req.headers());
        let codec = if req.version() == Version::HTTP_2 {
            Codec::Http2
        } else {
            Codec::Http1
        };
        // A request the fast path stopped at was planned there already. An HTTP/2 head over
        // the limits HTTP/1.1 heads are held to is refused before planning.
        let planned = match req.extensions_mut().remove::<Planned>() {
            Some(p) => p,
            None if codec == Codec::Http2 && too_large(&req) => Err(PlanError::new(
                Reason::HeaderTooLarge,
                format!(
                    "the request's header list is larger than {MAX_HEADER_BYTES} bytes or has \
                     more than {MAX_HEADER_FIELDS} fields"
                ),
                Instant::now(),
            )),
            None => self.plan(ctx, &req),
        };
        let start = match &planned {
            Ok(d) => d.start,
            Err(e) => e.start,
        };
        let (resp, service, reason) = match planned {
            Err(e) => {
                let reason = e.error.reason;
                (self.render(e.error, grpc), e.service, Some(reason))
            }
            Ok(d) => match self.forward(&d, req).await {
                Ok(resp) => (resp, d.service, None),
                Err(e) => {
                    let reason = e.reason;
                    (self.render(e, grpc), d.service, Some(reason))
                }
            },
        };
        let status = resp.status().as_u16();
        self.finish(service.as_ref(), codec, status, reason, start.elapsed());
        resp
    }

    fn render(&self, e: ProxyError, grpc: bool) -> Response<ProxyBody> {
        tracing::debug!(listener = self.listener().as_str(), reason = e.reason.as_str(), detail = %e.detail, "request failed");
        e.into_response(grpc)
    }

    async fn forward(
        &self,
        d: &Decision,
        mut req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let downstream = req.version();
        let authority = match (h::authority(&req), &d.dest) {
            (Some(a), _) => a.to_owned(),
            (None, crate::pipeline::Dest::Fixed(app)) => app.addr().to_string(),
            (None, _) => {
                return Err(ProxyError::new(
                    Reason::BadRequest,
                    "request has no Host header or authority",
                ))
            }
        };
        // Hop-by-hop headers go before any attempt (an HTTP/2 hop keeps `te: trailers`).
        h::strip_hop_by_hop(req.headers_mut(), true);
        let mut transport = General {
            req: Some(req),
            authority,
        };
        match attempt::run(self, d, &mut transport).await {
            Ok(mut resp) => {
                h::strip_hop_by_hop(resp.headers_mut(), false);
                // The client gets its own HTTP version back, whatever the upstream spoke.
                *resp.version_mut() = downstream;
                Ok(resp.map(Either::Left))
            }
            Err(Failure::Respond(e)) => Err(e),
            // The client is gone (its stream reset or its connection closed): nobody reads
            // the answer, which says so for the metrics.
            Err(Failure::Abort) => Err(ProxyError::new(
                Reason::BadRequest,
                "the client went away before the response",
            )),
        }
    }
}

/// Whether an HTTP/2 request's head is over the limits HTTP/1.1 heads are held to: its header
/// list size (RFC 9113 §6.5.2: name, value and 32 per field, pseudo-headers included) or its
/// number of fields.
fn too_large<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    if headers.len() > MAX_HEADER_FIELDS {
        return true;
    }
    let uri = req.uri();
    let pseudo = req.method().as_str().len()
        + uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
        + 4 * 32;
    let size = headers
        .iter()
        .fold(pseudo, |n, (k, v)| n + k.as_str().len() + v.len() + 32);
    size > MAX_HEADER_BYTES
}

/// hyper's HTTP/1.1 client or the h2 client, with the request held until an attempt takes it.
struct General {
    /// The request; given back by a transport whose connect failed.
    req: Option<Request<RequestBody>>,
    authority: String,
}

impl Transport for General {
    type Output = Response<UpstreamBody>;

    fn status(out: &Self::Output) -> u16 {
        out.status().as_u16()
    }

    async fn attempt(
        &mut self,
        upstream: &Arc<Upstream>,
        wire: Wire,
    ) -> Result<Self::Output, AttemptError> {
        let Some(mut req) = self.req.take() else {
            return Err(AttemptError::Failed("the request was already sent".into()));
        };
        if let Err(e) = h::set_wire(&mut req, wire, &self.authority) {
            return Err(AttemptError::Failed(e.into()));
        }
        match upstream.send(wire, req).await {
            Ok(resp) => Ok(resp),
            Err(SendError::Connect(e, back)) => {
                self.req = Some(*back);
                Err(AttemptError::Refused(e.to_string()))
            }
            Err(SendError::Failed(e)) => Err(AttemptError::Failed(e)),
        }
    }
}
