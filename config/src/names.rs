//! The one rule for names (services, endpoints, proxy ids, namespaces): they are used as hosts
//! and in SPIFFE IDs, so they are DNS-style; and the rule for header names in policy.

/// Checks a DNS-style name: lower-case letters, digits, `-` and `.`, 1..=253 chars,
/// starting and ending with a letter or digit. Service names are used as hosts.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    if !name.chars().all(ok_char) || !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(format!(
            "{name:?} is not a valid name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Header names in policy must be lower-case tokens (HTTP/2 forbids upper case on the wire).
pub(crate) fn check_header_name(k: &str) -> bool {
    let tchar =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    !k.is_empty() && k.bytes().all(tchar)
}

/// Headers that describe the connection or the framing, which the proxy sets itself.
pub(crate) fn is_connection_header(k: &str) -> bool {
    matches!(
        k,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "host"
    )
}
