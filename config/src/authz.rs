//! A service's authorization policy: who may call it, on which paths, with which methods.
//!
//! ```yaml
//! authorization:
//!   defaultAction: deny          # allow (default) or deny: what happens when no rule matches
//!   audit: false                 # true: log and count "would deny", but let the request through
//!   rules:                       # the first rule that matches decides
//!     - action: allow
//!       from: ["spiffe://cluster.local/ns/shop/*"]   # identities; "*" is any mesh identity
//!       paths: ["/api/*", "/health"]                 # exact, or a prefix ending in "*"
//!       methods: [GET, POST]
//! ```
//! A rule field left out matches everything; `from` never matches a plaintext caller, which has
//! no identity. The sidecars of the service enforce the policy on their inbound side.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{type_name, Diag, Obj};
use crate::identity::IdentityPattern;

/// What a rule, or the policy's default, does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it: 403 `ferrule-error: unauthorized`, gRPC PERMISSION_DENIED.
    Deny,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
}

/// A service's authorization policy (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// What happens when no rule matches.
    #[serde(default)]
    pub default_action: Action,
    /// Log and count denials without enforcing them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// Rules in order; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// One rule: it matches when every field it sets matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// What to do with a matching request.
    pub action: Action,
    /// Caller identities ([`IdentityPattern`]); any caller when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Request paths: exact, or a prefix ending in `*`; any path when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Request methods (upper case); any method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// Decodes `authorization`, reporting every bad field.
