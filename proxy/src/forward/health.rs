//! One endpoint's health as this sidecar has seen it: outlier ejection (consecutive failures,
//! failure rate over an interval, an ejection time that doubles with each ejection in a row,
//! one half-open probe before re-admission) and the peak-EWMA latency estimate the balancer
//! weighs endpoints by.
//!
//! A refused connect is one more failure here, not a separate memory: the 2-second "recently
//! failed" avoidance this replaces took a dead endpoint out of the balancer at once, but also
//! kept the failures that would eject it from coming, so a killed endpoint was ejected only
//! after five rounds of it (about 8 s). Counted as failures, five refused connects (each moved
//! to another endpoint by the attempt loop, unseen by the client) eject it within a few
//! requests, and from then on it is visible as ejected and costs one probe per ejection.
//!
//! Owned by the endpoint's `Upstream` (in `forward/upstream.rs`), so it is shared across
//! snapshots like the endpoint's pools: a reload does not forgive an ejected endpoint. What is
//! read on every pick (ejected until, the probe slot, the latency estimate) is in atomics; what
//! changes on an outcome is under one short lock, taken once per attempt.
//!
//! The health state knows nothing of balancers: whether one more ejection is allowed (the
//! `maxEjectedPercent` cap) is a question of the balancer's other endpoints, so the caller
//! answers it (`may_eject`), and counts what [`Health::observe`] reports in its metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrule_config::resilience::OutlierDetection;

/// How long the latency estimate takes to forget: after this much time without an outcome a
/// peak has decayed to 1/e, so an idle (or once slow) endpoint is tried again.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);
/// A half-open probe that has not reported within this long (its request was dropped, the
/// client went away) no longer holds the probe slot, so an endpoint cannot stay out for ever.
pub const PROBE_STALE: Duration = Duration::from_secs(10);

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectReason {
    /// `consecutiveFailures` in a row.
    ConsecutiveFailures,
    /// `failurePercent` of at least `minRequests` in one interval.
    FailureRate,
}

impl EjectReason {
    /// The reason's name in `/endpoints` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::ConsecutiveFailures => "consecutive-failures",
            EjectReason::FailureRate => "failure-rate",
        }
    }
}

/// What one outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing the balancer needs to count.
    None,
    /// The endpoint was ejected (again, if its probe failed).
    Ejected(EjectReason),
    /// Its probe succeeded: it takes traffic again.
    Readmitted,
}

/// Where an endpoint stands, for `/endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes traffic.
    Healthy,
    /// Out until `until` (then half-open: one probe).
    Ejected {
        /// Why.
        reason: EjectReason,
        /// When the next probe may go.
        until: Instant,
    },
    /// Its ejection time is over and one request is (or may now be) probing it.
    Probing {
        /// Why it was ejected.
        reason: EjectReason,
    },
}

/// A point-in-time view of an endpoint's health.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Healthy, ejected or probing.
    pub state: State,
    /// Ejections over the endpoint's life in this sidecar.
    pub ejections: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The latency estimate, if any outcome has been seen.
    pub latency: Option<Duration>,
}

/// Mutable part of the health, changed once per outcome.
#[derive(Debug)]
struct Counts {
    policy: OutlierDetection,
    consecutive: u32,
    window_start: Instant,
    window_total: u32,
    window_failures: u32,
    /// Ejections since the endpoint was last re-admitted: the exponent of the ejection time.
    in_a_row: u32,
    total_ejections: u64,
    reason: EjectReason,
}

