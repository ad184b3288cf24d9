//! The push stream, `POST /v1/stream`: one long-lived request per sidecar (see
//! [`ferrule_config::push`] for the protocol).
//!
//! The response body streams snapshot lines. Each stream's writer only clones the shared,
//! already-serialised line of the latest [`Published`] snapshot, so a push to a thousand
//! proxies costs a thousand reference-count bumps and socket writes, not a thousand
//! serialisations or store reads. The request body streams the proxy's messages: hello
//! (registers its endpoint under a lease), ACK/NACK (shown by `/v1/proxies`), heartbeat
//! (renews the lease) and goodbye (removes the endpoint now).
//!
//! The module owns one stream's session (what its proxy has said so far); everything that
//! outlives the stream (leases, the proxies registry, the snapshot watch) is in the shared
//! `State` it reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferrule_config::push::{take_lines, ProxyMessage};
use ferrule_config::{Endpoint, Kind, Resource};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};

use crate::body::{Body, ChannelBody};
use crate::shutdown::until_shutdown;
use crate::snapshot::Published;
use crate::state::State;

/// The longest message line a proxy may send; a hello with a large endpoint is a few hundred
/// bytes, so this only stops a broken peer from growing the buffer without bound.
const MAX_LINE: usize = 256 * 1024;

