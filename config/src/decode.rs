//! A small reader over `serde_json::Value` that records every problem it meets, with its path.
//!
//! serde's derive stops at the first error and `deny_unknown_fields` names no path, so an
//! operator fixing a policy would have to run `apply` once per typo. Policy documents are
//! small and read off the request path, so we walk the generic value tree by hand instead and
//! report every bad field at once (`routes[1].backends[0].weight: must be between 0 and 100`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The longest string a policy field takes (a name, a zone, a header value, a path prefix),
/// in bytes. Every string is pushed to every proxy, so size is bounded here, at the door.
pub const MAX_STRING: usize = 1024;
/// The most items of a list in a resource (routes of a service, backends of a route, rules).
pub const MAX_ITEMS: usize = 256;
/// The most entries of a mapping (labels, subsets, header matches).
pub const MAX_ENTRIES: usize = 64;

/// Why `s` is not a valid one-line policy string, if it is not: too long, or holding a control
/// character (NUL, ESC, newlines...), which would corrupt logs and terminals that show it.
fn bad_string(s: &str, max: usize, multiline: bool) -> Option<String> {
    if s.len() > max {
        return Some(format!("is {} bytes long; at most {max}", s.len()));
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    s.chars()
        .find(|&c| c.is_control() && !allowed(c))
        .map(|c| format!("contains the control character U+{:04X}", u32::from(c)))
}

/// One problem found in a document: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// The resource the field belongs to, as `Kind/name` (or `document N` before a name is known).
    pub resource: String,
    /// Path of the field inside the resource, e.g. `routes[1].backends[0].weight`.
    pub path: String,
    /// What is wrong and, where it helps, what is expected.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.resource.is_empty(), self.path.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.path, self.message),
            (false, true) => write!(f, "{}: {}", self.resource, self.message),
            (false, false) => write!(f, "{}: {}: {}", self.resource, self.path, self.message),
        }
    }
}

/// Every problem found in one or more documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Errors(pub Vec<FieldError>);

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl Errors {
    /// A single error that is not tied to a field.
    pub fn one(
        resource: impl Into<String>,
        path: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Errors(vec![FieldError {
            resource: resource.into(),
            path: path.into(),
            message: msg.into(),
        }])
    }
}

/// Collects the errors of one resource while it is being decoded.
#[derive(Default)]
pub(crate) struct Diag {
    errs: RefCell<Vec<(String, String)>>,
}

impl Diag {
    pub(crate) fn err(&self, path: &str, msg: impl Into<String>) {
        self.errs.borrow_mut().push((path.to_owned(), msg.into()));
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.errs.borrow().is_empty()
    }

    /// Attaches the resource label to every collected error.
    pub(crate) fn into_errors(self, resource: &str) -> Vec<FieldError> {
        self.errs
            .into_inner()
            .into_iter()
            .map(|(path, message)| FieldError {
                resource: resource.to_owned(),
                path,
                message,
            })
            .collect()
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A view of one mapping in the document; remembers which keys were read so that
/// [`Obj::finish`] can report the ones nobody asked for (typos).
pub(crate) struct Obj<'a> {
    d: &'a Diag,
    pub(crate) path: String,
    map: Option<&'a Map<String, Value>>,
    used: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(d: &'a Diag, path: String, v: &'a Value) -> Self {
        let map = match v {
            Value::Object(m) => Some(m),
            other => {
                d.err(
                    &path,
                    format!("must be a mapping, found {}", type_name(other)),
                );
                None
            }
        };
        Obj {
            d,
            path,
            map,
            used: Vec::new(),
        }
    }

    pub(crate) fn diag(&self) -> &'a Diag {
        self.d
    }

    /// The value at `key` (absent and `null` both read as absent) and its path.
    pub(crate) fn field(&mut self, key: &'static str) -> Option<(&'a Value, String)> {
        self.used.push(key);
        let v = self.map?.get(key)?;
        if v.is_null() {
            return None;
        }
        Some((v, join(&self.path, key)))
    }

    /// Looks at a value without marking it read.
    pub(crate) fn peek(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map
            .and_then(|m| m.get(key))
            .is_some_and(|v| !v.is_null())
    }

    pub(crate) fn missing(&self, key: &str) {
        // Only complain about missing fields of a mapping we could read at all.
        if self.map.is_some() {
            self.d.err(&join(&self.path, key), "is required");
        }
    }

