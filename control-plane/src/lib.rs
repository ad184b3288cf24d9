//! The Ferrule control plane: a REST/JSON policy API over an embedded, crash-safe store, and
//! the push streams that keep every sidecar on the latest snapshot.
//!
//! # Layout
//! - [`server`]: the listener (HTTP/1.1 and h2c on one port), background tasks, shutdown.
//! - [`api`]: routing and the `/v1` REST handlers.
//! - [`error`]: the one place where failures become HTTP responses (`{"error", "details"}`).
//! - [`auth`]: bearer-token checks for writes.
//! - [`store`]: the redb database: resources, the global revision, leases.
//! - [`snapshot`]: builds and serialises each version's snapshot once, shares it with every stream.
//! - [`push`]: the `/v1/stream` handler that speaks [`ferrule_config::push`] with one sidecar.
//! - [`proxies`]: what each connected sidecar runs (shown by `GET /v1/proxies`).
//! - [`leases`]: endpoints registered by sidecars, renewed by heartbeat, removed on expiry.
//! - [`body`]: response bodies (buffered JSON, and the streaming body of the push stream).
//! - [`cli`]: `ferrulectl`, the operator CLI over the API.
//! - [`demo`]: `ferrulectl demo`, a whole mesh on loopback in one command.
//!
//! # Consistency model
//! Every write is one redb transaction committed with fsync before its HTTP response is sent,
//! and bumps one global revision; a resource's `revision` is the global revision of its last
//! write, which makes it an optimistic-concurrency token. Snapshots carry the global revision as
//! their version, so "proxy runs version N" means "proxy has every write up to N".

pub mod api;
pub mod auth;
pub mod body;
pub mod cli;
pub mod demo;
pub mod error;
pub mod leases;
pub mod proxies;
pub mod push;
pub mod server;
pub mod snapshot;
pub mod store;
mod time;

#[cfg(test)]
mod test_util;

pub use server::{Config, Server};
