//! The request pipeline: every request, whatever codec carries it, goes through the same three
//! steps, and this floor is the only one that knows all the floors below it.
//!
//! 1. **plan** ([`Pipeline::plan`]): from a borrowed view of the head (`codec::HeadView`) and the
//!    connection's context, decide once: destination service, route, backend, deadline. Errors
//!    decided here (no config, unknown service, no route, no endpoints) are [`PlanError`]s.
//! 2. **attempts** ([`attempt::run`]): one loop over a [`attempt::Transport`] picks endpoints,
//!    moves an untouched request to another endpoint when a connect is refused, and holds the
//!    route's deadline. Before the first attempt, [`Pipeline::admit`] applies what the plan
//!    decided to inject (a delay, an abort) and takes a slot of the destination's circuit
//!    breaker, held until the loop returns. Transports: the fast path's raw HTTP/1.1 (`fast`), and hyper's HTTP/1.1
//!    client or the h2 client (`general`).
//! 3. **finish** ([`finish`]): metrics with one definition of latency (time to the response
//!    head) and the reason code of a proxy-made response, recorded once per request.
//!
//! Beside the three steps, [`mirror`] sends a copy of a share of a route's requests to a shadow
//! service, on a task of its own, so the primary exchange never waits for it.
//!
//! Errors become responses in `codec::render` only. Codecs: [`fast`] serves plain HTTP/1.1 in
//! place and hands a connection to [`general`] (hyper's HTTP/1.1 server, the HTTP/2 server) at
//! the first request it cannot carry, together with the decision already made for it, so no
//! request is planned twice.
//!
//! Transparent interception changes only where a request goes ([`intercept`]): the service
//! that owns the connection's original destination when the host names none.
//!
//! Where later capabilities plug in is listed in ARCHITECTURE.md ("Where each capability plugs
//! in").

pub mod attempt;
pub mod fast;
pub mod finish;
pub mod general;
pub mod intercept;
pub mod mirror;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule_config::resilience::HashKey;
use ferrule_config::{authz, LoadBalancer, Protocol};

use ferrule_config::resilience::{RateKey, Side as LimitSide};
use http::HeaderValue;

use crate::base::{ConnCtx, Listener, Reason};
use crate::codec::headers::{self as h, host_of, Wire};
use crate::codec::render::{Custom, ProxyError};
use crate::codec::HeadView;
use crate::forward::upstream::Upstream;
use crate::plan::balance::hash_key;
use crate::plan::breaker::{Refused, Slot};
use crate::plan::fault::{Injected, FAULT_HEADER};
use crate::plan::limit::{retry_after_secs, RouteLimit};
use crate::plan::policy::{Policy, RouteTable, ServiceTable, Tables, Target};
use crate::telemetry::access::TRACEPARENT;
use crate::telemetry::metrics::{Codec, Direction, ServiceMetrics};

pub use finish::{Finished, Tally};

/// One direction's pipeline: what the outbound or inbound listener runs for each request.
#[derive(Debug)]
pub struct Pipeline {
    /// The policy it plans with (the inbound listener's mTLS step reads the mode from it).
    pub policy: Arc<Policy>,
    side: Side,
    /// Transparent interception: the unknown-destination setting, upstreams of addresses
    /// outside the snapshot, counters.
    intercept: intercept::Intercept,
}

#[derive(Debug)]
enum Side {
    /// The local app's requests to other services: routed by host.
    Outbound {
        /// Metric handles for requests whose host names no service.
        unknown: ServiceMetrics,
    },
    /// Peers' requests for the local app.
    Inbound {
        app: Arc<Upstream>,
        metrics: ServiceMetrics,
    },
}

/// Where a planned request goes.
#[derive(Debug, Clone)]
pub enum Dest {
    /// A balanced backend of a service (outbound).
    Balanced(Arc<Target>),
    /// One fixed upstream (inbound: the app).
    Fixed(Arc<Upstream>),
}

