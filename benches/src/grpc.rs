//! Just enough gRPC for a unary call: the 5-byte message framing (a compressed flag and a
//! big-endian length), the request the load generator sends, and reading `grpc-status`.
//!
//! The payloads are opaque bytes: neither side decodes protobuf, because what the benchmark
//! measures is the proxies, and they only see frames, headers and trailers.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

/// Path of the benchmark's one method.
pub(crate) const METHOD_PATH: &str = "/ferrule.bench.Bench/Call";
/// Content type of gRPC requests and responses.
pub(crate) const CONTENT_TYPE: &str = "application/grpc";
/// Size of the request message's payload (a small unary request, as most RPCs are).
pub(crate) const REQUEST_PAYLOAD: usize = 64;
/// Length of the frame header: 1 byte compressed flag, 4 bytes length.
const HEADER_LEN: usize = 5;

/// Frames `payload` as one uncompressed gRPC message.
pub(crate) fn frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(payload.len()).expect("gRPC messages are under 4 GiB"));
    out.put_slice(payload);
    out.freeze()
}

/// The request body every benchmark call sends.
pub(crate) fn request_body() -> Bytes {
    frame(&[b'q'; REQUEST_PAYLOAD])
}

/// Splits a complete body into its messages' payloads; an error says what is malformed
/// (a truncated header or message, or a compressed message, which nobody negotiated).
pub(crate) fn messages(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < HEADER_LEN {
            return Err(format!(
                "truncated message header ({} of {HEADER_LEN} bytes)",
                body.len()
            ));
        }
        if body[0] != 0 {
            return Err(format!("compressed flag {} without negotiation", body[0]));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let rest = &body[HEADER_LEN..];
        if rest.len() < len {
            return Err(format!("truncated message ({} of {len} bytes)", rest.len()));
        }
        out.push(&rest[..len]);
        body = &rest[len..];
    }
    Ok(out)
}

/// The call's outcome from its trailers: `Ok` only with `grpc-status: 0`; otherwise the
/// status (and message) to report.
pub(crate) fn check_trailers(trailers: Option<&HeaderMap>) -> Result<(), String> {
    let Some(trailers) = trailers else {
        return Err("gRPC response without trailers (no grpc-status)".into());
    };
    match trailers.get("grpc-status").map(|v| v.to_str()) {
        Some(Ok("0")) => Ok(()),
        Some(Ok(code)) => {
            let message = trailers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("");
            Err(format!("grpc-status {code} {message}")
                .trim_end()
                .to_string())
        }
        Some(Err(_)) => Err("unreadable grpc-status".into()),
        None => Err("gRPC trailers without grpc-status".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let framed = frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        let mut two = framed.to_vec();
        two.extend_from_slice(&frame(b""));
        assert_eq!(messages(&two).unwrap(), vec![&b"hello"[..], &b""[..]]);
        assert_eq!(messages(&request_body()).unwrap()[0].len(), REQUEST_PAYLOAD);
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(messages(&[0, 0, 0]).is_err());
        assert!(messages(&[0, 0, 0, 0, 9, 1, 2]).is_err());
        assert!(messages(&[1, 0, 0, 0, 0]).is_err());
        assert_eq!(messages(&[]).unwrap().len(), 0);
    }

    #[test]
    fn only_status_zero_in_trailers_is_ok() {
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", "0".parse().unwrap());
        assert!(check_trailers(Some(&ok)).is_ok());
        let mut failed = HeaderMap::new();
        failed.insert("grpc-status", "14".parse().unwrap());
        failed.insert("grpc-message", "unavailable".parse().unwrap());
        assert_eq!(
            check_trailers(Some(&failed)),
            Err("grpc-status 14 unavailable".into())
        );
        assert!(check_trailers(Some(&HeaderMap::new())).is_err());
        assert!(check_trailers(None).is_err());
    }
}
