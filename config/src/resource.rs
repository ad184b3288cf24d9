//! The typed policy resources (`Service`, `Endpoint`) and the rules that make them valid.
//!
//! Each resource is decoded from a generic JSON value by [`crate::decode`], which checks every
//! field and reports all problems with their paths; serialising uses serde so that what
//! `ferrulectl get -o yaml` prints can be applied again unchanged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::Authorization;
use crate::decode::{Diag, Obj};
use crate::duration;

/// Application protocol a service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 (prior knowledge, h2c, in plaintext).
    Http2,
    /// gRPC: HTTP/2 with trailers.
    Grpc,
    /// Opaque TCP. Accepted in policy now; sidecars carry it once transparent interception
    /// lands (explicit mode only proxies HTTP).
    Tcp,
    /// The protocol of each request is kept as the client sent it.
    #[default]
    Auto,
}

impl Protocol {
    const NAMES: &'static str = "http, http2, grpc, tcp, auto";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "tcp" => Protocol::Tcp,
            "auto" => Protocol::Auto,
            _ => return None,
        })
    }
}

/// How requests are spread over a destination's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Each endpoint in turn, in proportion to its weight.
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight.
    LeastRequest,
    /// A random endpoint, in proportion to its weight.
    Random,
    /// Power of two choices on latency × load: of two random endpoints, the one whose peak
    /// EWMA of response time times (requests in flight + 1), over its weight, is lower. The
    /// default: it steers away from a slow endpoint before it fails, which counting requests
    /// alone notices only once they pile up.
    #[default]
    PeakEwma,
    /// Consistent hashing of the destination's `hashKey` onto a ring of endpoints, so a key
    /// stays on one endpoint while the endpoints change little.
    RingHash,
}

impl LoadBalancer {
    const NAMES: &'static str = "round_robin, least_request, random, peak_ewma, ring_hash";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round_robin" => LoadBalancer::RoundRobin,
            "least_request" | "p2c" => LoadBalancer::LeastRequest,
            "random" => LoadBalancer::Random,
            "peak_ewma" => LoadBalancer::PeakEwma,
            "ring_hash" => LoadBalancer::RingHash,
            _ => return None,
        })
    }

    /// The balancer's name in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::RoundRobin => "round_robin",
            LoadBalancer::LeastRequest => "least_request",
            LoadBalancer::Random => "random",
            LoadBalancer::PeakEwma => "peak_ewma",
            LoadBalancer::RingHash => "ring_hash",
        }
    }
}

/// What a service's sidecars accept from peers on their inbound listener.
///
/// Serialised as `mtls: {mode: strict}`, the shape the policy documents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    /// Mutual TLS only: plaintext connections are refused. The default, so that a service is
    /// never reachable around its authorization policy.
    #[default]
    Strict,
    /// Mutual TLS and plaintext both (while callers move into the mesh); plaintext callers
    /// have no identity, so identity rules never allow them.
    Permissive,
    /// No mutual TLS: callers connect in plaintext and the sidecar takes plaintext.
    Disabled,
}

impl MtlsMode {
    const NAMES: &'static str = "strict, permissive, disabled";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "strict" => MtlsMode::Strict,
            "permissive" => MtlsMode::Permissive,
            "disabled" => MtlsMode::Disabled,
            _ => return None,
        })
    }

    /// The mode's name in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
            MtlsMode::Disabled => "disabled",
        }
    }

    fn is_default(&self) -> bool {
        *self == MtlsMode::default()
    }
}

impl Serialize for MtlsMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("mode", self.as_str())?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for MtlsMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            mode: String,
        }
        let shape = Shape::deserialize(d)?;
        MtlsMode::parse(&shape.mode)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown mTLS mode {:?}", shape.mode)))
    }
}

/// Per-destination policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancer choice; peak-EWMA by default, which copes best with slow endpoints.
    pub load_balancer: LoadBalancer,
    /// Connect timeout, locality, circuit breaker, outlier detection, retry budget.
    #[serde(flatten)]
    pub resilience: crate::resilience::Destination,
}

