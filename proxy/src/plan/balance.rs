//! Picking an endpoint for a request: weighted round robin or power-of-two-choices
//! least-request, skipping endpoints already tried for this request and, while others are
//! available, endpoints whose connect failed moments ago.
//!
//! Not tower's `balance::p2c::Balance`: that service needs `&mut self` to pick, so sharing one
//! per destination across connections needs a `Buffer` (a task and a channel hop on every
//! request), and it learns endpoints from a `Discover` stream, whereas ours arrive whole in a
//! snapshot. Picking here is a read of an immutable endpoint list plus atomic counters, done on
//! the caller's task; load is requests in flight, as in tower's `PendingRequests`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferrule_config::LoadBalancer;
use rand::Rng;

use crate::forward::upstream::Upstream;

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Endpoint name (for /config and logs).
    pub name: Arc<str>,
    /// Shared connection state and load.
    pub upstream: Arc<Upstream>,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Whether a Ferrule sidecar listens there (then the hop is HTTP/2).
    pub sidecar: bool,
}

/// The endpoints of one backend and the rule that picks among them.
#[derive(Debug)]
pub struct Balancer {
    lb: LoadBalancer,
    members: Vec<Member>,
    /// Round-robin order: member indices, each as often as its weight, interleaved.
    ring: Vec<u32>,
    /// Shared with the previous snapshot's balancer for the same backend, so a reload does not
    /// send the next request back to the first endpoint.
    cursor: Arc<AtomicUsize>,
}

impl Balancer {
    /// A balancer over `members`; `cursor` carries round-robin position across reloads.
    pub fn new(lb: LoadBalancer, members: Vec<Member>, cursor: Arc<AtomicUsize>) -> Self {
        let ring = smooth_ring(&members.iter().map(|m| m.weight).collect::<Vec<_>>());
        Balancer {
            lb,
            members,
            ring,
            cursor,
        }
    }

    /// The endpoints.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The round-robin cursor (kept across reloads).
    pub fn cursor(&self) -> &Arc<AtomicUsize> {
        &self.cursor
    }

    /// Picks an endpoint not in `tried`; `None` when every endpoint has been tried.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.members.len();
        if tried.len() >= n {
            return None;
        }
        let usable = |i: usize, allow_failed: bool| {
            !tried.contains(&i) && (allow_failed || !self.members[i].upstream.recently_failed())
        };
        match self.lb {
            LoadBalancer::RoundRobin => {
                let len = self.ring.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                for allow_failed in [false, true] {
                    for k in 0..len {
                        let i = self.ring[(start + k) % len] as usize;
                        if usable(i, allow_failed) {
                            return Some(i);
                        }
                    }
                }
                None
            }
            LoadBalancer::LeastRequest => {
                if n == 1 {
                    return Some(0);
                }
                let mut rng = rand::rng();
                // Fast path: two distinct random endpoints, both usable.
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                if usable(a, false) && usable(b, false) {
                    return Some(self.less_loaded(a, b));
                }
                for allow_failed in [false, true] {
                    let cands: Vec<usize> = (0..n).filter(|&i| usable(i, allow_failed)).collect();
                    match cands.len() {
                        0 => continue,
                        1 => return Some(cands[0]),
                        m => {
                            let a = rng.random_range(0..m);
                            let b = (a + rng.random_range(1..m)) % m;
                            return Some(self.less_loaded(cands[a], cands[b]));
                        }
                    }
                }
                None
            }
        }
    }

    fn less_loaded(&self, a: usize, b: usize) -> usize {
        let (ma, mb) = (&self.members[a], &self.members[b]);
        // Compare in_flight / weight without dividing.
        let la = ma.upstream.in_flight() as u64 * mb.weight as u64;
        let lb = mb.upstream.in_flight() as u64 * ma.weight as u64;
        if la <= lb {
            a
        } else {
            b
        }
    }
}

/// Builds a round-robin order in which each index appears `weight` times (weights reduced by
/// their gcd), spread out by the smooth weighted round-robin rule rather than in bursts.
fn smooth_ring(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|w| i64::from((w / g).max(1))).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut ring = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        ring.push(best as u32);
    }
    ring
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                name: format!("e{i}").into(),
                upstream: Upstream::new(([127, 0, 0, 1], 10_000 + i as u16).into()),
                weight: *w,
                sidecar: false,
            })
            .collect()
    }

    #[test]
    fn ring_is_weighted_and_interleaved() {
        assert_eq!(smooth_ring(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_ring(&[2, 2]), vec![0, 1]);
        let r = smooth_ring(&[5, 1, 1]);
        assert_eq!(r.len(), 7);
        assert_eq!(r.iter().filter(|&&i| i == 0).count(), 5);
        assert_ne!(&r[..3], &[0, 0, 0]);
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let b = Balancer::new(
            LoadBalancer::RoundRobin,
            members(&[1, 1, 1]),
            Default::default(),
        );
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(b.pick(&[0, 1]), Some(2));
        assert_eq!(b.pick(&[0, 1, 2]), None);
    }

    #[test]
    fn p2c_spreads_and_honours_tried() {
        let b = Balancer::new(
            LoadBalancer::LeastRequest,
            members(&[1, 1, 1, 1]),
            Default::default(),
        );
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[b.pick(&[]).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 40), "{seen:?}");
        for _ in 0..50 {
            assert_eq!(b.pick(&[0, 1, 3]), Some(2));
        }
    }
}