pub(crate) fn decode(d: &Diag, path: String, v: &Value) -> Option<Authorization> {
    let mut o = Obj::new(d, path, v);
    let default_action = match o.str("defaultAction") {
        Some((a, p)) => action(d, &p, &a),
        None => Some(Action::default()),
    };
    let audit = o.bool("audit").unwrap_or(false);
    let rules: Vec<Option<Rule>> = o
        .list("rules")
        .into_iter()
        .map(|(v, p)| decode_rule(d, p, v))
        .collect();
    o.finish();
    Some(Authorization {
        default_action: default_action?,
        audit,
        rules: rules.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

fn action(d: &Diag, path: &str, a: &str) -> Option<Action> {
    let parsed = Action::parse(a);
    if parsed.is_none() {
        d.err(
            path,
            format!("unknown action {a:?} (expected allow or deny)"),
        );
    }
    parsed
}

fn decode_rule(d: &Diag, path: String, v: &Value) -> Option<Rule> {
    let mut o = Obj::new(d, path, v);
    let act = match o.req_str("action") {
        Some((a, p)) => action(d, &p, &a),
        None => None,
    };
    let mut ok = true;
    let from = strings(
        &mut o,
        "from",
        |s| IdentityPattern::parse(s).map(|_| ()),
        &mut ok,
    );
    let paths = strings(&mut o, "paths", check_path_pattern, &mut ok);
    let methods = strings(&mut o, "methods", check_method, &mut ok);
    o.finish();
    let action = act?;
    ok.then_some(Rule {
        action,
        from,
        paths,
        methods,
    })
}

/// A list of strings, each checked by `check`; errors carry the item's path.
fn strings(
    o: &mut Obj<'_>,
    key: &'static str,
    check: impl Fn(&str) -> Result<(), String>,
    ok: &mut bool,
) -> Vec<String> {
    let d = o.diag();
    let mut out = Vec::new();
    for (v, path) in o.list(key) {
        match v {
            Value::String(s) => match check(s) {
                Ok(()) => out.push(s.clone()),
                Err(msg) => {
                    d.err(&path, msg);
                    *ok = false;
                }
            },
            other => {
                d.err(
                    &path,
                    format!("must be a string, found {}", type_name(other)),
                );
                *ok = false;
            }
        }
    }
    out
}

fn check_path_pattern(p: &str) -> Result<(), String> {
    let body = p.strip_suffix('*').unwrap_or(p);
    if p == "*" {
        return Ok(());
    }
    if !body.starts_with('/') {
        return Err(format!("{p:?} must start with '/' (or be \"*\")"));
    }
    if body.contains('*') {
        return Err(format!("{p:?}: '*' may only end a path"));
    }
    if body
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        return Err(format!(
            "{p:?} must not contain spaces, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

fn check_method(m: &str) -> Result<(), String> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{m:?} must be an upper-case HTTP method such as GET"
        ));
    }
    Ok(())
}

/// An [`Authorization`] made ready to evaluate per request: identity patterns parsed once.
#[derive(Debug, Clone)]
pub struct Compiled {
    default_action: Action,
    audit: bool,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    action: Action,
    from: Vec<IdentityPattern>,
    paths: Vec<String>,
    methods: Vec<String>,
}

/// The outcome of evaluating a request against a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What the policy says.
    pub action: Action,
    /// The index of the rule that decided, or `None` for the default action.
    pub rule: Option<usize>,
    /// Whether the policy is in audit mode (a deny is logged, not enforced).
    pub audit: bool,
}

impl Verdict {
    /// Whether the request must be refused (a deny outside audit mode).
    pub fn refuses(&self) -> bool {
        self.action == Action::Deny && !self.audit
    }
}

impl Compiled {
    /// Compiles a validated policy (patterns that do not parse match nothing).
    pub fn new(a: &Authorization) -> Compiled {
        Compiled {
            default_action: a.default_action,
            audit: a.audit,
            rules: a
                .rules
                .iter()
                .map(|r| CompiledRule {
                    action: r.action,
                    from: r
                        .from
                        .iter()
                        .filter_map(|p| IdentityPattern::parse(p).ok())
                        .collect(),
                    paths: r.paths.clone(),
                    methods: r.methods.clone(),
                })
                .collect(),
        }
    }

    /// Evaluates a request from `identity` (`None`: a plaintext caller): the first rule whose
    /// every set field matches decides, else the default action.
    pub fn decide(&self, identity: Option<&str>, method: &str, path: &str) -> Verdict {
        let hit = self.rules.iter().position(|r| {
            (r.from.is_empty() || r.from.iter().any(|p| p.matches(identity)))
                && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
                && (r.paths.is_empty() || r.paths.iter().any(|p| path_matches(p, path)))
        });
        Verdict {
            action: hit.map_or(self.default_action, |i| self.rules[i].action),
            rule: hit,
            audit: self.audit,
        }
    }
}

/// `pattern` is exact, `*` (any), or a prefix ending in `*`. The query is not part of the path.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_str(json: &str) -> Result<Authorization, Vec<String>> {
        let d = Diag::default();
        let v: Value = serde_json::from_str(json).unwrap();
        let a = decode(&d, "authorization".into(), &v);
        let errs: Vec<String> = d
            .into_errors("Service/x")
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        match a {
            Some(a) if errs.is_empty() => Ok(a),
            _ => Err(errs),
        }
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let errs = decode_str(
            r#"{"defaultAction":"maybe","rules":[{"action":"allow","from":["web"],
                "paths":["api"],"methods":["get"]},{"from":[]}]}"#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs[0].starts_with("authorization.defaultAction: "),
            "{errs:#?}"
        );
        assert!(errs
            .iter()
            .any(|e| e.starts_with("authorization.rules[0].from[0]: ")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("authorization.rules[0].paths[0]: ")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("authorization.rules[0].methods[0]: ")));
        assert!(errs
            .iter()
            .any(|e| e == "authorization.rules[1].action: is required"));
    }

    #[test]
    fn rules_match_every_field_they_set() {
        let a = decode_str(
            r#"{"defaultAction":"deny","rules":[{"action":"allow",
                "from":["spiffe://cluster.local/ns/shop/*"],"paths":["/api/*"],"methods":["GET"]}]}"#,
        )
        .unwrap();
        let c = Compiled::new(&a);
        let allowed = |id, m, p| c.decide(id, m, p).action == Action::Allow;
        let web = Some("spiffe://cluster.local/ns/shop/sa/web");
        assert!(allowed(web, "GET", "/api/x?y=1"));
        assert_eq!(c.decide(web, "GET", "/api/x").rule, Some(0));
        assert!(!allowed(web, "POST", "/api/x"));
        assert!(!allowed(web, "GET", "/admin"));
        assert!(!allowed(None, "GET", "/api/x"));
        let other = Some("spiffe://cluster.local/ns/other/sa/web");
        assert!(!allowed(other, "GET", "/api/x"));
        assert_eq!(c.decide(other, "GET", "/api/x").rule, None);
        assert!(c.decide(other, "GET", "/api/x").refuses());
        let audit = Compiled::new(&Authorization {
            audit: true,
            ..a.clone()
        });
        assert!(!audit.decide(other, "GET", "/api/x").refuses());
        assert!(path_matches("/health", "/health"));
        assert!(!path_matches("/health", "/healthz"));
        assert!(path_matches("*", "/anything"));
    }
}
