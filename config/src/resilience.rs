//! The resilience policy: retries and their budget, timeouts, circuit breaking, outlier
//! ejection, locality, rate limits, fault injection, fallbacks and mirroring.
//!
//! Every part has a safe default, so a service with no policy at all still gets a bounded
//! concurrency, a retry budget, retries only where they cannot duplicate work, and ejection of
//! failing endpoints. Per destination (`trafficPolicy`):
//!
//! ```yaml
//! trafficPolicy:
//!   loadBalancer: peak_ewma        # or least_request, round_robin, random, ring_hash
//!   hashKey: { header: x-user }    # ring_hash only (and required there): or cookie, sourceIp
//!   connectTimeout: 1s
//!   locality: { enabled: true, failoverBelow: 70 }   # % of the local zone's endpoints healthy
//!   circuitBreaker: { maxRequests: 1024, maxPending: 256, queueTimeout: 1s }
//!   outlierDetection:
//!     consecutiveFailures: 5
//!     failurePercent: 50           # over at least minRequests in one interval
//!     minRequests: 20
//!     interval: 10s
//!     baseEjectionTime: 10s        # doubles with each ejection in a row, up to maxEjectionTime
//!     maxEjectionTime: 5m
//!     maxEjectedPercent: 50        # beyond this the balancer uses every endpoint (panic)
//!   retryBudget: { percent: 20, minPerSecond: 10, window: 10s }
//! ```
//!
//! Per route:
//!
//! ```yaml
//! timeout: 2s                      # the whole request, every retry included
//! idleTimeout: 5m                  # a stream with no bytes either way for this long is reset
//! retries:
//!   attempts: 3                    # in all, the first one included
//!   on: [connect-failure, refused-stream, reset, gateway-error, unavailable]
//!   statusCodes: [409]             # also retry these statuses
//!   perTryTimeout: 500ms
//!   backoff: { base: 25ms, max: 250ms }
//!   nonIdempotent: false           # true: retry POST and PATCH too
//! fallback: { status: 503, headers: { content-type: application/json }, body: '{"items":[]}' }
//! faults:
//!   delay: { fixed: 100ms, percent: 20 }
//!   abort: { httpStatus: 503, percent: 10 }  # or grpcStatus: 14
//!   allowHeader: true              # `ferrule-fault: delay|abort` forces one for a request
//! rateLimit:
//!   requestsPerSecond: 100
//!   burst: 20
//!   key: { clientIdentity: true }  # or header: x-tenant; absent: one bucket for the route
//!   shadow: false                  # true: count "would limit", let it through
//!   side: inbound                  # inbound (the callee's sidecars) or outbound (each caller's)
//! mirror: { service: echo-shadow, percent: 10 }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{join, Diag, Obj};
use crate::duration;

