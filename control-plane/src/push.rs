//! The push stream, `POST /v1/stream`: one long-lived request per sidecar (see
//! [`ferrule_config::push`] for the protocol).
//!
//! # Admission
//! A stream is answered only once it is admitted, so nothing (no snapshot, no status 200)
//! reaches a peer that has not proved who it is and said hello:
//! 1. the credential: a verified client certificate of the mesh, else a bootstrap token
//!    (`Authorization: Bearer`), else, only with `--allow-anonymous-proxies`, none;
//! 2. a place under the stream cap;
//! 3. the hello, within the hello timeout (5 s);
//! 4. the hello's checks: its service is the identity's; its endpoint is of that service and
//!    gets the proven identity (never the one it claims; an anonymous stream may claim none);
//!    the proxy id is not held by a live stream of another identity; the endpoint cap;
//! 5. the registration, which the store refuses for an operator's endpoint or one held by
//!    another identity.
//!
//! Any refusal is an error response with the usual JSON body (so a sidecar logs why), and is
//! counted ([`crate::proxies::Refusals`]).
//!
//! # Serving
//! The response body streams snapshot lines. Each stream's writer only clones the shared,
//! already-serialised line of the latest [`Published`] snapshot, so a push to a thousand
//! proxies costs a thousand reference-count bumps and socket writes, not a thousand
//! serialisations or store reads. The request body streams the proxy's messages after the
//! hello: ACK/NACK (shown by `/v1/proxies`), heartbeat (renews the lease) and goodbye
//! (removes the endpoint now; only the endpoint this stream registered).
//!
//! The module owns one stream's session (what its proxy has said so far); everything that
//! outlives the stream (leases, the proxies registry, the snapshot watch) is in the shared
//! `State` it reads.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferrule_config::identity::SpiffeId;
use ferrule_config::push::{take_lines, ProxyMessage};
use ferrule_config::{Endpoint, Kind, Resource};
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};

use crate::auth::Peer;
use crate::body::{Body, ChannelBody};
use crate::error::{ApiError, TokenError};
use crate::proxies::{Refusal, StreamSlot};
use crate::shutdown::until_shutdown;
use crate::snapshot::Published;
use crate::state::State;
use crate::store::StoreError;

/// The longest message line a proxy may send; a hello with a large endpoint is a few hundred
/// bytes, so this only stops a broken peer from growing the buffer without bound.
const MAX_LINE: usize = 256 * 1024;

/// Lines that are not JSON a stream may send before it is closed: a peer that sends garbage
/// is broken or hostile, and each line would otherwise cost a parse (and once, a log line).
const MAX_BAD_LINES: usize = 3;

/// Answers a push-stream request: once the stream is admitted (see the module docs), 200 with
/// a streaming body, served by a task that lives as long as the stream.
pub(crate) async fn stream(
    state: Arc<State>,
    headers: &HeaderMap,
    mut body: Incoming,
    peer: Peer,
) -> Result<Response<Body>, ApiError> {
    let refuse = |why: Refusal, e: ApiError| {
        state.refusals.count(why);
        tracing::info!(peer = %peer.addr, reason = why.as_str(), error = %e.message(), "push stream refused");
        e
    };
    let identity = match authenticate(&state, headers, &peer).await {
        Ok(id) => id,
        Err(e) => {
            let why = match e {
                TokenError::Expired { .. } | TokenError::Revoked(_) => Refusal::BadToken,
                _ => Refusal::Unauthenticated,
            };
            return Err(refuse(why, e.into()));
        }
    };
    let Some(slot) = state.streams.try_open() else {
        let e = ApiError::unavailable(format!(
            "this control plane serves at most {} push streams (--max-streams); retry later",
            state.streams.max()
        ));
        return Err(refuse(Refusal::StreamLimit, e));
    };
    let mut buf = Vec::new();
    let first =
        match tokio::time::timeout(state.push.hello_timeout, first_line(&mut body, &mut buf)).await
        {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(refuse(Refusal::BadHello, ApiError::bad_request(e))),
            Err(_) => {
                let e = ApiError::timeout(format!(
                    "no hello within {:?}: the first message of a push stream must be a hello",
                    state.push.hello_timeout
                ));
                return Err(refuse(Refusal::HelloTimeout, e));
            }
        };
    let mut session = Session {
        conn: state.proxies.next_conn(),
        state: Arc::clone(&state),
        peer: peer.addr,
        identity,
        proxy: String::new(),
        endpoint: None,
    };
    if let Err((why, e)) = session.admit(&first).await {
        return Err(refuse(why, e));
    }

    // One line buffered ahead of the peer: the watch already coalesces versions, so a deeper
    // queue would only hold stale snapshots.
    let (tx, out) = ChannelBody::channel(1);
    tokio::spawn(serve(session, body, buf, tx, slot));
    let mut resp = Response::new(BodyExt::boxed(out));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Who the stream is: a verified client certificate first (renewed sidecars), then a bootstrap
/// token; `None` for an anonymous stream, where allowed.
async fn authenticate(
    state: &State,
    headers: &HeaderMap,
    peer: &Peer,
) -> Result<Option<SpiffeId>, TokenError> {
    if let Some(id) = &peer.identity {
        return Ok(Some(id.clone()));
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        let token = crate::auth::bearer(value).ok_or(TokenError::Unknown)?;
        return state.tokens.verify(token).await.map(Some);
    }
    if state.push.allow_anonymous {
        return Ok(None);
    }
    Err(TokenError::Missing)
}

/// Reads until the first complete line; what follows it stays in `buf`.
async fn first_line(body: &mut Incoming, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = buf.drain(..=pos).collect();
            line.pop();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            return Err(format!("a message line is longer than {MAX_LINE} bytes"));
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(format!("stream error before the hello: {e}")),
            None => return Err("the stream ended before a hello".into()),
        }
    }
}