/// The decision for one request, made once, before any byte is sent on.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Where it goes.
    pub dest: Dest,
    /// The destination service (outbound), for metrics and messages.
    pub service: Option<Arc<ServiceTable>>,
    /// The matched route (outbound): its name, retry policy and the rest of its resilience.
    pub route: Option<Arc<RouteTable>>,
    /// The deadline for the response head, covering every attempt: the route's timeout, or
    /// the caller's deadline (`ferrule-deadline`, `grpc-timeout`) when that is sooner.
    pub timeout: Option<Duration>,
    /// The caller's own deadline (`ferrule-deadline`, `grpc-timeout`), which is passed on to
    /// the next hop as the time left. The route's timeout is not: it bounds the wait for the
    /// response head here, whereas `grpc-timeout` bounds a whole call, stream included.
    pub caller_deadline: Option<Duration>,
    /// The method is idempotent (RFC 9110 §9.2.2), so a retry cannot do the work twice.
    pub idempotent: bool,
    /// The protocol of the destination (the app's own, inbound).
    pub protocol: Protocol,
    /// The request's key for a `ring_hash` destination (`None`: no such balancer, or the
    /// request lacks the key, and then it goes to a random endpoint).
    pub hash: Option<u64>,
    /// The client speaks HTTP/2 or gRPC (so a peer sidecar is spoken to in HTTP/2).
    pub wants_h2: bool,
    /// The faults the route's policy injects into this request (drawn once, here).
    pub faults: Injected,
    /// The route's mirror drew this request: a copy of it goes to the shadow service
    /// ([`mirror`]). Drawn once, here, so a request handed from the fast path to the general
    /// path is not drawn again.
    pub mirror: bool,
    /// When the request's head was read: the start of its latency. With this decision and
    /// the connection's `ConnCtx`, it is the request's context for the finish step (and for
    /// the span, when it comes).
    pub start: Instant,
    /// The service's access-log policy sampled the request: the finish step writes its line.
    /// A flag, not the line's facts, because it fits in the padding: a larger decision is
    /// copied by `memcpy` calls where it moves, which cost the fast path about 175
    /// instructions per request (callgrind); the codec reads the trace id from the head.
    pub logged: bool,
}

/// A request that fails at planning, with the service it was for when known (for metrics).
#[derive(Debug, Clone)]
pub struct PlanError {
    /// What went wrong.
    pub error: ProxyError,
    /// The destination service, when the host named one.
    pub service: Option<Arc<ServiceTable>>,
    /// When the request's head was read.
    pub start: Instant,
}

impl PlanError {
    /// A refusal of a request whose head was read at `start`, for no particular service.
    pub fn new(reason: Reason, detail: impl Into<String>, start: Instant) -> Self {
        PlanError {
            error: ProxyError::new(reason, detail),
            service: None,
            start,
        }
    }
}

/// What planning produced: carried along with a connection the fast path hands to the general
/// path, so the request it stopped at is not planned (nor its backend drawn) a second time.
pub type Planned = Result<Decision, PlanError>;

impl Pipeline {
    /// The outbound pipeline over `policy`.
    pub fn outbound(policy: Arc<Policy>) -> Self {
        let unknown = policy.metrics.service(Direction::Outbound, "unknown");
        let intercept = intercept::Intercept::new(&policy.metrics, Direction::Outbound);
        Pipeline {
            policy,
            side: Side::Outbound { unknown },
            intercept,
        }
    }

    /// What an intercepted request whose original destination no service owns gets
    /// (outbound; passed through unless set otherwise).
    pub fn with_unknown_destination(mut self, setting: intercept::UnknownDestination) -> Self {
        self.intercept.unknown = setting;
        self
    }

    /// The inbound pipeline of service `service`, whose app listens at `app`.
    pub fn inbound(policy: Arc<Policy>, service: &str, app: std::net::SocketAddr) -> Self {
        let metrics = policy.metrics.service(Direction::Inbound, service);
        let intercept = intercept::Intercept::new(&policy.metrics, Direction::Inbound);
        Pipeline {
            policy,
            side: Side::Inbound {
                app: Upstream::new(app),
                metrics,
            },
            intercept,
        }
    }