/// A logical service that clients call by name (`http://echo/...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// DNS-style name; clients reach the service by using it as the host.
    pub name: String,
    /// Optimistic-concurrency revision assigned by the control plane (0 = never stored).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// Protocol the service's instances speak.
    pub protocol: Protocol,
    /// Routes, tried in order; the first that matches a request wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Load balancing and (later) connection limits, outlier detection.
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
    /// Whether this service's sidecars take plaintext from peers (see [`MtlsMode`]).
    #[serde(default, skip_serializing_if = "MtlsMode::is_default")]
    pub mtls: MtlsMode,
    /// Who may call this service; everyone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Virtual addresses (`IP:port`) that mean this service to an intercepting sidecar: an
    /// app that connects to one of them (a cluster IP its DNS gave it) reaches the service,
    /// whatever its `Host` says. Addresses are unique across the mesh's services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// Whether the requests to it are written to the access log; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<crate::access_log::AccessLog>,
}

/// One route of a service: which requests it takes and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Optional name, shown in metrics and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions a request must meet; an empty match takes every request.
    #[serde(default, rename = "match")]
    pub match_: RouteMatch,
    /// Weighted backends; none means every endpoint of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Deadline for the whole request (response headers) on this route.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub timeout: Option<Duration>,
    /// Retries, idle timeout, fallback, faults, rate limit, mirroring.
    #[serde(flatten)]
    pub resilience: crate::resilience::RouteResilience,
}

/// Request conditions of a route; every condition present must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// The path starts with this, on a segment boundary (`/v2` matches `/v2` and `/v2/x`, not `/v20`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The method equals this (upper case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Each header is present with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A weighted share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Service the share goes to; the route's own service when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Endpoints whose labels include all of these; every endpoint when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Relative weight, 0 to 100.
    pub weight: u32,
}

/// One instance of a service, either registered by its sidecar (with a lease) or through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Unique name of the instance.
    pub name: String,
    /// Optimistic-concurrency revision assigned by the control plane (0 = never stored).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// The service this is an instance of.
    pub service: String,
    /// Where to send traffic: the sidecar's inbound listener when `sidecar` is true.
    pub address: SocketAddr,
    /// Locality, for zone-aware balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Relative weight for load balancing, 1 to 1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Labels that route subsets select on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whether a Ferrule sidecar listens at `address` (then peers talk HTTP/2 to it).
    #[serde(default)]
    pub sidecar: bool,
    /// The SPIFFE ID the sidecar at `address` proves with its certificate. Peers connect to it
    /// with mutual TLS and refuse any other identity; without it they connect in plaintext.
    /// The control plane sets it for endpoints that sidecars register, from their certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn default_weight() -> u32 {
    1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Any resource kind, tagged by `kind:` in documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    /// A service.
    Service(Service),
    /// An instance of a service.
    Endpoint(Endpoint),
}

/// The kinds the API knows, with their collection names (`/v1/services`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `Service`
    Service,
    /// `Endpoint`
    Endpoint,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 2] = [Kind::Service, Kind::Endpoint];

    /// The `kind:` value, e.g. `Service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Endpoint => "Endpoint",
        }
    }

    /// The collection name in the API path, e.g. `services`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Endpoint => "endpoints",
        }
    }

    /// Accepts `Service`, `service`, `services`, `svc`, `Endpoint`, `endpoints`, `ep`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            "endpoint" | "endpoints" | "ep" => Some(Kind::Endpoint),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Endpoint(_) => Kind::Endpoint,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Service(s) => &s.name,
            Resource::Endpoint(e) => &e.name,
        }
    }

    /// The revision it was read at (0 if never stored).
    pub fn revision(&self) -> u64 {
        match self {
            Resource::Service(s) => s.revision,
            Resource::Endpoint(e) => e.revision,
        }
    }

    /// Sets the stored revision.
    pub fn set_revision(&mut self, rev: u64) {
        match self {
            Resource::Service(s) => s.revision = rev,
            Resource::Endpoint(e) => e.revision = rev,
        }
    }

    /// `Kind/name`, the label used in error messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// Decodes and validates one resource document, reporting every bad field.
    ///
    /// `expected` is the kind implied by the caller (an API path) when the document may omit
    /// `kind:`; `fallback_label` names the document in errors if it has no usable name.
    pub fn from_value(
        v: &Value,
        expected: Option<Kind>,
        fallback_label: &str,
    ) -> Result<Resource, Vec<crate::FieldError>> {
        let d = Diag::default();
        let mut o = Obj::new(&d, String::new(), v);
        let kind = match o.str("kind") {
            Some((k, path)) => match Kind::parse(&k) {
                Some(kind) if k == kind.as_str() => {
                    if let Some(exp) = expected.filter(|e| *e != kind) {
                        d.err(&path, format!("is {kind} but this API path takes {exp}"));
                    }
                    Some(kind)
                }
                _ => {
                    d.err(
                        &path,
                        format!("unknown kind {k:?} (expected Service or Endpoint)"),
                    );
                    None
                }
            },
            None if expected.is_some() => expected,
            None => {
                o.missing("kind");
                None
            }
        };
        let name = o.map_name().unwrap_or_else(|| fallback_label.to_string());
        let label = match kind {
            Some(k) => format!("{k}/{name}"),
            None => name,
        };
        let res = match kind {
            Some(Kind::Service) => decode_service(&mut o).map(Resource::Service),
            Some(Kind::Endpoint) => decode_endpoint(&mut o).map(Resource::Endpoint),
            None => None,
        };
        o.finish();
        match res {
            Some(r) if d.is_clean() => Ok(r),
            _ => Err(d.into_errors(&label)),
        }
    }
}