/// A serde adapter for a `Duration` written as a duration string.
pub(crate) mod dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::duration::format(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        crate::duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Reads an optional duration within `min..=max`.
fn duration_in(
    o: &mut Obj<'_>,
    key: &'static str,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, ()> {
    let d = o.diag();
    match o.str(key) {
        Some((s, path)) => match duration::parse(&s) {
            Ok(t) if t < min || t > max => {
                d.err(
                    &path,
                    format!(
                        "must be between {} and {}",
                        duration::format(min),
                        duration::format(max)
                    ),
                );
                Err(())
            }
            Ok(t) => Ok(Some(t)),
            Err(msg) => {
                d.err(&path, msg);
                Err(())
            }
        },
        None if o.has(key) => Err(()),
        None => Ok(None),
    }
}

/// Reads an optional integer within `range`; `Err` when present and bad.
fn uint_in(
    o: &mut Obj<'_>,
    key: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ()> {
    if !o.has(key) {
        o.field(key);
        return Ok(None);
    }
    o.uint(key, range).map(Some).ok_or(())
}

/// Reads an optional boolean; `Err` when present and not a boolean.
fn bool_opt(o: &mut Obj<'_>, key: &'static str) -> Result<Option<bool>, ()> {
    if !o.has(key) {
        o.field(key);
        return Ok(None);
    }
    o.bool(key).map(Some).ok_or(())
}

// ---------------------------------------------------------------------------------------------
// Per destination
// ---------------------------------------------------------------------------------------------

/// Prefer endpoints in the caller's zone while enough of them are healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct Locality {
    /// Whether zones matter at all (they do only when the caller knows its zone).
    pub enabled: bool,
    /// Below this percentage of the local zone's endpoints healthy, spread over every zone.
    pub failover_below: u32,
}

impl Default for Locality {
    fn default() -> Self {
        Locality {
            enabled: true,
            failover_below: 70,
        }
    }
}

/// Per-destination concurrency limit with a bounded queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct CircuitBreaker {
    /// Requests in flight to the destination from one sidecar.
    pub max_requests: u32,
    /// Requests waiting for a slot; beyond it, an immediate 503 `overloaded`.
    pub max_pending: u32,
    /// How long a request waits for a slot before 503 `overloaded`.
    #[serde(with = "dur")]
    pub queue_timeout: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        // Finite, unlike Istio's 2^32: far above what one sidecar's app should have in flight
        // to one destination, low enough that a stuck destination cannot take every socket.
        CircuitBreaker {
            max_requests: 1024,
            max_pending: 256,
            queue_timeout: ms(1000),
        }
    }
}

/// When an endpoint is taken out of the balancer for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint (0: never on this count).
    pub consecutive_failures: u32,
    /// Failure percentage over one interval that ejects an endpoint (0: never on the rate).
    pub failure_percent: u32,
    /// Fewest requests in an interval for the percentage to count.
    pub min_requests: u32,
    /// The interval the failure percentage is measured over.
    #[serde(with = "dur")]
    pub interval: Duration,
    /// First ejection's length; each ejection in a row doubles it.
    #[serde(with = "dur")]
    pub base_ejection_time: Duration,
    /// Longest ejection.
    #[serde(with = "dur")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percentage; beyond it every endpoint is used.
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            failure_percent: 50,
            min_requests: 20,
            interval: ms(10_000),
            base_ejection_time: ms(10_000),
            max_ejection_time: ms(300_000),
            max_ejected_percent: 50,
        }
    }
}

/// How many retries a destination may get, relative to its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct RetryBudget {
    /// Retries as a percentage of requests over the window.
    pub percent: u32,
    /// Retries per second allowed whatever the request rate.
    pub min_per_second: u32,
    /// The window requests and retries are counted over.
    #[serde(with = "dur")]
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20,
            min_per_second: 10,
            window: ms(10_000),
        }
    }
}

/// What a ring-hash balancer hashes to keep a client on one endpoint. Written as
/// `{header: name}`, `{cookie: name}` or `{sourceIp: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// The value of this request header (lower case).
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The caller's IP address (the connection's peer; always `true`).
    SourceIp(bool),
}

/// The resilience part of a destination's traffic policy (the load balancer is beside it in
/// [`crate::TrafficPolicy`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct Destination {
    /// How long a connection to an endpoint may take.
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    /// Zone preference.
    #[serde(default, skip_serializing_if = "is_default")]
    pub locality: Locality,
    /// Concurrency limit and queue.
    #[serde(default, skip_serializing_if = "is_default")]
    pub circuit_breaker: CircuitBreaker,
    /// Endpoint ejection.
    #[serde(default, skip_serializing_if = "is_default")]
    pub outlier_detection: OutlierDetection,
    /// The retry budget.
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry_budget: RetryBudget,
    /// What `ring_hash` hashes (required with it, refused with any other balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
}

impl Default for Destination {
    fn default() -> Self {
        Destination {
            connect_timeout: ms(1000),
            locality: Locality::default(),
            circuit_breaker: CircuitBreaker::default(),
            outlier_detection: OutlierDetection::default(),
            retry_budget: RetryBudget::default(),
            hash_key: None,
        }
    }
}

