//! The circuit breaker of one destination (a service and subset, a `Target`): at most
//! `maxRequests` requests in flight from this sidecar, up to `maxPending` more waiting in a
//! first-in-first-out queue for at most `queueTimeout`, and beyond that an immediate
//! `overloaded`. Its state lives across snapshots (carried by `plan::policy`), and a new
//! snapshot only changes its limits.
//!
//! Why not `tokio::sync::Semaphore` alone: it is fair (FIFO) and its `try_acquire` is one
//! compare-and-swap, but every release takes the lock of its waiter list, even when nobody
//! waits, and the fast path releases once per request. Here the slots are one atomic counter;
//! the semaphore (starting with no permits) is only the queue, touched when a request must
//! wait or a waiter exists. An uncontended request costs one load and one compare-and-swap
//! to enter and one load and one subtraction to leave, no lock, no allocation.
//!
//! A freed slot goes to a waiter if one is still unserved (`waiting` counts the waiters no
//! slot has been promised to; a release promises one by counting a waiter out and adding a
//! permit, and the slot stays counted in `in_flight`), so newcomers never overtake the queue.
//! A release and a request joining the queue at the same moment each look at the other's
//! counter after changing their own, so at least one of them sees the freed slot. The counters are the Prometheus gauges themselves, so exporting them costs nothing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use ferrule_config::resilience::CircuitBreaker;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full.
    QueueFull,
    /// It waited `queueTimeout` (or until its deadline) without a slot.
    QueueTimeout,
}

/// One destination's concurrency limit and queue.
#[derive(Debug)]
pub struct Breaker {
    in_flight: Gauge,
    waiting: Gauge,
    max_requests: AtomicI64,
    max_pending: AtomicI64,
    queue_timeout_ns: AtomicU64,
    /// Hands freed slots to waiters in arrival order (tokio's semaphore is fair).
    queue: Semaphore,
}

/// A slot held by one request; dropping it frees the slot (to the first waiter, if any).
#[derive(Debug)]
#[must_use = "the slot is freed when this is dropped"]
pub struct Slot<'a>(&'a Breaker);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Breaker {
    /// A breaker with `cfg`'s limits whose counters are the gauges `in_flight` and `waiting`.
    pub fn new(cfg: &CircuitBreaker, in_flight: Gauge, waiting: Gauge) -> Self {
        let b = Breaker {
            in_flight,
            waiting,
            max_requests: AtomicI64::new(0),
            max_pending: AtomicI64::new(0),
            queue_timeout_ns: AtomicU64::new(0),
            queue: Semaphore::new(0),
        };
        b.set_limits(cfg);
        b
    }

