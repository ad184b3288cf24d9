//! The recent failures the proxy answered itself: a bounded ring of the last
//! [`CAPACITY`] requests that got a proxy-made response (any reason code), with what the
//! on-call engineer asks first — which route, which endpoint, why in words, how long it took
//! and how many attempts — served as JSON on the admin `/debug/requests`.
//!
//! Recorded by the finish step only when a request has a reason, so a request that succeeds
//! never touches it; a failure takes one short lock. No label of a metric could carry this
//! (endpoint addresses and details would make the series unbounded), and the access log is off
//! by default: this is the answer to "why did this fail?" that is always there.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferrule_config::time::rfc3339;

use super::access::TraceId;

/// Failures kept.
pub const CAPACITY: usize = 256;

/// The longest detail kept, in bytes: details name services and addresses, and a handful of
/// them could otherwise hold a lot of memory (an unknown host's message lists every service).
const DETAIL_MAX: usize = 512;

/// One proxy-made response.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When the request's head arrived.
    pub at: SystemTime,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// The destination service (the sidecar's own, inbound; `unknown` when the host named
    /// none).
    pub service: String,
    /// The matched route's name, if it had one.
    pub route: Option<Arc<str>>,
    /// The endpoint of the last attempt, if one was made.
    pub endpoint: Option<SocketAddr>,
    /// The status sent.
    pub status: u16,
    /// The reason code (`ferrule-error`).
    pub reason: &'static str,
    /// What happened, for the operator.
    pub detail: String,
    /// From the request head to the response head.
    pub duration: Duration,
    /// Attempts made upstream.
    pub attempts: u32,
    /// The codec that carried it.
    pub codec: &'static str,
    /// The caller's mesh identity, if it proved one.
    pub client: Option<Arc<str>>,
    /// From the request's `traceparent`, when the access log had it read.
    pub trace_id: Option<TraceId>,
}

/// The ring.
#[derive(Debug, Default)]
pub struct Recent {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    failures: VecDeque<Failure>,
    /// Failures recorded since start, the ones that fell out of the ring included.
    total: u64,
}

impl Recent {
    /// Keeps `f`, forgetting the oldest beyond [`CAPACITY`].
    pub fn push(&self, mut f: Failure) {
        if f.detail.len() > DETAIL_MAX {
            let mut end = DETAIL_MAX;
            while !f.detail.is_char_boundary(end) {
                end -= 1;
            }
            f.detail.truncate(end);
            f.detail.push('…');
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.failures.len() == CAPACITY {
            ring.failures.pop_front();
        }
        ring.failures.push_back(f);
        ring.total += 1;
    }

    /// The `/debug/requests` document: newest first.
    pub fn to_json(&self) -> serde_json::Value {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let requests: Vec<serde_json::Value> = ring
            .failures
            .iter()
            .rev()
            .map(|f| {
                serde_json::json!({
                    "time": rfc3339(f.at),
                    "direction": f.direction,
                    "service": f.service,
                    "route": f.route.as_deref(),
                    "endpoint": f.endpoint.map(|e| e.to_string()),
                    "status": f.status,
                    "reason": f.reason,
                    "detail": f.detail,
                    "durationMs": f.duration.as_secs_f64() * 1000.0,
                    "attempts": f.attempts,
                    "codec": f.codec,
                    "client": f.client.as_deref(),
                    "traceId": f.trace_id.as_ref().map(TraceId::as_str),
                })
            })
            .collect();
        serde_json::json!({
            "capacity": CAPACITY,
            "recorded": ring.total,
            "requests": requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(n: usize, detail: String) -> Failure {
        Failure {
            at: SystemTime::UNIX_EPOCH,
            direction: "outbound",
            service: format!("svc-{n}"),
            route: None,
            endpoint: None,
            status: 503,
            reason: "no-endpoints",
            detail,
            duration: Duration::from_millis(2),
            attempts: 0,
            codec: "fast",
            client: None,
            trace_id: None,
        }
    }

    #[test]
    fn keeps_the_newest_within_capacity_newest_first() {
        let r = Recent::default();
        for n in 0..CAPACITY + 10 {
            r.push(failure(n, "x".into()));
        }
        let j = r.to_json();
        assert_eq!(j["recorded"], CAPACITY as u64 + 10);
        let list = j["requests"].as_array().unwrap();
        assert_eq!(list.len(), CAPACITY);
        assert_eq!(list[0]["service"], format!("svc-{}", CAPACITY + 9));
        assert_eq!(list[CAPACITY - 1]["service"], "svc-10");
        assert_eq!(list[0]["durationMs"], 2.0);
    }

    #[test]
    fn long_details_are_cut_on_a_character_boundary() {
        let r = Recent::default();
        r.push(failure(0, "é".repeat(400)));
        let j = r.to_json();
        let d = j["requests"][0]["detail"].as_str().unwrap();
        assert!(d.len() <= DETAIL_MAX + '…'.len_utf8(), "{}", d.len());
        assert!(d.ends_with('…'));
    }
}
