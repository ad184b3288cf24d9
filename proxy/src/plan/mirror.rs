//! Traffic mirroring's state: which requests of a route are copied (a share drawn in
//! `Pipeline::plan`), and, per shadow service, the bound on copies in flight and the counters.
//! The copies themselves are made and sent by the pipeline (`pipeline::mirror`), which needs
//! the floors below this one too (connections, bodies).
//!
//! The bound is what keeps a slow or stalled shadow from costing the primary traffic anything:
//! every copy in flight holds a connection, a task and the request's recorded body, so past
//! [`MAX_IN_FLIGHT`] copies towards one shadow service new copies are dropped (and counted)
//! rather than queued. A [`Gate`] is kept across snapshots, like a breaker, so copies still in
//! flight after a reload stay counted against the same bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::telemetry::metrics::MirrorMetrics;

/// Most copies in flight from this sidecar to one shadow service.
pub const MAX_IN_FLIGHT: usize = 64;

/// Whether a request is copied, for a route that mirrors `percent`% of its requests.
pub fn drawn(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::rng().random_range(0..100) < percent)
}

/// One shadow service's copies in flight, bounded, and its counters.
#[derive(Debug)]
pub struct Gate {
    in_flight: AtomicUsize,
    limit: usize,
    /// The counters, by outcome.
    pub counts: MirrorMetrics,
}

impl Gate {
    /// A gate of `limit` copies in flight, counting into `counts`.
    pub fn new(limit: usize, counts: MirrorMetrics) -> Self {
        Gate {
            in_flight: AtomicUsize::new(0),
            limit,
            counts,
        }
    }

    /// A place for one more copy, held until the ticket is dropped; `None` (and counted as
    /// `dropped_busy`) when the shadow service has its limit in flight.
    pub fn enter(self: &Arc<Self>) -> Option<Ticket> {
        let entered = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok();
        if !entered {
            self.counts.dropped_busy.inc();
            return None;
        }
        Some(Ticket(self.clone()))
    }

    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One copy's place under its shadow service's bound; it is given back when dropped, however
/// the copy ends (answered, failed, timed out, or its task cancelled).
#[derive(Debug)]
pub struct Ticket(Arc<Gate>);

impl Ticket {
    /// The gate it was taken from (for its counters).
    pub fn gate(&self) -> &Gate {
        &self.0
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_its_limit_and_counts_the_rest() {
        let gate = Arc::new(Gate::new(2, MirrorMetrics::default()));
        let a = gate.enter().expect("first place");
        let b = gate.enter().expect("second place");
        assert!(gate.enter().is_none(), "a third copy is over the limit");
        assert!(gate.enter().is_none());
        assert_eq!(gate.counts.dropped_busy.get(), 2);
        assert_eq!(gate.in_flight(), 2);
        drop(a);
        assert_eq!(gate.in_flight(), 1);
        let c = gate.enter().expect("a place freed by the first copy");
        drop((b, c));
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(gate.counts.dropped_busy.get(), 2);
    }

    #[test]
    fn the_gate_never_admits_more_than_its_limit_under_contention() {
        let gate = Arc::new(Gate::new(MAX_IN_FLIGHT, MirrorMetrics::default()));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (gate, peak) = (gate.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..10_000 {
                        if let Some(t) = gate.enter() {
                            held.push(t);
                        }
                        peak.fetch_max(gate.in_flight(), Ordering::Relaxed);
                        if i % 3 == 0 {
                            held.pop();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= MAX_IN_FLIGHT);
        assert_eq!(peak.load(Ordering::Relaxed), MAX_IN_FLIGHT);
        assert_eq!(gate.in_flight(), 0, "every ticket gave its place back");
        assert!(gate.counts.dropped_busy.get() > 0);
    }

    #[test]
    fn the_share_drawn_is_the_percentage() {
        assert!((0..1000).all(|_| drawn(100)));
        assert!((0..1000).all(|_| !drawn(0)));
        // 20,000 draws at 30%: mean 6,000, standard deviation sqrt(20000 × 0.3 × 0.7) ≈ 65;
        // ±6 standard deviations is missed about once in 10^9 runs.
        let n = (0..20_000).filter(|_| drawn(30)).count();
        assert!((5_610..=6_390).contains(&n), "{n} of 20,000 drawn at 30%");
        let n = (0..20_000).filter(|_| drawn(1)).count();
        // Mean 200, standard deviation ≈ 14.
        assert!((116..=284).contains(&n), "{n} of 20,000 drawn at 1%");
    }
}