/// Decodes the resilience fields of a `trafficPolicy` mapping (the caller reads the rest and
/// finishes the mapping).
pub(crate) fn decode_destination(o: &mut Obj<'_>) -> Option<Destination> {
    let d = o.diag();
    let mut dest = Destination::default();
    let mut ok = true;
    match duration_in(o, "connectTimeout", ms(1), ms(60_000)) {
        Ok(Some(t)) => dest.connect_timeout = t,
        Ok(None) => {}
        Err(()) => ok = false,
    }
    let mut sub = |o: &mut Obj<'_>, key: &'static str, f: &mut dyn FnMut(&mut Obj<'_>) -> bool| {
        if let Some((v, path)) = o.field(key) {
            let mut so = Obj::new(d, path, v);
            let good = f(&mut so);
            so.finish();
            ok &= good && matches!(v, Value::Object(_));
        }
    };
    sub(o, "locality", &mut |so| {
        let l = &mut dest.locality;
        let mut good = true;
        match bool_opt(so, "enabled") {
            Ok(v) => l.enabled = v.unwrap_or(l.enabled),
            Err(()) => good = false,
        }
        match uint_in(so, "failoverBelow", 0..=100) {
            Ok(v) => l.failover_below = v.map_or(l.failover_below, |v| v as u32),
            Err(()) => good = false,
        }
        good
    });
    sub(o, "circuitBreaker", &mut |so| {
        let c = &mut dest.circuit_breaker;
        let mut good = true;
        match uint_in(so, "maxRequests", 1..=1_000_000) {
            Ok(v) => c.max_requests = v.map_or(c.max_requests, |v| v as u32),
            Err(()) => good = false,
        }
        match uint_in(so, "maxPending", 0..=1_000_000) {
            Ok(v) => c.max_pending = v.map_or(c.max_pending, |v| v as u32),
            Err(()) => good = false,
        }
        match duration_in(so, "queueTimeout", ms(1), ms(60_000)) {
            Ok(v) => c.queue_timeout = v.unwrap_or(c.queue_timeout),
            Err(()) => good = false,
        }
        good
    });
    sub(o, "outlierDetection", &mut |so| {
        let x = &mut dest.outlier_detection;
        let mut good = true;
        let mut u = |so: &mut Obj<'_>, key, range, slot: &mut u32| match uint_in(so, key, range) {
            Ok(v) => *slot = v.map_or(*slot, |v| v as u32),
            Err(()) => good = false,
        };
        u(
            so,
            "consecutiveFailures",
            0..=1000,
            &mut x.consecutive_failures,
        );
        u(so, "failurePercent", 0..=100, &mut x.failure_percent);
        u(so, "minRequests", 1..=1_000_000, &mut x.min_requests);
        u(so, "maxEjectedPercent", 0..=100, &mut x.max_ejected_percent);
        let mut times_good = true;
        let mut t = |so: &mut Obj<'_>, key, slot: &mut Duration| match duration_in(
            so,
            key,
            ms(10),
            ms(3_600_000),
        ) {
            Ok(v) => *slot = v.unwrap_or(*slot),
            Err(()) => times_good = false,
        };
        t(so, "interval", &mut x.interval);
        t(so, "baseEjectionTime", &mut x.base_ejection_time);
        t(so, "maxEjectionTime", &mut x.max_ejection_time);
        good &= times_good;
        if times_good && x.max_ejection_time < x.base_ejection_time {
            d.err(
                &join(&so.path, "maxEjectionTime"),
                "must not be shorter than baseEjectionTime",
            );
            good = false;
        }
        good
    });
    sub(o, "retryBudget", &mut |so| {
        let b = &mut dest.retry_budget;
        let mut good = true;
        match uint_in(so, "percent", 0..=1000) {
            Ok(v) => b.percent = v.map_or(b.percent, |v| v as u32),
            Err(()) => good = false,
        }
        match uint_in(so, "minPerSecond", 0..=100_000) {
            Ok(v) => b.min_per_second = v.map_or(b.min_per_second, |v| v as u32),
            Err(()) => good = false,
        }
        match duration_in(so, "window", ms(1000), ms(600_000)) {
            Ok(v) => b.window = v.unwrap_or(b.window),
            Err(()) => good = false,
        }
        good
    });
    if let Some((v, path)) = o.field("hashKey") {
        {
            let mut k = Obj::new(d, path, v);
            let header = k.str("header");
            let cookie = k.str("cookie");
            let source_ip = k.bool("sourceIp");
            let key = match (header, cookie, source_ip) {
                (Some((h, p)), None, None) => {
                    if crate::names::check_header_name(&h) {
                        Some(HashKey::Header(h))
                    } else {
                        d.err(&p, "is not a valid lower-case header name");
                        None
                    }
                }
                (None, Some((c, p)), None) => {
                    // A cookie name is an RFC 6265 token; case matters, unlike a header's.
                    let token =
                        |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                    if !c.is_empty() && c.bytes().all(token) {
                        Some(HashKey::Cookie(c))
                    } else {
                        d.err(&p, "is not a valid cookie name");
                        None
                    }
                }
                (None, None, Some(true)) => Some(HashKey::SourceIp(true)),
                _ => {
                    d.err(
                        &k.path,
                        "needs exactly one of header, cookie, sourceIp: true",
                    );
                    None
                }
            };
            k.finish();
            ok &= key.is_some();
            dest.hash_key = key;
        }
    }
    ok.then_some(dest)
}

