//! The Ferrule control plane: a REST/JSON policy API over an embedded, crash-safe store, and
//! the push streams that keep every sidecar on the latest snapshot.
//!
//! # Layout
//! The modules stand on floors. A module imports only from the floors below its own (and, where
//! noted, from its own floor one way), so no two modules import each other. From the top:
//! 1. Entry points, with the two binaries:
//!    - [`cli`]: `ferrulectl`, the operator CLI over the API (starts [`demo`]).
//!    - [`demo`]: `ferrulectl demo`, a whole mesh on loopback in one command.
//! 2. Wiring:
//!    - [`server`]: the listener (TLS, or with `--plaintext` HTTP/1.1 and h2c, on one port),
//!      building the shared state, background tasks, shutdown.
//!    - [`tls`]: the server's own certificate from the mesh CA and its TLS configuration,
//!      renewed before it ends and whenever the CA changes.
//! 3. Handlers:
//!    - [`api`]: routing and the `/v1` REST handlers (hands `/v1/stream` to [`push`]).
//!    - [`push`]: the `/v1/stream` handler that speaks [`ferrule_config::push`] with one sidecar.
//! 4. Shared state:
//!    - `state`: what every handler reads: store handle, lease table, proxies registry,
//!      snapshot watch, CA, tokens, admin token, push-stream settings, shutdown signal.
//! 5. What the state holds:
//!    - [`leases`]: endpoints registered by sidecars, renewed by heartbeat, removed on expiry.
//!    - [`snapshot`]: builds and serialises each version's snapshot once, shares it with every
//!      stream.
//!    - [`proxies`]: what each connected sidecar runs (shown by `GET /v1/proxies`), which
//!      identity holds each proxy id, the stream cap and the refusal counters.
//!    - [`ca`]: the trusted roots, the issuing one, signing, root rotation.
//!    - [`tokens`]: bootstrap tokens (stored as hashes), each proving one identity.
//! 6. Foundations:
//!    - [`store`]: the redb database: resources, the global revision, leases.
//!    - [`error`]: the one place where failures become HTTP responses (`{"error", "details"}`;
//!      uses [`body`] and [`store`]); also the failure types of [`ca`] and [`tokens`].
//!    - [`auth`]: bearer-token checks for writes, and [`auth::Peer`], who is at the other end
//!      of a connection (uses [`error`]).
//!    - [`body`]: response bodies (buffered JSON, and the streaming body of the push stream).
//!    - `time`: RFC 3339 timestamps.
//!    - `shutdown`: waiting for the shutdown signal, which every long-lived task ends on.
//!
//! # Consistency model
//! Every write is one redb transaction committed with fsync before its HTTP response is sent,
//! and bumps one global revision; a resource's `revision` is the global revision of its last
//! write, which makes it an optimistic-concurrency token. Snapshots carry the global revision as
//! their version, so "proxy runs version N" means "proxy has every write up to N".

pub mod api;
pub mod auth;
pub mod body;
pub mod ca;
pub mod cli;
pub mod demo;
pub mod error;
pub mod leases;
pub mod proxies;
pub mod push;
pub mod ratelog;
pub mod server;
mod shutdown;
pub mod snapshot;
mod state;
pub mod store;
mod time;
pub mod tls;
pub mod tokens;

#[cfg(test)]
mod test_util;

pub use server::{Config, Server};