/// One endpoint's health (see the module doc).
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` until which the endpoint is ejected; 0 while admitted. Stays
    /// set through the half-open phase, until a probe succeeds.
    ejected_until: AtomicU64,
    /// Milliseconds since `epoch` when the half-open probe was handed out; 0 if none.
    probe_at: AtomicU64,
    /// Peak-EWMA latency, nanoseconds as `f64` bits; 0 before any outcome.
    ewma_bits: AtomicU64,
    /// Milliseconds since `epoch` of the last latency sample.
    ewma_at: AtomicU64,
    counts: Mutex<Counts>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Health {
    /// A healthy endpoint with no history; `epoch` is the zero of its internal clock.
    pub fn new(epoch: Instant) -> Self {
        Health {
            epoch,
            ejected_until: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
            counts: Mutex::new(Counts {
                policy: OutlierDetection::default(),
                consecutive: 0,
                window_start: epoch,
                window_total: 0,
                window_failures: 0,
                in_a_row: 0,
                total_ejections: 0,
                reason: EjectReason::ConsecutiveFailures,
            }),
        }
    }

    /// Sets the destination's outlier detection policy (each snapshot does).
    pub fn set_policy(&self, policy: OutlierDetection) {
        self.lock().policy = policy;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("health lock poisoned")
    }

    /// Milliseconds since the epoch, at least 1 (0 means "never" in the atomics).
    fn ms(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() as u64).max(1)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Whether a request may be sent here now: admitted, or half-open with the probe slot free.
    /// Does not take the slot: [`Health::take`] does, for the endpoint actually picked.
    pub fn available(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.ms(now);
        now >= until && self.probe_free(now)
    }

    fn probe_free(&self, now_ms: u64) -> bool {
        let at = self.probe_at.load(Ordering::Relaxed);
        at == 0 || now_ms.saturating_sub(at) >= PROBE_STALE.as_millis() as u64
    }

    /// Claims the endpoint for one request: always granted while it is admitted; while it is
    /// half-open, granted to exactly one request (the probe). `ignore_ejection` (panic mode)
    /// grants it whatever the state, without taking the probe slot.
    pub fn take(&self, now: Instant, ignore_ejection: bool) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || ignore_ejection {
            return true;
        }
        let now = self.ms(now);
        if now < until {
            return false;
        }
        let at = self.probe_at.load(Ordering::Relaxed);
        let free = at == 0 || now.saturating_sub(at) >= PROBE_STALE.as_millis() as u64;
        free && self
            .probe_at
            .compare_exchange(at, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether the endpoint is out of the balancer now (ejected, or half-open with its probe
    /// in flight).
    pub fn ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// The peak-EWMA latency estimate at `now`, decayed towards zero for the time since the
    /// last sample; `None` before any sample.
    pub fn latency(&self, now: Instant) -> Option<f64> {
        let ewma = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        if ewma == 0.0 {
            return None;
        }
        let idle = self
            .ms(now)
            .saturating_sub(self.ewma_at.load(Ordering::Relaxed));
        Some(ewma * (-(idle as f64) / EWMA_DECAY.as_millis() as f64).exp())
    }

    /// Feeds the latency estimate: a sample above it takes its place at once (the peak), one
    /// below it pulls it down with weight `1 - e^(-elapsed/τ)`. Called under the counts lock,
    /// so samples do not race each other.
    fn sample(&self, rtt: Duration, now: Instant, peak_only: bool) {
        let rtt = (rtt.as_nanos() as f64).max(1.0);
        let now_ms = self.ms(now);
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = now_ms.saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        let next = if prev == 0.0 || rtt > prev {
            rtt
        } else if peak_only {
            return;
        } else {
            let w = (-elapsed / EWMA_DECAY.as_millis() as f64).exp();
            // At least a small step even for back-to-back samples in the same millisecond, so
            // a burst of fast responses brings a stale peak down.
            let w = w.min(0.99);
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now_ms, Ordering::Relaxed);
    }

    /// Records the outcome of one attempt: `ok` is false for a connect failure, a reset, an
    /// attempt timeout or a 5xx response; `rtt` is the time to the response head (or to the
    /// failure). `may_eject` is asked only when the outcome would eject a healthy endpoint,
    /// and says whether the balancer's cap allows one more ejection.
    pub fn observe(
        &self,
        ok: bool,
        rtt: Duration,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> Transition {
        let mut c = self.lock();
        // A failure only ever raises the estimate (a timeout should), never lowers it: an
        // endpoint that fails fast must not look fast.
        self.sample(rtt, now, !ok);
        let now_ms = self.ms(now);
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 {
            // Out of the balancer. Only the probe's outcome counts; the others are requests
            // that were in flight when it was ejected.
            let probe = self.probe_at.load(Ordering::Relaxed);
            if now_ms < until || probe == 0 {
                return Transition::None;
            }
            self.probe_at.store(0, Ordering::Relaxed);
            if ok {
                c.consecutive = 0;
                c.in_a_row = 0;
                c.window_start = now;
                c.window_total = 0;
                c.window_failures = 0;
                self.ejected_until.store(0, Ordering::Relaxed);
                return Transition::Readmitted;
            }
            let reason = c.reason;
            self.eject(&mut c, reason, now);
            return Transition::Ejected(reason);
        }
        if now.saturating_duration_since(c.window_start) >= c.policy.interval {
            c.window_start = now;
            c.window_total = 0;
            c.window_failures = 0;
        }
        c.window_total += 1;
        if ok {
            c.consecutive = 0;
            return Transition::None;
        }
        c.window_failures += 1;
        c.consecutive += 1;
        let p = c.policy;
        let reason = if p.consecutive_failures > 0 && c.consecutive >= p.consecutive_failures {
            EjectReason::ConsecutiveFailures
        } else if p.failure_percent > 0
            && c.window_total >= p.min_requests
            && u64::from(c.window_failures) * 100
                >= u64::from(p.failure_percent) * u64::from(c.window_total)
        {
            EjectReason::FailureRate
        } else {
            return Transition::None;
        };
        if !may_eject() {
            // The cap is reached: the counts stay, so the next failure asks again.
            return Transition::None;
        }
        self.eject(&mut c, reason, now);
        Transition::Ejected(reason)
    }

    /// Ejects for `base × 2^(in a row − 1)`, capped at the maximum.
    fn eject(&self, c: &mut Counts, reason: EjectReason, now: Instant) {
        c.in_a_row = c.in_a_row.saturating_add(1);
        c.total_ejections += 1;
        c.reason = reason;
        c.consecutive = 0;
        c.window_start = now;
        c.window_total = 0;
        c.window_failures = 0;
        let factor = 1u32.checked_shl(c.in_a_row - 1).unwrap_or(u32::MAX);
        let time = c
            .policy
            .base_ejection_time
            .saturating_mul(factor)
            .min(c.policy.max_ejection_time);
        self.probe_at.store(0, Ordering::Relaxed);
        self.ejected_until
            .store(self.ms(now + time), Ordering::Relaxed);
    }

    /// Where the endpoint stands now.
    pub fn report(&self, now: Instant) -> Report {
        let c = self.lock();
        let until = self.ejected_until.load(Ordering::Relaxed);
        let state = if until == 0 {
            State::Healthy
        } else if self.ms(now) < until {
            State::Ejected {
                reason: c.reason,
                until: self.instant(until),
            }
        } else {
            State::Probing { reason: c.reason }
        };
        Report {
            state,
            ejections: c.total_ejections,
            consecutive_failures: c.consecutive,
            latency: self.latency(now).map(|ns| Duration::from_nanos(ns as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 3,
            failure_percent: 50,
            min_requests: 10,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(3),
            max_ejected_percent: 50,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn consecutive_failures_eject_and_one_probe_readmits() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.set_policy(policy());
        let yes = || true;
        assert_eq!(h.observe(false, MS, t0, yes), Transition::None);
        assert_eq!(h.observe(false, MS, t0, yes), Transition::None);
        // A success in between resets the streak.
        assert_eq!(h.observe(true, MS, t0, yes), Transition::None);
        assert_eq!(h.observe(false, MS, t0, yes), Transition::None);
        assert_eq!(h.observe(false, MS, t0, yes), Transition::None);
        assert_eq!(
            h.observe(false, MS, t0, yes),
            Transition::Ejected(EjectReason::ConsecutiveFailures)
        );
        assert!(!h.available(t0) && !h.take(t0, false));
        // Panic mode uses it anyway, without taking the probe.
        assert!(h.take(t0, true));
        // Outcomes of requests that were in flight do not count while it is out.
        assert_eq!(h.observe(true, MS, t0, yes), Transition::None);
        let t1 = t0 + Duration::from_millis(999);
        assert!(!h.available(t1));
        let t2 = t0 + Duration::from_secs(1);
        assert!(h.available(t2));
        assert!(matches!(h.report(t2).state, State::Probing { .. }));
        // Exactly one probe.
        assert!(h.take(t2, false));
        assert!(!h.available(t2) && !h.take(t2, false));
        assert_eq!(h.observe(true, MS, t2, yes), Transition::Readmitted);
        assert!(h.available(t2) && !h.ejected());
        assert_eq!(h.report(t2).state, State::Healthy);
        assert_eq!(h.report(t2).ejections, 1);
    }

    #[test]
    fn a_failed_probe_doubles_the_ejection_up_to_the_cap() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.set_policy(policy());
        for _ in 0..3 {
            h.observe(false, MS, t0, || true);
        }
        let mut at = t0;
        // 1 s, then 2 s, then 3 s (capped, not 4 s), then 3 s again.
        for secs in [1, 2, 3, 3] {
            let until = match h.report(at).state {
                State::Ejected { until, .. } => until,
                s => panic!("not ejected: {s:?}"),
            };
            assert_eq!(until - at, Duration::from_secs(secs));
            at = until;
            assert!(h.take(at, false), "the probe after {secs} s");
            assert_eq!(
                h.observe(false, MS, at, || true),
                Transition::Ejected(EjectReason::ConsecutiveFailures)
            );
        }
        // A success resets the streak: the next ejection is the base time again.
        at += Duration::from_secs(3);
        assert!(h.take(at, false));
        assert_eq!(h.observe(true, MS, at, || true), Transition::Readmitted);
        for _ in 0..3 {
            h.observe(false, MS, at, || true);
        }
        match h.report(at).state {
            State::Ejected { until, .. } => assert_eq!(until - at, Duration::from_secs(1)),
            s => panic!("not ejected: {s:?}"),
        }
        assert_eq!(h.report(at).ejections, 6);
    }

    #[test]
    fn failure_rate_needs_the_minimum_in_one_interval() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.set_policy(OutlierDetection {
            consecutive_failures: 0,
            ..policy()
        });
        // 4 failures in 9 requests: below the minimum of 10, however bad the rate.
        for i in 0..9 {
            assert_eq!(h.observe(i % 2 == 0, MS, t0, || true), Transition::None);
        }
        // A new interval starts from zero.
        let t1 = t0 + Duration::from_secs(10);
        for i in 0..9 {
            assert_eq!(h.observe(i % 2 == 1, MS, t1, || true), Transition::None);
        }
        // The 10th request of the interval: 5 failures of 10 is 50%.
        assert_eq!(
            h.observe(false, MS, t1, || true),
            Transition::Ejected(EjectReason::FailureRate)
        );
    }

    #[test]
    fn the_cap_is_asked_and_holds() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.set_policy(policy());
        for _ in 0..5 {
            assert_eq!(h.observe(false, MS, t0, || false), Transition::None);
        }
        assert!(h.available(t0));
        // Once the cap allows it, the next failure ejects.
        assert_eq!(
            h.observe(false, MS, t0, || true),
            Transition::Ejected(EjectReason::ConsecutiveFailures)
        );
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_a_while() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.set_policy(policy());
        for _ in 0..3 {
            h.observe(false, MS, t0, || true);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert!(h.take(t1, false));
        assert!(!h.take(t1 + Duration::from_secs(9), false));
        assert!(h.take(t1 + PROBE_STALE, false));
    }

    #[test]
    fn latency_peaks_at_once_and_decays() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        assert_eq!(h.latency(t0), None);
        h.observe(true, Duration::from_millis(10), t0, || true);
        // A slow response raises the estimate at once.
        let t1 = t0 + MS;
        h.observe(true, Duration::from_millis(100), t1, || true);
        let peak = h.latency(t1).unwrap();
        assert!((peak - 100e6).abs() < 1e3, "{peak}");
        // Fast responses pull it down, but not at once.
        let t2 = t1 + Duration::from_secs(1);
        h.observe(true, Duration::from_millis(10), t2, || true);
        let after = h.latency(t2).unwrap();
        assert!(after < 95e6 && after > 50e6, "{after}");
        // A quick failure never makes it look faster.
        h.observe(false, Duration::from_micros(1), t2, || true);
        assert_eq!(h.latency(t2).unwrap(), after);
        // Idle for one time constant: down to 1/e.
        let idle = h.latency(t2 + EWMA_DECAY).unwrap();
        assert!((idle - after / std::f64::consts::E).abs() < after * 0.01);
    }
}
