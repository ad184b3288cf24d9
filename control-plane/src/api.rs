//! The HTTP API: routing and the `/v1` handlers.
//!
//! | path | methods |
//! |---|---|
//! | `/healthz` | GET -> `ok` |
//! | `/v1/version` | GET -> `{"version": snapshot version, "revision": store revision}` |
//! | `/v1/proxies` | GET -> every connected proxy ([`crate::proxies::ProxyStatus`]) |
//! | `/v1/streams` | GET -> open streams, registrations, their caps, refusals by reason |
//! | `/v1/stream` | POST: the push stream ([`crate::push`]) |
//! | `/v1/ca` | GET (admin) -> trust domain, roots ([`crate::ca::CaView`]) |
//! | `/v1/ca/roots` | POST (admin): generate a root, trusted but not issuing |
//! | `/v1/ca/roots/{fingerprint}/activate` | POST (admin): issue from this root |
//! | `/v1/ca/roots/{fingerprint}` | DELETE (admin): stop trusting a non-issuing root |
//! | `/v1/tokens` | GET (admin) list, POST (admin) `{service, namespace?, ttl?}` -> 201 with the secret |
//! | `/v1/tokens/{id}` | DELETE (admin): revoke |
//! | `/v1/certificates` | POST `{csr, ttl?}` with a bootstrap token or a client certificate |
//! | `/v1/trust-bundle` | GET -> the PEM of every trusted root (public) |
//! | `/v1/apply` | POST a list of resources -> `[{kind, name, revision, action}]` |
//! | `/v1/{services,endpoints}` | GET list, POST create |
//! | `/v1/{services,endpoints}/{name}` | GET, PUT (revision-checked replace), DELETE (`?revision=N`) |
//!
//! Reads of policy are open; writes, the CA and tokens need the admin token when one is
//! configured. Signing and the push stream are authenticated by the sidecar's identity (a
//! client certificate of the mesh, or a bootstrap token), never by the operators' token.
//! Handlers return `Result<_, ApiError>` and [`handle`] turns errors into responses.
//!
//! The module owns the route table and the REST handlers; they read the shared `State` and
//! hand `/v1/stream` to [`crate::push`]. The server calls `handle` for every request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrule_config::identity::{SpiffeId, DEFAULT_NAMESPACE};
use ferrule_config::{FieldError, Kind, Resource};
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::auth::{self, Peer};
use crate::body::{self, Body};
use crate::error::{cut, ApiError, TokenError};
use crate::push;
use crate::state::State;
use crate::store::{Action, Applied, StoreError};
use crate::time::rfc3339;

/// The largest request body the API reads (a large `apply` is well under this).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// The most documents one `apply` takes. A mesh of a thousand services applies in a few
/// calls; the cap is checked while the body is parsed, so a body of half a million tiny
/// documents never becomes half a million JSON values in memory.
pub const MAX_APPLY_DOCS: usize = 1000;

/// The API's routes, resolved from the path.
enum Route {
    Health,
    Version,
    Proxies,
    Streams,
    Stream,
    Apply,
    Ca,
    CaRoots,
    CaRoot(String),
    CaActivate(String),
    Tokens,
    Token(String),
    Certificates,
    TrustBundle,
    Collection(Kind),
    Item(Kind, String),
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let kind = |s: &str| Kind::ALL.into_iter().find(|k| k.plural() == s);
    Some(match segs.as_slice() {
        ["healthz"] => Route::Health,
        ["v1", "version"] => Route::Version,
        ["v1", "proxies"] => Route::Proxies,
        ["v1", "streams"] => Route::Streams,
        ["v1", "stream"] => Route::Stream,
        ["v1", "apply"] => Route::Apply,
        ["v1", "ca"] => Route::Ca,
        ["v1", "ca", "roots"] => Route::CaRoots,
        ["v1", "ca", "roots", fp] if !fp.is_empty() => Route::CaRoot((*fp).to_owned()),
        ["v1", "ca", "roots", fp, "activate"] if !fp.is_empty() => {
            Route::CaActivate((*fp).to_owned())
        }
        ["v1", "tokens"] => Route::Tokens,
        ["v1", "tokens", id] if !id.is_empty() => Route::Token((*id).to_owned()),
        ["v1", "certificates"] => Route::Certificates,
        ["v1", "trust-bundle"] => Route::TrustBundle,
        ["v1", k] => Route::Collection(kind(k)?),
        ["v1", k, name] if !name.is_empty() => Route::Item(kind(k)?, (*name).to_owned()),
        _ => return None,
    })
}

/// Serves one request; every error becomes a JSON error response here.
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: Peer,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match dispatch(state, req, peer).await {
        Ok(resp) => {
            tracing::debug!(%method, %path, status = %resp.status(), "request");
            resp
        }
        Err(e) => {
            tracing::debug!(%method, %path, status = %e.status(), "request failed");
            e.into_response()
        }
    }
}

