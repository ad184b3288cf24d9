//! The admin listener: `/live`, `/ready`, `/metrics`, `/config`, `/identity`, `/endpoints` (each
//! destination's balancer, breaker and endpoint health),
//! `/log-level` and `/debug/requests`. Loopback by default (`--admin 127.0.0.1:4191`).
//! Reads are GET (or HEAD); the one mutation, setting the log level, is POST only, so a
//! link followed or a page prefetched can never change anything.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ferrule_config::time::rfc3339;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::base::Lifecycle;
use crate::codec::headers::{ProxyBody, RequestBody};
use crate::forward::health::State;
use crate::plan::balance::Member;
use crate::plan::breaker::Breaker;
use crate::plan::policy::Policy;
use crate::telemetry::logs;

/// Serves admin requests.
#[derive(Debug, Clone)]
pub struct Admin {
    policy: Arc<Policy>,
    life: Arc<Lifecycle>,
    proxy_id: Arc<str>,
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Either::Right(Full::new(body.into())))
        .expect("static response parts are valid")
}

impl Admin {
    /// An admin handler.
    pub fn new(policy: Arc<Policy>, life: Arc<Lifecycle>, proxy_id: &str) -> Self {
        Admin {
            policy,
            life,
            proxy_id: proxy_id.into(),
        }
    }

    /// Handles one admin request.
    pub async fn handle(&self, req: Request<RequestBody>) -> Response<ProxyBody> {
        if req.method() == Method::POST {
            return match req.uri().path() {
                "/log-level" => set_log_level(req).await,
                _ => not_allowed("GET"),
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_allowed(match req.uri().path() {
                "/log-level" => "GET, POST",
                _ => "GET",
            });
        }
        match req.uri().path() {
            "/live" => reply(StatusCode::OK, "text/plain", "live\n"),
            "/ready" => self.ready(),
            "/metrics" => {
                self.policy.refresh_health_gauges();
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.policy.metrics.encode(),
                )
            }
            "/endpoints" => self.endpoints(),
            "/config" => self.config(),
            "/identity" => self.identity(),
            "/log-level" => log_level(),
            "/debug/requests" => self.recent_failures(),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /live, /ready, /metrics, /config, /identity, /endpoints, \
                 /log-level, /debug/requests\n",
            ),
        }
    }

    /// The last proxy-made responses, newest first (`telemetry::recent`).
    fn recent_failures(&self) -> Response<ProxyBody> {
        let mut text = serde_json::to_vec_pretty(&self.policy.metrics.recent.to_json())
            .expect("JSON values serialise");
        text.push(b'\n');
        reply(StatusCode::OK, "application/json", text)
    }

    fn ready(&self) -> Response<ProxyBody> {
        let version = self.policy.version();
        let listening = self.life.listening.load(Ordering::Relaxed);
        let draining = self.life.draining.load(Ordering::Relaxed);
        let identity = &self.policy.identity;
        let cert = identity.tls().map(|t| t.cert.not_after);
        let certified = !identity.is_enabled() || cert.is_some_and(|t| t > SystemTime::now());
        if version > 0 && listening && !draining && certified {
            // Still ready (traffic must not stop because the control plane is away), but say
            // that the policy may be stale.
            let status = self.policy.status();
            let degraded = match (status.source, status.since) {
                (Some("disk"), Some(since)) => format!(
                    "; degraded: serving the persisted snapshot since {} (the control plane has \
                     not answered since start)",
                    rfc3339(since)
                ),
                _ => String::new(),
            };
            return reply(
                StatusCode::OK,
                "text/plain",
                format!("ready (policy version {version}){degraded}\n"),
            );
        }
        let why = if draining {
            "draining".to_string()
        } else if !listening {
            "listeners not bound yet".to_string()
        } else if !certified {
            match cert {
                Some(_) => "the workload certificate has expired and could not be renewed (see the logs)",
                None => "no workload certificate yet (is the control plane reachable and the token valid?)",
            }
            .to_string()
        } else {
            "no policy snapshot yet (control plane unreachable and none persisted?)".to_string()
        };
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {why}\n"),
        )
    }

    fn identity(&self) -> Response<ProxyBody> {
        let identity = &self.policy.identity;
        let tls = identity.tls();
        let body = serde_json::json!({
            "enabled": identity.is_enabled(),
            "identity": tls.as_ref().map(|t| t.cert.identity.to_string()),
            "serial": tls.as_ref().map(|t| t.cert.serial.clone()),
            "notBefore": tls.as_ref().map(|t| rfc3339(t.cert.not_before)),
            "notAfter": tls.as_ref().map(|t| rfc3339(t.cert.not_after)),
            "renewAt": identity.renew_at().map(rfc3339),
            "trustBundleRoots": tls.as_ref().map(|t| t.roots),
        });
        let mut text = serde_json::to_vec_pretty(&body).expect("JSON values serialise");
        text.push(b'\n');
        reply(StatusCode::OK, "application/json", text)
    }

    /// Every balanced destination (service and subset) with its balancer and each endpoint's
    /// health as this sidecar sees it.
    fn endpoints(&self) -> Response<ProxyBody> {
        let tables = self.policy.load();
        let now = Instant::now();
        let wall = SystemTime::now();
        let destinations: Vec<serde_json::Value> = tables
            .targets
            .iter()
            .map(|((_, subset), t)| {
                let b = &t.balancer;
                let endpoints: Vec<serde_json::Value> = b
                    .members()
                    .iter()
                    .map(|m| endpoint_json(m, now, wall))
                    .collect();
                serde_json::json!({
                    "service": &*t.service,
                    "subset": subset,
                    "loadBalancer": b.kind().as_str(),
                    "panic": b.panicking(),
                    "breaker": breaker_json(&t.breaker),
                    "endpoints": endpoints,
                })
            })
            .collect();
        let body = serde_json::json!({
            "version": tables.version,
            "zone": tables.zone.as_deref(),
            "destinations": destinations,
        });
        let mut text = serde_json::to_vec_pretty(&body).expect("JSON values serialise");
        text.push(b'\n');
        reply(StatusCode::OK, "application/json", text)
    }

    fn config(&self) -> Response<ProxyBody> {
        let tables = self.policy.load();
        let status = self.policy.status();
        let body = serde_json::json!({
            "proxy": &*self.proxy_id,
            "version": tables.version,
            "source": status.source,
            "controlPlaneConnected": self.life.connected.load(Ordering::Relaxed),
            "lastNack": status.last_nack.as_ref().map(|e| serde_json::json!({
                "version": status.last_nack_version,
                "error": e,
            })),
            "snapshot": tables.snapshot.as_deref(),
        });
        let mut text = serde_json::to_vec_pretty(&body).expect("JSON values serialise");
        text.push(b'\n');
        reply(StatusCode::OK, "application/json", text)
    }
}

