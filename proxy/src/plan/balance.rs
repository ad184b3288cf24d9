//! Picking an endpoint for a request, and what each attempt's outcome teaches the balancer.
//!
//! Five rules (`trafficPolicy.loadBalancer`): weighted round robin; weighted random;
//! power-of-two-choices least-request (load = requests in flight); peak-EWMA, the default (of
//! two random endpoints, the one with the lower latency estimate × (in flight + 1), over its
//! weight); and ring hash (consistent hashing of a request key). Before the rule runs, the
//! candidates are narrowed, in this order:
//!
//! 1. endpoints already tried for this request are out;
//! 2. ejected endpoints (see `forward::health`; a refused connect is a failure there) are out,
//!    unless more than `maxEjectedPercent` of the endpoints are ejected: then the balancer is
//!    in **panic mode** and uses every endpoint (counted in `ferrule_lb_panic_total`), as
//!    Envoy does, because concentrating all traffic on the few left would take them down too.
//!    Ejection itself stops at the cap, so this happens when endpoints are shared with another
//!    balancer (a subset and its whole service) that ejected them, or when a reload lowered
//!    the cap;
//! 3. with locality on and a zone known for this sidecar, only endpoints of its zone, while at
//!    least `failoverBelow` percent of that zone's endpoints are available.
//!
//! If that leaves nothing, the next step back is used (any available endpoint, then any
//! untried one): a request is better sent somewhere doubtful than refused.
//!
//! Not tower's `balance::p2c::Balance` (nor its `PeakEwma`): that service needs `&mut self` to
//! pick, so sharing one per destination across connections needs a `Buffer` (a task and a
//! channel hop on every request), and it learns endpoints from a `Discover` stream, whereas
//! ours arrive whole in a snapshot. Picking here is a read of an immutable endpoint list plus
//! atomics, done on the caller's task; the latency estimate follows tower's `PeakEwma` (peak
//! taken at once, decay with a time constant) but lives in the endpoint's shared health.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule_config::resilience::Destination;
use ferrule_config::LoadBalancer;
use rand::Rng;

use crate::forward::health::{EjectReason, Transition};
use crate::forward::upstream::Upstream;
use crate::telemetry::metrics::LbMetrics;

/// Virtual nodes per unit of weight on the hash ring: enough that each endpoint's share of
/// keys is within a few percent of its weight's share.
const VNODES_PER_WEIGHT: u32 = 100;
/// Most virtual nodes on one ring (fewer per weight when the weights add up to more), so a
/// large service's ring stays a few megabytes at most.
const MAX_VNODES: u32 = 100_000;

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Endpoint name (for /endpoints and logs; also what its ring positions are hashed from,
    /// so they stay put when other endpoints come and go).
    pub name: Arc<str>,
    /// Shared connection state, load and health.
    pub upstream: Arc<Upstream>,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Whether a Ferrule sidecar listens there (then the hop is HTTP/2).
    pub sidecar: bool,
    /// Its zone, for locality.
    pub zone: Option<Arc<str>>,
    /// The identity it registered with (shown in /endpoints).
    pub identity: Option<Arc<str>>,
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
    /// Ring-hash positions and their members, sorted by position (empty unless `ring_hash`).
    hash_ring: Vec<(u64, u32)>,
    /// This sidecar's zone, when locality applies.
    zone: Option<Arc<str>>,
    /// Below this percentage of the local zone's endpoints available, use every zone.
    failover_below: u32,
    /// Most endpoints ejected at once, as a percentage; beyond it, panic mode.
    max_ejected_percent: u32,
    metrics: LbMetrics,
}

/// A set of member indices: on the stack up to 128 members (no allocation per pick for
/// ordinary services), on the heap beyond.
struct Bits {
    inline: [u64; 2],
    heap: Vec<u64>,
}

impl Bits {
    fn new(n: usize) -> Self {
        Bits {
            inline: [0; 2],
            heap: if n > 128 {
                vec![0; n.div_ceil(64)]
            } else {
                Vec::new()
            },
        }
    }

    fn words(&mut self) -> &mut [u64] {
        if self.heap.is_empty() {
            &mut self.inline
        } else {
            &mut self.heap
        }
    }

