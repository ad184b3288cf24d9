//! The snapshot: everything one proxy needs, compiled by the control plane into one versioned
//! document so that a proxy never sees half an update.
//!
//! The proxy validates a snapshot with the same rules the control plane applies to resources,
//! so a snapshot from a newer or broken control plane is refused whole (NACK) rather than
//! applied in part.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{Diag, Errors, Obj};
use crate::resource::{Endpoint, Kind, Resource, Service};

/// A consistent set of resources at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Monotonically increasing across the life of the control plane's store.
    pub version: u64,
    /// Every destination service.
    pub services: Vec<Service>,
    /// Every live endpoint.
    pub endpoints: Vec<Endpoint>,
    /// The mesh's trust anchors (PEM): sidecars verify peers against every root in it, so a
    /// new root reaches every sidecar before it signs anything (root rotation).
    #[serde(
        default,
        rename = "trustBundle",
        skip_serializing_if = "Option::is_none"
    )]
    pub trust_bundle: Option<String>,
}

impl Snapshot {
    /// Serialises the snapshot as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshots always serialise")
    }

    /// Parses and validates a snapshot, reporting every bad field of every resource.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, Errors> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| Errors::one("snapshot", "", format!("invalid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// Validates a snapshot held as a generic value.
    pub fn from_value(v: &Value) -> Result<Snapshot, Errors> {
        let d = Diag::default();
        let mut o = Obj::new(&d, String::new(), v);
        let version = o.uint("version", 1..=u64::MAX);
        if version.is_none() && !o.has("version") {
            o.missing("version");
        }
        // A bundle holds a few roots during a rotation; 1 MiB is far beyond any.
        let trust_bundle = o.text("trustBundle", 1 << 20).map(|(pem, _)| pem);
        let mut errs = Vec::new();
        let mut resources = Vec::new();
        for (key, kind) in [("services", Kind::Service), ("endpoints", Kind::Endpoint)] {
            // A snapshot holds the whole mesh: as many resources as the store holds.
            for (item, path) in o.items(key, usize::MAX) {
                match Resource::from_value(item, Some(kind), &path) {
                    Ok(r) => resources.push(r),
                    Err(e) => errs.extend(e),
                }
            }
        }
        o.finish();
        errs.extend(d.into_errors("snapshot"));
        crate::document::check_unique(&resources, &mut errs);
        if !errs.is_empty() {
            return Err(Errors(errs));
        }
        let mut snap = Snapshot {
            version: version.unwrap_or_default(),
            trust_bundle,
            ..Default::default()
        };
        for r in resources {
            match r {
                Resource::Service(s) => snap.services.push(s),
                Resource::Endpoint(e) => snap.endpoints.push(e),
            }
        }
        Ok(snap)
    }

    /// Checks what only the whole set can tell: every route backend names a service that is
    /// in the snapshot, and no virtual address belongs to two services. The control plane accepts resources in any order (a route may be applied
    /// before the service it splits to), so this is checked where the set is used: a proxy
    /// refuses such a snapshot whole and keeps serving its last good one, as Envoy refuses a
    /// route table that names an unknown cluster.
    pub fn check_references(&self) -> Result<(), Errors> {
        let names: std::collections::HashSet<&str> =
            self.services.iter().map(|s| s.name.as_str()).collect();
        let mut errs = Vec::new();
        // A virtual address must mean one service, or an intercepting sidecar could not tell
        // where a connection to it goes.
        let mut claimed: std::collections::HashMap<std::net::SocketAddr, &str> =
            std::collections::HashMap::new();
        for svc in &self.services {
            for (i, addr) in svc.addresses.iter().enumerate() {
                if let Some(other) = claimed.insert(*addr, &svc.name) {
                    errs.push(crate::FieldError {
                        resource: format!("Service/{}", svc.name),
                        path: format!("addresses[{i}]"),
                        message: format!("{addr} is also an address of Service/{other}"),
                    });
                }
            }
        }
        for svc in &self.services {
            for (i, route) in svc.routes.iter().enumerate() {
                if let Some(m) = &route.resilience.mirror {
                    if !names.contains(m.service.as_str()) {
                        errs.push(crate::FieldError {
                            resource: format!("Service/{}", svc.name),
                            path: format!("routes[{i}].mirror.service"),
                            message: format!("service {:?} does not exist", m.service),
                        });
                    }
                }
                for (j, b) in route.backends.iter().enumerate() {
                    if let Some(target) = &b.service {
                        if !names.contains(target.as_str()) {
                            errs.push(crate::FieldError {
                                resource: format!("Service/{}", svc.name),
                                path: format!("routes[{i}].backends[{j}].service"),
                                message: format!("service {target:?} does not exist"),
                            });
                        }
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Errors(errs))
        }
    }
}
