//! The registry of connected proxies: who they are, where they connect from, which snapshot
//! version they run and whether they refused one. This is what `GET /v1/proxies` and
//! `ferrulectl status` show; it lives in memory only, since it describes live connections.
//!
//! [`Proxies`] owns that registry and [`ProxyStatus`], the shape `ferrulectl` reads back; the
//! shared state holds the registry, the push stream fills it, the API lists it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// Records a hello.
    pub fn connect(&self, id: &str, conn: u64, service: &str, address: SocketAddr, version: u64) {
        let entry = Entry {
            conn,
            service: service.to_owned(),
            address,
            version,
            last_nack: None,
            connected_since: SystemTime::now(),
            last_heartbeat: None,
        };
        self.entries
            .lock()
            .expect("proxies lock")
            .insert(id.to_owned(), entry);
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
