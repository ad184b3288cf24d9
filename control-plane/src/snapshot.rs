//! Snapshots as pushed: built from the store once per version, serialised once into one
//! NDJSON line, and shared by every push stream through a `watch` channel.
//!
//! A `watch` holds only the latest value, which is exactly the semantics a proxy needs: a slow
//! proxy that missed versions 5 and 6 gets 7, never a backlog. Writes are debounced so that a
//! burst (an `apply` followed by a few lease registrations) is one push rather than several, and
//! a storm of writes yields a few pushes a second rather than one per write.
//!
//! The module owns [`Published`] and the builder task, and uses only the store; the server owns
//! the sending side of the watch, the shared state its receiving side.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrule_config::push::{to_line, ControlMessage};
use tokio::sync::watch;

use crate::shutdown::until_shutdown;
use crate::store::{Store, StoreError};

/// How long the store must stay quiet after a change before a snapshot is built.
pub const DEBOUNCE: Duration = Duration::from_millis(15);

/// The longest a change waits for the store to go quiet. Under a storm of changes (a thousand
/// sidecars registering at once) publishing every 15 ms would push a new, ever larger snapshot
/// to every connected proxy dozens of times a second; this caps it at a few per second while a
/// lone change still goes out after [`DEBOUNCE`].
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// One version's snapshot, ready to write to any number of streams.
#[derive(Debug)]
pub struct Published {
    /// The snapshot's version: the store's global revision it was read at.
    pub version: u64,
    /// The nonce of this push, echoed by ACK/NACK.
    pub nonce: String,
    /// The whole `ControlMessage::Snapshot` as one NDJSON line (with its newline).
    pub line: Bytes,
}

impl Published {
    /// Reads the store and serialises the snapshot message.
    pub fn build(store: &Store, heartbeat: Duration) -> Result<Published, StoreError> {
        let snap = store.snapshot()?;
        let version = snap.version;
        let nonce = format!("{version}-{:08x}", rand::random::<u32>());
        let msg = ControlMessage::Snapshot {
            version,
            nonce: nonce.clone(),
            snapshot: serde_json::to_value(&snap).expect("snapshots always serialise"),
            heartbeat_ms: heartbeat.as_millis().try_into().unwrap_or(u64::MAX),
        };
        Ok(Published {
            version,
            nonce,
            line: Bytes::from(to_line(&msg)),
        })
    }
}

/// Rebuilds the published snapshot after every change to the store, until `shutdown` fires.
pub async fn run_builder(
    store: Arc<Store>,
    tx: watch::Sender<Arc<Published>>,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = until_shutdown(&mut shutdown) => return,
        }
        let first = tokio::time::Instant::now();
        loop {
            let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(first + DEBOUNCE_MAX);
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(quiet) => break,
            }
            if first.elapsed() >= DEBOUNCE_MAX {
                break;
            }
        }
        // Everything committed up to here is in the snapshot we are about to read.
        changes.mark_unchanged();
        let current = tx.borrow().version;
        if store.revision() == current {
            continue;
        }
        match store.run(move |s| Published::build(s, heartbeat)).await {
            Ok(p) => {
                tracing::debug!(
                    version = p.version,
                    bytes = p.line.len(),
                    "publishing snapshot"
                );
                tx.send_replace(Arc::new(p));
            }
            Err(e) => {
                // The next change retries; meanwhile proxies keep the previous snapshot.
                tracing::error!(error = %e, "cannot build snapshot");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{service, TempDir};
    use ferrule_config::Snapshot;

    #[tokio::test]
    async fn publishes_the_latest_version_after_writes() {
        let dir = TempDir::new("snapshot");
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let first = Published::build(&store, Duration::from_secs(5)).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(first));
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(run_builder(
            store.clone(),
            tx,
            Duration::from_secs(5),
            shutdown,
        ));

        rx.mark_unchanged();
        for name in ["a", "b", "c"] {
            let s = store.clone();
            s.run(move |s| s.create(service(name))).await.unwrap();
        }
        let want = store.revision();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.version == want))
            .await
            .expect("snapshot published")
            .unwrap()
            .clone();

        // The line is a valid snapshot message that a proxy accepts whole.
        let msg: ControlMessage = serde_json::from_slice(&got.line).unwrap();
        let ControlMessage::Snapshot {
            version,
            nonce,
            snapshot,
            heartbeat_ms,
        } = msg;
        assert_eq!(
            (version, heartbeat_ms, nonce),
            (want, 5000, got.nonce.clone())
        );
        let snap = Snapshot::from_value(&snapshot).unwrap();
        assert_eq!(snap.services.len(), 3);
    }
}
