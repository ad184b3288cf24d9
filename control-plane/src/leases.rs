//! Leases on endpoints registered by sidecars.
//!
//! A sidecar's hello registers its endpoint in the store under a lease (one transaction, which
//! also records the owner in the `leases` table). The lease's deadline lives in memory only:
//! heartbeats arrive every ttl/3 from every proxy, and writing each one to disk would cost an
//! fsync per heartbeat for no benefit, because a restarted control plane simply gives every
//! stored lease a fresh deadline (sidecars that are alive reconnect and renew it; dead ones
//! expire one TTL later, so a restart never flaps live endpoints).
//!
//! A stream that breaks without a goodbye leaves the lease running: a sidecar that reconnects
//! within the TTL keeps its endpoint without a flap. The expiry task deletes the endpoint of
//! a lease that ran out, which produces a snapshot without it.
//!
//! [`Leases`] owns the in-memory table and the group-commit queue, and uses only the store; the
//! shared state holds it, the push stream registers and renews through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrule_config::Endpoint;
use tokio::sync::{oneshot, watch};

use crate::shutdown::until_shutdown;
use crate::store::{Action, Store, StoreError};

/// A registration waiting for the next group commit.
#[derive(Debug)]
struct Pending {
    proxy: String,
    ep: Endpoint,
    now: Instant,
    reply: oneshot::Sender<Result<Action, StoreError>>,
}

#[derive(Debug, Clone)]
struct Lease {
    owner: String,
    deadline: Instant,
}

/// The lease table: endpoint name -> owner and deadline.
#[derive(Debug)]
pub struct Leases {
    store: Arc<Store>,
    ttl: Duration,
    table: Mutex<HashMap<String, Lease>>,
    /// Serialises the store side of register/release/expire. redb runs one write transaction
    /// at a time anyway, so this costs no throughput; it makes "decide from the in-memory
    /// table, then write the store" atomic, so an expiry cannot delete an endpoint that a
    /// reconnecting sidecar registered in between.
    ops: tokio::sync::Mutex<()>,
    /// Registrations queued for the next transaction: when a fleet of new sidecars says hello at
    /// once, they are written together (group commit) instead of one fsync each, which took
    /// 30 s for 1,000 sidecars on a disk with 30 ms fsyncs.
    queue: Mutex<Vec<Pending>>,
}

impl Leases {
    /// Loads the leases recorded in the store, each with a fresh deadline of now + `ttl`, or
    /// now + `grace` when that is longer (the time sidecars need to reconnect after a restart).
    pub fn load(
        store: Arc<Store>,
        ttl: Duration,
        now: Instant,
        grace: Duration,
    ) -> Result<Leases, StoreError> {
        let table = store
            .leases()?
            .into_iter()
            .map(|(name, owner)| {
                let deadline = now + ttl.max(grace);
                (name, Lease { owner, deadline })
            })
            .collect();
        Ok(Leases {
            store,
            ttl,
            table: Mutex::new(table),
            ops: tokio::sync::Mutex::new(()),
            queue: Mutex::new(Vec::new()),
        })
    }

