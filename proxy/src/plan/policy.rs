//! The proxy's runtime policy: a snapshot compiled into lookup tables, held in one `ArcSwap`.
//!
//! A snapshot is validated whole and compiled here, off the request path; requests load the
//! current [`Tables`] once and keep that `Arc` until they finish, so a swap never changes the
//! policy under a request in flight. Compiling reuses the previous tables' per-endpoint
//! [`Upstream`]s (pooled connections, load), round-robin cursors and circuit breakers wherever
//! the endpoint or backend is unchanged, and a route's rate limiter (its buckets) wherever the
//! route's limit is unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ferrule_config::authz;
use ferrule_config::resilience::{Destination, RouteResilience, Side};
use ferrule_config::{MtlsMode, Protocol, Snapshot};
#[cfg(test)]
use http::Request;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use rand::Rng;

use crate::base::{Identity, Reason};
use crate::codec::render::{Custom, ProxyError};
use crate::codec::HeadView;
use crate::forward::conn::TlsTarget;
use crate::forward::upstream::Upstream;
use crate::plan::balance::{Balancer, Member};
use crate::plan::breaker::Breaker;
use crate::plan::budget::Budget;
use crate::plan::fault::RouteFaults;
use crate::plan::limit::RouteLimit;
use crate::plan::mirror::{Gate, MAX_IN_FLIGHT};
use crate::telemetry::metrics::{Direction, Metrics, ServiceMetrics};

/// One backend destination: a service's endpoints, narrowed to a label subset.
#[derive(Debug)]
pub struct Target {
    /// The destination service.
    pub service: Arc<str>,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its endpoints.
    pub balancer: Balancer,
    /// The destination service's resilience policy (connect timeout, breaker, ejection,
    /// locality, retry budget).
    pub policy: Destination,
    /// The destination service's retry budget (shared by its targets, kept across snapshots).
    pub budget: Arc<Budget>,
    /// Its concurrency limit and queue (kept across snapshots).
    pub breaker: Arc<Breaker>,
}

