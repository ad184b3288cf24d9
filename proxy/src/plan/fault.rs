//! Fault injection of a route, compiled: which faults a request gets (by the configured shares,
//! or forced by a `ferrule-fault` request header when the route allows it), the response an
//! abort is answered with, and the counters. The pipeline applies them: an abort and a delay
//! before the first attempt, in `Pipeline::admit`.

use std::sync::Arc;
use std::time::Duration;

use ferrule_config::resilience::Faults;
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use rand::Rng;

use crate::codec::render::Custom;

/// The request header that forces a fault: `delay`, `abort` or both (`delay,abort`).
pub const FAULT_HEADER: &str = "ferrule-fault";

/// What one request gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Wait this long before the first attempt.
    pub delay: Option<Duration>,
    /// Answer with the route's abort response (after the delay, as Envoy orders them).
    pub abort: bool,
}

/// A route's faults, ready to draw from.
#[derive(Debug)]
pub struct RouteFaults {
    /// The policy.
    pub cfg: Faults,
    /// The abort's response: its HTTP status, and the gRPC status a gRPC caller gets.
    pub abort: Arc<Custom>,
    delays: Counter,
    aborts: Counter,
}

impl RouteFaults {
    /// Compiles `cfg`, counting into `delays` and `aborts`.
    pub fn new(cfg: Faults, delays: Counter, aborts: Counter) -> Self {
        let (http, grpc) = match &cfg.abort {
            Some(a) => (a.http_status, a.grpc_status),
            None => (None, None),
        };
        // A plain HTTP caller of an abort configured with a gRPC status only gets 503.
        let http = http
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        RouteFaults {
            // A gRPC caller gets the configured grpc-status, else the renderer maps the HTTP one.
            abort: Arc::new(Custom {
                status: Some(http),
                grpc_status: grpc,
                ..Custom::default()
            }),
            cfg,
            delays,
            aborts,
        }
    }

    /// Draws the faults of one request; `forced` is the value of its `ferrule-fault` header.
    /// Counts what it injects.
    pub fn draw(&self, forced: Option<&[u8]>) -> Injected {
        let forced = forced.filter(|_| self.cfg.allow_header);
        let asks = |what: &[u8]| {
            forced.is_some_and(|v| {
                v.split(|b| *b == b',')
                    .any(|w| w.trim_ascii().eq_ignore_ascii_case(what))
            })
        };
        let share = |percent: u32| percent >= 100 || rand::rng().random_range(0..100) < percent;
        let delay = self
            .cfg
            .delay
            .filter(|d| asks(b"delay") || share(d.percent))
            .map(|d| d.fixed);
        let abort = self
            .cfg
            .abort
            .is_some_and(|a| asks(b"abort") || share(a.percent));
        if delay.is_some() {
            self.delays.inc();
        }
        if abort {
            self.aborts.inc();
        }
        Injected { delay, abort }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_config::resilience::{AbortFault, DelayFault};

    fn faults(delay: u32, abort: u32, allow_header: bool) -> RouteFaults {
        RouteFaults::new(
            Faults {
                delay: Some(DelayFault {
                    fixed: Duration::from_millis(5),
                    percent: delay,
                }),
                abort: Some(AbortFault {
                    http_status: Some(418),
                    grpc_status: None,
                    percent: abort,
                }),
                allow_header,
            },
            Counter::default(),
            Counter::default(),
        )
    }

    #[test]
    fn the_header_forces_only_what_it_names_and_only_when_allowed() {
        let f = faults(0, 0, true);
        assert_eq!(f.draw(None), Injected::default());
        assert_eq!(
            f.draw(Some(b"abort")),
            Injected {
                delay: None,
                abort: true
            }
        );
        assert_eq!(
            f.draw(Some(b"delay, Abort")),
            Injected {
                delay: Some(Duration::from_millis(5)),
                abort: true
            }
        );
        assert_eq!(f.draw(Some(b"delayed")), Injected::default());
        assert_eq!(f.aborts.get(), 2);
        assert_eq!(f.delays.get(), 1);
        // A route that does not allow the header ignores it.
        assert_eq!(
            faults(0, 0, false).draw(Some(b"abort")),
            Injected::default()
        );
    }

    #[test]
    fn shares_are_drawn_independently() {
        let f = faults(20, 10, false);
        let n = 20_000;
        let (mut d, mut a) = (0, 0);
        for _ in 0..n {
            let i = f.draw(None);
            d += usize::from(i.delay.is_some());
            a += usize::from(i.abort);
        }
        // 20% and 10% of 20,000: a binomial's standard deviation is under 60 here.
        assert!((3700..4300).contains(&d), "{d}");
        assert!((1750..2250).contains(&a), "{a}");
        assert_eq!(
            faults(100, 0, false).draw(None).delay,
            Some(Duration::from_millis(5))
        );
    }
}
