//! The one finish step: every request, on every codec, is recorded here once, when its
//! response head is sent (or the proxy answered it): the request count, the latency to the
//! response head, the response by status and reason code, and which codec carried it. Access
//! log lines and spans (the observability issue) are written here too, so every path reports
//! alike.

use std::time::Duration;

use crate::base::Reason;
use crate::telemetry::metrics::{Codec, Metrics, ServiceMetrics};

/// Records one finished request. `latency` is from the request head's arrival to the
/// response head's departure, whatever the codec; the body's relay is not part of it.
pub fn record(
    metrics: &Metrics,
    svc: &ServiceMetrics,
    codec: Codec,
    status: u16,
    reason: Option<Reason>,
    latency: Duration,
) {
    svc.requests.inc();
    svc.latency.observe(latency.as_secs_f64());
    metrics.response(svc, status, reason.map_or("", Reason::as_str));
    svc.carried(codec).inc();
}
