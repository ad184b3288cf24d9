//! Timestamps for the API: RFC 3339 (shared with the sidecar's admin endpoint) and Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) use ferrule_config::time::rfc3339;

/// Seconds since the Unix epoch (0 for a time before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The time `secs` seconds after the Unix epoch.
pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}
