//! The sidecar's side of the push protocol (see `ferrule_config::push`): one long-lived
//! HTTP/2 stream to the control plane that registers this instance, receives snapshots,
//! answers ACK/NACK and renews the lease; reconnects with exponential backoff and jitter.
//!
//! Static stability: every applied snapshot is also written to the data dir, and a sidecar
//! that starts while the control plane is down serves from that file. The control plane being
//! unreachable never takes the current policy away.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferrule_config::push::{self, ControlMessage, ProxyMessage};
use ferrule_config::{Endpoint, Snapshot};
use http::{Method, Request, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::base::Lifecycle;
use crate::plan::policy::Policy;
use crate::sync::connect::ControlPlane;

pub mod certs;
pub mod connect;

const SNAPSHOT_FILE: &str = "snapshot.json";
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the discovery client needs to know about this sidecar.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Proxy identity.
    pub proxy_id: String,
    /// Service this instance belongs to.
    pub service: String,
    /// The endpoint to register under a lease.
    pub endpoint: Endpoint,
    /// The bootstrap token, which authenticates the stream to a plaintext control plane.
    pub token: Option<String>,
}

/// The first line of the persisted snapshot: a format tag and the SHA-256 of the JSON after it.
const PERSISTED_TAG: &str = "ferrule-snapshot v1 sha256=";

/// Loads the persisted snapshot, if any, into `policy`. Returns whether one was applied.
///
/// The file must carry the checksum it was written with: a snapshot edited on disk (an
/// endpoint's address pointed elsewhere while the control plane is down) or cut short is not
/// served. A checksum stops edits by hand and corruption; it does not stop someone who can
/// write the data dir and recompute it (a signature by the control plane would).
pub fn load_persisted(policy: &Policy, data_dir: &Path) -> bool {
    let path = data_dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read persisted snapshot");
            return false;
        }
    };
    let json = match verified(&bytes) {
        Ok(json) => json,
        Err(why) => {
            tracing::warn!(path = %path.display(), "not serving the persisted snapshot: {why}");
            return false;
        }
    };
    match Snapshot::from_json(json) {
        Ok(snap) => {
            tracing::info!(
                version = snap.version,
                "serving the persisted snapshot until the control plane answers"
            );
            policy.apply(Arc::new(snap), "disk");
            true
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring invalid persisted snapshot");
            false
        }
    }
}

/// The JSON of a persisted file whose checksum matches.
fn verified(file: &[u8]) -> Result<&[u8], &'static str> {
    let nl = file
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no checksum line (written by an older version, or not ours)")?;
    let (head, json) = (&file[..nl], &file[nl + 1..]);
    let sum = head
        .strip_prefix(PERSISTED_TAG.as_bytes())
        .ok_or("no checksum line (written by an older version, or not ours)")?;
    if sum != ferrule_tls::fingerprint(json).as_bytes() {
        return Err("its checksum does not match (edited or corrupted on disk)");
    }
    Ok(json)
}

/// Writes the snapshot atomically (temp file, fsync, rename) so a crash never leaves half a
/// file, under a checksum line that [`load_persisted`] verifies.
fn persist(data_dir: &Path, snap: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = data_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let json = snap.to_json();
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{PERSISTED_TAG}{}", ferrule_tls::fingerprint(&json))?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(SNAPSHOT_FILE))?;
    Ok(())
}

/// Writes each applied snapshot to disk on a blocking thread, latest first: an fsync must not
/// stall a runtime worker that also serves requests, and if snapshots arrive faster than the
/// disk takes them, only the newest matters.
async fn persister(data_dir: PathBuf, mut rx: watch::Receiver<Option<Arc<Snapshot>>>) {
    while rx.changed().await.is_ok() {
        let Some(snap) = rx.borrow_and_update().clone() else {
            continue;
        };
        let dir = data_dir.clone();
        let res = tokio::task::spawn_blocking(move || persist(&dir, &snap)).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, dir = %data_dir.display(), "cannot persist the snapshot; a restart without the control plane would start empty");
        }
    }
}

/// A request body fed from a channel: the proxy's half of the push stream.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Runs the discovery client until `stop` turns true; then says goodbye (deregistering the
/// endpoint) if connected.
pub async fn run(
    control_plane: ControlPlane,
    reg: Registration,
    policy: Arc<Policy>,
    life: Arc<Lifecycle>,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let (persist_tx, persist_rx) = watch::channel(None);
    let persist_task = tokio::spawn(persister(data_dir, persist_rx));
    run_sessions(control_plane, reg, policy, life, &persist_tx, &mut stop).await;
    // Let the last snapshot reach the disk before the process exits.
    drop(persist_tx);
    let _ = persist_task.await;
}

