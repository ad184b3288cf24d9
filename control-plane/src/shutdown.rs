//! The shutdown signal: a `watch::Receiver<bool>` that turns true once, when the server stops.
//! Every long-lived task (push streams, connections, the snapshot builder, lease expiry) ends
//! on it. This module owns only the helper that waits for it, so that the tasks in lower
//! modules need not reach up to the server that sends it.

use tokio::sync::watch;

/// Completes once `rx` turns true (or its sender is gone). The guard `wait_for` returns is
/// dropped here, so callers stay `Send` across the await.
pub(crate) async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
