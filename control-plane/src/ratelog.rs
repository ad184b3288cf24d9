//! Rate-limited warnings: a hostile or broken client must not be able to fill the log.
//!
//! One [`Throttle`] per call site (a `static`) lets the first warning of each window through
//! and counts the rest, which the next warning that passes reports as `suppressed`. Logging
//! crates' filters work by level and target, not by rate, so this small piece is our own.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one warning per window from one call site.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    /// The window (counted from the process's first use of any throttle) that last let a
    /// warning through, plus one; 0 before the first.
    last: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    /// A throttle letting one warning through per `window`.
    pub const fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a warning may be logged now: `Some(n)`, with how many were held back since the
    /// last one that passed, or `None` (counted) while this window already had one.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let window = self.window.as_nanos().max(1);
        let slot = (now.saturating_duration_since(epoch()).as_nanos() / window) as u64 + 1;
        let last = self.last.load(Relaxed);
        if last != slot
            && self
                .last
                .compare_exchange(last, slot, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// `tracing::warn!` through a per-call-site [`Throttle`] of one warning a second; the warning
/// that passes carries `suppressed`, the number held back before it.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::ratelog::Throttle =
            $crate::ratelog::Throttle::new(::std::time::Duration::from_secs(1));
        if let Some(suppressed) = THROTTLE.allow() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_window_and_the_rest_counted() {
        let t = Throttle::new(Duration::from_secs(1));
        let t0 = epoch() + Duration::from_secs(10);
        assert_eq!(t.allow_at(t0), Some(0));
        for i in 0..1000 {
            assert_eq!(t.allow_at(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_millis(999)), None);
        // The next window lets one through, reporting what was held back.
        assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), Some(1001));
        assert_eq!(t.allow_at(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(5)), Some(1));
    }
}