    fn set(&mut self, i: usize, on: bool) {
        let w = &mut self.words()[i / 64];
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    fn get(&self, i: usize) -> bool {
        let words: &[u64] = if self.heap.is_empty() {
            &self.inline
        } else {
            &self.heap
        };
        words[i / 64] & (1 << (i % 64)) != 0
    }

    fn count(&self) -> usize {
        let words: &[u64] = if self.heap.is_empty() {
            &self.inline
        } else {
            &self.heap
        };
        words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The index of the `k`-th member in the set.
    fn nth(&self, n: usize, k: usize) -> usize {
        (0..n).filter(|&i| self.get(i)).nth(k).expect("k < count")
    }
}

impl Balancer {
    /// A balancer over `members` with the default destination policy and no locality;
    /// `cursor` carries round-robin position across reloads.
    pub fn new(lb: LoadBalancer, members: Vec<Member>, cursor: Arc<AtomicUsize>) -> Self {
        let ring = smooth_ring(&members.iter().map(|m| m.weight).collect::<Vec<_>>());
        let hash_ring = if lb == LoadBalancer::RingHash {
            hash_ring(&members)
        } else {
            Vec::new()
        };
        let dest = Destination::default();
        Balancer {
            lb,
            members,
            ring,
            cursor,
            hash_ring,
            zone: None,
            failover_below: dest.locality.failover_below,
            max_ejected_percent: dest.outlier_detection.max_ejected_percent,
            metrics: LbMetrics::default(),
        }
    }

    /// Applies the destination's policy: locality (for a sidecar in `zone`), the ejection cap,
    /// and the metric handles ejections and panics are counted in.
    pub fn with_policy(mut self, dest: &Destination, zone: Option<Arc<str>>, m: LbMetrics) -> Self {
        self.zone = zone.filter(|_| dest.locality.enabled);
        self.failover_below = dest.locality.failover_below;
        self.max_ejected_percent = dest.outlier_detection.max_ejected_percent;
        self.metrics = m;
        self
    }

    /// The endpoints.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The rule.
    pub fn kind(&self) -> LoadBalancer {
        self.lb
    }

    /// The round-robin cursor (kept across reloads).
    pub fn cursor(&self) -> &Arc<AtomicUsize> {
        &self.cursor
    }

    /// Which members are available now (not ejected, or half-open with the probe free), and
    /// whether so many are not that the balancer is in panic mode.
    fn available(&self, now: Instant) -> (Bits, bool) {
        let n = self.members.len();
        let mut bits = Bits::new(n);
        for (i, m) in self.members.iter().enumerate() {
            let h = m.upstream.health();
            bits.set(i, h.available(now));
        }
        let unavailable = n - bits.count();
        let panic = unavailable * 100 > self.max_ejected_percent as usize * n;
        (bits, panic)
    }

    /// Whether the balancer is in panic mode now (for /endpoints).
    pub fn panicking(&self) -> bool {
        !self.members.is_empty() && self.available(Instant::now()).1
    }

    /// Picks an endpoint not in `tried`; `None` when every endpoint has been tried. `hash` is
    /// the request's key for `ring_hash` (`None`: a random endpoint).
    pub fn pick(&self, tried: &[usize], hash: Option<u64>) -> Option<usize> {
        let n = self.members.len();
        if tried.len() >= n {
            return None;
        }
        let now = Instant::now();
        let (avail, panic) = self.available(now);
        if panic {
            self.metrics.panic.inc();
        }
        let mut untried = Bits::new(n);
        for i in 0..n {
            untried.set(i, !tried.contains(&i));
        }
        // Each tier narrows the one after it; the first that leaves someone is used.
        let mut tiers: [Option<Bits>; 3] = [None, None, None];
        let mut good = Bits::new(n);
        for i in 0..n {
            good.set(i, untried.get(i) && (panic || avail.get(i)));
        }
        if let Some(zone) = &self.zone {
            let local = |i: usize| self.members[i].zone.as_deref() == Some(&**zone);
            let total = (0..n).filter(|&i| local(i)).count();
            let healthy = (0..n)
                .filter(|&i| local(i) && (panic || avail.get(i)))
                .count();
            if total > 0 && healthy * 100 >= self.failover_below as usize * total {
                let mut near = Bits::new(n);
                for i in 0..n {
                    near.set(i, good.get(i) && local(i));
                }
                tiers[0] = Some(near);
            }
        }
        tiers[1] = Some(good);
        tiers[2] = Some(untried);
        for (tier, set) in tiers.iter_mut().enumerate() {
            let Some(set) = set else { continue };
            // The last tier takes a member whatever its health: better a doubtful endpoint
            // than no attempt at all.
            let ignore_ejection = panic || tier == 2;
            while set.count() > 0 {
                let i = self.choose(set, hash);
                if self.members[i].upstream.health().take(now, ignore_ejection) {
                    return Some(i);
                }
                // Lost the half-open probe to another request.
                set.set(i, false);
            }
        }
        None
    }

    /// Applies the rule to a non-empty candidate set.
    fn choose(&self, set: &Bits, hash: Option<u64>) -> usize {
        let n = self.members.len();
        let m = set.count();
        let mut rng = rand::rng();
        match (self.lb, hash) {
            (LoadBalancer::RoundRobin, _) => {
                let len = self.ring.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.ring[(start + k) % len] as usize)
                    .find(|&i| set.get(i))
                    .expect("the ring holds every member")
            }
            (LoadBalancer::RingHash, Some(h)) => {
                // The first position at or after the key's, going round; members not in the
                // set are passed over, so a key whose endpoint is out moves to the next one on
                // the ring, and only those keys move.
                let len = self.hash_ring.len();
                let start = self.hash_ring.partition_point(|(p, _)| *p < h);
                (0..len)
                    .map(|k| self.hash_ring[(start + k) % len].1 as usize)
                    .find(|&i| set.get(i))
                    .expect("the ring holds every member")
            }
            (LoadBalancer::Random | LoadBalancer::RingHash, _) => {
                let total: u64 = (0..n)
                    .filter(|&i| set.get(i))
                    .map(|i| u64::from(self.members[i].weight))
                    .sum();
                let mut r = rng.random_range(0..total.max(1));
                for i in (0..n).filter(|&i| set.get(i)) {
                    let w = u64::from(self.members[i].weight);
                    if r < w {
                        return i;
                    }
                    r -= w;
                }
                set.nth(n, m - 1)
            }
            (LoadBalancer::LeastRequest | LoadBalancer::PeakEwma, _) => {
                if m == 1 {
                    return set.nth(n, 0);
                }
                let a = rng.random_range(0..m);
                let b = (a + rng.random_range(1..m)) % m;
                let (a, b) = (set.nth(n, a), set.nth(n, b));
                if self.lb == LoadBalancer::PeakEwma {
                    self.lower_cost(a, b, Instant::now())
                } else {
                    self.less_loaded(a, b)
                }
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

    /// Peak-EWMA: cost = latency estimate × (in flight + 1) / weight. An endpoint with no
    /// estimate yet takes the other's (neutral: neither favoured for being new, which would
    /// flood it, nor avoided, which would starve it of the samples it needs); with neither
    /// known, load alone decides.
    fn lower_cost(&self, a: usize, b: usize, now: Instant) -> usize {
        let (ma, mb) = (&self.members[a], &self.members[b]);
        let (ea, eb) = (
            ma.upstream.health().latency(now),
            mb.upstream.health().latency(now),
        );
        let (ea, eb) = match (ea, eb) {
            (Some(x), Some(y)) => (x, y),
            (Some(x), None) => (x, x),
            (None, Some(y)) => (y, y),
            (None, None) => (1.0, 1.0),
        };
        let cost = |m: &Member, e: f64| e * (m.upstream.in_flight() as f64 + 1.0) / m.weight as f64;
        if cost(ma, ea) <= cost(mb, eb) {
            a
        } else {
            b
        }
    }

    /// Records one attempt's outcome on member `i` (see `forward::health`): `ok` is false for
    /// a failed connect, a reset, an attempt timeout or a 5xx response; `rtt` is the time to
    /// the response head or the failure. Ejects only within `maxEjectedPercent` of this
    /// balancer's endpoints, and counts ejections.
    pub fn observe(&self, i: usize, ok: bool, rtt: Duration) {
        let Some(member) = self.members.get(i) else {
            return;
        };
        let n = self.members.len();
        let cap = self.max_ejected_percent as usize;
        let may_eject = || {
            let ejected = self
                .members
                .iter()
                .filter(|m| m.upstream.health().ejected())
                .count();
            (ejected + 1) * 100 <= cap * n
        };
        match member
            .upstream
            .health()
            .observe(ok, rtt, Instant::now(), may_eject)
        {
            Transition::Ejected(reason) => {
                match reason {
                    EjectReason::ConsecutiveFailures => self.metrics.ejected_consecutive.inc(),
                    EjectReason::FailureRate => self.metrics.ejected_rate.inc(),
                };
                tracing::info!(endpoint = %member.name, address = %member.upstream.addr(), reason = reason.as_str(), "endpoint ejected");
            }
            Transition::Readmitted => {
                tracing::info!(endpoint = %member.name, address = %member.upstream.addr(), "endpoint re-admitted after a successful probe");
            }
            Transition::None => {}
        }
    }
}

/// The 64-bit hash of a request key (a header or cookie value, a source address): FNV-1a,
/// then a 64-bit finaliser to spread FNV's weak low bits. Written out rather than std's
/// `DefaultHasher` because every sidecar must map a key to the same ring position, across
/// processes and Rust versions, and `DefaultHasher`'s algorithm is explicitly unspecified;
/// strength against chosen keys is not needed (a client choosing its key only chooses its
/// own endpoint).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring: each member at `weight × VNODES_PER_WEIGHT` positions hashed from its name and
/// the replica number, so a member's positions do not depend on the others.
fn hash_ring(members: &[Member]) -> Vec<(u64, u32)> {
    let total: u32 = members.iter().map(|m| m.weight.max(1)).sum();
    let per = (MAX_VNODES / total.max(1)).clamp(1, VNODES_PER_WEIGHT);
    let mut ring = Vec::with_capacity((total * per) as usize);
    for (i, m) in members.iter().enumerate() {
        let base = hash_key(m.name.as_bytes());
        for r in 0..m.weight.max(1) * per {
            ring.push((mix(base ^ mix(u64::from(r) + 1)), i as u32));
        }
    }
    ring.sort_unstable();
    ring
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
    use ferrule_config::resilience::OutlierDetection;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                name: format!("e{i}").into(),
                upstream: Upstream::new(([127, 0, 0, 1], 10_000 + i as u16).into()),
                weight: *w,
                sidecar: false,
                zone: None,
                identity: None,
            })
            .collect()
    }

    fn balancer(lb: LoadBalancer, weights: &[u32]) -> Balancer {
        Balancer::new(lb, members(weights), Default::default())
    }

    /// Ejects member `i` with consecutive failures (default policy: 5).
    fn eject(b: &Balancer, i: usize) {
        for _ in 0..5 {
            b.observe(i, false, Duration::from_millis(1));
        }
        assert!(
            b.members()[i].upstream.health().ejected(),
            "e{i} not ejected"
        );
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
        let b = balancer(LoadBalancer::RoundRobin, &[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[], None).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(b.pick(&[0, 1], None), Some(2));
        assert_eq!(b.pick(&[0, 1, 2], None), None);
    }

    #[test]
    fn p2c_spreads_and_honours_tried() {
        for lb in [LoadBalancer::LeastRequest, LoadBalancer::PeakEwma] {
            let b = balancer(lb, &[1, 1, 1, 1]);
            let mut seen = [0; 4];
            for _ in 0..400 {
                seen[b.pick(&[], None).unwrap()] += 1;
            }
            assert!(seen.iter().all(|&c| c > 40), "{lb:?}: {seen:?}");
            for _ in 0..50 {
                assert_eq!(b.pick(&[0, 1, 3], None), Some(2));
            }
        }
    }

    #[test]
    fn random_follows_the_weights() {
        let b = balancer(LoadBalancer::Random, &[1, 3]);
        let mut seen = [0; 2];
        for _ in 0..4000 {
            seen[b.pick(&[], None).unwrap()] += 1;
        }
        // Expected 1000 and 3000; five standard deviations (~27) either side is plenty.
        assert!((850..1150).contains(&seen[0]), "{seen:?}");
    }

    #[test]
    fn peak_ewma_avoids_the_slow_endpoint() {
        let b = balancer(LoadBalancer::PeakEwma, &[1, 1]);
        b.observe(0, true, Duration::from_millis(1));
        b.observe(1, true, Duration::from_millis(50));
        // With two endpoints both are always the two choices: the cheaper one wins each time.
        for _ in 0..100 {
            assert_eq!(b.pick(&[], None), Some(0));
        }
        // Load counts too: 100 requests in flight make the fast one cost more than the slow.
        let _busy: Vec<_> = (0..100)
            .map(|_| b.members()[0].upstream.in_flight_guard())
            .collect();
        assert_eq!(b.pick(&[], None), Some(1));
    }

    #[test]
    fn peak_ewma_treats_an_unknown_endpoint_as_neutral() {
        let b = balancer(LoadBalancer::PeakEwma, &[1, 1]);
        b.observe(0, true, Duration::from_millis(50));
        // Same latency assumed; fewer in flight wins.
        let _busy = b.members()[0].upstream.in_flight_guard();
        assert_eq!(b.pick(&[], None), Some(1));
    }

    fn ring(n: usize) -> Balancer {
        balancer(LoadBalancer::RingHash, &vec![1; n])
    }

    #[test]
    fn ring_hash_keeps_keys_and_moves_few_when_one_endpoint_changes() {
        let keys: Vec<u64> = (0..10_000)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect();
        let names = |b: &Balancer| -> Vec<Arc<str>> {
            keys.iter()
                .map(|&k| b.members()[b.pick(&[], Some(k)).unwrap()].name.clone())
                .collect()
        };
        let ten = ring(10);
        let before = names(&ten);
        assert_eq!(before, names(&ten), "a key moved with nothing changed");
        // Spread: each of 10 endpoints gets its tenth, within a few percent.
        for i in 0..10 {
            let got = before.iter().filter(|n| ***n == *format!("e{i}")).count();
            assert!((700..1300).contains(&got), "e{i}: {got} keys of 10000");
        }
        // Add an eleventh endpoint: only keys that go to it move, about 1/11 of them.
        let eleven = ring(11);
        let after = names(&eleven);
        let moved: Vec<usize> = (0..keys.len()).filter(|&k| before[k] != after[k]).collect();
        assert!(moved.iter().all(|&k| &*after[k] == "e10"));
        assert!(
            moved.len() <= 10_000 / 11 * 13 / 10,
            "{} moved",
            moved.len()
        );
        assert!(moved.len() >= 10_000 / 11 * 7 / 10, "{} moved", moved.len());
        // Remove one of ten: only the keys it had move.
        let nine = balancer(LoadBalancer::RingHash, &[1; 10]);
        let mut m = nine.members().to_vec();
        m.remove(3);
        let nine = Balancer::new(LoadBalancer::RingHash, m, Default::default());
        let after = names(&nine);
        for k in 0..keys.len() {
            if &*before[k] != "e3" {
                assert_eq!(
                    before[k], after[k],
                    "key {k} moved without its endpoint leaving"
                );
            }
        }
    }

    #[test]
    fn ring_hash_without_a_key_spreads_and_skips_tried() {
        let b = ring(3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[b.pick(&[], None).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        let k = hash_key(b"alice");
        let home = b.pick(&[], Some(k)).unwrap();
        let next = b.pick(&[home], Some(k)).unwrap();
        assert_ne!(home, next);
        // The next one on the ring is stable too.
        assert_eq!(b.pick(&[home], Some(k)), Some(next));
    }

    fn zoned(zones: &[&str], failover_below: u32) -> Balancer {
        let mut m = members(&vec![1; zones.len()]);
        for (m, z) in m.iter_mut().zip(zones) {
            m.zone = Some((*z).into());
        }
        let mut dest = Destination::default();
        dest.locality.failover_below = failover_below;
        Balancer::new(LoadBalancer::PeakEwma, m, Default::default()).with_policy(
            &dest,
            Some("a".into()),
            LbMetrics::default(),
        )
    }

    #[test]
    fn locality_prefers_the_local_zone_and_fails_over() {
        let b = zoned(&["a", "a", "b", "b"], 70);
        for _ in 0..100 {
            assert!(b.pick(&[], None).unwrap() < 2);
        }
        // Tried locals: the others are next.
        assert!(b.pick(&[0, 1], None).unwrap() >= 2);
        // One of two local endpoints out: 50% < 70%, so every zone.
        eject(&b, 0);
        let mut remote = 0;
        for _ in 0..200 {
            let i = b.pick(&[], None).unwrap();
            assert_ne!(i, 0, "an ejected endpoint was picked");
            remote += usize::from(i >= 2);
        }
        assert!(remote > 50, "{remote} of 200 left the zone");
        // With a threshold of 50%, one healthy local of two is enough to stay.
        let b = zoned(&["a", "a", "b", "b"], 50);
        eject(&b, 0);
        for _ in 0..100 {
            assert_eq!(b.pick(&[], None), Some(1));
        }
        // Without a zone of its own, or with locality off, a sidecar spreads.
        let mut dest = Destination::default();
        dest.locality.enabled = false;
        let mut m = members(&[1, 1]);
        m[0].zone = Some("a".into());
        m[1].zone = Some("b".into());
        let b = Balancer::new(LoadBalancer::Random, m, Default::default()).with_policy(
            &dest,
            Some("a".into()),
            LbMetrics::default(),
        );
        let remote = (0..200).filter(|_| b.pick(&[], None) == Some(1)).count();
        assert!(remote > 50, "{remote}");
    }

    #[test]
    fn ejection_is_capped_and_panic_uses_everyone() {
        let b = balancer(LoadBalancer::RoundRobin, &[1, 1, 1]);
        eject(&b, 0);
        for _ in 0..10 {
            assert_ne!(b.pick(&[], None), Some(0));
        }
        // 50% of 3: a second ejection would be 67%, so e1 stays in however it fails.
        for _ in 0..20 {
            b.observe(1, false, Duration::from_millis(1));
        }
        assert!(!b.members()[1].upstream.health().ejected());
        assert!(!b.panicking());
        // A reload lowers the cap to 30%: the one already ejected is beyond it, so the new
        // balancer (same endpoints, same health) is in panic mode and uses every endpoint,
        // the ejected one included, and counts it.
        let dest = Destination {
            outlier_detection: OutlierDetection {
                max_ejected_percent: 30,
                ..OutlierDetection::default()
            },
            ..Destination::default()
        };
        let m = LbMetrics::default();
        let b = Balancer::new(
            LoadBalancer::RoundRobin,
            b.members().to_vec(),
            Default::default(),
        )
        .with_policy(&dest, None, m.clone());
        assert!(b.panicking());
        let picks: Vec<_> = (0..3).map(|_| b.pick(&[], None).unwrap()).collect();
        assert!(picks.contains(&0), "{picks:?}");
        assert_eq!(m.panic.get(), 3);
    }

    #[test]
    fn an_ejected_endpoint_gets_exactly_one_probe() {
        let dest = Destination {
            outlier_detection: OutlierDetection {
                base_ejection_time: Duration::from_millis(10),
                ..OutlierDetection::default()
            },
            ..Destination::default()
        };
        let b = balancer(LoadBalancer::RoundRobin, &[1, 1, 1]).with_policy(
            &dest,
            None,
            LbMetrics::default(),
        );
        for m in b.members() {
            m.upstream.health().set_policy(dest.outlier_detection);
        }
        eject(&b, 0);
        std::thread::sleep(Duration::from_millis(15));
        let zeros = (0..30).filter(|_| b.pick(&[], None) == Some(0)).count();
        assert_eq!(zeros, 1, "one probe, no more, while it is out");
        b.observe(0, true, Duration::from_millis(1));
        let zeros = (0..30).filter(|_| b.pick(&[], None) == Some(0)).count();
        assert_eq!(zeros, 10, "back in the rotation");
    }

    #[test]
    fn key_hash_is_stable() {
        // Pinned: every sidecar, of any build, must put a key at the same ring position.
        assert_eq!(hash_key(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash_key(b"alice"), hash_key(b"alice"));
        assert_ne!(hash_key(b"alice"), hash_key(b"alicf"));
    }
}
