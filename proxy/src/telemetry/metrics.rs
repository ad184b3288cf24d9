//! Prometheus metrics of the sidecar, served as text on the admin `/metrics`. The registry
//! also carries the finish step's two other outlets, the access-log queue ([`access::Sink`])
//! and the ring of recent failures ([`Recent`]), because everything that records a request
//! already holds it.
//!
//! Label values are bounded: `service` is a service from the snapshot or `unknown` (never the
//! raw Host header, which a client controls), `status` is a status code and `error` one of
//! the fixed reason codes. Handles for a service's request counter and latency histogram are
//! resolved when a snapshot is compiled, so the request path does not hash label sets for them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::access;
use super::recent::Recent;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, to another service.
    Outbound,
    /// From a peer, to the local app.
    Inbound,
}

impl Direction {
    /// The name used in labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Which codec carried a request: the fast path's in-place HTTP/1.1, hyper's HTTP/1.1 server,
/// or the HTTP/2 server. Tests read it to prove that a request took the path they meant.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1 passed through in place (`pipeline::fast`).
    Fast,
    /// hyper's HTTP/1.1 server.
    Http1,
    /// The HTTP/2 server (`codec::h2server`).
    Http2,
}

impl Codec {
    const ALL: [Codec; 3] = [Codec::Fast, Codec::Http1, Codec::Http2];

    /// The name used in labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Fast => "fast",
            Codec::Http1 => "http1",
            Codec::Http2 => "http2",
        }
    }
}

impl EncodeLabelValue for Codec {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodecLabels {
    direction: Direction,
    codec: Codec,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    direction: Direction,
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    direction: Direction,
    service: String,
    status: u16,
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: Direction,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    direction: Direction,
    service: String,
    condition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    service: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    service: String,
}

/// Handles of one destination's balancer metrics (resolved at snapshot compile time). The
/// default handles are registered nowhere (for balancers built outside a snapshot, in tests).
#[derive(Debug, Clone, Default)]
pub struct LbMetrics {
    /// Ejections for consecutive failures.
    pub ejected_consecutive: Counter,
    /// Ejections for the failure rate.
    pub ejected_rate: Counter,
    /// Picks made in panic mode.
    pub panic: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    service: String,
    /// The label subset, `k=v,k=v` (empty for the whole service).
    subset: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    direction: Direction,
    service: String,
    kind: &'static str,
}

/// Handles of one shadow service's mirroring counters (resolved at snapshot compile time; the
/// default handles are registered nowhere, for unit tests).
#[derive(Debug, Clone, Default)]
pub struct MirrorMetrics {
    /// Copies handed to an endpoint of the shadow service.
    pub sent: Counter,
    /// Copies answered below 500, their response body read to its end.
    pub succeeded: Counter,
    /// Copies that got no such answer: no endpoint, connect failure, error, 5xx, timeout.
    pub failed: Counter,
    /// Copies not made because the shadow service had its cap of copies in flight.
    pub dropped_busy: Counter,
    /// Copies not made because the request's body was not in hand (larger than the recording
    /// limit, or still arriving when the response head came).
    pub skipped_body: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolvedLabels {
    direction: Direction,
    resolved: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

/// Handles of one service's per-request metrics.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Requests received.
    pub requests: Counter,
    /// Time to response headers, seconds.
    pub latency: Histogram,
    /// `200` responses not made by the proxy: by far the most common label set, resolved once
    /// so the request path neither hashes labels nor takes the family's lock for it.
    ok: Counter,
    /// Requests by the codec that carried them, indexed by `Codec as usize`.
    carried: [Counter; 3],
    direction: Direction,
    service: String,
}

impl ServiceMetrics {
    /// The counter of requests this service's direction got over `codec`.
    pub fn carried(&self, codec: Codec) -> &Counter {
        &self.carried[codec as usize]
    }