async fn run_sessions(
    control_plane: ControlPlane,
    reg: Registration,
    policy: Arc<Policy>,
    life: Arc<Lifecycle>,
    persist: &watch::Sender<Option<Arc<Snapshot>>>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    // A sidecar with an identity registers once it can serve mutual TLS (and, over TLS, its
    // certificate is what authenticates the stream).
    while policy.identity.is_enabled() && policy.identity.tls().is_none() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
    loop {
        let session = Session {
            control_plane: &control_plane,
            reg: &reg,
            policy: &policy,
            life: &life,
            persist,
        };
        let res = session.run(stop).await;
        life.connected.store(false, Ordering::Relaxed);
        policy.metrics.control_plane_connected.set(0);
        match res {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Healthy) => failures = 0,
            Ok(Ended::Failed(msg)) | Err(msg) => {
                failures = failures.saturating_add(1);
                let held = policy.version();
                // Say it loudly once per outage, then quietly on each retry.
                if failures == 1 {
                    tracing::warn!(error = %msg, control_plane = %control_plane.uri, policy_version = held, "control plane unreachable; keeping the current policy and retrying");
                } else {
                    tracing::debug!(error = %msg, failures, "control plane still unreachable");
                }
            }
        }
        // Full jitter: spreads the reconnects of a whole fleet after a control-plane restart.
        let cap = BACKOFF_BASE
            .saturating_mul(1 << failures.min(16))
            .min(BACKOFF_MAX);
        let wait = rand::rng().random_range(BACKOFF_BASE / 2..=cap.max(BACKOFF_BASE));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

enum Ended {
    /// Asked to stop (goodbye sent if connected).
    Stopped,
    /// The stream had worked (a snapshot arrived) before it ended: reconnect promptly.
    Healthy,
    /// The stream ended before doing anything useful.
    Failed(String),
}

struct Session<'a> {
    control_plane: &'a ControlPlane,
    reg: &'a Registration,
    policy: &'a Arc<Policy>,
    life: &'a Arc<Lifecycle>,
    persist: &'a watch::Sender<Option<Arc<Snapshot>>>,
}