/// Answers a push-stream request: 200 with a streaming body, served by a task that lives as
/// long as the stream.
pub(crate) fn stream(state: Arc<State>, body: Incoming, peer: SocketAddr) -> Response<Body> {
    // One line buffered ahead of the peer: the watch already coalesces versions, so a deeper
    // queue would only hold stale snapshots.
    let (tx, out) = ChannelBody::channel(1);
    tokio::spawn(serve(state, body, tx, peer));
    let mut resp = Response::new(BodyExt::boxed(out));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn serve(state: Arc<State>, body: Incoming, tx: mpsc::Sender<Bytes>, peer: SocketAddr) {
    let mut shutdown = state.shutdown.clone();
    let mut session = Session {
        conn: state.proxies.next_conn(),
        state: Arc::clone(&state),
        peer,
        proxy: None,
        endpoint: None,
    };
    tracing::debug!(%peer, conn = session.conn, "push stream opened");
    let ended = tokio::select! {
        () = write_snapshots(state.snapshots.clone(), tx) => "the proxy stopped reading".to_owned(),
        r = session.read(body) => match r {
            Ok(()) => "the proxy closed its stream".to_owned(),
            Err(e) => e,
        },
        () = until_shutdown(&mut shutdown) => "the control plane is shutting down".to_owned(),
    };
    // The lease (if any) keeps running: a sidecar that reconnects in time keeps its endpoint.
    match &session.proxy {
        Some(id) => {
            state.proxies.disconnect(id, session.conn);
            tracing::info!(proxy = %id, %peer, reason = %ended, "proxy disconnected");
        }
        None => tracing::debug!(%peer, reason = %ended, "push stream closed before hello"),
    }
}

/// Sends the latest snapshot now, then every newer one, until the peer goes away.
async fn write_snapshots(mut rx: watch::Receiver<Arc<Published>>, tx: mpsc::Sender<Bytes>) {
    loop {
        let line = rx.borrow_and_update().line.clone();
        if tx.send(line).await.is_err() {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// What one stream has told us so far.
struct Session {
    state: Arc<State>,
    conn: u64,
    peer: SocketAddr,
    /// Set by the hello.
    proxy: Option<String>,
    /// The endpoint registered by the hello, until a goodbye.
    endpoint: Option<Endpoint>,
}

impl Session {
    /// Reads messages until the request body ends; an error ends the stream.
    async fn read(&mut self, mut body: Incoming) -> Result<(), String> {
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("stream error: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            for line in take_lines(&mut buf) {
                self.handle(&line).await?;
            }
            if buf.len() > MAX_LINE {
                return Err(format!("a message line is longer than {MAX_LINE} bytes"));
            }
        }
        Ok(())
    }

    async fn handle(&mut self, line: &[u8]) -> Result<(), String> {
        let msg: ProxyMessage = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) if self.proxy.is_none() => {
                return Err(format!("the first message is not a valid hello: {e}"));
            }
            Err(e) => {
                // A newer proxy may send messages we do not know; skipping them keeps old
                // control planes and new proxies compatible.
                tracing::warn!(proxy = ?self.proxy, error = %e, "ignoring unreadable message");
                return Ok(());
            }
        };
        let Some(id) = self.proxy.clone() else {
            return match msg {
                ProxyMessage::Hello {
                    proxy,
                    service,
                    endpoint,
                    version,
                } => self.hello(proxy, service, endpoint, version).await,
                _ => Err("the first message must be a hello".into()),
            };
        };
        let st = &self.state;
        match msg {
            ProxyMessage::Hello { .. } => {
                tracing::warn!(proxy = %id, "ignoring a second hello on the same stream");
            }
            ProxyMessage::Ack { version, nonce } => {
                tracing::debug!(proxy = %id, version, %nonce, "snapshot acknowledged");
                st.proxies.ack(&id, self.conn, version);
            }
            ProxyMessage::Nack {
                version,
                nonce,
                error,
            } => {
                tracing::warn!(proxy = %id, version, %nonce, %error, "proxy rejected snapshot");
                st.proxies.nack(&id, self.conn, version, &error);
            }
            ProxyMessage::Heartbeat => {
                st.proxies.heartbeat(&id, self.conn);
                if let Some(ep) = &self.endpoint {
                    if !st.leases.renew(&id, &ep.name, Instant::now()) {
                        // The lease ran out (heartbeats were late) or was taken over: the
                        // sidecar is alive, so put its endpoint back.
                        tracing::info!(proxy = %id, endpoint = %ep.name, "re-registering endpoint whose lease had ended");
                        self.register(&id, ep.clone()).await;
                    }
                }
            }
            ProxyMessage::Goodbye => {
                if let Some(ep) = self.endpoint.take() {
                    match st.leases.release(&id, &ep.name).await {
                        Ok(_) => {
                            tracing::info!(proxy = %id, endpoint = %ep.name, "endpoint deregistered")
                        }
                        Err(e) => {
                            tracing::error!(proxy = %id, error = %e, "cannot deregister endpoint")
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn hello(
        &mut self,
        proxy: String,
        service: String,
        endpoint: Option<Endpoint>,
        version: u64,
    ) -> Result<(), String> {
        if proxy.trim().is_empty() {
            return Err("the hello has an empty proxy id".into());
        }
        tracing::info!(%proxy, %service, peer = %self.peer, version, "proxy connected");
        self.state
            .proxies
            .connect(&proxy, self.conn, &service, self.peer, version);
        self.proxy = Some(proxy.clone());
        if let Some(ep) = endpoint {
            // Held to the same rules as an endpoint written through the API: the endpoint is
            // about to be pushed to every proxy, which would refuse a snapshot holding it.
            let value = serde_json::to_value(&ep).expect("endpoints always serialise");
            match Resource::from_value(&value, Some(Kind::Endpoint), &ep.name) {
                Ok(_) => {
                    if ep.service != service {
                        tracing::warn!(%proxy, endpoint = %ep.name, endpoint_service = %ep.service, %service,
                            "the endpoint registered by this proxy belongs to another service");
                    }
                    self.register(&proxy, ep.clone()).await;
                    self.endpoint = Some(ep);
                }
                Err(errs) => {
                    let errs: Vec<String> = errs.iter().map(ToString::to_string).collect();
                    tracing::warn!(%proxy, errors = %errs.join("; "), "not registering invalid endpoint");
                }
            }
        }
        Ok(())
    }

    async fn register(&self, proxy: &str, ep: Endpoint) {
        let name = ep.name.clone();
        match self.state.leases.register(proxy, ep, Instant::now()).await {
            Ok(action) => {
                tracing::info!(%proxy, endpoint = %name, %action, "endpoint registered under a lease")
            }
            Err(e) => {
                tracing::error!(%proxy, endpoint = %name, error = %e, "cannot register endpoint")
            }
        }
    }
}
