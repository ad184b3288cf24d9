//! Transparent interception in the plan: where a request goes when its connection was
//! redirected to the sidecar (`ConnCtx::original_dst`) rather than addressed to it.
//!
//! Outbound, a request whose host names a service is routed by name as in explicit mode; one
//! whose host names none goes to the service that owns its original destination (one of the
//! service's virtual `addresses`, or an endpoint's address), and is then planned like any
//! request to that service (route, backend, balancing, mTLS). A destination no service owns is
//! passed through, unchanged and in plaintext, to where the app meant it to go, or refused,
//! as `--unknown-destination` says. Inbound, the original destination's port is the local
//! app's port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use crate::forward::upstream::Upstream;
use crate::telemetry::metrics::{Direction, Metrics};

/// What an outbound sidecar does with an intercepted connection whose original destination
/// belongs to no service it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownDestination {
    /// Forward it, unchanged and in plaintext, to the original destination (the app sees
    /// the network as if there were no sidecar; a mesh adopted service by service needs it).
    #[default]
    Passthrough,
    /// Answer `unknown-service` (404): only the mesh's services are reachable.
    Refuse,
}

impl UnknownDestination {
    /// Parses the setting's value: `passthrough` or `refuse`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "passthrough" => Ok(UnknownDestination::Passthrough),
            "refuse" => Ok(UnknownDestination::Refuse),
            _ => Err(format!("{s:?} is not passthrough or refuse")),
        }
    }
}

/// One direction's interception state: the setting, the upstreams of addresses that are no
/// endpoint of the snapshot, and the counters (resolved once).
#[derive(Debug)]
pub(crate) struct Intercept {
    pub(crate) unknown: UnknownDestination,
    direct: Direct,
    /// Outbound: by service, passed through, refused. Inbound: to the app.
    pub(crate) to_service: Counter,
    pub(crate) passed: Counter,
    pub(crate) refused: Counter,
    pub(crate) to_app: Counter,
}

impl Intercept {
    pub(crate) fn new(metrics: &Metrics, direction: Direction) -> Self {
        Intercept {
            unknown: UnknownDestination::default(),
            direct: Direct::default(),
            to_service: metrics.original_dst(direction, "service"),
            passed: metrics.original_dst(direction, "passthrough"),
            refused: metrics.original_dst(direction, "refused"),
            to_app: metrics.original_dst(direction, "app"),
        }
    }

    /// The upstream of an address that is no endpoint: a passed-through original destination,
    /// or one of the local app's ports.
    pub(crate) fn direct(&self, addr: SocketAddr) -> Arc<Upstream> {
        self.direct.get(addr)
    }

    /// Inbound: the local app at the port the peer connected to. `app` is the app's address
    /// (`--app`); a connection that was not redirected, or was redirected from the app's own
    /// port, goes to it, and another port goes to the app's host at that port.
    pub(crate) fn app_port(&self, app: &Arc<Upstream>, original: SocketAddr) -> Arc<Upstream> {
        self.to_app.inc();
        let port = original.port();
        if port == app.addr().port() {
            return app.clone();
        }
        self.direct(SocketAddr::new(app.addr().ip(), port))
    }
}

/// Upstreams made on demand for addresses outside the snapshot, kept so their connections
/// are pooled like an endpoint's. Bounded: when full, the map is emptied (requests holding an
/// upstream keep it; only idle pooled connections are lost), so an app that connects to many
/// addresses cannot grow the sidecar's memory.
#[derive(Debug, Default)]
struct Direct(Mutex<HashMap<SocketAddr, Arc<Upstream>>>);

/// The most addresses [`Direct`] keeps.
const MAX_DIRECT: usize = 1024;

impl Direct {
    fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = map.get(&addr) {
            return u.clone();
        }
        if map.len() >= MAX_DIRECT {
            map.clear();
        }
        map.entry(addr)
            .or_insert_with(|| Upstream::new(addr))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{ConnCtx, Listener, Reason};
    use crate::pipeline::{Decision, Dest, Pipeline};
    use crate::plan::policy::Policy;
    use ferrule_config::{parse_documents, Protocol, Resource, Snapshot};