    /// Which listener this pipeline serves.
    pub fn listener(&self) -> Listener {
        match self.side {
            Side::Outbound { .. } => Listener::Outbound,
            Side::Inbound { .. } => Listener::Inbound,
        }
    }

    /// Plans one request from its head.
    pub fn plan<H: HeadView + ?Sized>(&self, ctx: &ConnCtx, head: &H) -> Planned {
        let start = Instant::now();
        let tables = self.policy.load();
        let wants_h2 = head.is_http2() || head.is_grpc();
        if let Side::Inbound { app, .. } = &self.side {
            if let Some(authz) = tables.local.as_ref().and_then(|s| s.authz.as_ref()) {
                self.authorize(authz, ctx, head, start)?;
            }
            // Inbound rate limits: this service's own route that matches, if its limit is
            // enforced by the callee's sidecars. A request no route matches is not refused
            // here (routing is the caller's business); it is just not limited.
            if let Some(svc) = &tables.local {
                if let Some(limit) = svc.route(head).ok().and_then(|r| r.limit.as_ref()) {
                    if limit.cfg.side == LimitSide::Inbound {
                        self.rate_limit(limit, &svc.name, ctx, head)
                            .map_err(|error| PlanError {
                                error,
                                service: None,
                                start,
                            })?;
                    }
                }
            }
            // The app, in its service's protocol (`auto` before any snapshot).
            let protocol = tables
                .local
                .as_ref()
                .map(|s| s.protocol)
                .unwrap_or_default();
            let caller_deadline = incoming_deadline(head);
            // Intercepted: the app at the port the peer connected to.
            let app = match ctx.original_dst {
                Some(original) => self.intercept.app_port(app, original),
                None => app.clone(),
            };
            let access = tables.local.as_ref().and_then(|s| s.access_log);
            return Ok(Decision {
                dest: Dest::Fixed(app),
                service: None,
                route: None,
                timeout: caller_deadline,
                caller_deadline,
                idempotent: h::is_idempotent(head.method()),
                protocol,
                hash: None,
                wants_h2,
                faults: Injected::default(),
                // Mirroring is the caller's sidecar's business, as retries are: a route's
                // policy is applied where it is planned, so a copy is never made twice.
                mirror: false,
                start,
                logged: access.is_some_and(|a| a.sample(|| head.header(TRACEPARENT))),
            });
        }
        if tables.version == 0 {
            return Err(PlanError::new(
                Reason::NoConfig,
                "this sidecar has not received a policy snapshot yet; check that the control plane is reachable",
                start,
            ));
        }
        if head.method() == "CONNECT" {
            return Err(PlanError::new(
                Reason::BadRequest,
                "CONNECT tunnels are not supported by the outbound listener in explicit mode",
                start,
            ));
        }
        let Some(authority) = head.authority() else {
            return Err(PlanError::new(
                Reason::BadRequest,
                "request has no Host header or authority",
                start,
            ));
        };
        let host = host_of(authority);
        let svc = match (tables.service(&host), ctx.original_dst) {
            (Some(svc), _) => svc,
            // Intercepted, and the host names no service: the original destination decides.
            (None, Some(original)) => match tables.service_at(original) {
                Some(svc) => {
                    self.intercept.to_service.inc();
                    svc
                }
                None => return self.unknown_destination(original, &tables, head, start),
            },
            (None, None) => {
                return Err(PlanError::new(
                    Reason::UnknownService,
                    format!(
                        "no service named {host:?} in policy version {} (known: {})",
                        tables.version,
                        tables.service_names().join(", ")
                    ),
                    start,
                ))
            }
        };
        // Refusals from here on are counted under the service the host named.
        let refuse = |error: ProxyError| PlanError {
            error,
            service: Some(svc.clone()),
            start,
        };
        let route = svc.route(head).map_err(refuse)?;
        if let Some(limit) = &route.limit {
            if limit.cfg.side == LimitSide::Outbound {
                self.rate_limit(limit, &svc.name, ctx, head)
                    .map_err(refuse)?;
            }
        }
        let Some(target) = route.pick_backend() else {
            return Err(refuse(ProxyError::new(
                Reason::NoEndpoints,
                format!(
                    "the matching route of {} has no backend with a weight above 0",
                    svc.name
                ),
            )));
        };
        if target.balancer.members().is_empty() {
            return Err(refuse(fallback_or(
                Some(route),
                ProxyError::new(
                    Reason::NoEndpoints,
                    format!(
                        "service {} has no endpoints in the selected subset",
                        target.service
                    ),
                ),
            )));
        }
        let caller_deadline = incoming_deadline(head);
        let faults = route
            .faults
            .as_ref()
            .map(|f| f.draw(head.header(FAULT_HEADER)))
            .unwrap_or_default();
        Ok(Decision {
            dest: Dest::Balanced(target.clone()),
            service: Some(svc.clone()),
            route: Some(route.clone()),
            timeout: match (route.timeout, caller_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            caller_deadline,
            idempotent: h::is_idempotent(head.method()),
            protocol: target.protocol,
            hash: request_key(target, ctx, head),
            wants_h2,
            faults,
            mirror: route
                .mirror
                .as_ref()
                .is_some_and(|m| crate::plan::mirror::drawn(m.percent)),
            start,
            logged: svc
                .access_log
                .is_some_and(|a| a.sample(|| head.header(TRACEPARENT))),
        })
    }

    /// An intercepted outbound request whose original destination no service owns: passed
    /// through to it unchanged (one attempt, plaintext, the client's protocol), or refused,
    /// as the unknown-destination setting says.
    fn unknown_destination<H: HeadView + ?Sized>(
        &self,
        original: std::net::SocketAddr,
        tables: &Tables,
        head: &H,
        start: Instant,
    ) -> Planned {
        if self.intercept.unknown == intercept::UnknownDestination::Refuse {
            self.intercept.refused.inc();
            return Err(PlanError::new(
                Reason::UnknownService,
                format!(
                    "the original destination {original} is no address of a service or endpoint in policy version {}, and this sidecar refuses unknown destinations (--unknown-destination refuse)",
                    tables.version
                ),
                start,
            ));
        }
        self.intercept.passed.inc();
        let caller_deadline = incoming_deadline(head);
        Ok(Decision {
            dest: Dest::Fixed(self.intercept.direct(original)),
            service: None,
            route: None,
            timeout: caller_deadline,
            caller_deadline,
            idempotent: h::is_idempotent(head.method()),
            protocol: Protocol::Auto,
            hash: None,
            wants_h2: head.is_http2() || head.is_grpc(),
            faults: Injected::default(),
            mirror: false,
            start,
            // No service, so no service's access-log policy.
            logged: false,
        })
    }

    /// Records one attempt's outcome on the endpoint `index` of a balanced decision (the
    /// inbound app, the only endpoint there is, is never ejected).
    pub fn observe(&self, d: &Decision, index: usize, ok: bool, rtt: Duration) {
        if let Dest::Balanced(t) = &d.dest {
            t.balancer.observe(index, ok, rtt);
        }
    }

    /// Takes a token of a route's rate limit for this request, keyed as the limit says. Over
    /// the limit: 429 with `Retry-After`, or in shadow mode a count and (once a second) a log
    /// line, and the request goes on.
    fn rate_limit<H: HeadView + ?Sized>(
        &self,
        limit: &RouteLimit,
        service: &str,
        ctx: &ConnCtx,
        head: &H,
    ) -> Result<(), ProxyError> {
        let key = match &limit.cfg.key {
            None => None,
            Some(RateKey::Header(name)) => head.header(name),
            Some(RateKey::ClientIdentity(_)) => ctx.peer_identity.as_deref().map(str::as_bytes),
        };
        let Err(wait) = limit.limiter.check(key) else {
            return Ok(());
        };
        let rate = limit.cfg.requests_per_second;
        if limit.cfg.shadow {
            limit.shadowed.inc();
            if limit.should_log() {
                tracing::info!(
                    service,
                    method = head.method(),
                    path = head.path(),
                    "rate limit in shadow mode: would refuse ({rate}/s, burst {})",
                    limit.cfg.burst
                );
            }
            return Ok(());
        }
        limit.enforced.inc();
        let secs = retry_after_secs(wait);
        Err(ProxyError::custom(
            Reason::RateLimited,
            format!(
                "over the rate limit of {service}'s route ({rate}/s, burst {}); retry in {secs}s",
                limit.cfg.burst
            ),
            Arc::new(Custom {
                headers: vec![(http::header::RETRY_AFTER, HeaderValue::from(secs))],
                ..Custom::default()
            }),
        ))
    }

    /// The common case of [`Pipeline::admit`] without an await: nothing injected and a free
    /// slot (or no breaker: the inbound app). `None` means the caller must take the slow path.
    /// Why it exists: the async `admit` sets up nested futures even when it never waits; one
    /// callgrind run with it awaited for every request measured ~300 instructions more per
    /// HTTP/1.1 request than the runs of this version (within about 1.5 times that method's
    /// noise; see ARCHITECTURE.md, "Resilience steps").
    #[inline]
    pub fn admit_now<'d>(&self, d: &'d Decision) -> Option<Option<Slot<'d>>> {
        if d.faults != Injected::default() {
            return None;
        }
        match &d.dest {
            Dest::Fixed(_) => Some(None),
            Dest::Balanced(t) => t.breaker.try_acquire().map(Some),
        }
    }

    /// The steps between the plan and the first attempt, on every codec: the injected delay
    /// (inside the route's deadline), the injected abort, and a slot of the destination's
    /// circuit breaker, which the caller holds until its attempts are over. An uncontended
    /// slot costs a few atomics and no await.
    pub async fn admit<'d>(
        &self,
        d: &'d Decision,
        deadline: Option<(tokio::time::Instant, Duration)>,
    ) -> Result<Option<Slot<'d>>, ProxyError> {
        if let Some(delay) = d.faults.delay {
            let until = tokio::time::Instant::now() + delay;
            match deadline {
                Some((at, t)) if at <= until => {
                    tokio::time::sleep_until(at).await;
                    return Err(self.timeout(d, t));
                }
                _ => tokio::time::sleep_until(until).await,
            }
        }
        if d.faults.abort {
            if let Some(f) = d.route.as_ref().and_then(|r| r.faults.as_ref()) {
                return Err(ProxyError::custom(
                    Reason::FaultInjected,
                    "aborted by the route's fault injection policy",
                    f.abort.clone(),
                ));
            }
        }
        let Dest::Balanced(t) = &d.dest else {
            return Ok(None);
        };
        match t.breaker.acquire(deadline.map(|(at, _)| at)).await {
            Ok(slot) => Ok(Some(slot)),
            Err(why) => {
                let limits = &t.policy.circuit_breaker;
                let detail = match why {
                    Refused::QueueFull => format!(
                        "{} has {} requests in flight from this sidecar and {} waiting, its circuit breaker's limits (maxRequests, maxPending)",
                        t.service, limits.max_requests, limits.max_pending
                    ),
                    Refused::QueueTimeout => format!(
                        "no slot of {}'s circuit breaker ({} in flight) freed up within its queue timeout ({:?}) or the route's deadline",
                        t.service, limits.max_requests, limits.queue_timeout
                    ),
                };
                Err(fallback_or(
                    d.route.as_deref(),
                    ProxyError::new(Reason::Overloaded, detail),
                ))
            }
        }
    }

    /// Applies the service's authorization policy to an inbound request (see
    /// `ferrule_config::authz`): the caller's identity is the one its mTLS certificate proved.
    fn authorize<H: HeadView + ?Sized>(
        &self,
        authz: &authz::Compiled,
        ctx: &ConnCtx,
        head: &H,
        start: Instant,
    ) -> Result<(), PlanError> {
        let caller = ctx.peer_identity.as_deref();
        let verdict = authz.decide(caller, head.method(), head.path());
        if verdict.action == authz::Action::Allow {
            self.policy.metrics.authz("allow");
            return Ok(());
        }
        let by = match verdict.rule {
            Some(i) => format!("rule {i} of the service's authorization policy"),
            None => "the authorization policy's default action".to_string(),
        };
        let who = caller.unwrap_or("a caller without a mesh identity (plaintext)");
        if verdict.audit {
            self.policy.metrics.authz("audit_deny");
            tracing::info!(
                caller = who,
                method = head.method(),
                path = head.path(),
                "authorization audit: would deny ({by})"
            );
            return Ok(());
        }
        self.policy.metrics.authz("deny");
        Err(PlanError::new(
            Reason::Unauthorized,
            format!(
                "{who} may not {} {}: denied by {by}",
                head.method(),
                head.path()
            ),
            start,
        ))
    }

    /// The wire protocol towards one endpoint of a decision.
    pub fn wire(&self, d: &Decision, to_sidecar: bool) -> Wire {
        wire_to(d.protocol, d.wants_h2, to_sidecar)
    }

    /// Whether the fast path can carry a decision: HTTP/1.1 to every endpoint it may pick, and
    /// no mirrored copy to make. The copy is the general path's (`mirror`), which takes the
    /// request with the decision: it has the body recording to copy from and both protocols
    /// towards the shadow service. A route without a mirror never draws, so this costs the
    /// fast path one test of a flag.
    pub fn fast_can_carry(&self, d: &Decision) -> bool {
        !d.wants_h2 && !d.mirror && !matches!(d.protocol, Protocol::Http2 | Protocol::Grpc)
    }

    /// The metric handles a request is recorded under.
    pub fn metrics_for<'a>(&'a self, service: Option<&'a Arc<ServiceTable>>) -> &'a ServiceMetrics {
        match (&self.side, service) {
            (Side::Inbound { metrics, .. }, _) => metrics,
            (Side::Outbound { .. }, Some(svc)) => &svc.metrics,
            (Side::Outbound { unknown }, None) => unknown,
        }
    }

    /// Records a finished request of which only the basic facts are known (see [`finish`]).
    pub fn finish(
        &self,
        service: Option<&Arc<ServiceTable>>,
        codec: Codec,
        status: u16,
        reason: Option<Reason>,
        latency: Duration,
    ) {
        self.record(service, &Finished::new(codec, status, reason, latency));
    }

    /// Records a finished request (see [`finish`]).
    #[inline]
    pub fn record(&self, service: Option<&Arc<ServiceTable>>, f: &Finished<'_>) {
        let m = self.metrics_for(service);
        finish::record(&self.policy.metrics, m, f);
    }

    /// Whether to write an access line for a request refused at planning (the decision, had
    /// there been one, would say): by its service's policy, or inbound by this sidecar's own
    /// service's. `header` gives the request's `traceparent`.
    pub fn sample_refused<'h>(
        &self,
        service: Option<&Arc<ServiceTable>>,
        header: impl FnOnce() -> Option<&'h [u8]>,
    ) -> bool {
        let sampling = match self.side {
            Side::Inbound { .. } => self.policy.load().local.as_ref().and_then(|s| s.access_log),
            Side::Outbound { .. } => service.and_then(|s| s.access_log),
        };
        sampling.is_some_and(|a| a.sample(header))
    }

    /// The error for a request none of whose endpoints accepted a connection.
    fn connect_failure(&self, d: &Decision, tried: usize, last: &str) -> ProxyError {
        match (&self.side, &d.dest) {
            (Side::Outbound { .. }, Dest::Balanced(t)) => fallback_or(
                d.route.as_deref(),
                ProxyError::new(
                    Reason::ConnectFailed,
                    format!(
                        "could not connect to any of {tried} endpoint(s) of {} tried; last error: {last}",
                        t.service
                    ),
                ),
            ),
            (Side::Outbound { .. }, Dest::Fixed(u)) => ProxyError::new(
                Reason::ConnectFailed,
                format!(
                    "could not connect to the original destination {}: {last}",
                    u.addr()
                ),
            ),
            _ => ProxyError::new(
                Reason::AppUnavailable,
                format!("the local app is not accepting connections: {last}"),
            ),
        }
    }

    /// The error for a request an endpoint failed after it was sent.
    fn upstream_failure(&self, upstream: &Upstream, e: &dyn std::fmt::Display) -> ProxyError {
        match self.side {
            Side::Outbound { .. } => ProxyError::new(
                Reason::UpstreamError,
                format!("endpoint {}: {e}", upstream.addr()),
            ),
            Side::Inbound { .. } => ProxyError::new(
                Reason::UpstreamError,
                format!("the local app failed the request: {e}"),
            ),
        }
    }

    /// The error for an attempt whose own timeout passed, with no retry left to make.
    fn per_try_timeout(&self, detail: &str) -> ProxyError {
        ProxyError::new(Reason::Timeout, detail.to_owned())
    }

    /// The error for a request whose route deadline passed before its response head.
    fn timeout(&self, d: &Decision, t: Duration) -> ProxyError {
        let name = match (&d.service, &self.side) {
            (Some(s), _) => &*s.name,
            (None, Side::Outbound { .. }) => "the original destination",
            (None, Side::Inbound { .. }) => "the app",
        };
        ProxyError::new(
            Reason::Timeout,
            format!("no response from {name} within the route's {t:?} timeout"),
        )
    }
}

