//! Rate limits of routes: the [`RateLimiter`] seam and the local limiter behind it, a token
//! bucket written as GCRA (the generic cell rate algorithm: one "theoretical arrival time" per
//! bucket instead of a token count and a refill time).
//!
//! Why not the `governor` crate: it would fit the algorithm, but it reads its own clock
//! (`quanta`), which tokio's paused test clock cannot drive, so a limiter test would have to
//! sleep in real time; it brings `dashmap`, `quanta`, `futures-timer` and `nonzero_ext` for
//! what is about twenty lines here; and its keyed store grows until the caller calls
//! `retain_recent`, which this module would have to schedule anyway. The unkeyed bucket here is
//! one `AtomicU64` updated by compare-and-swap (no lock); keyed buckets share a map under a
//! mutex, bounded in size.
//!
//! A bucket is *full* (its next request admitted as if it had never been seen) once its
//! theoretical arrival time is in the past, so a key idle that long can be forgotten without
//! changing any answer: that is how the keyed map evicts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrule_config::resilience::RateLimit;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// Most distinct keys one limiter tracks. Beyond it, requests with a key not yet seen share
/// one overflow bucket until idle keys are swept, so random header values cannot grow the
/// map, nor escape the limit.
pub const MAX_KEYS: usize = 10_000;

/// Decides whether a request may pass a route's limit.
///
/// The seam where a global limiter (counted over Redis, shared by every instance of the
/// service) slots in beside the local one: the check stays synchronous so that planning stays
/// synchronous, and a global limiter would answer from tokens it leases in batches in the
/// background, falling back to its local share when the store is unreachable.
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Takes one token from the bucket of `key` (`None`: the route's shared bucket). `Err`
    /// carries how long until a token is available.
    fn check(&self, key: Option<&[u8]>) -> Result<(), Duration>;
}

/// The GCRA parameters of one limit, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Time one request "costs" (1 / rate).
    interval: u64,
    /// How far ahead of now a bucket's arrival time may run: `burst - 1` intervals, so a full
    /// bucket admits `burst` requests at once.
    tolerance: u64,
}

impl Rate {
    fn new(cfg: &RateLimit) -> Self {
        let interval = 1_000_000_000 / u64::from(cfg.requests_per_second.max(1));
        Rate {
            interval,
            tolerance: interval * u64::from(cfg.burst.max(1) - 1),
        }
    }

    /// One request at `now` against arrival time `tat`: the new arrival time, or the wait.
    fn step(self, tat: u64, now: u64) -> Result<u64, u64> {
        let base = tat.max(now);
        let ahead = base - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        Ok(base + self.interval)
    }
}

/// The limiter of one route in this sidecar.
#[derive(Debug)]
pub struct Local {
    epoch: Instant,
    rate: Rate,
    /// The shared bucket (unkeyed limits) or the overflow bucket (keyed ones).
    shared: AtomicU64,
    keyed: Option<Mutex<Keys>>,
}

#[derive(Debug, Default)]
struct Keys {
    buckets: HashMap<Box<[u8]>, u64>,
    /// When full buckets were last swept out (ns since the epoch).
    last_sweep: u64,
}