    /// How long a lease lasts without a heartbeat.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a proxy should send a heartbeat: three chances before the lease runs out.
    pub fn heartbeat_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.table.lock().expect("lease lock").len()
    }

    /// Whether a lease on the endpoint `name` is held.
    pub fn contains(&self, name: &str) -> bool {
        self.table.lock().expect("lease lock").contains_key(name)
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers (upserts) `ep` for `proxy` and starts its lease. A registration the store
    /// refuses (an operator's endpoint, or one held by another identity) is a
    /// [`StoreError::Conflict`] and starts no lease.
    ///
    /// Whoever takes the store lock writes every registration queued so far in one
    /// transaction; registrations that arrive during that write go in the next one.
    pub async fn register(
        &self,
        proxy: &str,
        ep: Endpoint,
        now: Instant,
    ) -> Result<Action, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.lock().expect("lease queue lock").push(Pending {
            proxy: proxy.to_owned(),
            ep,
            now,
            reply,
        });
        {
            let _op = self.ops.lock().await;
            let batch = std::mem::take(&mut *self.queue.lock().expect("lease queue lock"));
            if !batch.is_empty() {
                self.commit_registrations(batch).await;
            }
        }
        answer
            .await
            .map_err(|_| StoreError::Task("registration was dropped".into()))?
    }

    async fn commit_registrations(&self, batch: Vec<Pending>) {
        let regs: Vec<(Endpoint, String)> = batch
            .iter()
            .map(|p| (p.ep.clone(), p.proxy.clone()))
            .collect();
        match self.store.run(move |s| s.register_endpoints(regs)).await {
            Ok(actions) => {
                let mut table = self.table.lock().expect("lease lock");
                for (p, outcome) in batch.into_iter().zip(actions) {
                    let reply = match outcome {
                        Ok(action) => {
                            table.insert(
                                p.ep.name.clone(),
                                Lease {
                                    owner: p.proxy,
                                    deadline: p.now + self.ttl,
                                },
                            );
                            Ok(action)
                        }
                        Err(why) => Err(StoreError::Conflict(why)),
                    };
                    let _ = p.reply.send(reply);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(StoreError::Task(msg.clone())));
                }
            }
        }
    }

    /// Renews `proxy`'s lease on `name`. Returns false if it holds none (it expired, or another
    /// proxy took the endpoint over), in which case the caller should register again.
    pub fn renew(&self, proxy: &str, name: &str, now: Instant) -> bool {
        let mut table = self.table.lock().expect("lease lock");
        match table.get_mut(name) {
            Some(l) if l.owner == proxy => {
                l.deadline = now + self.ttl;
                true
            }
            _ => false,
        }
    }

    /// Ends `proxy`'s lease on `name` now and removes the endpoint (a graceful goodbye).
    pub async fn release(&self, proxy: &str, name: &str) -> Result<bool, StoreError> {
        let _op = self.ops.lock().await;
        {
            let mut table = self.table.lock().expect("lease lock");
            if table.get(name).is_some_and(|l| l.owner == proxy) {
                table.remove(name);
            }
        }
        let lease = vec![(name.to_owned(), proxy.to_owned())];
        let removed = self.store.run(move |s| s.release_endpoints(&lease)).await?;
        Ok(!removed.is_empty())
    }

    /// Takes every lease whose deadline is at or before `now` out of the table.
    fn take_expired(&self, now: Instant) -> Vec<(String, String)> {
        let mut table = self.table.lock().expect("lease lock");
        let expired: Vec<(String, String)> = table
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(name, l)| (name.clone(), l.owner.clone()))
            .collect();
        for (name, _) in &expired {
            table.remove(name);
        }
        expired
    }

    /// Removes the endpoints of every lease that ran out by `now`, in one transaction;
    /// returns their names.
    pub async fn expire(&self, now: Instant) -> Result<Vec<String>, StoreError> {
        let _op = self.ops.lock().await;
        let expired = self.take_expired(now);
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let removed = self.store.run(move |s| s.release_endpoints(&expired)).await;
        if let Err(e) = &removed {
            // Put nothing back: the next registration or heartbeat re-creates what is alive,
            // and the store still holds the lease rows, so a restart would retry the expiry.
            tracing::error!(error = %e, "cannot remove expired endpoints");
        }
        removed
    }

    /// Expires leases until `shutdown` fires. Checks often enough that an endpoint leaves
    /// the snapshots well within a second of its deadline.
    pub async fn run_expiry(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let tick = (self.ttl / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = until_shutdown(&mut shutdown) => return,
            }
            if let Ok(names) = self.expire(Instant::now()).await {
                for name in names {
                    tracing::info!(endpoint = %name, "lease expired: endpoint removed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{endpoint, TempDir};
    use ferrule_config::{Kind, Resource};

    fn ep(name: &str) -> Endpoint {
        match endpoint(name, "echo", 9000) {
            Resource::Endpoint(e) => e,
            Resource::Service(_) => unreachable!("endpoint() builds endpoints"),
        }
    }

    const TTL: Duration = Duration::from_secs(15);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_registrations_share_transactions_and_all_hold_leases() {
        let dir = TempDir::new("leases");
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let t0 = Instant::now();
        let leases = Arc::new(Leases::load(store.clone(), TTL, t0, Duration::ZERO).unwrap());
        let before = store.revision();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let leases = leases.clone();
                tokio::spawn(async move {
                    leases
                        .register(&format!("p{i}"), ep(&format!("e{i}")), t0)
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(leases.len(), 200);
        assert_eq!(store.leases().unwrap().len(), 200);
        for i in [0, 99, 199] {
            assert!(store
                .get(Kind::Endpoint, &format!("e{i}"))
                .unwrap()
                .is_some());
        }
        // Group commit: fewer transactions (revision bumps) than registrations.
        let bumps = store.revision() - before;
        assert!(bumps < 200, "{bumps} transactions for 200 registrations");
    }

    #[tokio::test]
    async fn expiry_follows_heartbeats() {
        let dir = TempDir::new("leases");
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let t0 = Instant::now();
        let leases = Leases::load(store.clone(), TTL, t0, Duration::ZERO).unwrap();
        assert_eq!(leases.heartbeat_interval(), Duration::from_secs(5));
        leases.register("p1", ep("a"), t0).await.unwrap();
        leases.register("p2", ep("b"), t0).await.unwrap();

        // p1 renews at t0+10s; p2 stays silent.
        assert!(leases.renew("p1", "a", t0 + Duration::from_secs(10)));
        assert!(
            !leases.renew("p2", "a", t0 + Duration::from_secs(10)),
            "not p2's lease"
        );
        assert!(leases
            .expire(t0 + TTL - Duration::from_millis(1))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(leases.expire(t0 + TTL).await.unwrap(), ["b"]);
        assert!(store.get(Kind::Endpoint, "b").unwrap().is_none());
        assert!(store.get(Kind::Endpoint, "a").unwrap().is_some());

        // An expired lease cannot be renewed: the proxy must register again.
        assert!(!leases.renew("p2", "b", t0 + TTL));
        assert_eq!(
            leases.expire(t0 + Duration::from_secs(25)).await.unwrap(),
            ["a"]
        );
        assert!(leases.is_empty());
        assert!(store.leases().unwrap().is_empty());
    }

    #[tokio::test]
    async fn goodbye_removes_now_and_a_takeover_survives_the_old_owner() {
        let dir = TempDir::new("leases");
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let t0 = Instant::now();
        let leases = Leases::load(store.clone(), TTL, t0, Duration::ZERO).unwrap();
        leases.register("p1", ep("a"), t0).await.unwrap();
        // p2 takes the endpoint over (e.g. the instance was rescheduled under a new proxy id).
        leases.register("p2", ep("a"), t0).await.unwrap();
        assert!(
            !leases.release("p1", "a").await.unwrap(),
            "p1 no longer owns it"
        );
        assert!(store.get(Kind::Endpoint, "a").unwrap().is_some());
        assert!(leases.release("p2", "a").await.unwrap());
        assert!(store.get(Kind::Endpoint, "a").unwrap().is_none());
    }

    #[tokio::test]
    async fn restart_gives_stored_leases_a_fresh_deadline() {
        let dir = TempDir::new("leases");
        let path = dir.path().join("db");
        let t0 = Instant::now();
        {
            let store = Arc::new(Store::open(&path).unwrap());
            let leases = Leases::load(store, TTL, t0, Duration::ZERO).unwrap();
            leases.register("p1", ep("a"), t0).await.unwrap();
        }
        // The control plane comes back much later than the old deadline.
        let t1 = t0 + Duration::from_secs(60);
        let store = Arc::new(Store::open(&path).unwrap());
        let leases = Leases::load(store.clone(), TTL, t1, Duration::ZERO).unwrap();
        assert_eq!(leases.len(), 1);
        assert!(leases
            .expire(t1 + TTL - Duration::from_millis(1))
            .await
            .unwrap()
            .is_empty());
        assert!(
            leases.renew("p1", "a", t1 + Duration::from_secs(5)),
            "the reconnected sidecar renews"
        );
        assert_eq!(
            leases
                .expire(t1 + Duration::from_secs(5) + TTL)
                .await
                .unwrap(),
            ["a"]
        );
    }

    /// A TTL shorter than the sidecars' reconnect backoff: after a restart the stored leases
    /// last the grace, not the TTL, and expire after it when nobody comes back.
    #[tokio::test]
    async fn after_a_restart_stored_leases_last_the_grace_when_it_is_longer() {
        let dir = TempDir::new("leases");
        let path = dir.path().join("db");
        let (ttl, grace) = (Duration::from_secs(3), Duration::from_secs(12));
        let t0 = Instant::now();
        {
            let store = Arc::new(Store::open(&path).unwrap());
            let leases = Leases::load(store, ttl, t0, grace).unwrap();
            leases.register("p1", ep("a"), t0).await.unwrap();
        }
        let t1 = t0 + Duration::from_secs(60);
        let leases = Leases::load(Arc::new(Store::open(&path).unwrap()), ttl, t1, grace).unwrap();
        let before = t1 + grace - Duration::from_millis(1);
        assert!(leases.expire(before).await.unwrap().is_empty());
        assert_eq!(leases.expire(t1 + grace).await.unwrap(), ["a"]);
    }
}