#[derive(Debug)]
struct CompiledMatch {
    path_exact: Option<String>,
    path_prefix: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledMatch {
    fn matches<R: HeadView + ?Sized>(&self, req: &R) -> bool {
        let path = req.path();
        if let Some(p) = &self.path_exact {
            if path != p {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            // Segment-aware: `/v2` takes `/v2` and `/v2/x`, not `/v20`.
            let ok = path.starts_with(p.as_str())
                && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if req.method() != m.as_str() {
                return false;
            }
        }
        self.headers.iter().all(|(k, v)| req.has_header(k, v))
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct RouteTable {
    /// The route's name, if it has one.
    pub name: Option<Arc<str>>,
    matcher: CompiledMatch,
    /// Cumulative weights and their targets (weight-0 backends left out).
    backends: Vec<(u32, Arc<Target>)>,
    total: u32,
    /// Deadline for response headers.
    pub timeout: Option<Duration>,
    /// Retries, idle timeout, fallback, faults, rate limit, mirroring.
    pub resilience: RouteResilience,
    /// The rate limit, compiled (kept across snapshots while the policy is unchanged).
    pub limit: Option<Arc<RouteLimit>>,
    /// The injected faults, compiled.
    pub faults: Option<Arc<RouteFaults>>,
    /// The fallback response, compiled.
    pub fallback: Option<Arc<Custom>>,
    /// Traffic mirroring, compiled.
    pub mirror: Option<RouteMirror>,
}

/// A route's mirror, compiled: the shadow service (all its endpoints, its own balancer), the
/// share of requests copied, and the shadow service's bound on copies in flight (`plan::mirror`).
#[derive(Debug)]
pub struct RouteMirror {
    /// The shadow destination.
    pub target: Arc<Target>,
    /// Share of requests copied, in percent.
    pub percent: u32,
    /// Copies in flight towards the shadow service, and its counters.
    pub gate: Arc<Gate>,
}

impl RouteTable {
    /// Every backend the route can pick (weight above 0).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.backends.iter().map(|(_, t)| t)
    }

    /// Chooses a backend by weight; `None` if no backend has a weight above 0 (validation
    /// refuses such routes, so this is defence, not a path taken in practice).
    pub fn pick_backend(&self) -> Option<&Arc<Target>> {
        match self.backends.len() {
            0 => None,
            1 => Some(&self.backends[0].1),
            n => {
                let r = rand::rng().random_range(0..self.total.max(1));
                self.backends
                    .iter()
                    .find(|(cum, _)| r < *cum)
                    .or(self.backends.get(n - 1))
                    .map(|(_, t)| t)
            }
        }
    }
}

/// Upstream state is shared across snapshots per address and, for mutual TLS, the identity
/// the endpoint must prove.
type UpstreamKey = (SocketAddr, Option<Arc<str>>);

/// A compiled destination service.
#[derive(Debug)]
pub struct ServiceTable {
    /// Name.
    pub name: Arc<str>,
    /// Protocol.
    pub protocol: Protocol,
    routes: Vec<Arc<RouteTable>>,
    /// Every endpoint of the service: used when it has no routes.
    default_route: Arc<RouteTable>,
    /// Per-request metric handles for outbound traffic to this service.
    pub metrics: ServiceMetrics,
    /// What its sidecars take from peers (read on the inbound side of its own sidecars).
    pub mtls: MtlsMode,
    /// Who may call it (enforced on the inbound side of its own sidecars); everyone if `None`.
    pub authz: Option<authz::Compiled>,
    /// Which share of the requests to it are access-logged (`None`: none).
    pub access_log: Option<crate::telemetry::access::Sampling>,
}

impl ServiceTable {
    /// The first route that matches, or the whole service when it has no routes.
    pub fn route<R: HeadView + ?Sized>(&self, req: &R) -> Result<&Arc<RouteTable>, ProxyError> {
        if self.routes.is_empty() {
            return Ok(&self.default_route);
        }
        self.routes
            .iter()
            .find(|r| r.matcher.matches(req))
            .ok_or_else(|| {
                ProxyError::new(
                    Reason::NoRoute,
                    format!(
                        "no route of service {} matches {} {}",
                        self.name,
                        req.method(),
                        req.path()
                    ),
                )
            })
    }
}

/// Everything the request path needs, at one snapshot version.
#[derive(Debug)]
pub struct Tables {
    /// Snapshot version (0 = none yet).
    pub version: u64,
    /// The snapshot itself, for `/config`.
    pub snapshot: Option<Arc<Snapshot>>,
    services: HashMap<String, Arc<ServiceTable>>,
    /// This proxy's own service, if the snapshot defines it (gives the inbound protocol).
    pub local: Option<Arc<ServiceTable>>,
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    cursors: HashMap<(String, BTreeMap<String, String>), Arc<AtomicUsize>>,
    budgets: HashMap<String, Arc<Budget>>,
    /// Every balanced destination (service and label subset), for `/endpoints`.
    pub targets: BTreeMap<(String, BTreeMap<String, String>), Arc<Target>>,
    /// This sidecar's zone (locality prefers endpoints in it).
    pub zone: Option<Arc<str>>,
    breakers: HashMap<(String, BTreeMap<String, String>), Arc<Breaker>>,
    /// Per (service, route name or position).
    limits: HashMap<(String, String), Arc<RouteLimit>>,
    /// Per shadow service: its bound on mirrored copies in flight (kept across snapshots).
    mirrors: HashMap<String, Arc<Gate>>,
    /// Metric handles for requests to hosts that name no service.
    pub unknown_metrics: ServiceMetrics,
    /// The service each known address means to an intercepting sidecar: a service's virtual
    /// addresses, and every endpoint's address (its service). A virtual address wins over an
    /// endpoint that has the same address.
    by_address: HashMap<SocketAddr, Arc<ServiceTable>>,
}

impl Tables {
    /// Tables with no snapshot: every outbound request gets `no-config`.
    pub fn empty(metrics: &Metrics) -> Self {
        Tables {
            version: 0,
            snapshot: None,
            services: HashMap::new(),
            local: None,
            upstreams: HashMap::new(),
            cursors: HashMap::new(),
            budgets: HashMap::new(),
            targets: BTreeMap::new(),
            zone: None,
            breakers: HashMap::new(),
            limits: HashMap::new(),
            mirrors: HashMap::new(),
            unknown_metrics: metrics.service(Direction::Outbound, "unknown"),
            by_address: HashMap::new(),
        }
    }

    /// Finds the destination service named by a request's host.
    pub fn service(&self, host: &str) -> Option<&Arc<ServiceTable>> {
        self.services.get(host)
    }

    /// The service an address belongs to (transparent interception: the connection's
    /// original destination, when the request's host names no service).
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Arc<ServiceTable>> {
        self.by_address.get(&addr)
    }

    /// Names of every known service (for error messages).
    pub fn service_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.services.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Compiles a validated snapshot, reusing `prev`'s per-endpoint state where unchanged;
    /// `zone` is this sidecar's zone, if it knows one.
    pub fn compile(
        snap: Arc<Snapshot>,
        prev: &Tables,
        local_service: &str,
        zone: Option<&Arc<str>>,
        metrics: &Arc<Metrics>,
        identity: &Arc<Identity>,
    ) -> Self {
        let mut upstreams = HashMap::new();
        let mtls: HashMap<&str, MtlsMode> = snap
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.mtls))
            .collect();
        let mut cursors = HashMap::new();
        let budgets: HashMap<String, Arc<Budget>> = snap
            .services
            .iter()
            .map(|s| {
                let b = prev.budgets.get(&s.name).cloned().unwrap_or_default();
                (s.name.clone(), b)
            })
            .collect();
        let mut breakers = HashMap::new();
        let mut limits = HashMap::new();
        let mut mirrors: HashMap<String, Arc<Gate>> = HashMap::new();
        let protocols: HashMap<&str, Protocol> = snap
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.protocol))
            .collect();
        let lbs: HashMap<&str, ferrule_config::LoadBalancer> = snap
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.traffic_policy.load_balancer))
            .collect();
        let dests: HashMap<&str, &Destination> = snap
            .services
            .iter()
            .map(|s| (s.name.as_str(), &s.traffic_policy.resilience))
            .collect();

        // Endpoints grouped by service, each with its (reused) upstream state.
        let mut by_service: HashMap<&str, Vec<(&ferrule_config::Endpoint, Arc<Upstream>)>> =
            HashMap::new();
        for ep in &snap.endpoints {
            // Mutual TLS to an endpoint that has an identity, unless its service turned mTLS
            // off or this sidecar runs without identity (development only). The identity is
            // part of the key: an endpoint whose identity changes gets fresh connections.
            let tls_to = ep.identity.as_deref().filter(|_| {
                identity.is_enabled()
                    && mtls.get(ep.service.as_str()).copied().unwrap_or_default()
                        != MtlsMode::Disabled
            });
            let key: UpstreamKey = (ep.address, tls_to.map(Arc::from));
            let up = upstreams
                .entry(key.clone())
                .or_insert_with(|| {
                    prev.upstreams.get(&key).cloned().unwrap_or_else(|| {
                        let tls = key.1.clone().map(|expected| TlsTarget {
                            identity: identity.clone(),
                            expected,
                            metrics: metrics.clone(),
                        });
                        Upstream::with_tls(ep.address, tls)
                    })
                })
                .clone();
            if let Some(d) = dests.get(ep.service.as_str()) {
                up.set_connect_timeout(d.connect_timeout);
                up.health().set_policy(d.outlier_detection);
            }
            by_service
                .entry(ep.service.as_str())
                .or_default()
                .push((ep, up));
        }
        for eps in by_service.values_mut() {
            eps.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        }

        // Targets are shared by every route that names the same (service, subset).
        let mut targets: HashMap<(String, BTreeMap<String, String>), Arc<Target>> = HashMap::new();
        let mut target = |service: &str, subset: &BTreeMap<String, String>| -> Arc<Target> {
            let key = (service.to_owned(), subset.clone());
            if let Some(t) = targets.get(&key) {
                return t.clone();
            }
            let members: Vec<Member> = by_service
                .get(service)
                .map(|eps| {
                    eps.iter()
                        .filter(|(ep, _)| subset.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
                        .map(|(ep, up)| Member {
                            name: ep.name.as_str().into(),
                            upstream: up.clone(),
                            weight: ep.weight.max(1),
                            sidecar: ep.sidecar,
                            zone: ep.zone.as_deref().map(Arc::from),
                            identity: ep.identity.as_deref().map(Arc::from),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let cursor = prev.cursors.get(&key).cloned().unwrap_or_default();
            cursors.insert(key.clone(), cursor.clone());
            let policy: Destination = dests.get(service).map(|d| (*d).clone()).unwrap_or_default();
            let balancer = Balancer::new(
                lbs.get(service).copied().unwrap_or_default(),
                members,
                cursor,
            )
            .with_policy(&policy, zone.cloned(), metrics.lb(service));
            // The breaker outlives snapshots (its slots are held by requests in flight); a new
            // snapshot only changes its limits.
            let breaker = match prev.breakers.get(&key) {
                Some(b) => {
                    b.set_limits(&policy.circuit_breaker);
                    b.clone()
                }
                None => {
                    let subset = subset
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    let (in_flight, waiting) = metrics.breaker_gauges(service, subset);
                    Arc::new(Breaker::new(&policy.circuit_breaker, in_flight, waiting))
                }
            };
            breakers.insert(key.clone(), breaker.clone());
            let t = Arc::new(Target {
                policy,
                budget: budgets.get(service).cloned().unwrap_or_default(),
                breaker,
                service: service.into(),
                protocol: protocols.get(service).copied().unwrap_or_default(),
                balancer,
            });
            targets.insert(key, t.clone());
            t
        };

        let mut services = HashMap::new();
        for svc in &snap.services {
            let routes = svc
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let id = r.name.clone().unwrap_or_else(|| format!("#{i}"));
                    let limit = r.resilience.rate_limit.as_ref().map(|cfg| {
                        let key = (svc.name.clone(), id.clone());
                        let l = match prev.limits.get(&key) {
                            Some(l) if l.cfg == *cfg => l.clone(),
                            _ => {
                                let dir = match cfg.side {
                                    Side::Inbound => Direction::Inbound,
                                    Side::Outbound => Direction::Outbound,
                                };
                                Arc::new(RouteLimit::new(
                                    cfg.clone(),
                                    metrics.rate_limited(dir, &svc.name, "enforced"),
                                    metrics.rate_limited(dir, &svc.name, "shadow"),
                                ))
                            }
                        };
                        limits.insert(key, l.clone());
                        l
                    });
                    let faults = r.resilience.faults.map(|f| {
                        Arc::new(RouteFaults::new(
                            f,
                            metrics.fault(Direction::Outbound, &svc.name, "delay"),
                            metrics.fault(Direction::Outbound, &svc.name, "abort"),
                        ))
                    });
                    let fallback = r.resilience.fallback.as_ref().map(|f| {
                        Arc::new(Custom {
                            status: StatusCode::from_u16(f.status).ok(),
                            // A gRPC caller cannot read an HTTP body as a message: it gets
                            // UNAVAILABLE with the fallback's headers.
                            grpc_status: Some(14),
                            headers: header_list(&f.headers),
                            body: Some(bytes::Bytes::from(f.body.clone())),
                        })
                    });
                    let mut backends = Vec::new();
                    let mut total = 0;
                    if r.backends.is_empty() {
                        total = 1;
                        backends.push((1, target(&svc.name, &BTreeMap::new())));
                    }
                    for b in r.backends.iter().filter(|b| b.weight > 0) {
                        total += b.weight;
                        let svc_name = b.service.as_deref().unwrap_or(&svc.name);
                        backends.push((total, target(svc_name, &b.subset)));
                    }
                    let mirror = r.resilience.mirror.as_ref().map(|m| {
                        let gate = mirrors.entry(m.service.clone()).or_insert_with(|| {
                            prev.mirrors.get(&m.service).cloned().unwrap_or_else(|| {
                                Arc::new(Gate::new(MAX_IN_FLIGHT, metrics.mirror(&m.service)))
                            })
                        });
                        RouteMirror {
                            gate: gate.clone(),
                            target: target(&m.service, &BTreeMap::new()),
                            percent: m.percent,
                        }
                    });
                    Arc::new(RouteTable {
                        name: r.name.as_deref().map(Arc::from),
                        matcher: CompiledMatch {
                            path_exact: r.match_.path_exact.clone(),
                            path_prefix: r.match_.path_prefix.clone(),
                            method: r
                                .match_
                                .method
                                .as_deref()
                                .and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
                            headers: header_list(&r.match_.headers),
                        },
                        backends,
                        total,
                        timeout: r.timeout,
                        resilience: r.resilience.clone(),
                        limit,
                        faults,
                        fallback,
                        mirror,
                    })
                })
                .collect();
            let default_route = Arc::new(RouteTable {
                name: None,
                matcher: CompiledMatch {
                    path_exact: None,
                    path_prefix: None,
                    method: None,
                    headers: Vec::new(),
                },
                backends: vec![(1, target(&svc.name, &BTreeMap::new()))],
                total: 1,
                timeout: None,
                resilience: RouteResilience::default(),
                limit: None,
                faults: None,
                fallback: None,
                mirror: None,
            });
            services.insert(
                svc.name.clone(),
                Arc::new(ServiceTable {
                    name: svc.name.as_str().into(),
                    protocol: svc.protocol,
                    routes,
                    default_route,
                    metrics: metrics.service(Direction::Outbound, &svc.name),
                    mtls: svc.mtls,
                    authz: svc.authorization.as_ref().map(authz::Compiled::new),
                    access_log: crate::telemetry::access::Sampling::of(svc.access_log.as_ref()),
                }),
            );
        }
        let mut by_address = HashMap::new();
        for e in &snap.endpoints {
            if let Some(svc) = services.get(&e.service) {
                by_address.entry(e.address).or_insert_with(|| svc.clone());
            }
        }
        for svc in &snap.services {
            for addr in &svc.addresses {
                by_address.insert(*addr, services[&svc.name].clone());
            }
        }
        let local = services.get(local_service).cloned();
        Tables {
            version: snap.version,
            snapshot: Some(snap),
            services,
            local,
            upstreams,
            cursors,
            budgets,
            targets: targets.into_iter().collect(),
            zone: zone.cloned(),
            breakers,
            limits,
            mirrors,
            unknown_metrics: prev.unknown_metrics.clone(),
            by_address,
        }
    }
}

/// Header names and values of a policy document as `http` types. The config crate validated
/// them, so none is dropped here in practice.
fn header_list(headers: &BTreeMap<String, String>) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

/// What the admin endpoint shows about policy besides the tables.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PolicyStatus {
    /// The last refused snapshot's error, if any (cleared by the next good one).
    pub last_nack: Option<String>,
    /// Version of the last refused snapshot.
    pub last_nack_version: Option<u64>,
    /// Where the applied snapshot came from: `control-plane` or `disk`.
    pub source: Option<&'static str>,
    /// When the applied snapshot was applied.
    #[serde(skip)]
    pub since: Option<std::time::SystemTime>,
}