    /// Applies a new snapshot's limits; requests in flight keep their slots. (A lower limit
    /// takes effect as requests finish.)
    pub fn set_limits(&self, cfg: &CircuitBreaker) {
        self.max_requests
            .store(i64::from(cfg.max_requests.max(1)), SeqCst);
        self.max_pending.store(i64::from(cfg.max_pending), SeqCst);
        self.queue_timeout_ns.store(
            u64::try_from(cfg.queue_timeout.as_nanos()).unwrap_or(u64::MAX),
            SeqCst,
        );
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Requests waiting for one.
    pub fn waiting(&self) -> i64 {
        self.waiting.get()
    }

    /// The limits in force: (max requests, max pending, queue timeout).
    pub fn limits(&self) -> (i64, i64, Duration) {
        (
            self.max_requests.load(SeqCst),
            self.max_pending.load(SeqCst),
            Duration::from_nanos(self.queue_timeout_ns.load(SeqCst)),
        )
    }

    /// Whether new requests wait or are refused now: every slot is taken.
    pub fn saturated(&self) -> bool {
        self.in_flight() >= self.max_requests.load(SeqCst)
    }

    /// Takes a slot if one is free and nobody waits (the uncontended path: no lock).
    fn try_enter(&self) -> bool {
        let max = self.max_requests.load(SeqCst);
        let n = self.in_flight.inner();
        let mut cur = n.load(SeqCst);
        while cur < max {
            match n.compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    fn release(&self) {
        if self.claim_waiter() {
            // The slot passes to the first waiter, still counted in flight.
            self.queue.add_permits(1);
            return;
        }
        self.in_flight.dec();
        // A request may have joined the queue between the claim and the decrement, after
        // failing to take a slot: take the slot back for it rather than leave it waiting.
        // (It looks at the counter after joining too: one of the two sees the other.)
        if self.waiting.get() > 0 && self.try_enter() {
            if self.claim_waiter() {
                self.queue.add_permits(1);
            } else {
                self.in_flight.dec();
            }
        }
    }

    /// Counts one waiter as served (or withdrawn): `waiting` counts waiters that no freed
    /// slot has been promised to yet.
    fn claim_waiter(&self) -> bool {
        self.waiting
            .inner()
            .fetch_update(SeqCst, SeqCst, |w| (w > 0).then(|| w - 1))
            .is_ok()
    }

    /// Joins the queue if it has room (a bounded queue: a full one fails at once).
    fn join(&self) -> bool {
        let max_pending = self.max_pending.load(SeqCst);
        self.waiting
            .inner()
            .fetch_update(SeqCst, SeqCst, |w| (w < max_pending).then_some(w + 1))
            .is_ok()
    }

    /// A slot if one is free and nobody waits, without waiting.
    #[inline]
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        // `then`, not `then_some`: a `Slot` made and dropped would free a slot never taken.
        (self.waiting.get() == 0 && self.try_enter()).then(|| Slot(self))
    }

    /// Waits for a slot: at once when one is free and nobody waits, else in the queue until
    /// `queueTimeout` or `deadline`, whichever comes first.
    pub async fn acquire(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Slot<'_>, Refused> {
        if self.waiting.get() == 0 && self.try_enter() {
            return Ok(Slot(self));
        }
        let timeout = Duration::from_nanos(self.queue_timeout_ns.load(SeqCst));
        let mut until = tokio::time::Instant::now() + timeout;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        loop {
            if !self.join() {
                return Err(Refused::QueueFull);
            }
            // A slot freed after our last look and before we were counted as waiting, by a
            // release that saw nobody waiting: withdraw and take it. If a release promised us
            // a slot in the meantime, its permit is on its way instead.
            if self.in_flight.get() < self.max_requests.load(SeqCst) && self.claim_waiter() {
                if self.try_enter() {
                    return Ok(Slot(self));
                }
                // Someone else took it: queue again.
                continue;
            }
            let mut waiter = Waiter {
                breaker: self,
                done: false,
            };
            let got = tokio::time::timeout_at(until, self.queue.acquire()).await;
            waiter.done = true;
            if let Ok(Ok(permit)) = got {
                // The permit stands for a slot already counted in flight.
                permit.forget();
                return Ok(Slot(self));
            }
            // Timed out: withdraw, unless a slot was promised to a waiter just now and none is
            // left to withdraw; then its permit is ours, and is about to arrive.
            if self.claim_waiter() {
                return Err(Refused::QueueTimeout);
            }
            if let Ok(permit) = self.queue.acquire().await {
                permit.forget();
            }
            return Ok(Slot(self));
        }
    }
}

/// A request waiting in the queue. If it is dropped while waiting (the client went away), it
/// withdraws, or passes on the slot promised to it. Only when the promise is still between
/// its two steps (counted, permit not yet added) does the slot stay parked as a permit, which
/// the next request to find the counter full takes at once: capacity is never lost, though
/// the in-flight gauge counts that slot until then.
struct Waiter<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.done || self.breaker.claim_waiter() {
            return;
        }
        if let Ok(permit) = self.breaker.queue.try_acquire() {
            permit.forget();
            self.breaker.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// Polls once: whether it is still waiting.
    fn pending<F: std::future::Future + Unpin>(f: &mut F) -> bool {
        f.now_or_never().is_none()
    }

    fn breaker(max_requests: u32, max_pending: u32, queue_ms: u64) -> Breaker {
        Breaker::new(
            &CircuitBreaker {
                max_requests,
                max_pending,
                queue_timeout: Duration::from_millis(queue_ms),
            },
            Gauge::default(),
            Gauge::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_fails_at_once_and_a_waiter_times_out() {
        let b = breaker(1, 1, 100);
        let held = b.acquire(None).await.unwrap();
        assert_eq!(b.in_flight(), 1);
        // One waits (it is polled until it is queued) ...
        let mut waiter = Box::pin(b.acquire(None));
        assert!(pending(&mut waiter));
        assert_eq!(b.waiting(), 1);
        // ... the next finds the queue full, without waiting at all.
        let t = tokio::time::Instant::now();
        assert_eq!(b.acquire(None).await.unwrap_err(), Refused::QueueFull);
        assert_eq!(t.elapsed(), Duration::ZERO);
        // The waiter gives up after the queue timeout, and is counted out of the queue.
        assert_eq!(waiter.await.unwrap_err(), Refused::QueueTimeout);
        assert_eq!(t.elapsed(), Duration::from_millis(100));
        assert_eq!(b.waiting(), 0);
        drop(held);
        assert_eq!(b.in_flight(), 0);
    }

    /// Regression: `try_acquire` built its `Slot` before knowing it had one, and dropping it
    /// freed a slot another request held.
    #[test]
    fn a_failed_try_acquire_frees_nothing() {
        let b = breaker(1, 1, 100);
        let held = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none());
        assert_eq!(b.in_flight(), 1);
        assert!(b.try_acquire().is_none());
        drop(held);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_deadline_shortens_the_wait() {
        let b = breaker(1, 1, 1000);
        let _held = b.acquire(None).await.unwrap();
        let t = tokio::time::Instant::now();
        let r = b.acquire(Some(t + Duration::from_millis(30))).await;
        assert_eq!(r.unwrap_err(), Refused::QueueTimeout);
        assert_eq!(t.elapsed(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn freed_slots_go_to_waiters_in_arrival_order_and_never_exceed_the_limit() {
        let b = breaker(2, 10, 10_000);
        let a = b.acquire(None).await.unwrap();
        let c = b.acquire(None).await.unwrap();
        let mut w1 = Box::pin(b.acquire(None));
        let mut w2 = Box::pin(b.acquire(None));
        assert!(pending(&mut w1));
        assert!(pending(&mut w2));
        // A newcomer does not overtake the queue even when a slot is about to free.
        let mut late = Box::pin(b.acquire(None));
        assert!(pending(&mut late));
        drop(a);
        // The slot went to the first waiter, not the second nor the newcomer.
        let s1 = w1.await.unwrap();
        assert!(pending(&mut w2));
        assert!(pending(&mut late));
        assert_eq!(b.in_flight(), 2);
        drop(c);
        let s2 = w2.await.unwrap();
        assert!(pending(&mut late));
        drop(s1);
        let s3 = late.await.unwrap();
        assert_eq!((b.in_flight(), b.waiting()), (2, 0));
        drop((s2, s3));
        assert_eq!(b.in_flight(), 0);
    }

    /// Regression: slots freed together, before the waiters ran, were each handed to "a
    /// waiter" while the waiters still counted themselves in the queue, so two more permits
    /// than waiters were parked and the breaker stayed at 2 in flight with nothing running
    /// (found by the overload integration test).
    #[tokio::test(start_paused = true)]
    async fn slots_freed_together_are_promised_once_each() {
        let b = breaker(4, 2, 10_000);
        let held: Vec<_> = [(); 4]
            .iter()
            .map(|_| b.acquire(None).now_or_never().unwrap().unwrap())
            .collect();
        let mut w1 = Box::pin(b.acquire(None));
        let mut w2 = Box::pin(b.acquire(None));
        assert!(pending(&mut w1) && pending(&mut w2));
        drop(held);
        let (s1, s2) = (w1.await.unwrap(), w2.await.unwrap());
        assert_eq!((b.in_flight(), b.waiting()), (2, 0));
        drop((s1, s2));
        assert_eq!((b.in_flight(), b.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_after_its_slot_was_promised_passes_it_on() {
        let b = breaker(1, 2, 10_000);
        let held = b.acquire(None).await.unwrap();
        let mut gone = Box::pin(b.acquire(None));
        let mut next = Box::pin(b.acquire(None));
        assert!(pending(&mut gone) && pending(&mut next));
        // The slot is promised to the first waiter, which goes away before it runs.
        drop(held);
        drop(gone);
        let s = next.await.unwrap();
        assert_eq!((b.in_flight(), b.waiting()), (1, 0));
        drop(s);
        assert_eq!((b.in_flight(), b.waiting()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_the_limit_holds_and_every_slot_comes_back() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let b = Arc::new(breaker(3, 1000, 10_000));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (b, now, peak) = (b.clone(), now.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..300 {
                    let _slot = b.acquire(None).await.unwrap();
                    let n = now.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(n, SeqCst);
                    tokio::task::yield_now().await;
                    now.fetch_sub(1, SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(SeqCst) <= 3, "peak {}", peak.load(SeqCst));
        // Slots parked as permits by a race count as in flight until the next waiter takes
        // them; none may be lost: all three can be taken again at once, and no fourth.
        let s: Vec<_> = [(); 3]
            .iter()
            .map(|_| b.acquire(None).now_or_never().unwrap())
            .collect();
        assert!(s.iter().all(Result::is_ok));
        assert!(pending(&mut Box::pin(b.acquire(None))));
        assert_eq!(b.in_flight(), 3);
        assert_eq!(b.waiting(), 0);
    }
}
