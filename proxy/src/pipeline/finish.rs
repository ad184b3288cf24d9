//! The one finish step: every request, on every codec, is recorded here once, when its
//! response head is sent (or the proxy answered it): the request count, the latency to the
//! response head, the response by status and reason code, and which codec carried it; the
//! access-log line when the service's policy sampled the request; and, when the proxy made
//! the response, an entry in the ring of recent failures (`/debug/requests`). Spans (the
//! tracing step) are to be written here too, so every path reports alike.
//!
//! The codecs hand over what they know as [`Finished`]. A request whose service logs nothing
//! and that succeeded costs two not-taken branches beyond the metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::base::{ConnCtx, Reason};
use crate::forward::upstream::Upstream;
use crate::telemetry::access::{Sampled, TraceId};
use crate::telemetry::metrics::{Codec, Metrics, ServiceMetrics};
use crate::telemetry::recent::Failure;

/// The attempts made upstream, counted by the transport as it makes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Attempts started.
    pub attempts: u32,
    /// The endpoint of the last one.
    pub endpoint: Option<SocketAddr>,
}

impl Tally {
    /// Counts an attempt on `upstream`.
    #[inline]
    pub fn note(&mut self, upstream: &Upstream) {
        self.attempts += 1;
        self.endpoint = Some(upstream.addr());
    }
}

/// What the codec that carried a request knows once its response head is out.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The connection it came on (absent for a head refused before a request existed).
    pub ctx: Option<&'a ConnCtx>,
    /// The matched route's name.
    pub route: Option<&'a Arc<str>>,
    /// Set when the service's access-log policy sampled the request.
    pub access: Option<&'a Sampled>,
    /// The codec that carried it.
    pub codec: Codec,
    /// The status sent.
    pub status: u16,
    /// Why the proxy answered itself, if it did.
    pub reason: Option<Reason>,
    /// The renderer's detail of that answer.
    pub detail: Option<&'a str>,
    /// From the request head's arrival to the response head's departure.
    pub latency: Duration,
    /// The attempts made upstream.
    pub tally: Tally,
    /// The request body's size, when its framing declared it (`Content-Length`, or none).
    pub request_bytes: Option<u64>,
    /// The response body's size, when its framing declared it.
    pub response_bytes: Option<u64>,
}

impl<'a> Finished<'a> {
    /// The facts every codec has; the others start unknown.
    pub fn new(codec: Codec, status: u16, reason: Option<Reason>, latency: Duration) -> Self {
        Finished {
            ctx: None,
            route: None,
            access: None,
            codec,
            status,
            reason,
            detail: None,
            latency,
            tally: Tally::default(),
            request_bytes: None,
            response_bytes: None,
        }
    }
}

/// Records one finished request under `svc`'s metric handles. `f.latency` is from the
/// request head's arrival to the response head's departure, whatever the codec; the body's
/// relay is not part of it.
#[inline]
pub fn record(metrics: &Metrics, svc: &ServiceMetrics, f: &Finished<'_>) {
    svc.requests.inc();
    svc.latency.observe(f.latency.as_secs_f64());
    metrics.response(svc, f.status, f.reason.map_or("", Reason::as_str));
    svc.carried(f.codec).inc();
    if let Some(sampled) = f.access {
        access_line(metrics, svc, f, sampled);
    }
    if let Some(reason) = f.reason {
        remember(metrics, svc, f, reason);
    }
}

/// One access-log line. Field names are camelCase like the admin endpoint's JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    /// When the request head arrived (RFC 3339, milliseconds, UTC).
    time: String,
    trace_id: Option<&'a str>,
    direction: &'static str,
    /// The caller's SPIFFE ID, when it proved one (mTLS).
    client: Option<&'a str>,
    client_address: Option<SocketAddr>,
    service: &'a str,
    route: Option<&'a str>,
    endpoint: Option<SocketAddr>,
    status: u16,
    reason: Option<&'static str>,
    duration_ms: f64,
    attempts: u32,
    request_bytes: Option<u64>,
    response_bytes: Option<u64>,
    codec: &'static str,
}

#[cold]
#[inline(never)]
fn access_line(metrics: &Metrics, svc: &ServiceMetrics, f: &Finished<'_>, sampled: &Sampled) {
    let line = Line {
        time: ferrule_config::time::rfc3339(started(f.latency)),
        trace_id: sampled.trace_id.as_ref().map(TraceId::as_str),
        direction: svc.direction().as_str(),
        client: f.ctx.and_then(|c| c.peer_identity.as_deref()),
        client_address: f.ctx.map(|c| c.peer),
        service: svc.service(),
        route: f.route.map(|r| &**r),
        endpoint: f.tally.endpoint,
        status: f.status,
        reason: f.reason.map(Reason::as_str),
        duration_ms: f.latency.as_secs_f64() * 1000.0,
        attempts: f.tally.attempts,
        request_bytes: f.request_bytes,
        response_bytes: f.response_bytes,
        codec: f.codec.as_str(),
    };
    match serde_json::to_string(&line) {
        Ok(text) => metrics.access.write(text),
        Err(e) => tracing::warn!(error = %e, "an access line could not be written as JSON"),
    }
}

#[cold]
#[inline(never)]
fn remember(metrics: &Metrics, svc: &ServiceMetrics, f: &Finished<'_>, reason: Reason) {
    metrics.recent.push(Failure {
        at: started(f.latency),
        direction: svc.direction().as_str(),
        service: svc.service().to_owned(),
        route: f.route.cloned(),
        endpoint: f.tally.endpoint,
        status: f.status,
        reason: reason.as_str(),
        detail: f.detail.unwrap_or_default().to_owned(),
        duration: f.latency,
        attempts: f.tally.attempts,
        codec: f.codec.as_str(),
        client: f.ctx.and_then(|c| c.peer_identity.clone()),
        trace_id: f.access.and_then(|s| s.trace_id),
    });
}

/// The wall-clock time a request that took `latency` so far arrived.
fn started(latency: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_sub(latency).unwrap_or(now)
}