impl Obj<'_> {
    /// Peeks at `name` for error labels without consuming or validating it.
    fn map_name(&self) -> Option<String> {
        self.peek("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }
}

pub use crate::names::check_name;

fn name_field(o: &mut Obj<'_>, key: &'static str) -> Option<String> {
    let (name, path) = o.req_str(key)?;
    match check_name(&name) {
        Ok(()) => Some(name),
        Err(msg) => {
            o.diag().err(&path, msg);
            None
        }
    }
}

fn decode_revision(o: &mut Obj<'_>) -> u64 {
    o.uint("revision", 0..=u64::MAX).unwrap_or(0)
}

fn decode_service(o: &mut Obj<'_>) -> Option<Service> {
    let d = o.diag();
    o.field("kind");
    let name = name_field(o, "name");
    let revision = decode_revision(o);
    let protocol = match o.str("protocol") {
        Some((p, path)) => Protocol::parse(&p).or_else(|| {
            d.err(
                &path,
                format!(
                    "unknown protocol {p:?} (expected one of: {})",
                    Protocol::NAMES
                ),
            );
            None
        }),
        None => Some(Protocol::default()),
    };
    let routes: Vec<Option<Route>> = o
        .list("routes")
        .into_iter()
        .map(|(v, path)| decode_route(d, path, v))
        .collect();
    let traffic_policy = match o.field("trafficPolicy") {
        Some((v, path)) => decode_traffic_policy(d, path, v),
        None => Some(TrafficPolicy::default()),
    };
    let mtls = match o.field("mtls") {
        Some((v, path)) => decode_mtls(d, path, v),
        None => Some(MtlsMode::default()),
    };
    let authorization = match o.field("authorization") {
        Some((v, path)) => crate::authz::decode(d, path, v).map(Some),
        None => Some(None),
    };
    let addresses: Vec<Option<SocketAddr>> = o
        .list("addresses")
        .into_iter()
        .map(|(v, path)| decode_virtual_address(d, &path, v))
        .collect();
    let addresses = addresses.into_iter().collect::<Option<Vec<_>>>();
    if let Some(list) = &addresses {
        for (i, a) in list.iter().enumerate() {
            if let Some(first) = list[..i].iter().position(|b| b == a) {
                let path = crate::decode::join(&o.path, "addresses");
                d.err(
                    &format!("{path}[{i}]"),
                    format!("repeats addresses[{first}]"),
                );
            }
        }
    }
    let access_log = match o.field("accessLog") {
        Some((v, path)) => crate::access_log::decode(d, path, v).map(Some),
        None => Some(None),
    };
    Some(Service {
        name: name?,
        revision,
        protocol: protocol?,
        routes: routes.into_iter().collect::<Option<Vec<_>>>()?,
        traffic_policy: traffic_policy?,
        mtls: mtls?,
        authorization: authorization?,
        addresses: addresses?,
        access_log: access_log?,
    })
}

/// One of a service's virtual addresses: an IP and a port an app may connect to, so neither
/// the unspecified address nor port 0.
fn decode_virtual_address(d: &Diag, path: &str, v: &Value) -> Option<SocketAddr> {
    let Some(s) = v.as_str() else {
        d.err(
            path,
            format!(
                "must be a string (IP:port), found {}",
                crate::decode::type_name(v)
            ),
        );
        return None;
    };
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
        Ok(_) => {
            d.err(
                path,
                format!("{s:?} must name an IP and a port other than 0"),
            );
            None
        }
        Err(_) => {
            d.err(
                path,
                format!("{s:?} is not an IP:port address (e.g. 10.96.0.10:8080)"),
            );
            None
        }
    }
}

