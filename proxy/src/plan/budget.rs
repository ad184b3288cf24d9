//! The retry budget of one destination service: retries may add at most a share of the
//! requests (20% by default) plus a floor per second (10/s), counted over a sliding window
//! (10 s). When a destination fails hard, this is what stops every caller from tripling its
//! load (a retry storm): a retry the budget has no room for is not made, and is counted.
//!
//! Counting is lock-free: the window is cut into [`SLOTS`] slots of window/`SLOTS` each, every
//! slot an epoch tag and two counters. A request adds one to the current slot (one clock
//! subtraction and an atomic add on the path of every request); a retry reads the slots still
//! inside the window. Two requests that find a stale slot at the same moment may both reset
//! it, losing a count or two: the budget is approximate by that much, never unbounded.
//!
//! Not tower's `retry::budget::TpsBudget`: it is the same idea (deposit per request, withdraw
//! per retry, over a window), but it takes a `Mutex` on every deposit and its window counts
//! only time, whereas this one is shared by every connection of the sidecar on the request path
//! and must cost no lock there.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrule_config::resilience::RetryBudget;

/// Slots per window.
const SLOTS: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    /// Which slot-length period since `epoch` this slot counts (+1; 0 = never used).
    period: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// One destination's counts of requests and retries over the recent window.
#[derive(Debug)]
pub struct Budget {
    epoch: Instant,
    slots: [Slot; SLOTS],
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }
}

impl Budget {
    fn period(&self, now: Instant, window: Duration) -> u64 {
        let slot_ms = (window.as_millis() as u64 / SLOTS as u64).max(1);
        now.saturating_duration_since(self.epoch).as_millis() as u64 / slot_ms + 1
    }

    fn slot(&self, period: u64) -> &Slot {
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let seen = slot.period.load(Ordering::Relaxed);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one request (not its retries) that started at `now`.
    pub fn deposit(&self, now: Instant, cfg: &RetryBudget) {
        let period = self.period(now, cfg.window);
        self.slot(period).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes room for one retry at `now`; `false` (and nothing taken) when the budget is spent.
    pub fn withdraw(&self, now: Instant, cfg: &RetryBudget) -> bool {
        let period = self.period(now, cfg.window);
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let p = s.period.load(Ordering::Relaxed);
            // Only the slots of the last SLOTS periods, this one included.
            if p != 0 && p + SLOTS as u64 > period && p <= period {
                requests += u64::from(s.requests.load(Ordering::Relaxed));
                retries += u64::from(s.retries.load(Ordering::Relaxed));
            }
        }
        let floor = u64::from(cfg.min_per_second) * cfg.window.as_secs().max(1);
        let allowed = requests * u64::from(cfg.percent) / 100 + floor;
        if retries >= allowed {
            return false;
        }
        self.slot(period).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(percent: u32, floor: u32) -> RetryBudget {
        RetryBudget {
            percent,
            min_per_second: floor,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn allows_the_share_plus_the_floor_then_refuses() {
        let b = Budget::default();
        let c = cfg(20, 1);
        let now = b.epoch + Duration::from_millis(5);
        for _ in 0..100 {
            b.deposit(now, &c);
        }
        // 20% of 100 plus 1/s over 10 s.
        let granted = (0..100).filter(|_| b.withdraw(now, &c)).count();
        assert_eq!(granted, 30);
        // More requests make more room.
        for _ in 0..10 {
            b.deposit(now, &c);
        }
        assert_eq!((0..100).filter(|_| b.withdraw(now, &c)).count(), 2);
    }

    #[test]
    fn the_window_slides() {
        let b = Budget::default();
        let c = cfg(0, 1);
        let t0 = b.epoch;
        assert_eq!((0..50).filter(|_| b.withdraw(t0, &c)).count(), 10);
        // Half a window later the spent retries still count.
        let t1 = t0 + Duration::from_secs(5);
        assert!(!b.withdraw(t1, &c));
        // A full window later they have left it.
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!((0..50).filter(|_| b.withdraw(t2, &c)).count(), 10);
    }
}
