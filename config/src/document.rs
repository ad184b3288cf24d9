//! Reading policy files: YAML (several documents separated by `---`) or JSON (one object or a
//! list), each document a resource with a `kind:` field.

use serde::Deserialize;
use serde_json::Value;

use crate::decode::{Errors, FieldError};
use crate::resource::Resource;

/// Parses every document in `text` and validates each resource, reporting every problem of
/// every document; nothing is returned unless all of them are valid.
///
/// `source` names the file in errors about syntax.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, Errors> {
    let values = parse_values(text, source)?;
    let mut out = Vec::with_capacity(values.len());
    let mut errs = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match Resource::from_value(v, None, &format!("{source} document {}", i + 1)) {
            Ok(r) => out.push(r),
            Err(e) => errs.extend(e),
        }
    }
    check_unique(&out, &mut errs);
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(Errors(errs))
    }
}

/// Splits `text` into generic values, one per non-empty document.
pub fn parse_values(text: &str, source: &str) -> Result<Vec<Value>, Errors> {
    let trimmed = text.trim_start();
    let syntax = |msg: String| Errors::one(source, "", msg);
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| syntax(format!("invalid JSON: {e}")))?;
        return Ok(match v {
            Value::Array(items) => items,
            other => vec![other],
        });
    }
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| syntax(format!("invalid YAML: {e}")))?;
        match v {
            Value::Null => {}
            // A YAML list of resources reads the same as a JSON list.
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Reports resources named more than once: with two documents for one resource the result
/// would depend on their order.
pub fn check_unique(resources: &[Resource], errs: &mut Vec<FieldError>) {
    let mut seen = std::collections::HashSet::new();
    for r in resources {
        if !seen.insert((r.kind(), r.name())) {
            errs.push(FieldError {
                resource: r.label(),
                path: "name".into(),
                message: "is defined more than once".into(),
            });
        }
    }
}
