//! The one rule for names (services, endpoints, proxy ids, namespaces): they are used as hosts
//! and in SPIFFE IDs, so they are DNS-style.

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