async fn dispatch(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: Peer,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let route = route(&path).ok_or_else(|| ApiError::no_route(&path))?;
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        same_origin(req.headers())?;
    }
    let not_allowed = |allow| Err(ApiError::method_not_allowed(&method, &path, allow));
    let st = &state;
    match (route, &method) {
        (Route::Health, &Method::GET) => Ok(body::text(StatusCode::OK, "ok\n")),
        (Route::Health, _) => not_allowed("GET"),
        (Route::Version, &Method::GET) => Ok(body::json(
            StatusCode::OK,
            &json!({
                "version": st.snapshots.borrow().version,
                "revision": st.store.revision(),
            }),
        )),
        (Route::Version, _) => not_allowed("GET"),
        (Route::Proxies, &Method::GET) => Ok(body::json(StatusCode::OK, &st.proxies.list())),
        (Route::Proxies, _) => not_allowed("GET"),
        (Route::Streams, &Method::GET) => Ok(body::json(
            StatusCode::OK,
            &json!({
                "streams": st.streams.open(),
                "maxStreams": st.streams.max(),
                "registrations": st.leases.len(),
                "maxRegistrations": st.push.max_registrations,
                "refused": st.refusals.snapshot(),
            }),
        )),
        (Route::Streams, _) => not_allowed("GET"),
        (Route::Stream, &Method::POST) => {
            let (parts, body) = req.into_parts();
            push::stream(Arc::clone(st), &parts.headers, body, peer).await
        }
        (Route::Stream, _) => not_allowed("POST"),
        (Route::Ca, &Method::GET) => {
            authorize(st, &req)?;
            Ok(body::json(StatusCode::OK, &st.ca.view()))
        }
        (Route::Ca, _) => not_allowed("GET"),
        (Route::CaRoots, &Method::POST) => {
            authorize(st, &req)?;
            let root = st.ca.add_root().await?;
            Ok(body::json(StatusCode::CREATED, &root))
        }
        (Route::CaRoots, _) => not_allowed("POST"),
        (Route::CaActivate(fp), &Method::POST) => {
            authorize(st, &req)?;
            Ok(body::json(StatusCode::OK, &st.ca.activate(&fp).await?))
        }
        (Route::CaActivate(_), _) => not_allowed("POST"),
        (Route::CaRoot(fp), &Method::DELETE) => {
            authorize(st, &req)?;
            st.ca.remove(&fp).await?;
            Ok(body::json(
                StatusCode::OK,
                &json!({"fingerprint": fp, "action": "deleted"}),
            ))
        }
        (Route::CaRoot(_), _) => not_allowed("DELETE"),
        (Route::Tokens, &Method::GET) => {
            authorize(st, &req)?;
            Ok(body::json(StatusCode::OK, &st.tokens.list().await?))
        }
        (Route::Tokens, &Method::POST) => {
            authorize(st, &req)?;
            create_token(st, read_json(req).await?).await
        }
        (Route::Tokens, _) => not_allowed("GET, POST"),
        (Route::Token(id), &Method::DELETE) => {
            authorize(st, &req)?;
            Ok(body::json(StatusCode::OK, &st.tokens.revoke(&id).await?))
        }
        (Route::Token(_), _) => not_allowed("DELETE"),
        (Route::Certificates, &Method::POST) => {
            let identity = caller_identity(st, &req, &peer).await?;
            sign(st, identity, read_json(req).await?)
        }
        (Route::Certificates, _) => not_allowed("POST"),
        (Route::TrustBundle, &Method::GET) => {
            let mut resp = Response::new(body::full(st.ca.current().bundle.pem().to_owned()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            Ok(resp)
        }
        (Route::TrustBundle, _) => not_allowed("GET"),
        (Route::Apply, &Method::POST) => {
            authorize(st, &req)?;
            json_body(req.headers())?;
            let docs = parse_apply(&read_body(req).await?)?;
            apply(st, docs).await
        }
        (Route::Apply, _) => not_allowed("POST"),
        (Route::Collection(kind), &Method::GET) => {
            let list = st.store.run(move |s| s.list(kind)).await?;
            Ok(body::json(StatusCode::OK, &list))
        }
        (Route::Collection(kind), &Method::POST) => {
            authorize(st, &req)?;
            let r = decode(kind, &read_json(req).await?, None)?;
            let created = st.store.run(move |s| s.create(r)).await?;
            Ok(body::json(StatusCode::CREATED, &created))
        }
        (Route::Collection(_), _) => not_allowed("GET, POST"),
        (Route::Item(kind, name), &Method::GET) => {
            let found = {
                let name = name.clone();
                st.store.run(move |s| s.get(kind, &name)).await?
            };
            let r = found.ok_or_else(|| not_found(kind, &name))?;
            Ok(body::json(StatusCode::OK, &r))
        }
        (Route::Item(kind, name), &Method::PUT) => {
            authorize(st, &req)?;
            let r = decode(kind, &read_json(req).await?, Some(&name))?;
            let (stored, action) = st.store.run(move |s| s.replace(r)).await?;
            let status = match action {
                Action::Created => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            Ok(body::json(status, &stored))
        }
        (Route::Item(kind, name), &Method::DELETE) => {
            authorize(st, &req)?;
            let expected = revision_param(req.uri().query())?;
            let revision = {
                let name = name.clone();
                st.store
                    .run(move |s| s.delete(kind, &name, expected))
                    .await?
            };
            let done = Applied {
                kind: kind.as_str().to_owned(),
                name,
                revision,
                action: Action::Deleted,
            };
            Ok(body::json(StatusCode::OK, &done))
        }
        (Route::Item(..), _) => not_allowed("GET, PUT, DELETE"),
    }
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    StoreError::NotFound(format!("{kind}/{}", cut(name))).into()
}

/// Refuses a write sent by a web page of another origin. A browser sends a cross-site
/// `POST` with a `text/plain` body without asking first (no CORS preflight), so without this a
/// page a developer opens could change a mesh whose control plane has no token. Browsers
/// mark such requests with `Origin` (and `Sec-Fetch-Site`); the CLI and sidecars send neither.
fn same_origin(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::forbidden(format!(
            "cross-origin writes are refused ({why}); use ferrulectl or a client without a \
             browser's Origin header"
        )))
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return refuse(format!(
                "Sec-Fetch-Site: {}",
                cut(&String::from_utf8_lossy(site.as_bytes()))
            ));
        }
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    // Same origin: the Origin's host[:port] is the Host the request was sent to.
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return refuse(format!("Origin: {}", cut(&origin)));
    }
    Ok(())
}