    /// The service these handles count (`unknown` for hosts that name none).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The direction these handles count.
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

/// The sidecar's metric registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<ServiceLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    carried: Family<CodecLabels, Counter>,
    /// Version of the applied snapshot.
    pub snapshot_version: Gauge<u64, AtomicU64>,
    /// Snapshots refused.
    pub snapshot_nacks: Counter,
    /// Snapshots applied.
    pub snapshot_applies: Counter,
    /// Snapshots received on the push stream (applied or refused).
    pub snapshot_pushes: Counter,
    /// 1 while the push stream to the control plane is up.
    pub control_plane_connected: Gauge,
    /// 1 while the applied snapshot is the one persisted on disk (no control plane yet).
    pub snapshot_from_disk: Gauge,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    retries_refused: Family<RetryLabels, Counter>,
    authz: Family<DecisionLabels, Counter>,
    breaker_in_flight: Family<TargetLabels, Gauge>,
    breaker_waiting: Family<TargetLabels, Gauge>,
    rate_limited: Family<KindLabels, Counter>,
    faults: Family<KindLabels, Counter>,
    /// When the workload certificate expires (Unix seconds; 0 without one).
    pub cert_expiry: Gauge,
    /// Certificates obtained from the control plane (the first and every renewal).
    pub cert_issued: Counter,
    /// Failed attempts to obtain or renew the certificate.
    pub cert_failures: Counter,
    ejections: Family<EjectionLabels, Counter>,
    ejected: Family<DestinationLabels, Gauge>,
    lb_panic: Family<DestinationLabels, Counter>,
    original_dst: Family<ResolvedLabels, Counter>,
    mirror: Family<OutcomeLabels, Counter>,
    /// The access-log queue (its counters are registered here).
    pub access: access::Sink,
    /// The last proxy-made responses, for `/debug/requests`.
    pub recent: Recent,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrule");
        let requests = Family::<ServiceLabels, Counter>::default();
        let responses = Family::<ResponseLabels, Counter>::default();
        let latency = Family::<ServiceLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let carried = Family::<CodecLabels, Counter>::default();
        let snapshot_version = Gauge::<u64, AtomicU64>::default();
        let snapshot_nacks = Counter::default();
        let snapshot_applies = Counter::default();
        let snapshot_pushes = Counter::default();
        let access = access::Sink::default();
        let control_plane_connected = Gauge::default();
        let tls_handshakes = Family::<HandshakeLabels, Counter>::default();
        let authz = Family::<DecisionLabels, Counter>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let retries_refused = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Retries made, by destination service and the failure retried (connect-failure, refused-stream, reset, timeout, or the status class)",
            retries.clone(),
        );
        registry.register(
            "retries_refused_by_budget",
            "Retries the policy asked for but the destination's retry budget had no room for",
            retries_refused.clone(),
        );
        let cert_expiry = Gauge::default();
        let cert_issued = Counter::default();
        let cert_failures = Counter::default();
        let breaker_in_flight = Family::<TargetLabels, Gauge>::default();
        let breaker_waiting = Family::<TargetLabels, Gauge>::default();
        let rate_limited = Family::<KindLabels, Counter>::default();
        let faults = Family::<KindLabels, Counter>::default();
        registry.register(
            "breaker_in_flight",
            "Requests holding a slot of a destination's circuit breaker (service and subset)",
            breaker_in_flight.clone(),
        );
        registry.register(
            "breaker_queued",
            "Requests waiting for a slot of a destination's circuit breaker",
            breaker_waiting.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests over a route's rate limit, by mode: enforced (answered 429) or shadow (let through)",
            rate_limited.clone(),
        );
        registry.register(
            "faults_injected",
            "Faults injected by a route's policy, by kind: delay or abort",
            faults.clone(),
        );
        let ejections = Family::<EjectionLabels, Counter>::default();
        let ejected = Family::<DestinationLabels, Gauge>::default();
        let lb_panic = Family::<DestinationLabels, Counter>::default();
        // Labelled by service and reason only, never by endpoint address: a fleet's churn of
        // addresses would otherwise grow the series without bound (`/endpoints` has the rest).
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by destination service and reason",
            ejections.clone(),
        );
        registry.register(
            "endpoints_ejected",
            "Endpoints of a destination service ejected now (or waiting for their probe)",
            ejected.clone(),
        );
        registry.register(
            "lb_panic",
            "Picks made in panic mode: more endpoints unavailable than maxEjectedPercent, so every endpoint was used",
            lb_panic.clone(),
        );
        // Transparent interception (ARCHITECTURE.md, "Interception").
        let original_dst = Family::<ResolvedLabels, Counter>::default();
        registry.register(
            "original_dst_requests",
            "Requests of intercepted connections planned by their original destination: outbound service (a virtual or endpoint address), passthrough or refused (no service has it); inbound app",
            original_dst.clone(),
        );
        let mirror = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Mirrored copies of requests by shadow service and outcome: sent, succeeded, failed, dropped_busy (too many in flight), skipped_body (body not in hand)",
            mirror.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Mutual TLS handshakes by direction and result (ok, or why it failed)",
            tls_handshakes.clone(),
        );
        registry.register(
            "authz_decisions",
            "Inbound authorization decisions: allow, deny, audit_deny (denied in audit mode, let through)",
            authz.clone(),
        );
        registry.register(
            "identity_cert_expiry_timestamp_seconds",
            "When the workload certificate expires, Unix time (0 without one)",
            cert_expiry.clone(),
        );
        registry.register(
            "identity_certificates_issued",
            "Workload certificates obtained (first issue and renewals)",
            cert_issued.clone(),
        );
        registry.register(
            "identity_certificate_failures",
            "Failed attempts to obtain or renew the workload certificate",
            cert_failures.clone(),
        );
        registry.register("requests", "Requests received", requests.clone());
        registry.register(
            "responses",
            "Responses sent, by status and proxy error reason",
            responses.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from request received to response headers sent",
            latency.clone(),
        );
        registry.register(
            "requests_by_codec",
            "Requests by the codec that carried them: fast (HTTP/1.1 in place), http1 (hyper), http2",
            carried.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of the applied policy snapshot",
            snapshot_version.clone(),
        );
        registry.register(
            "snapshot_rejected",
            "Snapshots refused (NACKed)",
            snapshot_nacks.clone(),
        );
        registry.register(
            "snapshot_applied",
            "Snapshots applied",
            snapshot_applies.clone(),
        );
        registry.register(
            "snapshot_pushes_received",
            "Snapshots received on the push stream from the control plane, applied or refused",
            snapshot_pushes.clone(),
        );
        registry.register(
            "access_log_lines",
            "Access log lines queued for writing",
            access.lines.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind (never waited for)",
            access.dropped.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while the push stream to the control plane is up",
            control_plane_connected.clone(),
        );
        let snapshot_from_disk = Gauge::default();
        registry.register(
            "snapshot_from_disk",
            "1 while the applied snapshot is the one persisted on disk: the control plane has not answered since start",
            snapshot_from_disk.clone(),
        );
        Metrics {
            registry,
            requests,
            responses,
            latency,
            carried,
            snapshot_version,
            snapshot_nacks,
            snapshot_applies,
            snapshot_pushes,
            control_plane_connected,
            snapshot_from_disk,
            tls_handshakes,
            retries,
            retries_refused,
            authz,
            cert_expiry,
            cert_issued,
            cert_failures,
            ejections,
            ejected,
            lb_panic,
            original_dst,
            breaker_in_flight,
            breaker_waiting,
            rate_limited,
            faults,
            mirror,
            access,
            recent: Recent::default(),
        }
    }

    /// Resolves the mirroring counters of shadow service `service`.
    pub fn mirror(&self, service: &str) -> MirrorMetrics {
        let outcome = |outcome| {
            self.mirror
                .get_or_create(&OutcomeLabels {
                    service: service.to_owned(),
                    outcome,
                })
                .clone()
        };
        MirrorMetrics {
            sent: outcome("sent"),
            succeeded: outcome("succeeded"),
            failed: outcome("failed"),
            dropped_busy: outcome("dropped_busy"),
            skipped_body: outcome("skipped_body"),
        }
    }

    /// The gauges a destination's circuit breaker counts in (in flight, waiting): the
    /// breaker's counters are these gauges' atomics.
    pub fn breaker_gauges(&self, service: &str, subset: String) -> (Gauge, Gauge) {
        let labels = TargetLabels {
            service: service.to_owned(),
            subset,
        };
        (
            self.breaker_in_flight.get_or_create(&labels).clone(),
            self.breaker_waiting.get_or_create(&labels).clone(),
        )
    }

    /// The counter of requests over a route's rate limit (`mode`: `enforced` or `shadow`).
    pub fn rate_limited(&self, direction: Direction, service: &str, mode: &'static str) -> Counter {
        self.rate_limited
            .get_or_create(&KindLabels {
                direction,
                service: service.to_owned(),
                kind: mode,
            })
            .clone()
    }

    /// The counter of faults injected on a service's routes (`kind`: `delay` or `abort`).
    pub fn fault(&self, direction: Direction, service: &str, kind: &'static str) -> Counter {
        self.faults
            .get_or_create(&KindLabels {
                direction,
                service: service.to_owned(),
                kind,
            })
            .clone()
    }

    /// Resolves the balancer metric handles of destination `service`.
    pub fn lb(&self, service: &str) -> LbMetrics {
        let ejection = |reason| {
            self.ejections
                .get_or_create(&EjectionLabels {
                    service: service.to_owned(),
                    reason,
                })
                .clone()
        };
        LbMetrics {
            ejected_consecutive: ejection("consecutive-failures"),
            ejected_rate: ejection("failure-rate"),
            panic: self
                .lb_panic
                .get_or_create(&DestinationLabels {
                    service: service.to_owned(),
                })
                .clone(),
        }
    }

    /// Sets the ejected-endpoint gauges to `counts` (service, endpoints ejected), dropping
    /// services no longer listed. Computed when scraped, because an ejection ends by time,
    /// not by an event anything could count.
    pub fn set_ejected<'a>(&self, counts: impl IntoIterator<Item = (&'a str, i64)>) {
        self.ejected.clear();
        for (service, n) in counts {
            self.ejected
                .get_or_create(&DestinationLabels {
                    service: service.to_owned(),
                })
                .set(n);
        }
    }

    /// The counter of requests planned by their connection's original destination, resolved
    /// as `resolved` (resolved once, when a pipeline is made).
    pub fn original_dst(&self, direction: Direction, resolved: &'static str) -> Counter {
        self.original_dst
            .get_or_create(&ResolvedLabels {
                direction,
                resolved,
            })
            .clone()
    }

    /// Counts a TLS handshake (or a plaintext connection refused) on `direction`: `result`
    /// is `ok` or one of a few fixed failure names.
    pub fn handshake(&self, direction: Direction, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels { direction, result })
            .inc();
    }

    /// Counts a retry of a request to `svc` after a failure of kind `condition`; `made` is
    /// false when the retry budget refused it.
    pub fn retry(&self, svc: &ServiceMetrics, condition: &'static str, made: bool) {
        let labels = RetryLabels {
            direction: svc.direction,
            service: svc.service.clone(),
            condition,
        };
        let family = if made {
            &self.retries
        } else {
            &self.retries_refused
        };
        family.get_or_create(&labels).inc();
    }

    /// Counts an authorization decision: `allow`, `deny` or `audit_deny`.
    pub fn authz(&self, decision: &'static str) {
        self.authz.get_or_create(&DecisionLabels { decision }).inc();
    }

    /// Resolves the per-request handles of one service (done at snapshot compile time).
    pub fn service(&self, direction: Direction, service: &str) -> ServiceMetrics {
        let labels = ServiceLabels {
            direction,
            service: service.to_owned(),
        };
        let ok = self
            .responses
            .get_or_create(&ResponseLabels {
                direction,
                service: service.to_owned(),
                status: 200,
                error: "",
            })
            .clone();
        ServiceMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            ok,
            carried: Codec::ALL.map(|codec| {
                self.carried
                    .get_or_create(&CodecLabels { direction, codec })
                    .clone()
            }),
            direction,
            service: service.to_owned(),
        }
    }

    /// Counts one response.
    pub fn response(&self, svc: &ServiceMetrics, status: u16, error: &'static str) {
        if status == 200 && error.is_empty() {
            svc.ok.inc();
            return;
        }
        self.responses
            .get_or_create(&ResponseLabels {
                direction: svc.direction,
                service: svc.service.clone(),
                status,
                error,
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