async fn serve(
    mut session: Session,
    body: Incoming,
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
    _slot: StreamSlot,
) {
    let state = Arc::clone(&session.state);
    let mut shutdown = state.shutdown.clone();
    let ended = tokio::select! {
        () = write_snapshots(state.snapshots.clone(), tx) => "the proxy stopped reading".to_owned(),
        r = session.read(body, buf) => match r {
            Ok(()) => "the proxy closed its stream".to_owned(),
            Err(e) => e,
        },
        () = until_shutdown(&mut shutdown) => "the control plane is shutting down".to_owned(),
    };
    // The lease (if any) keeps running: a sidecar that reconnects in time keeps its endpoint.
    state.proxies.disconnect(&session.proxy, session.conn);
    tracing::info!(proxy = %session.proxy, peer = %session.peer, reason = %ended, "proxy disconnected");
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
    peer: std::net::SocketAddr,
    /// What the stream proved (`None`: anonymous).
    identity: Option<SpiffeId>,
    /// The proxy id from the hello.
    proxy: String,
    /// The endpoint registered by the hello, until a goodbye.
    endpoint: Option<Endpoint>,
}

type Refused = (Refusal, ApiError);

impl Session {
    /// Checks the hello and registers its endpoint (see the module docs); on success the
    /// proxy id is held by this stream.
    async fn admit(&mut self, line: &[u8]) -> Result<(), Refused> {
        let bad = |e: String| (Refusal::BadHello, ApiError::bad_request(e));
        let msg: ProxyMessage = serde_json::from_slice(line)
            .map_err(|e| bad(format!("the first message is not a valid hello: {e}")))?;
        let ProxyMessage::Hello {
            proxy,
            service,
            endpoint,
            version,
        } = msg
        else {
            return Err(bad("the first message must be a hello".into()));
        };
        if proxy.trim().is_empty() {
            return Err(bad("the hello has an empty proxy id".into()));
        }
        let identity = self.identity.as_ref().map(ToString::to_string);
        if let Some(id) = &self.identity {
            if id.service() != service {
                return Err((
                    Refusal::WrongService,
                    ApiError::forbidden(format!(
                        "the hello names service {service:?} but this stream's identity is \
                         {id} (service {:?}); a sidecar speaks for its own service only",
                        id.service()
                    )),
                ));
            }
        }
        let endpoint = match endpoint {
            Some(ep) => Some(self.check_endpoint(ep, &service, identity.as_deref())?),
            None => None,
        };

        let st = Arc::clone(&self.state);
        st.proxies
            .connect(
                &proxy,
                self.conn,
                &service,
                identity.as_deref(),
                self.peer,
                version,
            )
            .map_err(|e| (Refusal::ProxyIdTaken, ApiError::conflict(e)))?;
        self.proxy = proxy.clone();
        if let Some(ep) = endpoint {
            if let Err(e) = self.register(ep.clone()).await {
                st.proxies.disconnect(&proxy, self.conn);
                return Err(e);
            }
            self.endpoint = Some(ep);
        }
        tracing::info!(%proxy, %service, identity = identity.as_deref().unwrap_or("-"), peer = %self.peer, version, "proxy connected");
        Ok(())
    }

