//! RFC 3339 timestamps for the API (shared with the sidecar's admin endpoint).

pub(crate) use ferrule_config::time::rfc3339;