/// Writes take JSON: `Content-Type: application/json` (or a `+json` type). Refusing other
/// types also keeps out the form and `text/plain` bodies a web page can send cross-site.
fn json_body(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    let json = essence.eq_ignore_ascii_case("application/json")
        || essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json");
    if json {
        return Ok(());
    }
    Err(ApiError::unsupported_media_type(format!(
        "writes take Content-Type: application/json, found {}",
        if ct.is_empty() {
            "none".into()
        } else {
            cut(ct)
        }
    )))
}

fn authorize(st: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
    auth::check_bearer(st.admin_token.as_deref(), req.headers())
}

/// The identity a signing request proves: its client certificate (renewal), else its
/// bootstrap token.
async fn caller_identity(
    st: &State,
    req: &Request<Incoming>,
    peer: &Peer,
) -> Result<SpiffeId, ApiError> {
    if let Some(id) = &peer.identity {
        return Ok(id.clone());
    }
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Err(TokenError::Missing.into());
    };
    let token = auth::bearer(value).ok_or_else(|| {
        ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
    })?;
    Ok(st.tokens.verify(token).await?)
}

/// The body of `POST /v1/tokens`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

/// How long a bootstrap token lasts unless the request says otherwise.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

async fn create_token(st: &State, body: Value) -> Result<Response<Body>, ApiError> {
    let req: TokenRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?;
    let ns = req.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let identity = SpiffeId::new(st.ca.trust_domain(), ns, &req.service)
        .map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?;
    let ttl = match &req.ttl {
        Some(t) => ferrule_config::duration::parse(t)
            .map_err(|e| ApiError::bad_request(format!("invalid token request: ttl: {e}")))?,
        None => DEFAULT_TOKEN_TTL,
    };
    let created = st.tokens.create(&identity, ttl).await?;
    Ok(body::json(StatusCode::CREATED, &created))
}

/// The body of `POST /v1/certificates`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    csr: String,
    #[serde(default)]
    ttl: Option<String>,
}

fn sign(st: &State, identity: SpiffeId, body: Value) -> Result<Response<Body>, ApiError> {
    let req: SignRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid signing request: {e}")))?;
    if identity.trust_domain() != st.ca.trust_domain() {
        return Err(ApiError::forbidden(format!(
            "{identity} is not of this control plane's trust domain {}",
            st.ca.trust_domain()
        )));
    }
    let requested = match &req.ttl {
        Some(t) => Some(
            ferrule_config::duration::parse(t)
                .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?,
        ),
        None => None,
    };
    let ttl = st.ca.ttl_for(requested)?;
    let (issued, current) = st.ca.sign(&req.csr, &identity, ttl)?;
    tracing::info!(%identity, serial = %issued.info.serial, ?ttl, "certificate signed");
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "identity": issued.info.identity.to_string(),
            "certificateChain": issued.chain_pem,
            "trustBundle": current.bundle.pem(),
            "notBefore": rfc3339(issued.info.not_before),
            "notAfter": rfc3339(issued.info.not_after),
            "serial": issued.info.serial,
        }),
    ))
}

