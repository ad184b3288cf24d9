//! The bottom floor: limits and constants, the reason codes of proxy-made responses, the
//! connection context, and the lifecycle flags. Imports nothing from the rest of the proxy, so
//! every floor above can use it.

pub mod conn;
pub mod identity;
pub mod reason;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use conn::{ConnCtx, Listener};
pub use identity::Identity;
pub use reason::Reason;

/// Largest request head accepted; bigger ones get 431 (`header-too-large`). For HTTP/2, the
/// header list size of RFC 9113 §6.5.2 (each field's name and value plus 32).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields a request may have, whatever its protocol (hyper's HTTP/1.1 default);
/// more get 431 (`header-too-large`).
pub const MAX_HEADER_FIELDS: usize = 100;

/// Limits every listener applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a complete request head. Without hyper's timer this timeout
    /// does nothing, and a client trickling header bytes (slowloris) holds a connection forever.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Lifecycle flags the admin endpoint reports.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Every listener is bound.
    pub listening: AtomicBool,
    /// Shutting down: no longer ready.
    pub draining: AtomicBool,
    /// The push stream to the control plane is up.
    pub connected: AtomicBool,
}
