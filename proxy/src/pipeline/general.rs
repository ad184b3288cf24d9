//! The general path: requests as `http::Request`s, from hyper's HTTP/1.1 server or the HTTP/2
//! server, through the pipeline's plan, attempt loop and finish, with hyper's HTTP/1.1 client
//! or the h2 client as the transport. It carries what the fast path does not: HTTP/2 and gRPC,
//! protocol translation between HTTP/1.1 and HTTP/2, upgrades and `Expect`, HTTP/1.0, and the
//! rest of a connection the fast path handed over.

use std::sync::Arc;
use std::time::Instant;

use std::time::Duration;

use ferrule_config::resilience::{RetryOn, RetryPolicy};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::Either;

use crate::base::ConnCtx;
use crate::base::Reason;
use crate::codec::body::Recorder;
use crate::codec::h2server;
use crate::codec::headers::{self as h, ProxyBody, RequestBody, UpstreamBody, Wire};
use crate::codec::idle::{Activity, IdleBody};
use crate::codec::render::ProxyError;
use crate::forward::upstream::{SendError, Upstream};
use crate::pipeline::attempt::{self, AttemptError, Failure, HeadInfo, Transport};
use crate::pipeline::{mirror, Decision, Finished, Pipeline, PlanError, Planned, Tally};
use crate::telemetry::access::{Sampled, TRACEPARENT};
use crate::telemetry::metrics::Codec;
use http_body::Body as _;

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
        // A request the fast path stopped at was planned there already. An HTTP/2 head the
        // HTTP/2 codec refuses (over the limits HTTP/1.1 heads are held to, or a `host` that
        // disagrees with `:authority`) is answered before planning.
        let planned = match req.extensions_mut().remove::<Planned>() {
            Some(p) => p,
            None if codec == Codec::Http2 => match h2server::check_head(&req) {
                Ok(()) => self.plan(ctx, &req),
                Err(e) => Err(PlanError::new(e.reason, e.detail, Instant::now())),
            },
            None => self.plan(ctx, &req),
        };
        let start = match &planned {
            Ok(d) => d.start,
            Err(e) => e.start,
        };
        let mut tally = Tally::default();
        let (answer, service, route, access, request_bytes) = match planned {
            Err(e) => {
                let traceparent = || req.headers().get(TRACEPARENT).map(|v| v.as_bytes());
                let access = self
                    .sample_refused(e.service.as_ref(), traceparent)
                    .then(|| Sampled::read(traceparent()));
                let bytes = access.as_ref().and_then(|_| req.body().size_hint().exact());
                (Err(e.error), e.service, None, access, bytes)
            }
            Ok(d) => {
                let access = d
                    .logged
                    .then(|| Sampled::read(req.headers().get(TRACEPARENT).map(|v| v.as_bytes())));
                let bytes = access.as_ref().and_then(|_| req.body().size_hint().exact());
                let answer = self.forward(ctx, &d, req, &mut tally).await;
                (answer, d.service, d.route, access, bytes)
            }
        };
        let (resp, reason, detail) = match answer {
            Ok(resp) => (resp, None, None),
            Err(e) => {
                let (reason, detail) = (e.reason, e.detail.clone());
                (self.render(e, grpc), Some(reason), Some(detail))
            }
        };
        let status = resp.status().as_u16();
        let response_bytes = access
            .as_ref()
            .and_then(|_| resp.body().size_hint().exact());
        self.record(
            service.as_ref(),
            &Finished {
                ctx: Some(ctx),
                route: route.as_ref().and_then(|r| r.name.as_ref()),
                access: access.as_deref(),
                detail: detail.as_deref(),
                tally,
                request_bytes,
                response_bytes,
                ..Finished::new(codec, status, reason, start.elapsed())
            },
        );
        resp
    }

    fn render(&self, e: ProxyError, grpc: bool) -> Response<ProxyBody> {
        tracing::debug!(listener = self.listener().as_str(), reason = e.reason.as_str(), detail = %e.detail, "request failed");
        e.into_response(grpc)
    }

    async fn forward(
        &self,
        ctx: &ConnCtx,
        d: &Decision,
        mut req: Request<RequestBody>,
        tally: &mut Tally,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let downstream = req.version();
        let keep_alive_10 = h::http10_keep_alive(&req);
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
        let grpc = h::is_grpc(req.headers());
        // The stream idle timeout is the business of the sidecar that planned the route (the
        // caller's), as retries are.
        let idle = d.route.as_ref().map(|r| {
            let idle = r.resilience.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
            (Activity::new(), idle)
        });
        if let Some((activity, _)) = &idle {
            req = req.map(|b| b.watched(activity.clone()));
        }
        // Hop-by-hop headers go before any attempt (an HTTP/2 hop keeps `te: trailers`).
        h::strip_hop_by_hop(req.headers_mut(), true);
        // A mirrored copy is made from the same copy of the head and recording of the body as
        // a retry.
        let mut shadow = mirror::drawn(d);
        let copy = match &d.route {
            Some(r) if shadow.is_some() || wants_copy(&r.resilience.retries, d.idempotent) => {
                let (parts, body) = req.into_parts();
                let (body, recorder) = body.recorded();
                let copy = Copy {
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    version: parts.version,
                    headers: parts.headers.clone(),
                    recorder,
                };
                req = Request::from_parts(parts, body);
                Some(copy)
            }
            _ => None,
        };
        // A body that had ended before the request was sent (none, or HTTP/2 `END_STREAM` with
        // the head) is in hand: the copy leaves now, beside the first attempt.
        if let (Some(m), Some(c)) = (shadow, &copy) {
            if c.recorder.is_none() {
                mirror::send(m, d, ctx, c.request(), &authority);
                shadow = None;
            }
        }
        let mut transport = General {
            req: Some(req),
            authority,
            grpc,
            copy,
            tally: Tally::default(),
        };
        let result = attempt::run(self, d, &mut transport).await;
        // Any other body is in hand if it ended, within the recording's limit, by the time the
        // attempts are over (the response head is in, or they failed).
        if let Some(m) = shadow {
            let copy = transport.copy.as_ref().and_then(Copy::request);
            mirror::send(m, d, ctx, copy, &transport.authority);
        }
        *tally = transport.tally;
        match result {
            Ok(mut resp) => {
                h::strip_hop_by_hop(resp.headers_mut(), false);
                // The client gets its own HTTP version back, whatever the upstream spoke.
                *resp.version_mut() = downstream;
                if keep_alive_10 {
                    h::set_keep_alive(resp.headers_mut());
                }
                Ok(resp.map(|body| {
                    Either::Left(match idle {
                        Some((activity, t)) => IdleBody::new(body, activity, t),
                        None => IdleBody::unwatched(body),
                    })
                }))
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

/// The stream idle timeout of a route that sets none (Envoy's default too).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether a request must be kept to be sent again: when its route retries anything a
/// request of its method may be retried for after it was sent (a refused connect gives the
/// request back, so it needs no copy).
fn wants_copy(policy: &RetryPolicy, idempotent: bool) -> bool {
    policy.attempts > 1
        && (policy.on.contains(&RetryOn::RefusedStream)
            || ((idempotent || policy.non_idempotent)
                && policy.on.iter().any(|r| *r != RetryOn::ConnectFailure)
                || !policy.status_codes.is_empty()))
}

/// What the attempt loop reads of a response head: its status, a trailers-only gRPC status,
/// and `Retry-After` in its seconds form (the date form is not honoured).
fn head_info(status: u16, headers: &HeaderMap) -> HeadInfo {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    HeadInfo {
        status,
        // Only a trailers-only gRPC response (HTTP 200) carries it in its head.
        grpc_status: if status == 200 {
            number("grpc-status")
        } else {
            None
        },
        // Only these two statuses give it a meaning of "wait before trying again".
        retry_after: if status == 503 || status == 429 {
            number("retry-after").map(|s| Duration::from_secs(u64::from(s)))
        } else {
            None
        },
    }
}

/// What a retry or a mirrored copy needs to send a request again: its head, and the recording
/// of its body.
struct Copy {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// `None` for a request whose body had ended before it was sent (none, or empty).
    recorder: Option<Recorder>,
}

impl Copy {
    /// The request again, if its body is in hand: it had none, or it ended within the
    /// recording's limit.
    fn request(&self) -> Option<Request<RequestBody>> {
        let body = match &self.recorder {
            None => RequestBody::empty(),
            Some(rec) => rec.replay()?,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

/// hyper's HTTP/1.1 client or the h2 client, with the request held until an attempt takes it.
struct General {
    /// The request; given back by a transport whose connect failed.
    req: Option<Request<RequestBody>>,
    authority: String,
    /// The request is gRPC (its deadline goes on as `grpc-timeout` too).
    grpc: bool,
    /// Kept to send the request again, when its route may retry it.
    copy: Option<Copy>,
    /// The attempts made, for the finish step.
    tally: Tally,
}

impl Transport for General {
    type Output = Response<UpstreamBody>;

    async fn attempt(
        &mut self,
        upstream: &Arc<Upstream>,
        wire: Wire,
        remaining: Option<Duration>,
    ) -> Result<Self::Output, AttemptError> {
        let Some(mut req) = self.req.take() else {
            return Err(AttemptError::Failed("the request was already sent".into()));
        };
        if let Err(e) = h::set_wire(&mut req, wire, &self.authority) {
            return Err(AttemptError::Failed(e.into()));
        }
        if let Some(left) = remaining {
            h::set_deadline(req.headers_mut(), left, self.grpc);
        }
        match upstream.send(wire, req).await {
            Ok(resp) => Ok(resp),
            Err(SendError::Connect(e, back)) => {
                self.req = Some(*back);
                Err(AttemptError::Refused(e.to_string()))
            }
            Err(SendError::Failed(e)) if h::is_refused_stream(&*e) => {
                Err(AttemptError::RefusedStream(e))
            }
            Err(SendError::Failed(e)) => Err(AttemptError::Failed(e)),
        }
    }

    fn head(resp: &Self::Output) -> HeadInfo {
        head_info(resp.status().as_u16(), resp.headers())
    }

    fn attempted(&mut self, upstream: &Upstream) {
        self.tally.note(upstream);
    }

    fn rearm(&mut self) -> bool {
        if self.req.is_none() {
            self.req = self.copy.as_ref().and_then(Copy::request);
        }
        self.req.is_some()
    }
}
