//! The server: opens the store and the CA, binds the listener, serves the API (operators,
//! `curl`) and the push streams (sidecars) on one port over TLS (ALPN h2 and http/1.1), or,
//! with `--plaintext`, over HTTP/1.1 and prior-knowledge h2c; runs the snapshot builder, lease
//! expiry and the renewal of its own certificate; and shuts down cleanly.
//!
//! This is the wiring on top of everything else: it owns the listener, the [`Config`], and the
//! senders of the snapshot watch and of the shutdown signal. The state that handlers read is
//! built here but defined (and owned) by the `state` module; nothing below imports this one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule_config::identity::DEFAULT_TRUST_DOMAIN;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api;
use crate::auth::Peer;
use crate::ca::{Ca, CaConfig};
use crate::leases::Leases;
use crate::proxies::{Proxies, Refusals, Streams};
use crate::shutdown::until_shutdown;
use crate::snapshot::{self, Published};
use crate::state::{PushSettings, State};
use crate::store::{Store, StoreError};
use crate::tls::ServerTls;
use crate::tokens::Tokens;

/// A request must send its headers within this long: a client that connects and stalls
/// would otherwise hold a connection (and a file descriptor) forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find push streams whose sidecar vanished without closing its socket.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory holding `ferrule.redb`; created if missing.
    pub data_dir: PathBuf,
    /// Token that writes must present as `Authorization: Bearer`; writes are open if `None`.
    pub admin_token: Option<String>,
    /// How long a sidecar's endpoint lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// Serve plain HTTP/1.1 and h2c instead of TLS (local development only).
    pub plaintext: bool,
    /// The CA: trust domain, longest certificate, the operator's CA if any.
    pub ca: CaConfig,
    /// Extra DNS names or IP addresses for the server certificate.
    pub tls_sans: Vec<String>,
    /// Serve push streams without a certificate or token (development only).
    pub allow_anonymous_proxies: bool,
    /// The most push streams open at once.
    pub max_streams: usize,
    /// The most endpoints sidecars may hold under leases.
    pub max_registrations: usize,
    /// How long a push stream may take to send its hello.
    pub hello_timeout: Duration,
    /// After a restart, how long every stored lease lasts at least before its sidecar must
    /// have reconnected (see [`RESTART_GRACE`]).
    pub restart_grace: Duration,
}

/// Default of `--max-streams`.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
/// Default of `--max-registrations`.
pub const DEFAULT_MAX_REGISTRATIONS: usize = 10_000;
/// How long a push stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest `--lease-ttl`: a sidecar heartbeats three times per TTL, and below a second
/// that is load on every stream for no benefit, while a late heartbeat on a busy machine would
/// already drop a live endpoint.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// After a restart, stored leases last at least this long: the longest wait between a
/// sidecar's reconnect attempts (10 s, `BACKOFF_MAX` in the proxy's `sync` module) plus a
/// margin for the hello. With a TTL shorter than that backoff, a sidecar that kept retrying
/// through an outage would otherwise lose its endpoint until its next attempt.
pub const RESTART_GRACE: Duration = Duration::from_secs(12);

impl Config {
    /// The defaults, listening on `listen` with the store in `data_dir`: TLS, a generated CA
    /// for `cluster.local` with 24 h certificates, no admin token, identified proxies only.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            data_dir,
            admin_token: None,
            lease_ttl: Duration::from_secs(15),
            plaintext: false,
            ca: CaConfig {
                trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
                max_ttl: Duration::from_secs(24 * 3600),
                operator: None,
            },
            tls_sans: Vec::new(),
            allow_anonymous_proxies: false,
            max_streams: DEFAULT_MAX_STREAMS,
            max_registrations: DEFAULT_MAX_REGISTRATIONS,
            hello_timeout: HELLO_TIMEOUT,
            restart_grace: RESTART_GRACE,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// The store could not be opened or read.
    #[error("cannot open store {0}: {1}")]
    Store(PathBuf, StoreError),
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The lease TTL is too short to be useful.
    #[error("lease TTL {0:?} is too short (minimum {MIN_LEASE_TTL:?})")]
    LeaseTtl(Duration),
    /// The CA could not be loaded or made.
    #[error("certificate authority: {0}")]
    Ca(String),
    /// The server certificate could not be made.
    #[error("TLS: {0}")]
    Tls(String),
    /// Listening beyond loopback with open writes.
    #[error(
        "refusing to listen on {0} without an admin token: anyone who can reach it could change \
         the mesh's policy and its CA. Give --admin-token-file (FERRULE_ADMIN_TOKEN_FILE), or \
         listen on a loopback address"
    )]
    Exposed(SocketAddr),
}

/// A bound, not yet running, control plane.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    state: Arc<State>,
    snapshots: watch::Sender<Arc<Published>>,
    shutdown: watch::Sender<bool>,
}

