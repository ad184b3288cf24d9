//! Targets: the ways of reaching the upstream that the harness compares.
//!
//! A [`Target`] is, for each protocol it serves, an address to send load to and a description
//! of the hops on the way; the Host header that names the destination; and the processes whose
//! CPU and memory are charged to it. The stacks that start the system under test (`stack` for
//! Ferrule, `peers` for nginx and HAProxy) build them, and the harness measures every target
//! the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::protocol::Protocol;

/// Every target the harness knows, by its command-line key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub(crate) enum TargetKey {
    /// The upstream itself: the baseline.
    #[serde(rename = "direct")]
    Direct,
    /// The server sidecar's inbound listener.
    #[serde(rename = "ferrule-1")]
    Ferrule1,
    /// Client sidecar → h2 → server sidecar → upstream.
    #[serde(rename = "ferrule-2")]
    Ferrule2,
    /// The same with mutual TLS between the sidecars: not available until mTLS lands.
    #[serde(rename = "ferrule-2-mtls")]
    Ferrule2Mtls,
    /// One nginx in front of the upstream.
    #[serde(rename = "nginx-1")]
    Nginx1,
    /// Two chained nginx, plaintext between them.
    #[serde(rename = "nginx-2")]
    Nginx2,
    /// Two chained nginx, TLS between them.
    #[serde(rename = "nginx-2-tls")]
    Nginx2Tls,
    /// One HAProxy in front of the upstream.
    #[serde(rename = "haproxy-1")]
    Haproxy1,
    /// Two chained HAProxy, plaintext between them.
    #[serde(rename = "haproxy-2")]
    Haproxy2,
    /// Two chained HAProxy, TLS between them.
    #[serde(rename = "haproxy-2-tls")]
    Haproxy2Tls,
}

/// Which software a target exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// No proxy.
    Direct,
    /// Ferrule sidecars.
    Ferrule,
    /// nginx.
    Nginx,
    /// HAProxy.
    Haproxy,
}

impl TargetKey {
    /// Every target, in report order (baseline first, then by family, 1 hop before 2).
    pub(crate) const ALL: [TargetKey; 10] = [
        TargetKey::Direct,
        TargetKey::Ferrule1,
        TargetKey::Ferrule2,
        TargetKey::Ferrule2Mtls,
        TargetKey::Nginx1,
        TargetKey::Nginx2,
        TargetKey::Nginx2Tls,
        TargetKey::Haproxy1,
        TargetKey::Haproxy2,
        TargetKey::Haproxy2Tls,
    ];

    /// Key on the command line and in JSON.
    pub(crate) fn key(self) -> &'static str {
        match self {
            TargetKey::Direct => "direct",
            TargetKey::Ferrule1 => "ferrule-1",
            TargetKey::Ferrule2 => "ferrule-2",
            TargetKey::Ferrule2Mtls => "ferrule-2-mtls",
            TargetKey::Nginx1 => "nginx-1",
            TargetKey::Nginx2 => "nginx-2",
            TargetKey::Nginx2Tls => "nginx-2-tls",
            TargetKey::Haproxy1 => "haproxy-1",
            TargetKey::Haproxy2 => "haproxy-2",
            TargetKey::Haproxy2Tls => "haproxy-2-tls",
        }
    }

    /// Row label in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TargetKey::Direct => "direct",
            TargetKey::Ferrule1 => "Ferrule, 1 sidecar",
            TargetKey::Ferrule2 => "Ferrule, 2 sidecars",
            TargetKey::Ferrule2Mtls => "Ferrule, 2 sidecars, mTLS",
            TargetKey::Nginx1 => "nginx, 1 hop",
            TargetKey::Nginx2 => "nginx, 2 hops",
            TargetKey::Nginx2Tls => "nginx, 2 hops, TLS between",
            TargetKey::Haproxy1 => "HAProxy, 1 hop",
            TargetKey::Haproxy2 => "HAProxy, 2 hops",
            TargetKey::Haproxy2Tls => "HAProxy, 2 hops, TLS between",
        }
    }

    /// The software it exercises.
    pub(crate) fn family(self) -> Family {
        match self {
            TargetKey::Direct => Family::Direct,
            TargetKey::Ferrule1 | TargetKey::Ferrule2 | TargetKey::Ferrule2Mtls => Family::Ferrule,
            TargetKey::Nginx1 | TargetKey::Nginx2 | TargetKey::Nginx2Tls => Family::Nginx,
            TargetKey::Haproxy1 | TargetKey::Haproxy2 | TargetKey::Haproxy2Tls => Family::Haproxy,
        }
    }

    /// Whether it needs TLS material.
    pub(crate) fn uses_tls(self) -> bool {
        matches!(
            self,
            TargetKey::Ferrule2Mtls | TargetKey::Nginx2Tls | TargetKey::Haproxy2Tls
        )
    }
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for TargetKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        TargetKey::ALL
            .into_iter()
            .find(|t| t.key().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<&str> = TargetKey::ALL.iter().map(|t| t.key()).collect();
                format!("unknown target `{s}` (known: {})", known.join(", "))
            })
    }
}

/// A process whose resources are charged to a target.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Charged {
    /// Name in reports, e.g. `server sidecar`, `nginx-client worker 1`.
    pub(crate) name: String,
    /// Its process id.
    pub(crate) pid: u32,
    /// Whether it serves requests (sidecars, HAProxy, nginx workers), so its peak RSS is the
    /// proxy's memory figure; nginx's master only supervises, and is charged CPU but not
    /// reported as the proxy's memory.
    pub(crate) serving: bool,
}

/// How one protocol reaches the upstream through a target.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Lane {
    /// Where the load generator connects.
    pub(crate) addr: SocketAddr,
    /// The hops and what each speaks, e.g. `h2c → nginx → HTTP/1.1 → upstream`.
    pub(crate) path: String,
}

/// One way of reaching the upstream.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// Which target.
    pub(crate) key: TargetKey,
    /// Per protocol: the address and the hops.
    pub(crate) lanes: BTreeMap<Protocol, Lane>,
    /// Host header / `:authority`, when it must name a mesh service rather than the address.
    pub(crate) host: Option<String>,
    /// Processes on the path whose CPU is charged per request (the upstream and the load
    /// generator are on every path, so they are reported separately, not charged).
    pub(crate) charged: Vec<Charged>,
}

impl Target {
    /// The URL the load generator requests for `protocol`, if this target serves it.
    pub(crate) fn url(&self, protocol: Protocol) -> Option<String> {
        self.lanes
            .get(&protocol)
            .map(|lane| format!("http://{}{}", lane.addr, protocol.path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keys_round_trip_and_serialise_as_keys() {
        for key in TargetKey::ALL {
            assert_eq!(key.key().parse::<TargetKey>(), Ok(key));
            assert_eq!(
                serde_json::to_value(key).unwrap(),
                serde_json::Value::String(key.key().into())
            );
        }
        assert!("envoy".parse::<TargetKey>().is_err());
    }
}