// ---------------------------------------------------------------------------------------------
// Per route
// ---------------------------------------------------------------------------------------------

/// A failure a retry policy may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// No connection could be made (the request never left).
    ConnectFailure,
    /// An HTTP/2 stream refused with REFUSED_STREAM (never processed).
    RefusedStream,
    /// The connection or stream was reset before a response head.
    Reset,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503 or 504.
    GatewayError,
    /// gRPC status UNAVAILABLE (14).
    Unavailable,
    /// gRPC status CANCELLED (1).
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// gRPC status RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
}

impl RetryOn {
    const ALL: [(&'static str, RetryOn); 9] = [
        ("connect-failure", RetryOn::ConnectFailure),
        ("refused-stream", RetryOn::RefusedStream),
        ("reset", RetryOn::Reset),
        ("5xx", RetryOn::Status5xx),
        ("gateway-error", RetryOn::GatewayError),
        ("unavailable", RetryOn::Unavailable),
        ("cancelled", RetryOn::Cancelled),
        ("deadline-exceeded", RetryOn::DeadlineExceeded),
        ("resource-exhausted", RetryOn::ResourceExhausted),
    ];

    fn parse(s: &str) -> Option<RetryOn> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, r)| *r)
    }
}

/// Jittered exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct Backoff {
    /// The first retry waits up to this (full jitter), each next one up to twice as long.
    #[serde(with = "dur")]
    pub base: Duration,
    /// The longest wait.
    #[serde(with = "dur")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: ms(25),
            max: ms(250),
        }
    }
}

/// When and how often a route's requests are tried again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retries).
    pub attempts: u32,
    /// Failures that are retried.
    pub on: Vec<RetryOn>,
    /// Statuses retried besides those `on` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// Deadline of each attempt (the route's `timeout` still bounds them all).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Wait between attempts.
    #[serde(default, skip_serializing_if = "is_default")]
    pub backoff: Backoff,
    /// Retry requests that are not idempotent (POST, PATCH) after they may have reached the
    /// app. Failures where the request never reached it are retried regardless.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Reset,
                RetryOn::GatewayError,
                RetryOn::Unavailable,
            ],
            status_codes: Vec::new(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            non_idempotent: false,
        }
    }
}

