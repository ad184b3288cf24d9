//! Authentication: the operators' bearer token for writes, read from a file so that it never
//! appears in a process listing or shell history; and [`Peer`], who is at the other end of a
//! connection (its address and, over TLS, the identity its client certificate proved).

use std::net::SocketAddr;
use std::path::Path;

use ferrule_config::identity::SpiffeId;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::ApiError;

/// The other end of a connection, as every handler of it sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The SPIFFE ID of its client certificate, verified against the trust bundle during the
    /// TLS handshake (`None`: plaintext, or no certificate).
    pub identity: Option<SpiffeId>,
}

/// Reads a token file: the first line, trimmed. An empty file is an error, because an empty
/// token would quietly accept any `Authorization: Bearer ` header.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// Creates a token file with a random token (mode 0600) if `path` does not exist; returns
/// whether it did.
pub fn init_token_file(path: &Path) -> Result<bool, String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(format!("cannot create token file {}: {e}", path.display())),
    };
    let token: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    writeln!(f, "{token}")
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write token file {}: {e}", path.display()))?;
    Ok(true)
}

/// Checks `Authorization: Bearer <token>` against the admin token, if one is configured.
pub fn check_bearer(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this control plane requires a token for writes: send `Authorization: Bearer \
             <token>` (ferrulectl: --token-file or FERRULE_TOKEN_FILE)",
        ));
    };
    let presented = bearer(value);
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized(
            "the bearer token is not valid for this control plane",
        )),
        None => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` are accepted too.
pub(crate) fn bearer(value: &http::HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in time that depends only on the length of `presented`, so that response timing
/// does not reveal how many leading bytes of a guess were right.
pub(crate) fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, b) in presented.iter().enumerate() {
        let e = expected.get(i).copied().unwrap_or(0);
        diff |= usize::from(b ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_checks() {
        let mut h = HeaderMap::new();
        assert!(check_bearer(None, &h).is_ok());
        assert!(check_bearer(Some("s3cret"), &h).is_err());
        for (v, ok) in [
            ("Bearer s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cret0", false),
            ("Bearer ", false),
            ("bearer s3cret", true),
            ("BEARER s3cret", true),
            ("Basic s3cret", false),
            ("Bearers3cret", false),
            ("Basic s3cret", false),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            assert_eq!(check_bearer(Some("s3cret"), &h).is_ok(), ok, "{v}");
        }
    }
}