impl Server {
    /// Opens the store, loads the leases and the first snapshot, and binds the listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        if config.lease_ttl < MIN_LEASE_TTL {
            return Err(StartError::LeaseTtl(config.lease_ttl));
        }
        if !config.listen.ip().is_loopback() && config.admin_token.is_none() {
            return Err(StartError::Exposed(config.listen));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        let path = config.data_dir.join("ferrule.redb");
        let store_err = |e| StartError::Store(path.clone(), e);
        let store = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))
                .and_then(|r| r)
                .map_err(store_err)?
        };
        let store = Arc::new(store);
        let ca = {
            let (store, dir, ca) = (Arc::clone(&store), config.data_dir.clone(), config.ca);
            tokio::task::spawn_blocking(move || Ca::open(store, &dir, ca))
                .await
                .map_err(|e| StartError::Ca(e.to_string()))?
                .map_err(StartError::Ca)?
        };
        let ca = Arc::new(ca);
        // Every stored lease gets a fresh deadline, long enough for sidecars that were backing
        // off through the outage to reconnect, so a restart does not make their endpoints flap.
        let leases = Leases::load(
            Arc::clone(&store),
            config.lease_ttl,
            Instant::now(),
            config.restart_grace,
        )
        .map_err(store_err)?;
        let heartbeat = leases.heartbeat_interval();
        let first = store
            .run(move |s| Published::build(s, heartbeat))
            .await
            .map_err(store_err)?;
        tracing::info!(
            path = %path.display(),
            revision = first.version,
            leases = leases.len(),
            "store opened"
        );
        let (snapshots, snapshots_rx) = watch::channel(Arc::new(first));
        let (shutdown, shutdown_rx) = watch::channel(false);

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let tls = if config.plaintext {
            None
        } else {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            let ip = local_addr.ip();
            if !ip.is_unspecified() {
                names.push(ip.to_string());
            }
            names.extend(config.tls_sans);
            names.dedup();
            let tls = ServerTls::new(Arc::clone(&ca), names).map_err(StartError::Tls)?;
            Some(Arc::new(tls))
        };
        let state = Arc::new(State {
            tokens: Tokens::new(Arc::clone(&store)),
            store,
            leases: Arc::new(leases),
            proxies: Proxies::default(),
            snapshots: snapshots_rx,
            ca,
            admin_token: config.admin_token,
            push: PushSettings {
                allow_anonymous: config.allow_anonymous_proxies,
                max_registrations: config.max_registrations,
                hello_timeout: config.hello_timeout,
            },
            streams: Streams::new(config.max_streams),
            refusals: Refusals::default(),
            shutdown: shutdown_rx,
        });
        Ok(Server {
            listener,
            local_addr,
            tls,
            state,
            snapshots,
            shutdown,
        })
    }

    /// The address actually bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL clients use: `https://` unless serving plaintext.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Serves until `signal` completes, then stops accepting, ends the push streams (sidecars
    /// reconnect to whichever control plane comes back) and gives in-flight requests a short
    /// grace period. Every acknowledged write is already on disk, so nothing is lost.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Server {
            listener,
            local_addr,
            tls,
            state,
            snapshots,
            shutdown,
        } = self;
        let store_closed = state.store.on_close();
        tokio::spawn(snapshot::run_builder(
            Arc::clone(&state.store),
            snapshots,
            state.leases.heartbeat_interval(),
            shutdown.subscribe(),
        ));
        tokio::spawn(Arc::clone(&state.leases).run_expiry(shutdown.subscribe()));
        if let Some(tls) = &tls {
            tokio::spawn(Arc::clone(tls).run_renewal(shutdown.subscribe()));
        }

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_timeout(H2_KEEPALIVE);
        let builder = Arc::new(builder);

        // Each connection task holds a clone of `alive`; when all are gone, `done` resolves.
        let (alive, mut done) = mpsc::channel::<()>(1);
        tokio::pin!(signal);
        tracing::info!(addr = %local_addr, "serving");
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut signal => break,
                r = listener.accept() => match r {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(accept(
                Arc::clone(&builder),
                Arc::clone(&state),
                tls.clone(),
                tcp,
                peer,
                alive.clone(),
            ));
        }

        tracing::info!("shutting down");
        drop(listener);
        // The TLS state holds the CA, which holds the store: let go of it like the state.
        drop(tls);
        shutdown.send_replace(true);
        drop(alive);
        drop(state);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        if tokio::time::timeout_at(deadline, done.recv())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish within the grace period");
        }
        // Every task holding the store ends on the shutdown signal; waiting for the file to
        // close lets a caller reopen the same data directory as soon as `run` returns.
        if tokio::time::timeout_at(deadline, store_closed)
            .await
            .is_err()
        {
            tracing::warn!("the store is still in use after the grace period");
        }
    }
}

/// Completes the TLS handshake (if serving TLS) within the header-read timeout, then serves
/// the connection.
async fn accept(
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    tls: Option<Arc<ServerTls>>,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    alive: mpsc::Sender<()>,
) {
    let Some(tls) = tls else {
        let peer = Peer {
            addr,
            identity: None,
        };
        return serve_connection(builder, state, tcp, peer, alive).await;
    };
    let acceptor = ferrule_tls::tokio_rustls::TlsAcceptor::from(tls.config());
    let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let identity = tls.client_identity(stream.get_ref().1);
    let peer = Peer { addr, identity };
    serve_connection(builder, state, stream, peer, alive).await;
}

async fn serve_connection<I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    io: I,
    peer: Peer,
    _alive: mpsc::Sender<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = state.shutdown.clone();
    let addr = peer.addr;
    let svc = service_fn(move |req| {
        let (state, peer) = (Arc::clone(&state), peer.clone());
        async move { Ok::<_, Infallible>(api::handle(state, req, peer).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = until_shutdown(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}