/// Reads the whole body of a JSON write (bounded) and parses it.
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    json_body(req.headers())?;
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

/// Reads the whole body, at most [`MAX_BODY`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(MAX_BODY)),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read request body: {e}"
        ))),
    }
}

/// An `apply` body: a JSON list of documents, or one document. The list is parsed element by
/// element and refused as soon as it holds more than [`MAX_APPLY_DOCS`].
fn parse_apply(bytes: &[u8]) -> Result<Vec<Value>, ApiError> {
    use serde::de::{Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    struct Docs;
    impl<'de> Visitor<'de> for Docs {
        type Value = Vec<Value>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON list of resources, or one resource")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
            let mut docs = Vec::new();
            while let Some(doc) = seq.next_element::<Value>()? {
                if docs.len() == MAX_APPLY_DOCS {
                    return Err(A::Error::custom(format!(
                        "more than {MAX_APPLY_DOCS} documents in one apply; split it"
                    )));
                }
                docs.push(doc);
            }
            Ok(docs)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<Value>, A::Error> {
            let doc = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            Ok(vec![doc])
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let docs = de
        .deserialize_any(Docs)
        .and_then(|docs| de.end().map(|()| docs))
        .map_err(|e| {
            if e.is_data() {
                ApiError::bad_request(format!("apply takes {}", e))
            } else {
                ApiError::bad_request(format!("request body is not valid JSON: {e}"))
            }
        })?;
    Ok(docs)
}

/// Validates one resource of `kind`; for a PUT, its name must be the one in the URL.
fn decode(kind: Kind, v: &Value, url_name: Option<&str>) -> Result<Resource, ApiError> {
    let fallback = url_name.map_or_else(|| "request body".to_owned(), str::to_owned);
    let r = Resource::from_value(v, Some(kind), &fallback)
        .map_err(|errs| ApiError::invalid(format!("invalid {kind}: {}", count(&errs)), errs))?;
    if let Some(url_name) = url_name.filter(|n| *n != r.name()) {
        return Err(ApiError::invalid(
            format!("invalid {kind}: the name in the body differs from the URL"),
            vec![FieldError {
                resource: r.label(),
                path: "name".into(),
                message: format!("must equal the name in the URL ({:?})", cut(url_name)),
            }],
        ));
    }
    Ok(r)
}

fn count(errs: &[FieldError]) -> String {
    match errs.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    }
}

fn revision_param(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut rev = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("revision", v)) => {
                rev = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("revision must be a number, found {v:?}"))
                })?);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {pair:?} (expected revision=N)"
                )))
            }
        }
    }
    Ok(rev)
}

/// `POST /v1/apply`: validates every document first, then writes them all in one transaction.
async fn apply(st: &State, docs: Vec<Value>) -> Result<Response<Body>, ApiError> {
    let mut resources = Vec::with_capacity(docs.len());
    let mut errs = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        match Resource::from_value(doc, None, &format!("document {}", i + 1)) {
            Ok(r) => resources.push(r),
            Err(e) => errs.extend(e),
        }
    }
    ferrule_config::document::check_unique(&resources, &mut errs);
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            format!(
                "nothing applied: {} in {} document{}",
                count(&errs),
                docs.len(),
                if docs.len() == 1 { "" } else { "s" }
            ),
            errs,
        ));
    }
    let applied = st.store.run(move |s| s.apply(resources)).await?;
    Ok(body::json(StatusCode::OK, &applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_params() {
        assert!(matches!(route("/healthz"), Some(Route::Health)));
        assert!(matches!(
            route("/v1/services"),
            Some(Route::Collection(Kind::Service))
        ));
        assert!(matches!(
            route("/v1/endpoints/"),
            Some(Route::Collection(Kind::Endpoint))
        ));
        assert!(
            matches!(route("/v1/services/echo"), Some(Route::Item(Kind::Service, ref n)) if n == "echo")
        );
        assert!(route("/v1/widgets").is_none());
        assert!(route("/v1/services/a/b").is_none());
        assert!(
            matches!(route("/v1/ca/roots/ab12/activate"), Some(Route::CaActivate(ref f)) if f == "ab12")
        );
        assert!(matches!(route("/v1/ca/roots/ab12"), Some(Route::CaRoot(ref f)) if f == "ab12"));
        assert!(matches!(route("/v1/tokens/x"), Some(Route::Token(ref i)) if i == "x"));
        assert!(route("/").is_none());
        assert_eq!(revision_param(Some("revision=7")).unwrap(), Some(7));
        assert_eq!(revision_param(None).unwrap(), None);
        assert!(revision_param(Some("revision=x")).is_err());
        assert!(revision_param(Some("rev=1")).is_err());
    }
}