    const MESH: &str = "\
kind: Service
name: pay
addresses: [\"10.96.0.10:80\"]
---
kind: Service
name: shop
addresses: [\"10.77.0.9:8000\"]
---
kind: Endpoint
name: pay-1
service: pay
address: 10.77.0.3:8000
sidecar: true
---
kind: Endpoint
name: shop-1
service: shop
address: 10.77.0.4:8000
---
kind: Endpoint
name: shop-2
service: pay
address: 10.77.0.9:8000
";

    fn policy() -> Arc<Policy> {
        let policy = Arc::new(Policy::new(
            "shop",
            Arc::new(Metrics::new()),
            crate::base::Identity::disabled(),
        ));
        let mut snap = Snapshot {
            version: 3,
            ..Default::default()
        };
        for r in parse_documents(MESH, "test").unwrap() {
            match r {
                Resource::Service(s) => snap.services.push(s),
                Resource::Endpoint(e) => snap.endpoints.push(e),
            }
        }
        policy.apply(Arc::new(snap), "control-plane");
        assert_eq!(policy.version(), 3, "the test snapshot must apply");
        policy
    }

    /// A connection to the outbound listener, redirected from `original` when given.
    fn conn(listener: Listener, original: Option<&str>) -> ConnCtx {
        let here: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        let peer: SocketAddr = "10.77.0.2:40000".parse().unwrap();
        let mut ctx = ConnCtx::new(listener, peer, here);
        ctx.original_dst = original.map(|o| o.parse().unwrap());
        ctx
    }

    fn get(host: &str) -> http::Request<()> {
        http::Request::builder()
            .uri("/x")
            .header("host", host)
            .body(())
            .unwrap()
    }

    fn service(d: &Decision) -> Option<&str> {
        d.service.as_ref().map(|s| &*s.name)
    }

    fn fixed(d: &Decision) -> &Arc<Upstream> {
        match &d.dest {
            Dest::Fixed(u) => u,
            Dest::Balanced(t) => panic!("balanced to {}, not fixed", t.service),
        }
    }

    /// Plans a GET for `host` on a connection to `p`'s listener, redirected from `original`.
    fn plan(p: &Pipeline, original: Option<&str>, host: &str) -> crate::pipeline::Planned {
        p.plan(&conn(p.listener(), original), &get(host))
    }

    #[test]
    fn an_unnamed_host_goes_to_the_service_owning_the_original_destination() {
        let p = Pipeline::outbound(policy());
        // A service's virtual address.
        let d = plan(&p, Some("10.96.0.10:80"), "10.96.0.10").unwrap();
        assert_eq!(service(&d), Some("pay"));
        assert!(matches!(&d.dest, Dest::Balanced(t) if &*t.service == "pay"));
        // An endpoint's address: its service, balanced over all its endpoints.
        let d = plan(&p, Some("10.77.0.4:8000"), "10.77.0.4:8000").unwrap();
        assert_eq!(service(&d), Some("shop"));
        // A virtual address wins over an endpoint with the same address (shop-2 is pay's).
        let d = plan(&p, Some("10.77.0.9:8000"), "10.77.0.9:8000").unwrap();
        assert_eq!(service(&d), Some("shop"));
        assert_eq!(p.intercept.to_service.get(), 3);
        assert_eq!(p.intercept.passed.get(), 0);
    }

    #[test]
    fn a_host_that_names_a_service_still_decides() {
        let p = Pipeline::outbound(policy());
        let d = plan(&p, Some("10.96.0.10:80"), "shop").unwrap();
        assert_eq!(service(&d), Some("shop"));
        assert_eq!(p.intercept.to_service.get(), 0);
        // Explicit mode (no original destination) is unchanged: an unknown host is refused.
        let e = plan(&p, None, "10.96.0.10").unwrap_err();
        assert_eq!(e.error.reason, Reason::UnknownService);
        assert!(
            e.error.detail.contains("no service named \"10.96.0.10\""),
            "{}",
            e.error.detail
        );
    }

    #[test]
    fn an_unknown_destination_passes_through_unchanged_by_default() {
        let p = Pipeline::outbound(policy());
        let d = plan(&p, Some("192.0.2.7:5000"), "example.test").unwrap();
        assert_eq!(fixed(&d).addr(), "192.0.2.7:5000".parse().unwrap());
        assert_eq!(service(&d), None);
        assert!(d.route.is_none());
        assert_eq!(d.protocol, Protocol::Auto);
        assert!(
            fixed(&d).expected_identity().is_none(),
            "plaintext, as the app sent it"
        );
        // The same address keeps its upstream (and so its pooled connections).
        let again = plan(&p, Some("192.0.2.7:5000"), "example.test").unwrap();
        assert!(Arc::ptr_eq(fixed(&d), fixed(&again)));
        assert_eq!(p.intercept.passed.get(), 2);
    }

    #[test]
    fn an_unknown_destination_is_refused_when_the_setting_says_so() {
        let p = Pipeline::outbound(policy()).with_unknown_destination(UnknownDestination::Refuse);
        let e = plan(&p, Some("192.0.2.7:5000"), "example.test").unwrap_err();
        assert_eq!(e.error.reason, Reason::UnknownService);
        assert!(
            e.error.detail.contains("192.0.2.7:5000"),
            "{}",
            e.error.detail
        );
        assert_eq!(
            (p.intercept.refused.get(), p.intercept.passed.get()),
            (1, 0)
        );
        // Known destinations are not affected by the setting.
        let d = plan(&p, Some("10.96.0.10:80"), "10.96.0.10").unwrap();
        assert_eq!(service(&d), Some("pay"));
    }

    #[test]
    fn inbound_goes_to_the_app_at_the_port_the_peer_connected_to() {
        let app: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let p = Pipeline::inbound(policy(), "shop", app);
        let plain = plan(&p, None, "shop").unwrap();
        let same = plan(&p, Some("10.77.0.4:8000"), "shop").unwrap();
        assert_eq!(fixed(&plain).addr(), app);
        assert!(
            Arc::ptr_eq(fixed(&plain), fixed(&same)),
            "the app's own upstream"
        );
        let other = plan(&p, Some("10.77.0.4:9000"), "shop").unwrap();
        assert_eq!(fixed(&other).addr(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(p.intercept.to_app.get(), 2);
    }

    #[test]
    fn direct_upstreams_are_kept_per_address_and_bounded() {
        let d = Direct::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let first = d.get(a);
        assert!(Arc::ptr_eq(&first, &d.get(a)));
        for port in 1..MAX_DIRECT as u16 {
            d.get(SocketAddr::new(a.ip(), 1000 + port));
        }
        assert_eq!(d.0.lock().unwrap().len(), MAX_DIRECT);
        // Full: the next new address empties the map first.
        d.get("10.0.0.2:80".parse().unwrap());
        assert_eq!(d.0.lock().unwrap().len(), 1);
        assert!(!Arc::ptr_eq(&first, &d.get(a)));
    }

    #[test]
    fn unknown_destination_setting_parses() {
        assert_eq!(
            UnknownDestination::parse("passthrough"),
            Ok(UnknownDestination::Passthrough)
        );
        assert_eq!(
            UnknownDestination::parse("refuse"),
            Ok(UnknownDestination::Refuse)
        );
        assert!(UnknownDestination::parse("drop").is_err());
    }
}