/// The wire protocol towards an endpoint of a destination whose protocol is `protocol`, for a
/// client that speaks HTTP/2 or gRPC when `wants_h2`.
fn wire_to(protocol: Protocol, wants_h2: bool, to_sidecar: bool) -> Wire {
    // To a peer sidecar the request keeps the client's protocol (HTTP/1.1 stays HTTP/1.1 over
    // a pooled keep-alive connection): see ARCHITECTURE.md, "Between sidecars", for why
    // HTTP/1.1 is not upgraded to HTTP/2 on that hop. Elsewhere the destination's protocol
    // decides, and `auto` means the client's.
    let protocol = if to_sidecar { Protocol::Auto } else { protocol };
    match protocol {
        Protocol::Http => Wire::Http1,
        Protocol::Http2 | Protocol::Grpc => Wire::Http2,
        Protocol::Auto | Protocol::Tcp if wants_h2 => Wire::Http2,
        Protocol::Auto | Protocol::Tcp => Wire::Http1,
    }
}

/// The caller's deadline: `ferrule-deadline` (milliseconds left, set by the caller's sidecar
/// or by the app) or, for gRPC, `grpc-timeout`; the sooner of the two.
fn incoming_deadline<H: HeadView + ?Sized>(head: &H) -> Option<Duration> {
    let ours = head.header(h::DEADLINE.as_str()).and_then(parse_millis);
    let grpc = if head.is_grpc() {
        head.header("grpc-timeout").and_then(parse_grpc_timeout)
    } else {
        None
    };
    match (ours, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_millis(v: &[u8]) -> Option<Duration> {
    if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

/// `grpc-timeout`: at most 8 digits and a unit (gRPC over HTTP/2, "Requests").
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The hash of the request's key, when its destination balances on a ring.
fn request_key<H: HeadView + ?Sized>(target: &Target, ctx: &ConnCtx, head: &H) -> Option<u64> {
    if target.balancer.kind() != LoadBalancer::RingHash {
        return None;
    }
    match target.policy.hash_key.as_ref()? {
        HashKey::Header(name) => head.header(name).map(hash_key),
        HashKey::Cookie(name) => head.cookie(name).map(hash_key),
        HashKey::SourceIp(_) => Some(match ctx.peer.ip() {
            std::net::IpAddr::V4(ip) => hash_key(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
    }
}

/// The route's fallback response in place of `e`, if the route has one: served when no
/// endpoint could take the request (none, none accepting a connection, the breaker full). It
/// carries `ferrule-error: fallback`, so it is never taken for the app's own answer.
fn fallback_or(route: Option<&RouteTable>, e: ProxyError) -> ProxyError {
    match route.and_then(|r| r.fallback.as_ref()) {
        Some(fb) => ProxyError::custom(
            Reason::Fallback,
            format!("the route's fallback response, instead of {e}"),
            fb.clone(),
        ),
        None => e,
    }
}

#[cfg(test)]
mod tests;
