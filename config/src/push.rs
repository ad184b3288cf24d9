//! The push protocol between a sidecar and the control plane.
//!
//! A sidecar opens one HTTP/2 request, `POST /v1/stream`, and keeps it open for its whole life.
//! Both bodies carry newline-delimited JSON, one [`ProxyMessage`] or [`ControlMessage`] per
//! line: NDJSON is trivial to read in any language and in a packet capture, and HTTP/2 already
//! frames and flow-controls the bytes, so a binary framing would buy little here.
//!
//! ```text
//! proxy  -> control: {"type":"hello", proxy id, service, own endpoint, version it runs}
//! control -> proxy : {"type":"snapshot", version, nonce, snapshot}      (on connect, on change)
//! proxy  -> control: {"type":"ack", version, nonce} | {"type":"nack", version, nonce, error}
//! proxy  -> control: {"type":"heartbeat"}                                (renews the lease)
//! proxy  -> control: {"type":"goodbye"}                                  (deregisters, on exit)
//! ```
//!
//! The control plane answers the request only after the hello, and only to a client
//! certificate of the mesh or a bootstrap token (`Authorization: Bearer`): a refused stream
//! gets an error status (401, 403, 408, 409, 503) with the API's JSON error body
//! (`{"error": "..."}`) instead of 200, so a sidecar must send its hello before it waits for
//! the response head.

use serde::{Deserialize, Serialize};

use crate::resource::Endpoint;

/// Path of the push stream on the control plane.
pub const STREAM_PATH: &str = "/v1/stream";

/// A message from a sidecar to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyMessage {
    /// First message on every stream.
    Hello {
        /// Stable identity of this proxy (unique in the mesh).
        proxy: String,
        /// The service this proxy's instance belongs to.
        service: String,
        /// The instance to register under a lease, if the sidecar fronts one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<Endpoint>,
        /// Version of the snapshot the proxy runs now (0 when it has none).
        #[serde(default)]
        version: u64,
    },
    /// The snapshot at `version` was applied.
    Ack {
        /// Version applied.
        version: u64,
        /// Nonce of the push being answered.
        nonce: String,
    },
    /// The snapshot at `version` was refused; the previous one keeps serving.
    Nack {
        /// Version refused.
        version: u64,
        /// Nonce of the push being answered.
        nonce: String,
        /// Why, with field paths.
        error: String,
    },
    /// Renews the endpoint's lease.
    Heartbeat,
    /// The proxy is shutting down gracefully: remove its endpoint now.
    Goodbye,
}

/// A message from the control plane to a sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// A new snapshot to validate and apply.
    Snapshot {
        /// The snapshot's version.
        version: u64,
        /// Identifies this push in ACK/NACK replies.
        nonce: String,
        /// The snapshot itself, kept generic so that the proxy validates it with field paths.
        snapshot: serde_json::Value,
        /// How often the proxy must send a heartbeat to keep its lease, in milliseconds.
        heartbeat_ms: u64,
    },
}

/// Serialises a message as one NDJSON line (with the trailing newline).
pub fn to_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("push messages always serialise");
    v.push(b'\n');
    v
}

/// Splits complete lines off the front of `buf`, leaving a partial line in place.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let mut line: Vec<u8> = buf.drain(..=pos).collect();
        line.pop();
        if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push(line);
        }
    }
    lines
}