fn decode_mtls(d: &Diag, path: String, v: &Value) -> Option<MtlsMode> {
    let mut o = Obj::new(d, path, v);
    let mode = match o.str("mode") {
        Some((m, path)) => MtlsMode::parse(&m).or_else(|| {
            d.err(
                &path,
                format!(
                    "unknown mTLS mode {m:?} (expected one of: {})",
                    MtlsMode::NAMES
                ),
            );
            None
        }),
        None => Some(MtlsMode::default()),
    };
    o.finish();
    mode
}

fn decode_traffic_policy(d: &Diag, path: String, v: &Value) -> Option<TrafficPolicy> {
    let mut o = Obj::new(d, path, v);
    let lb = match o.str("loadBalancer") {
        Some((s, path)) => LoadBalancer::parse(&s).or_else(|| {
            d.err(
                &path,
                format!(
                    "unknown load balancer {s:?} (expected one of: {})",
                    LoadBalancer::NAMES
                ),
            );
            None
        }),
        None => Some(LoadBalancer::default()),
    };
    let resilience = crate::resilience::decode_destination(&mut o);
    // The hash key and the ring go together: a ring without a key would hash nothing, and a
    // key without the ring would look like stickiness that is not there.
    if let (Some(lb), Some(r)) = (lb, resilience.as_ref()) {
        match (lb, &r.hash_key) {
            (LoadBalancer::RingHash, None) => d.err(
                &crate::decode::join(&o.path, "hashKey"),
                "is required with loadBalancer ring_hash ({header: name}, {cookie: name} or {sourceIp: true})",
            ),
            (lb, Some(_)) if lb != LoadBalancer::RingHash => d.err(
                &crate::decode::join(&o.path, "hashKey"),
                format!("only applies to loadBalancer ring_hash, not {}", lb.as_str()),
            ),
            _ => {}
        }
    }
    o.finish();
    Some(TrafficPolicy {
        load_balancer: lb?,
        resilience: resilience?,
    })
}

fn decode_route(d: &Diag, path: String, v: &Value) -> Option<Route> {
    let mut o = Obj::new(d, path, v);
    let name = match o.str("name") {
        Some((n, p)) => match check_name(&n) {
            Ok(()) => Some(Some(n)),
            Err(msg) => {
                d.err(&p, msg);
                None
            }
        },
        None => Some(None),
    };
    let match_ = match o.field("match") {
        Some((v, path)) => decode_match(d, path, v),
        None => Some(RouteMatch::default()),
    };
    let backends: Vec<Option<Backend>> = o
        .list("backends")
        .into_iter()
        .map(|(v, path)| decode_backend(d, path, v))
        .collect();
    // A route whose every backend has weight 0 could send its traffic nowhere.
    if !backends.is_empty()
        && backends
            .iter()
            .all(|b| b.as_ref().is_some_and(|b| b.weight == 0))
    {
        d.err(
            &crate::decode::join(&o.path, "backends"),
            "at least one backend needs a weight above 0",
        );
    }
    let timeout = match o.str("timeout") {
        Some((s, path)) => match duration::parse(&s) {
            Ok(t) if t.is_zero() || t > Duration::from_secs(3600) => {
                d.err(&path, "must be between 1ms and 1h");
                None
            }
            Ok(t) => Some(Some(t)),
            Err(msg) => {
                d.err(&path, msg);
                None
            }
        },
        None => Some(None),
    };
    let resilience = crate::resilience::decode_route(&mut o);
    o.finish();
    Some(Route {
        name: name?,
        match_: match_?,
        backends: backends.into_iter().collect::<Option<Vec<_>>>()?,
        timeout: timeout?,
        resilience: resilience?,
    })
}