/// A response the proxy serves itself when no endpoint can take the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Its status.
    pub status: u16,
    /// Its headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Its body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// A delay added to a share of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelayFault {
    /// How long.
    #[serde(with = "dur")]
    pub fixed: Duration,
    /// Share of requests, in percent.
    pub percent: u32,
}

/// An error answered instead of forwarding, for a share of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortFault {
    /// The HTTP status (for gRPC requests too, unless `grpcStatus` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The gRPC status for gRPC requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of requests, in percent.
    pub percent: u32,
}

/// Faults injected on a route, for chaos testing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct Faults {
    /// A delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    /// An abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
    /// A request with `ferrule-fault: delay` or `abort` gets that fault whatever the share.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_header: bool,
}

/// What a rate limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateKey {
    /// One bucket per calling identity (plaintext callers share one).
    ClientIdentity(bool),
    /// One bucket per value of this header (requests without it share one).
    Header(String),
}

/// Which sidecars enforce a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The callee's sidecars, for requests they receive.
    #[default]
    Inbound,
    /// Each caller's sidecar, for requests it sends.
    Outbound,
}

/// A token bucket over a route's requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// Separate buckets per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateKey>,
    /// Count what would be limited without limiting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Where it is enforced.
    #[serde(default, skip_serializing_if = "is_default")]
    pub side: Side,
}

/// Copies of a share of requests sent to another service, responses discarded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// The shadow service.
    pub service: String,
    /// Share of requests, in percent.
    pub percent: u32,
}

/// The resilience part of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct RouteResilience {
    /// A stream idle (no bytes either way) this long is reset; unary requests are bounded by
    /// the route's timeout instead.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub idle_timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub retries: RetryPolicy,
    /// The response when no endpoint can take a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Injected faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,
    /// Rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Traffic mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// Decodes the resilience fields of a route mapping (the caller reads the rest and finishes).
pub(crate) fn decode_route(o: &mut Obj<'_>) -> Option<RouteResilience> {
    let d = o.diag();
    let mut r = RouteResilience::default();
    let mut ok = true;
    match duration_in(o, "idleTimeout", ms(1), ms(24 * 3_600_000)) {
        Ok(v) => r.idle_timeout = v,
        Err(()) => ok = false,
    }
    if let Some((v, path)) = o.field("retries") {
        match decode_retries(d, path, v) {
            Some(p) => r.retries = p,
            None => ok = false,
        }
    }
    if let Some((v, path)) = o.field("fallback") {
        r.fallback = decode_fallback(d, path, v);
        ok &= r.fallback.is_some();
    }
    if let Some((v, path)) = o.field("faults") {
        r.faults = decode_faults(d, path, v);
        ok &= r.faults.is_some();
    }
    if let Some((v, path)) = o.field("rateLimit") {
        r.rate_limit = decode_rate_limit(d, path, v);
        ok &= r.rate_limit.is_some();
    }
    if let Some((v, path)) = o.field("mirror") {
        r.mirror = decode_mirror(d, path, v);
        ok &= r.mirror.is_some();
    }
    ok.then_some(r)
}