impl Local {
    /// A limiter for `cfg`, with one bucket per key if the limit is keyed.
    pub fn new(cfg: &RateLimit) -> Self {
        Local {
            epoch: Instant::now(),
            rate: Rate::new(cfg),
            shared: AtomicU64::new(0),
            keyed: cfg.key.is_some().then(Mutex::default),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn check_shared(&self, now: u64) -> Result<(), u64> {
        let mut tat = self.shared.load(Relaxed);
        loop {
            let next = self.rate.step(tat, now)?;
            match self
                .shared
                .compare_exchange_weak(tat, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Keys tracked now (for tests and the admin view).
    pub fn keys(&self) -> usize {
        self.keyed.as_ref().map_or(0, |k| {
            k.lock().expect("limiter lock poisoned").buckets.len()
        })
    }
}

impl RateLimiter for Local {
    fn check(&self, key: Option<&[u8]>) -> Result<(), Duration> {
        let now = self.now();
        let result = match (&self.keyed, key) {
            (Some(keyed), Some(key)) => {
                let mut k = keyed.lock().expect("limiter lock poisoned");
                if let Some(tat) = k.buckets.get_mut(key) {
                    self.rate.step(*tat, now).map(|next| *tat = next)
                } else {
                    // Forget full buckets when the map is full, at most once a second (a sweep
                    // is a pass over the map, under the lock).
                    if k.buckets.len() >= MAX_KEYS
                        && now.saturating_sub(k.last_sweep) >= 1_000_000_000
                    {
                        k.buckets.retain(|_, tat| *tat > now);
                        k.last_sweep = now;
                    }
                    if k.buckets.len() < MAX_KEYS {
                        let next = self.rate.step(0, now);
                        if let Ok(next) = next {
                            k.buckets.insert(key.into(), next);
                        }
                        next.map(drop)
                    } else {
                        drop(k);
                        self.check_shared(now)
                    }
                }
            }
            _ => self.check_shared(now),
        };
        result.map_err(Duration::from_nanos)
    }
}

/// A route's rate limit as the pipeline uses it: the policy, the limiter, and its counters.
#[derive(Debug)]
pub struct RouteLimit {
    /// The policy (a new snapshot with the same one keeps this limiter and its buckets).
    pub cfg: RateLimit,
    /// The limiter.
    pub limiter: Arc<dyn RateLimiter>,
    /// Requests refused with 429.
    pub enforced: Counter,
    /// Requests let through in shadow mode that would have been refused.
    pub shadowed: Counter,
    /// When shadow mode last logged (seconds since the limiter's start), so a sustained
    /// overage logs a line a second, not one per request.
    last_log: AtomicU64,
}

impl RouteLimit {
    /// A limit with a fresh local limiter.
    pub fn new(cfg: RateLimit, enforced: Counter, shadowed: Counter) -> Self {
        RouteLimit {
            limiter: Arc::new(Local::new(&cfg)),
            cfg,
            enforced,
            shadowed,
            last_log: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether a shadow-mode overage should be logged now (at most once a second).
    pub fn should_log(&self) -> bool {
        let now = START.elapsed().as_secs();
        self.last_log.swap(now, Relaxed) != now
    }
}

static START: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_config::resilience::{RateKey, Side};

    fn limit(rps: u32, burst: u32, keyed: bool) -> Local {
        Local::new(&RateLimit {
            requests_per_second: rps,
            burst,
            key: keyed.then(|| RateKey::Header("x-user".into())),
            shadow: false,
            side: Side::Inbound,
        })
    }

    fn admitted(l: &Local, key: Option<&[u8]>, n: usize) -> usize {
        (0..n).filter(|_| l.check(key).is_ok()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let l = limit(100, 20, false);
        // A full bucket takes exactly `burst` at once.
        assert_eq!(admitted(&l, None, 50), 20);
        // The next token is one interval (10 ms) away.
        assert_eq!(l.check(None).unwrap_err(), Duration::from_millis(10));
        // Over 10 s of steady overload, 100 per second get through, no more.
        let mut n = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            n += admitted(&l, None, 5);
        }
        assert_eq!(n, 1000);
        // Idle for a second and a bit: the bucket is full again, and no fuller.
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert_eq!(admitted(&l, None, 50), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_rounded_up_to_whole_seconds() {
        let l = limit(1, 1, false);
        l.check(None).unwrap();
        let wait = l.check(None).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(retry_after_secs(wait), 1);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(retry_after_secs(l.check(None).unwrap_err()), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets_and_their_number_is_bounded() {
        let l = limit(10, 2, true);
        assert_eq!(admitted(&l, Some(b"alice"), 5), 2);
        assert_eq!(admitted(&l, Some(b"bob"), 5), 2);
        // Requests without the header share one bucket.
        assert_eq!(admitted(&l, None, 5), 2);
        // A flood of random keys: the map stops at MAX_KEYS, the rest share the overflow
        // bucket (already spent above by the keyless requests), so they are not admitted.
        let mut extra = 0;
        for i in 0..(MAX_KEYS + 500) {
            if l.check(Some(format!("k{i}").as_bytes())).is_ok() && l.keys() >= MAX_KEYS {
                extra += 1;
            }
        }
        assert_eq!(l.keys(), MAX_KEYS);
        assert!(extra <= 1, "{extra} new keys admitted beyond the map");
        // Once they are idle (buckets full again), they are swept out for new keys.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.check(Some(b"carol")).is_ok());
        assert_eq!(l.keys(), 1);
    }
}