/// The swappable current policy.
pub struct Policy {
    current: ArcSwap<Tables>,
    status: Mutex<PolicyStatus>,
    local_service: String,
    zone: Option<Arc<str>>,
    /// This sidecar's identity: connections to endpoints with an identity use it.
    pub identity: Arc<Identity>,
    /// Metrics registry (snapshot compile resolves handles from it).
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.current.load().version)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// No snapshot yet.
    pub fn new(local_service: &str, metrics: Arc<Metrics>, identity: Arc<Identity>) -> Self {
        Policy {
            current: ArcSwap::from_pointee(Tables::empty(&metrics)),
            status: Mutex::new(PolicyStatus::default()),
            local_service: local_service.to_owned(),
            zone: None,
            identity,
            metrics,
        }
    }

    /// Sets this sidecar's zone (`--zone`), before the first snapshot is applied.
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone.filter(|z| !z.is_empty()).map(Arc::from);
        self
    }

    /// Sets the ejected-endpoint gauges from the current tables (done when `/metrics` is
    /// scraped). An endpoint in two subsets of a service counts once.
    pub fn refresh_health_gauges(&self) {
        let tables = self.load();
        let mut per_service: BTreeMap<&str, std::collections::HashSet<SocketAddr>> =
            BTreeMap::new();
        for t in tables.targets.values() {
            let set = per_service.entry(&t.service).or_default();
            for m in t.balancer.members() {
                if m.upstream.health().ejected() {
                    set.insert(m.upstream.addr());
                }
            }
        }
        self.metrics
            .set_ejected(per_service.iter().map(|(s, set)| (*s, set.len() as i64)));
    }

    /// The tables a request should use, for its whole life.
    pub fn load(&self) -> Arc<Tables> {
        self.current.load_full()
    }

    /// Version of the applied snapshot (0 = none).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Compiles and swaps in a validated snapshot.
    pub fn apply(&self, snap: Arc<Snapshot>, source: &'static str) {
        let prev = self.current.load_full();
        let version = snap.version;
        let tables = Tables::compile(
            snap,
            &prev,
            &self.local_service,
            self.zone.as_ref(),
            &self.metrics,
            &self.identity,
        );
        self.current.store(Arc::new(tables));
        self.metrics.snapshot_version.set(version);
        self.metrics.snapshot_applies.inc();
        self.metrics
            .snapshot_from_disk
            .set(i64::from(source == "disk"));
        let mut st = self.status.lock().expect("status lock poisoned");
        st.source = Some(source);
        st.since = Some(std::time::SystemTime::now());
        st.last_nack = None;
        st.last_nack_version = None;
    }

    /// Records a refused snapshot.
    pub fn record_nack(&self, version: u64, error: String) {
        self.metrics.snapshot_nacks.inc();
        let mut st = self.status.lock().expect("status lock poisoned");
        st.last_nack = Some(error);
        st.last_nack_version = Some(version);
    }

    /// Status for the admin endpoint.
    pub fn status(&self) -> PolicyStatus {
        self.status.lock().expect("status lock poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_config::parse_documents;

    fn snapshot(version: u64, yaml: &str) -> Arc<Snapshot> {
        let mut snap = Snapshot {
            version,
            ..Default::default()
        };
        for r in parse_documents(yaml, "test").unwrap() {
            match r {
                ferrule_config::Resource::Service(s) => snap.services.push(s),
                ferrule_config::Resource::Endpoint(e) => snap.endpoints.push(e),
            }
        }
        Arc::new(snap)
    }

    const TWO: &str = "kind: Service\nname: echo\ntrafficPolicy: {loadBalancer: round_robin}\n---\nkind: Endpoint\nname: a\nservice: echo\naddress: 127.0.0.1:1001\n---\nkind: Endpoint\nname: b\nservice: echo\naddress: 127.0.0.1:1002\n";

    fn upstream_of(t: &Tables, addr: &str) -> Arc<Upstream> {
        t.upstreams[&(addr.parse::<SocketAddr>().unwrap(), None)].clone()
    }

    #[test]
    fn reload_keeps_state_of_unchanged_endpoints() {
        let m = Arc::new(Metrics::new());
        let id = Identity::disabled();
        let first = Tables::compile(snapshot(1, TWO), &Tables::empty(&m), "echo", None, &m, &id);
        let cursor = first.cursors.values().next().unwrap().clone();
        cursor.store(7, std::sync::atomic::Ordering::Relaxed);

        // b changes labels, c is new, a is unchanged.
        let next_yaml = TWO.replace(
            "address: 127.0.0.1:1002\n",
            "address: 127.0.0.1:1002\nlabels: {v: x}\n",
        )
            + "---\nkind: Endpoint\nname: c\nservice: echo\naddress: 127.0.0.1:1003\n";
        let second = Tables::compile(snapshot(2, &next_yaml), &first, "echo", None, &m, &id);
        assert!(Arc::ptr_eq(
            &upstream_of(&first, "127.0.0.1:1001"),
            &upstream_of(&second, "127.0.0.1:1001")
        ));
        assert!(Arc::ptr_eq(
            &upstream_of(&first, "127.0.0.1:1002"),
            &upstream_of(&second, "127.0.0.1:1002")
        ));
        assert_eq!(second.upstreams.len(), 3);
        let svc = second.service("echo").unwrap();
        let route = svc.route(&Request::new(())).unwrap();
        let balancer = &route.pick_backend().unwrap().balancer;
        assert_eq!(balancer.members().len(), 3);
        assert!(
            Arc::ptr_eq(balancer.cursor(), &cursor),
            "round-robin position was reset"
        );
        assert_eq!(second.local.as_ref().map(|s| &*s.name), Some("echo"));
    }

    #[test]
    fn routes_match_in_order_with_segment_aware_prefixes() {
        let m = Arc::new(Metrics::new());
        let yaml = "kind: Service\nname: echo\nroutes:\n  - name: exact\n    match: {pathExact: /x}\n  - name: v2\n    match: {pathPrefix: /v2, method: POST, headers: {x-canary: 'yes'}}\n  - name: api\n    match: {pathPrefix: /api/}\n";
        let id = Identity::disabled();
        let t = Tables::compile(snapshot(1, yaml), &Tables::empty(&m), "none", None, &m, &id);
        let svc = t.service("echo").unwrap();
        let name = |method: &str, path: &str, canary: bool| {
            let mut b = Request::builder().method(method).uri(path);
            if canary {
                b = b.header("x-canary", "yes");
            }
            svc.route(&b.body(()).unwrap())
                .ok()
                .and_then(|r| r.name.as_deref().map(str::to_owned))
        };
        assert_eq!(name("GET", "/x", false).as_deref(), Some("exact"));
        assert_eq!(name("POST", "/v2/a", true).as_deref(), Some("v2"));
        assert_eq!(name("POST", "/v2", true).as_deref(), Some("v2"));
        assert_eq!(name("POST", "/v20", true), None);
        assert_eq!(name("GET", "/v2", true), None);
        assert_eq!(name("POST", "/v2", false), None);
        assert_eq!(name("GET", "/api/users", false).as_deref(), Some("api"));
        assert_eq!(name("GET", "/x/y", false), None);
    }
}
