//! The state every request handler and push stream shares, [`State`]: the store handle, the
//! lease table, the registry of connected proxies, the latest published snapshot, the CA and
//! the bootstrap tokens, the admin token, the push-stream settings and the shutdown signal.
//!
//! It sits between the parts it holds (`store`, `leases`, `proxies`, `snapshot`, `ca`,
//! `tokens`, which do not know about it) and the handlers that read it (`api`, `push`); the
//! server builds it once at start and hands an `Arc` of it to every connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::ca::Ca;
use crate::leases::Leases;
use crate::proxies::{Proxies, Refusals, Streams};
use crate::snapshot::Published;
use crate::store::Store;
use crate::tokens::Tokens;

/// What every request handler and push stream shares.
#[derive(Debug)]
pub(crate) struct State {
    /// The policy store.
    pub(crate) store: Arc<Store>,
    /// Leases on the endpoints sidecars registered (also held by the expiry task).
    pub(crate) leases: Arc<Leases>,
    /// The connected proxies, as `GET /v1/proxies` lists them.
    pub(crate) proxies: Proxies,
    /// The latest published snapshot; the server's snapshot builder sends new ones.
    pub(crate) snapshots: watch::Receiver<Arc<Published>>,
    /// The certificate authority.
    pub(crate) ca: Arc<Ca>,
    /// Bootstrap tokens.
    pub(crate) tokens: Tokens,
    /// The token writes must present, if one is configured.
    pub(crate) admin_token: Option<String>,
    /// How push streams are admitted.
    pub(crate) push: PushSettings,
    /// The cap on open push streams.
    pub(crate) streams: Streams,
    /// Push streams refused, by reason.
    pub(crate) refusals: Refusals,
    /// Becomes true when the server shuts down; push streams end on it.
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// How push streams are admitted.
#[derive(Debug, Clone)]
pub(crate) struct PushSettings {
    /// Serve streams without a certificate or token (development only): they can never
    /// register an endpoint with an identity nor touch an identified proxy's entry.
    pub(crate) allow_anonymous: bool,
    /// The most endpoints sidecars may hold under leases.
    pub(crate) max_registrations: usize,
    /// How long a stream may take to send its hello.
    pub(crate) hello_timeout: Duration,
}