/// A destination's circuit breaker in `/endpoints`: "closed" while a slot is free, "open" when
/// every slot is taken (new requests queue, then are refused as overloaded).
fn breaker_json(b: &Breaker) -> serde_json::Value {
    let (max_requests, max_pending, queue_timeout) = b.limits();
    serde_json::json!({
        "state": if b.saturated() { "open" } else { "closed" },
        "inFlight": b.in_flight(),
        "queued": b.waiting(),
        "maxRequests": max_requests,
        "maxPending": max_pending,
        "queueTimeoutMs": queue_timeout.as_secs_f64() * 1000.0,
    })
}

/// One endpoint in `/endpoints`.
fn endpoint_json(m: &Member, now: Instant, wall: SystemTime) -> serde_json::Value {
    let r = m.upstream.health().report(now);
    let (state, reason, until) = match r.state {
        State::Healthy => ("healthy", None, None),
        State::Ejected { reason, until } => (
            "ejected",
            Some(reason.as_str()),
            Some(rfc3339(wall + until.saturating_duration_since(now))),
        ),
        State::Probing { reason } => ("probing", Some(reason.as_str()), None),
    };
    serde_json::json!({
        "name": &*m.name,
        "address": m.upstream.addr().to_string(),
        "zone": m.zone.as_deref(),
        "weight": m.weight,
        "sidecar": m.sidecar,
        "identity": m.identity.as_deref(),
        "state": state,
        "reason": reason,
        "ejectedUntil": until,
        "ejections": r.ejections,
        "inFlight": m.upstream.in_flight(),
        "latencyMs": r.latency.map(|l| l.as_secs_f64() * 1000.0),
        "consecutiveFailures": r.consecutive_failures,
    })
}

/// 405, saying which methods the path takes.
fn not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut resp = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        format!("use {allow}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

/// The longest `POST /log-level` body read: a filter is a line of directives.
const LOG_LEVEL_BODY_MAX: usize = 4096;

/// `GET /log-level`: the filter in force, in the syntax `POST` takes.
fn log_level() -> Response<ProxyBody> {
    match logs::installed() {
        Some(level) => reply(
            StatusCode::OK,
            "text/plain",
            format!("{}\n", level.current()),
        ),
        None => no_log_level(),
    }
}

/// `POST /log-level` with a filter as the body (`warn`, `ferrule_proxy=debug,info`): replaces
/// the filter at once; a bad one is refused with why, and the one in force stays.
async fn set_log_level(req: Request<RequestBody>) -> Response<ProxyBody> {
    let Some(level) = logs::installed() else {
        return no_log_level();
    };
    let body = match Limited::new(req.into_body(), LOG_LEVEL_BODY_MAX)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("could not read the filter (at most {LOG_LEVEL_BODY_MAX} bytes): {e}\n"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "the filter is not UTF-8 text\n",
        );
    };
    match level.set(text) {
        Ok(now) => {
            tracing::info!(filter = %now, "log level changed through the admin endpoint");
            reply(StatusCode::OK, "text/plain", format!("{now}\n"))
        }
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

fn no_log_level() -> Response<ProxyBody> {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        "this process installed no log subscriber whose level could be read or changed\n",
    )
}