    /// A one-line string of at most [`MAX_STRING`] bytes.
    pub(crate) fn str(&mut self, key: &'static str) -> Option<(String, String)> {
        self.string(key, MAX_STRING, false)
    }

    /// A text of at most `max` bytes that may span lines (a PEM bundle, a response body).
    pub(crate) fn text(&mut self, key: &'static str, max: usize) -> Option<(String, String)> {
        self.string(key, max, true)
    }

    fn string(
        &mut self,
        key: &'static str,
        max: usize,
        multiline: bool,
    ) -> Option<(String, String)> {
        let (v, path) = self.field(key)?;
        match v {
            Value::String(s) => match bad_string(s, max, multiline) {
                None => Some((s.clone(), path)),
                Some(why) => {
                    self.d.err(&path, why);
                    None
                }
            },
            other => {
                self.d.err(
                    &path,
                    format!("must be a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn req_str(&mut self, key: &'static str) -> Option<(String, String)> {
        if !self.has(key) {
            self.used.push(key);
            self.missing(key);
            return None;
        }
        self.str(key)
    }

    pub(crate) fn bool(&mut self, key: &'static str) -> Option<bool> {
        let (v, path) = self.field(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.d.err(
                    &path,
                    format!("must be true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An unsigned integer within `range`.
    pub(crate) fn uint(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let (v, path) = self.field(key)?;
        let n = v.as_u64().filter(|n| range.contains(n));
        if n.is_none() {
            self.d.err(
                &path,
                format!(
                    "must be between {} and {}, found {}",
                    range.start(),
                    range.end(),
                    v
                ),
            );
        }
        n
    }

    /// A mapping of strings to strings (labels, subsets, header matches).
    pub(crate) fn str_map(&mut self, key: &'static str) -> Option<BTreeMap<String, String>> {
        let (v, path) = self.field(key)?;
        let Value::Object(m) = v else {
            self.d
                .err(&path, format!("must be a mapping, found {}", type_name(v)));
            return None;
        };
        if m.len() > MAX_ENTRIES {
            self.d.err(
                &path,
                format!("has {} entries; at most {MAX_ENTRIES}", m.len()),
            );
            return None;
        }
        let mut out = BTreeMap::new();
        for (k, v) in m {
            if let Some(why) = bad_string(k, MAX_STRING, false) {
                self.d.err(&join(&path, k), format!("the key {why}"));
                continue;
            }
            match v {
                Value::String(s) => match bad_string(s, MAX_STRING, false) {
                    None => {
                        out.insert(k.clone(), s.clone());
                    }
                    Some(why) => self.d.err(&join(&path, k), why),
                },
                // YAML turns `version: 2` or `canary: true` into scalars; labels are strings,
                // so take the scalar's text rather than make the operator quote it.
                Value::Number(n) => {
                    out.insert(k.clone(), n.to_string());
                }
                Value::Bool(b) => {
                    out.insert(k.clone(), b.to_string());
                }
                other => self.d.err(
                    &join(&path, k),
                    format!("must be a string, found {}", type_name(other)),
                ),
            }
        }
        Some(out)
    }

    /// The items of a list of at most [`MAX_ITEMS`], each with its path (`routes[3]`).
    pub(crate) fn list(&mut self, key: &'static str) -> Vec<(&'a Value, String)> {
        self.items(key, MAX_ITEMS)
    }

    /// The items of a list of at most `max`, each with its path.
    pub(crate) fn items(&mut self, key: &'static str, max: usize) -> Vec<(&'a Value, String)> {
        let Some((v, path)) = self.field(key) else {
            return Vec::new();
        };
        match v {
            Value::Array(items) if items.len() > max => {
                self.d
                    .err(&path, format!("has {} items; at most {max}", items.len()));
                Vec::new()
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (v, format!("{path}[{i}]")))
                .collect(),
            other => {
                self.d
                    .err(&path, format!("must be a list, found {}", type_name(other)));
                Vec::new()
            }
        }
    }

    /// Reports every key that was never read: unknown fields are errors, so typos are caught.
    pub(crate) fn finish(self) {
        let Some(map) = self.map else { return };
        for key in map.keys() {
            if !self.used.iter().any(|u| u == key) {
                let mut expected: Vec<&str> = self.used.clone();
                expected.sort_unstable();
                expected.dedup();
                self.d.err(
                    &join(&self.path, key),
                    format!("unknown field (expected one of: {})", expected.join(", ")),
                );
            }
        }
    }
}