impl Session<'_> {
    async fn run(&self, stop: &mut watch::Receiver<bool>) -> Result<Ended, String> {
        let cp = self.control_plane;
        let authority = cp.authority.clone();
        let addr = authority.as_str().to_owned();
        let stream = cp.connect(&self.policy.identity, true).await?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Notice a control plane that vanished without closing the connection.
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .handshake::<_, ChannelBody>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let _abort = AbortOnDrop(conn_task);

        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let mut endpoint = self.reg.endpoint.clone();
        // What the control plane will record anyway, from the certificate.
        endpoint.identity = self
            .policy
            .identity
            .tls()
            .map(|t| t.cert.identity.to_string());
        let hello = ProxyMessage::Hello {
            proxy: self.reg.proxy_id.clone(),
            service: self.reg.service.clone(),
            endpoint: Some(endpoint),
            version: self.policy.version(),
        };
        let _ = tx.send(push::to_line(&hello).into());
        let uri = Uri::builder()
            .scheme(cp.scheme())
            .authority(authority)
            .path_and_query(push::STREAM_PATH)
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/x-ndjson");
        // Over TLS the certificate authenticates the stream; in plaintext, the token.
        if let (false, Some(token)) = (cp.is_tls(), &self.reg.token) {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(ChannelBody(rx)).map_err(|e| e.to_string())?;
        let resp = tokio::select! {
            r = sender.send_request(req) => r.map_err(|e| format!("opening the push stream: {e}"))?,
            _ = stop.changed() => return Ok(Ended::Stopped),
        };
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(format!(
                "control plane refused the push stream: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut got_snapshot = false;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                frame = body.frame() => {
                    let frame = match frame {
                        Some(Ok(f)) => f,
                        Some(Err(e)) => return self.ended(got_snapshot, format!("push stream failed: {e}")),
                        None => return self.ended(got_snapshot, "control plane closed the push stream".into()),
                    };
                    let Ok(data) = frame.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    for line in push::take_lines(&mut buf) {
                        let msg: ControlMessage = match serde_json::from_slice(&line) {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!(error = %e, "ignoring an unreadable message from the control plane");
                                continue;
                            }
                        };
                        let ControlMessage::Snapshot { version, nonce, snapshot, heartbeat_ms } = msg;
                        self.policy.metrics.snapshot_pushes.inc();
                        if !got_snapshot {
                            got_snapshot = true;
                            self.life.connected.store(true, Ordering::Relaxed);
                            self.policy.metrics.control_plane_connected.set(1);
                            tracing::info!(version, "connected to the control plane");
                        }
                        let every = Duration::from_millis(heartbeat_ms.clamp(200, 60_000));
                        if heartbeat.period() != every {
                            heartbeat = tokio::time::interval(every);
                            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            heartbeat.reset();
                        }
                        let reply = self.apply(version, nonce, &snapshot);
                        let _ = tx.send(push::to_line(&reply).into());
                    }
                }
                _ = heartbeat.tick() => {
                    let _ = tx.send(push::to_line(&ProxyMessage::Heartbeat).into());
                }
                _ = stop.changed() => {
                    // Deregister now rather than leave peers calling us until the lease runs out.
                    let _ = tx.send(push::to_line(&ProxyMessage::Goodbye).into());
                    drop(tx);
                    // Wait (briefly) for the control plane to close its side: it has read the goodbye.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = body.frame().await {}
                    }).await;
                    return Ok(Ended::Stopped);
                }
            }
        }
    }

    fn ended(&self, got_snapshot: bool, msg: String) -> Result<Ended, String> {
        if got_snapshot {
            tracing::warn!(error = %msg, "control plane stream ended; reconnecting");
            Ok(Ended::Healthy)
        } else {
            Ok(Ended::Failed(msg))
        }
    }

    /// Validates and applies one pushed snapshot; the reply is the ACK or NACK to send.
    fn apply(&self, version: u64, nonce: String, snapshot: &serde_json::Value) -> ProxyMessage {
        let snap = match Snapshot::from_value(snapshot) {
            Ok(s) => s,
            Err(e) => return self.nack(version, nonce, e.to_string()),
        };
        if snap.version != version {
            let error = format!(
                "message version {version} differs from the snapshot's {}",
                snap.version
            );
            return self.nack(version, nonce, error);
        }
        if let Err(e) = snap.check_references() {
            return self.nack(version, nonce, e.to_string());
        }
        // A new trust bundle (root rotation) is taken before the tables that may need it.
        if let (true, Some(pem)) = (self.policy.identity.is_enabled(), &snap.trust_bundle) {
            match self.policy.identity.set_bundle(pem) {
                Ok(true) => tracing::info!(version, "trust bundle updated"),
                Ok(false) => {}
                Err(e) => return self.nack(version, nonce, e),
            }
        }
        let current = self.policy.load();
        if current.snapshot.as_deref() == Some(&snap) {
            // Unchanged (e.g. a reconnect): keep the compiled tables as they are.
            return ProxyMessage::Ack { version, nonce };
        }
        if version < current.version {
            tracing::warn!(
                version,
                current = current.version,
                "control plane sent an older version (was its store reset?); applying it"
            );
        }
        let snap = Arc::new(snap);
        self.persist.send_replace(Some(snap.clone()));
        self.policy.apply(snap, "control-plane");
        tracing::info!(version, "applied policy snapshot");
        ProxyMessage::Ack { version, nonce }
    }

    fn nack(&self, version: u64, nonce: String, error: String) -> ProxyMessage {
        tracing::warn!(version, %error, "refused policy snapshot; the previous one keeps serving");
        self.policy.record_nack(version, error.clone());
        ProxyMessage::Nack {
            version,
            nonce,
            error,
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_snapshot_is_read_back_only_with_its_checksum() {
        let dir = std::env::temp_dir().join(format!("ferrule-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let snap = Snapshot {
            version: 7,
            ..Snapshot::default()
        };
        persist(&dir, &snap).unwrap();
        let file = std::fs::read(dir.join(SNAPSHOT_FILE)).unwrap();
        let json = verified(&file).expect("as written");
        assert_eq!(Snapshot::from_json(json).unwrap().version, 7);

        // One byte of the JSON changed: refused.
        let mut edited = file.clone();
        let at = edited.len() - 2;
        edited[at] ^= 1;
        assert_eq!(
            verified(&edited),
            Err("its checksum does not match (edited or corrupted on disk)")
        );
        // Cut short, or without the checksum line (an older file): refused.
        assert!(verified(&file[..file.len() - 1]).is_err());
        assert!(verified(&snap.to_json()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