fn decode_retries(d: &Diag, path: String, v: &Value) -> Option<RetryPolicy> {
    let mut o = Obj::new(d, path, v);
    let mut p = RetryPolicy::default();
    let mut ok = matches!(v, Value::Object(_));
    match uint_in(&mut o, "attempts", 1..=10) {
        Ok(v) => p.attempts = v.map_or(p.attempts, |v| v as u32),
        Err(()) => ok = false,
    }
    if o.has("on") {
        let mut on = Vec::new();
        for (v, path) in o.list("on") {
            match v.as_str().and_then(RetryOn::parse) {
                Some(r) if !on.contains(&r) => on.push(r),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = RetryOn::ALL.iter().map(|(n, _)| *n).collect();
                    d.err(
                        &path,
                        format!(
                            "unknown condition {v} (expected one of: {})",
                            names.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        p.on = on;
    } else {
        o.field("on");
    }
    for (v, path) in o.list("statusCodes") {
        match v.as_u64().filter(|s| (100..=599).contains(s)) {
            Some(s) => p.status_codes.push(s as u16),
            None => {
                d.err(
                    &path,
                    format!("must be an HTTP status (100-599), found {v}"),
                );
                ok = false;
            }
        }
    }
    match duration_in(&mut o, "perTryTimeout", ms(1), ms(3_600_000)) {
        Ok(v) => p.per_try_timeout = v,
        Err(()) => ok = false,
    }
    if let Some((v, path)) = o.field("backoff") {
        let mut b = Obj::new(d, path, v);
        let mut good = matches!(v, Value::Object(_));
        match duration_in(&mut b, "base", ms(1), ms(60_000)) {
            Ok(v) => p.backoff.base = v.unwrap_or(p.backoff.base),
            Err(()) => good = false,
        }
        match duration_in(&mut b, "max", ms(1), ms(60_000)) {
            Ok(v) => p.backoff.max = v.unwrap_or(p.backoff.max),
            Err(()) => good = false,
        }
        if good && p.backoff.max < p.backoff.base {
            d.err(&join(&b.path, "max"), "must not be shorter than base");
            good = false;
        }
        ok &= good;
        b.finish();
    }
    match bool_opt(&mut o, "nonIdempotent") {
        Ok(v) => p.non_idempotent = v.unwrap_or(false),
        Err(()) => ok = false,
    }
    o.finish();
    ok.then_some(p)
}

/// The largest fallback response body a route may declare.
pub const MAX_FALLBACK_BODY: usize = 64 * 1024;

fn decode_fallback(d: &Diag, path: String, v: &Value) -> Option<Fallback> {
    let mut o = Obj::new(d, path, v);
    let mut ok = matches!(v, Value::Object(_));
    let status = if o.has("status") {
        o.uint("status", 200..=599).map(|s| s as u16)
    } else {
        o.field("status");
        o.missing("status");
        None
    };
    let headers = o.str_map("headers").unwrap_or_default();
    let hpath = join(&o.path, "headers");
    for (k, v) in &headers {
        if !crate::names::check_header_name(k) {
            d.err(&join(&hpath, k), "is not a valid lower-case header name");
            ok = false;
        } else if crate::names::is_connection_header(k) {
            d.err(&join(&hpath, k), "is set by the proxy and cannot be given");
            ok = false;
        }
        if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            d.err(&join(&hpath, k), "value has control characters");
            ok = false;
        }
    }
    let body = o
        .text("body", MAX_FALLBACK_BODY)
        .map(|(b, _)| b)
        .unwrap_or_default();
    if body.len() > 64 * 1024 {
        d.err(&join(&o.path, "body"), "must be at most 64 KiB");
        ok = false;
    }
    o.finish();
    let status = status?;
    ok.then_some(Fallback {
        status,
        headers,
        body,
    })
}

fn decode_faults(d: &Diag, path: String, v: &Value) -> Option<Faults> {
    let mut o = Obj::new(d, path, v);
    let mut ok = matches!(v, Value::Object(_));
    let mut f = Faults::default();
    if let Some((v, path)) = o.field("delay") {
        let mut x = Obj::new(d, path, v);
        let fixed = match duration_in(&mut x, "fixed", ms(1), ms(3_600_000)) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                x.missing("fixed");
                None
            }
            Err(()) => None,
        };
        let percent = uint_in(&mut x, "percent", 0..=100);
        x.finish();
        match (fixed, percent) {
            (Some(fixed), Ok(p)) => {
                f.delay = Some(DelayFault {
                    fixed,
                    percent: p.unwrap_or(100) as u32,
                })
            }
            _ => ok = false,
        }
    }
    if let Some((v, path)) = o.field("abort") {
        let mut x = Obj::new(d, path, v);
        let http = uint_in(&mut x, "httpStatus", 200..=599);
        let grpc = uint_in(&mut x, "grpcStatus", 1..=16);
        let percent = uint_in(&mut x, "percent", 0..=100);
        if matches!((&http, &grpc), (Ok(None), Ok(None))) {
            d.err(&x.path, "needs httpStatus, grpcStatus or both");
            ok = false;
        }
        x.finish();
        match (http, grpc, percent) {
            (Ok(h), Ok(g), Ok(p)) => {
                f.abort = Some(AbortFault {
                    http_status: h.map(|s| s as u16),
                    grpc_status: g.map(|s| s as u32),
                    percent: p.unwrap_or(100) as u32,
                })
            }
            _ => ok = false,
        }
    }
    match bool_opt(&mut o, "allowHeader") {
        Ok(v) => f.allow_header = v.unwrap_or(false),
        Err(()) => ok = false,
    }
    o.finish();
    ok.then_some(f)
}

fn decode_rate_limit(d: &Diag, path: String, v: &Value) -> Option<RateLimit> {
    let mut o = Obj::new(d, path, v);
    let mut ok = matches!(v, Value::Object(_));
    let rps = if o.has("requestsPerSecond") {
        o.uint("requestsPerSecond", 1..=1_000_000).map(|n| n as u32)
    } else {
        o.field("requestsPerSecond");
        o.missing("requestsPerSecond");
        None
    };
    let burst = match uint_in(&mut o, "burst", 1..=1_000_000) {
        Ok(b) => b.map(|b| b as u32),
        Err(()) => {
            ok = false;
            None
        }
    };
    let key = match o.field("key") {
        Some((v, path)) => {
            let mut k = Obj::new(d, path, v);
            let header = k.str("header");
            let ident = k.bool("clientIdentity");
            let key = match (header, ident) {
                (Some((h, p)), None) => {
                    if crate::names::check_header_name(&h) {
                        Some(RateKey::Header(h))
                    } else {
                        d.err(&p, "is not a valid lower-case header name");
                        None
                    }
                }
                (None, Some(true)) => Some(RateKey::ClientIdentity(true)),
                _ => {
                    d.err(&k.path, "needs exactly one of header, clientIdentity: true");
                    None
                }
            };
            k.finish();
            ok &= key.is_some();
            key
        }
        None => None,
    };
    let shadow = match bool_opt(&mut o, "shadow") {
        Ok(v) => v.unwrap_or(false),
        Err(()) => {
            ok = false;
            false
        }
    };
    let side = match o.str("side") {
        Some((s, p)) => match s.as_str() {
            "inbound" => Side::Inbound,
            "outbound" => Side::Outbound,
            _ => {
                d.err(
                    &p,
                    format!("unknown side {s:?} (expected inbound or outbound)"),
                );
                ok = false;
                Side::Inbound
            }
        },
        None => Side::Inbound,
    };
    o.finish();
    let rps = rps?;
    ok.then_some(RateLimit {
        requests_per_second: rps,
        // A bucket of one second's worth by default.
        burst: burst.unwrap_or(rps),
        key,
        shadow,
        side,
    })
}

fn decode_mirror(d: &Diag, path: String, v: &Value) -> Option<Mirror> {
    let mut o = Obj::new(d, path, v);
    let service = match o.req_str("service") {
        Some((s, p)) => match crate::names::check_name(&s) {
            Ok(()) => Some(s),
            Err(msg) => {
                d.err(&p, msg);
                None
            }
        },
        None => None,
    };
    let percent = match uint_in(&mut o, "percent", 0..=100) {
        Ok(p) => Some(p.unwrap_or(100) as u32),
        Err(()) => None,
    };
    o.finish();
    Some(Mirror {
        service: service?,
        percent: percent?,
    })
}