    /// The endpoint a hello may register: of the hello's service, valid as an API write would
    /// be, carrying the stream's proven identity (an anonymous stream may claim none).
    fn check_endpoint(
        &self,
        mut ep: Endpoint,
        service: &str,
        identity: Option<&str>,
    ) -> Result<Endpoint, Refused> {
        if ep.service != service {
            return Err((
                Refusal::WrongService,
                ApiError::forbidden(format!(
                    "the hello's endpoint {:?} belongs to service {:?}, not to the hello's \
                     service {service:?}; a sidecar registers endpoints of its own service only",
                    ep.name, ep.service
                )),
            ));
        }
        match identity {
            Some(id) => ep.identity = Some(id.to_owned()),
            None if ep.identity.is_some() => {
                return Err((
                    Refusal::EndpointConflict,
                    ApiError::forbidden(
                        "an anonymous stream cannot register an endpoint with an identity: \
                         connect with a certificate or bootstrap token of that identity",
                    ),
                ));
            }
            None => {}
        }
        // Held to the same rules as an endpoint written through the API: the endpoint is
        // about to be pushed to every proxy, which would refuse a snapshot holding it.
        let value = serde_json::to_value(&ep).expect("endpoints always serialise");
        if let Err(errs) = Resource::from_value(&value, Some(Kind::Endpoint), &ep.name) {
            let errs: Vec<String> = errs.iter().map(ToString::to_string).collect();
            return Err((
                Refusal::BadHello,
                ApiError::bad_request(format!(
                    "the hello's endpoint is invalid: {}",
                    errs.join("; ")
                )),
            ));
        }
        Ok(ep)
    }

    /// Registers the endpoint under a lease, within the registration cap.
    async fn register(&self, ep: Endpoint) -> Result<(), Refused> {
        let st = &self.state;
        let max = st.push.max_registrations;
        if !st.leases.contains(&ep.name) && st.leases.len() >= max {
            return Err((
                Refusal::RegistrationLimit,
                ApiError::unavailable(format!(
                    "this control plane holds at most {max} sidecar endpoints \
                     (--max-registrations); retry later"
                )),
            ));
        }
        let name = ep.name.clone();
        match st.leases.register(&self.proxy, ep, Instant::now()).await {
            Ok(action) => {
                tracing::info!(proxy = %self.proxy, endpoint = %name, %action, "endpoint registered under a lease");
                Ok(())
            }
            Err(StoreError::Conflict(why)) => {
                Err((Refusal::EndpointConflict, ApiError::conflict(why)))
            }
            Err(e) => {
                tracing::error!(proxy = %self.proxy, endpoint = %name, error = %e, "cannot register endpoint");
                Err((Refusal::EndpointConflict, e.into()))
            }
        }
    }

    /// Reads messages after the hello until the request body ends; an error ends the stream,
    /// and so do [`MAX_BAD_LINES`] lines that are not JSON.
    async fn read(&mut self, mut body: Incoming, mut buf: Vec<u8>) -> Result<(), String> {
        let mut bad = 0;
        loop {
            for line in take_lines(&mut buf) {
                if !self.handle(&line).await {
                    bad += 1;
                    if bad == MAX_BAD_LINES {
                        return Err(format!(
                            "{MAX_BAD_LINES} lines that are not JSON messages; closing the stream"
                        ));
                    }
                }
            }
            if buf.len() > MAX_LINE {
                return Err(format!("a message line is longer than {MAX_LINE} bytes"));
            }
            let Some(frame) = body.frame().await else {
                return Ok(());
            };
            let frame = frame.map_err(|e| format!("stream error: {e}"))?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
    }

    /// Handles one message line; `false` when the line is not JSON at all.
    async fn handle(&mut self, line: &[u8]) -> bool {
        let id = self.proxy.clone();
        let msg: ProxyMessage = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) if e.is_data() => {
                // A newer proxy may send messages we do not know; skipping them keeps old
                // control planes and new proxies compatible.
                crate::warn_throttled!(proxy = %id, error = %e, "ignoring an unknown message");
                return true;
            }
            Err(e) => {
                crate::warn_throttled!(proxy = %id, error = %e, "ignoring unreadable message");
                return false;
            }
        };
        let st = Arc::clone(&self.state);
        match msg {
            ProxyMessage::Hello { .. } => {
                crate::warn_throttled!(proxy = %id, "ignoring a second hello on the same stream");
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
                crate::warn_throttled!(proxy = %id, version, %nonce, %error, "proxy rejected snapshot");
                st.proxies.nack(&id, self.conn, version, &error);
            }
            ProxyMessage::Heartbeat => {
                st.proxies.heartbeat(&id, self.conn);
                if let Some(ep) = self.endpoint.clone() {
                    if !st.leases.renew(&id, &ep.name, Instant::now()) {
                        // The lease ran out (heartbeats were late) or was taken over by a
                        // sidecar of the same identity: the sidecar is alive, so put its
                        // endpoint back.
                        tracing::info!(proxy = %id, endpoint = %ep.name, "re-registering endpoint whose lease had ended");
                        if let Err((_, e)) = self.register(ep).await {
                            tracing::warn!(proxy = %id, error = %e.message(), "cannot re-register endpoint");
                        }
                    }
                }
            }
            ProxyMessage::Goodbye => {
                // Only the endpoint this stream registered, under its proven identity: a
                // goodbye can never remove another sidecar's endpoint.
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
        true
    }
}
