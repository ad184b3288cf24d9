//! The registry of connected proxies: who they are, where they connect from, which snapshot
//! version they run and whether they refused one. This is what `GET /v1/proxies` and
//! `ferrulectl status` show; it lives in memory only, since it describes live connections.
//!
//! [`Proxies`] owns that registry and [`ProxyStatus`], the shape `ferrulectl` reads back; the
//! shared state holds the registry, the push stream fills it, the API lists it.
//!
//! A proxy id is bound to the identity of the stream that holds it: while that stream lives,
//! a stream of another identity (or an anonymous one) cannot take the id over. The module
//! also owns the stream cap ([`Streams`]) and the refusal counters ([`Refusals`]) that
//! `GET /v1/streams` shows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::time::rfc3339;

/// The last snapshot a proxy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackStatus {
    /// Version refused.
    pub version: u64,
    /// The proxy's reason, with field paths.
    pub error: String,
    /// When (RFC 3339 UTC).
    pub at: String,
}

/// One connected proxy, as shown by `GET /v1/proxies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// The proxy's id (from its hello).
    pub id: String,
    /// The service it fronts.
    pub service: String,
    /// The SPIFFE ID its stream proved (absent for an anonymous stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The peer address of its stream.
    pub address: String,
    /// The last version it acknowledged (or reported in its hello).
    pub version: u64,
    /// Its last refusal, if any since it connected.
    pub last_nack: Option<NackStatus>,
    /// When its stream opened (RFC 3339 UTC).
    pub connected_since: String,
    /// When it last sent a heartbeat, if ever.
    pub last_heartbeat: Option<String>,
}

#[derive(Debug)]
struct Entry {
    conn: u64,
    service: String,
    identity: Option<String>,
    address: SocketAddr,
    version: u64,
    last_nack: Option<(u64, String, SystemTime)>,
    connected_since: SystemTime,
    last_heartbeat: Option<SystemTime>,
}

/// Connected proxies, by id.
///
/// A proxy that reconnects may briefly have two streams (the old one not yet noticed as dead);
/// the newest stream owns the entry, and the old one's end does not remove it.
#[derive(Debug, Default)]
pub struct Proxies {
    entries: Mutex<HashMap<String, Entry>>,
    next_conn: AtomicU64,
}

impl Proxies {
    /// A new stream id, to tell a proxy's successive streams apart.
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn with<R>(&self, id: &str, conn: u64, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut entries = self.entries.lock().expect("proxies lock");
        entries.get_mut(id).filter(|e| e.conn == conn).map(f)
    }

    /// Records a hello. The newest stream of an identity takes its proxy id over (a sidecar
    /// that reconnects before its old stream is noticed dead); a stream of another identity
    /// is refused while the id is held.
    pub fn connect(
        &self,
        id: &str,
        conn: u64,
        service: &str,
        identity: Option<&str>,
        address: SocketAddr,
        version: u64,
    ) -> Result<(), String> {
        let mut entries = self.entries.lock().expect("proxies lock");
        if let Some(held) = entries.get(id) {
            if held.identity.as_deref() != identity {
                let holder = held.identity.as_deref().unwrap_or("an anonymous sidecar");
                return Err(format!(
                    "proxy id {id:?} is held by a live stream of {holder}; each sidecar needs \
                     its own proxy id"
                ));
            }
        }
        let entry = Entry {
            conn,
            service: service.to_owned(),
            identity: identity.map(str::to_owned),
            address,
            version,
            last_nack: None,
            connected_since: SystemTime::now(),
            last_heartbeat: None,
        };
        entries.insert(id.to_owned(), entry);
        Ok(())
    }

    /// Records an ACK.
    pub fn ack(&self, id: &str, conn: u64, version: u64) {
        self.with(id, conn, |e| e.version = e.version.max(version));
    }

    /// Records a NACK.
    pub fn nack(&self, id: &str, conn: u64, version: u64, error: &str) {
        self.with(id, conn, |e| {
            e.last_nack = Some((version, error.to_owned(), SystemTime::now()));
        });
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, id: &str, conn: u64) {
        self.with(id, conn, |e| e.last_heartbeat = Some(SystemTime::now()));
    }

    /// Forgets the proxy if `conn` is still its current stream.
    pub fn disconnect(&self, id: &str, conn: u64) {
        let mut entries = self.entries.lock().expect("proxies lock");
        if entries.get(id).is_some_and(|e| e.conn == conn) {
            entries.remove(id);
        }
    }

    /// Every connected proxy, ordered by id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let entries = self.entries.lock().expect("proxies lock");
        let mut out: Vec<ProxyStatus> = entries
            .iter()
            .map(|(id, e)| ProxyStatus {
                id: id.clone(),
                service: e.service.clone(),
                identity: e.identity.clone(),
                address: e.address.to_string(),
                version: e.version,
                last_nack: e.last_nack.as_ref().map(|(v, err, at)| NackStatus {
                    version: *v,
                    error: err.clone(),
                    at: rfc3339(*at),
                }),
                connected_since: rfc3339(e.connected_since),
                last_heartbeat: e.last_heartbeat.map(rfc3339),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// Why a push stream was refused; each has a counter in [`Refusals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential, or a token this control plane does not know.
    Unauthenticated,
    /// An expired or revoked token.
    BadToken,
    /// Too many streams open.
    StreamLimit,
    /// Too many endpoints registered.
    RegistrationLimit,
    /// No hello in time.
    HelloTimeout,
    /// The first message is not a valid hello.
    BadHello,
    /// The hello (or its endpoint) names another service than the identity.
    WrongService,
    /// The endpoint is an operator's, another identity's, or claims an identity it lacks.
    EndpointConflict,
    /// The proxy id is held by a live stream of another identity.
    ProxyIdTaken,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::Unauthenticated,
        Refusal::BadToken,
        Refusal::StreamLimit,
        Refusal::RegistrationLimit,
        Refusal::HelloTimeout,
        Refusal::BadHello,
        Refusal::WrongService,
        Refusal::EndpointConflict,
        Refusal::ProxyIdTaken,
    ];

    /// Its key in `GET /v1/streams`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::BadToken => "badToken",
            Refusal::StreamLimit => "streamLimit",
            Refusal::RegistrationLimit => "registrationLimit",
            Refusal::HelloTimeout => "helloTimeout",
            Refusal::BadHello => "badHello",
            Refusal::WrongService => "wrongService",
            Refusal::EndpointConflict => "endpointConflict",
            Refusal::ProxyIdTaken => "proxyIdTaken",
        }
    }
}

/// How many push streams were refused, by reason, since start.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; 9],
}

impl Refusals {
    /// Counts one refusal.
    pub fn count(&self, why: Refusal) {
        let i = Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .expect("every refusal is listed");
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        Refusal::ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (r.as_str(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The cap on open push streams.
#[derive(Debug)]
pub struct Streams {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open stream's place under the cap, given back on drop.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Streams {
    /// A cap of `max` streams.
    pub fn new(max: usize) -> Streams {
        Streams {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Takes a place, or `None` when `max` streams are open.
    pub fn try_open(&self) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(Arc::clone(&self.open)))
    }

    /// Streams open now (including those waiting for their hello).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}