fn check_path(d: &Diag, path: &str, p: &str) -> bool {
    if !p.starts_with('/') {
        d.err(path, format!("{p:?} must start with '/'"));
        return false;
    }
    if p.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        d.err(
            path,
            format!("{p:?} must not contain spaces, control characters, '?' or '#'"),
        );
        return false;
    }
    true
}

fn decode_match(d: &Diag, path: String, v: &Value) -> Option<RouteMatch> {
    let mut o = Obj::new(d, path, v);
    let mut ok = true;
    let path_exact = o.str("pathExact").map(|(p, path)| {
        ok &= check_path(d, &path, &p);
        p
    });
    let path_prefix = o.str("pathPrefix").map(|(p, path)| {
        ok &= check_path(d, &path, &p);
        p
    });
    if path_exact.is_some() && path_prefix.is_some() {
        d.err(&o.path, "pathExact and pathPrefix cannot both be set");
        ok = false;
    }
    let method = o.str("method").map(|(m, path)| {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            d.err(
                &path,
                format!("{m:?} must be an upper-case HTTP method such as GET"),
            );
            ok = false;
        }
        m
    });
    let headers = o.str_map("headers").unwrap_or_default();
    let hpath = crate::decode::join(&o.path, "headers");
    for (k, v) in &headers {
        if !crate::names::check_header_name(k) {
            d.err(
                &crate::decode::join(&hpath, k),
                "is not a valid lower-case header name",
            );
            ok = false;
        }
        if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            d.err(
                &crate::decode::join(&hpath, k),
                "value has control characters",
            );
            ok = false;
        }
    }
    o.finish();
    ok.then_some(RouteMatch {
        path_exact,
        path_prefix,
        method,
        headers,
    })
}

fn decode_backend(d: &Diag, path: String, v: &Value) -> Option<Backend> {
    let mut o = Obj::new(d, path, v);
    let service = match o.str("service") {
        Some((s, p)) => match check_name(&s) {
            Ok(()) => Some(Some(s)),
            Err(msg) => {
                d.err(&p, msg);
                None
            }
        },
        None => Some(None),
    };
    let subset = o.str_map("subset").unwrap_or_default();
    let weight = if o.has("weight") {
        o.uint("weight", 0..=100).map(|w| w as u32)
    } else {
        o.field("weight");
        o.missing("weight");
        None
    };
    o.finish();
    Some(Backend {
        service: service?,
        subset,
        weight: weight?,
    })
}

fn decode_endpoint(o: &mut Obj<'_>) -> Option<Endpoint> {
    let d = o.diag();
    o.field("kind");
    let name = name_field(o, "name");
    let revision = decode_revision(o);
    let service = name_field(o, "service");
    let address = o
        .req_str("address")
        .and_then(|(a, path)| match a.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 && !addr.ip().is_unspecified() => Some(addr),
            Ok(_) => {
                d.err(
                    &path,
                    format!("{a:?} must name a reachable IP and a port other than 0"),
                );
                None
            }
            Err(_) => {
                d.err(
                    &path,
                    format!("{a:?} is not an IP:port address (e.g. 10.0.0.7:8080)"),
                );
                None
            }
        });
    let zone = o.str("zone").map(|(z, _)| z);
    let weight = if o.has("weight") {
        o.uint("weight", 1..=1000).map(|w| w as u32)
    } else {
        Some(default_weight())
    };
    let labels = o.str_map("labels").unwrap_or_default();
    let sidecar = o.bool("sidecar").unwrap_or(false);
    let identity = match o.str("identity") {
        Some((id, path)) => match crate::identity::SpiffeId::parse(&id) {
            Ok(id) => Some(Some(id.to_string())),
            Err(msg) => {
                d.err(&path, msg);
                None
            }
        },
        None => Some(None),
    };
    Some(Endpoint {
        name: name?,
        revision,
        service: service?,
        address: address?,
        zone,
        weight: weight?,
        labels,
        sidecar,
        identity: identity?,
    })
}
