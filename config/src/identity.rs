//! Workload identities and the patterns that authorization rules match them with.
//!
//! An identity is a SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`, carried
//! as the one URI SAN of a workload certificate. The control plane signs it, the sidecars
//! check it on every mTLS handshake, and authorization rules name it. This module holds only
//! the names: parsing certificates and TLS live with the crates that do crypto.

use std::fmt;

/// Trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Namespace of a workload when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A workload's SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, each checked as [`parse`](Self::parse) would.
    pub fn new(trust_domain: &str, namespace: &str, service: &str) -> Result<SpiffeId, String> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service", service)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        })
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`; nothing else is a
    /// workload identity of this mesh (no query, fragment, port or extra segment).
    pub fn parse(s: &str) -> Result<SpiffeId, String> {
        let bad = |why: &str| format!("{s:?} is not a workload identity: {why}");
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it must start with spiffe://"))?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(
                "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service>",
            ));
        };
        SpiffeId::new(td, ns, sa).map_err(|why| bad(&why))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service (SPIFFE's service account).
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

/// Trust domains are DNS-like names (SPIFFE: lower-case letters, digits, `.`, `-`, `_`).
fn check_trust_domain(td: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
    if td.is_empty() || td.len() > 255 || !td.bytes().all(ok) {
        return Err(format!(
            "trust domain {td:?} must be 1 to 255 lower-case letters, digits, '.', '-' or '_'"
        ));
    }
    Ok(())
}

/// Namespaces and services are names like service names (see `names::check_name`), without
/// dots, so that a path segment never reads as a relative path.
fn check_segment(what: &str, s: &str) -> Result<(), String> {
    crate::names::check_name(s).map_err(|e| format!("{what}: {e}"))?;
    if s.contains('.') {
        return Err(format!("{what} {s:?} must not contain '.'"));
    }
    Ok(())
}

/// What an authorization rule's `from` entry matches: one identity, every identity under a
/// prefix (`spiffe://cluster.local/ns/shop/*`), or any authenticated peer (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// Any peer that presented a valid certificate of the mesh.
    AnyAuthenticated,
    /// Identities that start with this text (the pattern without its `*`).
    Prefix(String),
    /// This identity only.
    Exact(String),
}

impl IdentityPattern {
    /// Parses a pattern: `*`, an exact SPIFFE ID, or a prefix of one ending in `/*`.
    pub fn parse(s: &str) -> Result<IdentityPattern, String> {
        if s == "*" {
            return Ok(IdentityPattern::AnyAuthenticated);
        }
        if let Some(prefix) = s.strip_suffix('*') {
            // Only whole segments: `ns/shop/*` must not also match `ns/shopping/...`.
            if !prefix.starts_with("spiffe://") || !prefix.ends_with('/') || prefix.contains('*') {
                return Err(format!(
                    "{s:?} is not an identity pattern: a wildcard must be a whole last segment, \
                     as in spiffe://cluster.local/ns/shop/*"
                ));
            }
            return Ok(IdentityPattern::Prefix(prefix.to_owned()));
        }
        SpiffeId::parse(s).map(|id| IdentityPattern::Exact(id.to_string()))
    }

    /// Whether a peer with `identity` (`None`: no client certificate) matches.
    pub fn matches(&self, identity: Option<&str>) -> bool {
        match (self, identity) {
            (_, None) => false,
            (IdentityPattern::AnyAuthenticated, Some(_)) => true,
            (IdentityPattern::Prefix(p), Some(id)) => id.starts_with(p.as_str()),
            (IdentityPattern::Exact(e), Some(id)) => e == id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service(), "payments");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/payments");
        for bad in [
            "http://cluster.local/ns/shop/sa/payments",
            "spiffe://cluster.local/ns/shop/sa/payments/x",
            "spiffe://cluster.local/ns/shop/payments",
            "spiffe://Cluster.local/ns/shop/sa/payments",
            "spiffe://cluster.local/ns/../sa/payments",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local:8080/ns/shop/sa/payments",
            "spiffe:///ns/shop/sa/payments",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_whole_segments() {
        let p = IdentityPattern::parse("spiffe://cluster.local/ns/shop/*").unwrap();
        assert!(p.matches(Some("spiffe://cluster.local/ns/shop/sa/web")));
        assert!(!p.matches(Some("spiffe://cluster.local/ns/shopping/sa/web")));
        assert!(!p.matches(None));
        let e = IdentityPattern::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert!(e.matches(Some("spiffe://cluster.local/ns/shop/sa/web")));
        assert!(!e.matches(Some("spiffe://cluster.local/ns/shop/sa/webx")));
        let any = IdentityPattern::parse("*").unwrap();
        assert!(any.matches(Some("spiffe://x/ns/a/sa/b")));
        assert!(!any.matches(None));
        for bad in ["spiffe://cluster.local/ns/sh*", "*/sa/web", "web"] {
            assert!(IdentityPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
