//! The one place where failures become HTTP responses.
//!
//! Every error the API returns has the same JSON shape, [`ErrorBody`]:
//! `{"error": "<summary>", "details": [{"resource", "path", "message"}, ...]}`, with `details`
//! present only for validation failures. Handlers return [`ApiError`]; nothing else builds an
//! error response.
//!
//! The failures of the identity parts below the handlers ([`CaError`] of the CA, [`TokenError`]
//! of bootstrap tokens) are defined here too, beside the one mapping to a status, so that those
//! modules import this one and never the other way round.

use ferrule_config::FieldError;
use http::header::{HeaderValue, ALLOW, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::{self, Body};
use crate::store::StoreError;

/// The JSON body of every error response (also parsed by `ferrulectl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One-line summary of what went wrong and, where it helps, what to do.
    pub error: String,
    /// Every bad field, with its resource and path (the first [`MAX_DETAILS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// How many more bad fields were found than `details` lists.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The most bad fields one error response lists: enough to fix a document by, and a bound on
/// what a hostile request of many tiny invalid documents can make the server build and send
/// (an unbounded list once turned 4 MiB of input into an 84 MB answer).
pub const MAX_DETAILS: usize = 100;

/// The most characters of a client's value (a name, a path) echoed back in an error.
const MAX_ECHO: usize = 128;

/// `value` as echoed in an error: whole when short, else its start and its length, so that a
/// 1 MiB name is not sent back.
pub fn cut(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_ECHO {
        return value.into();
    }
    let mut end = MAX_ECHO;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &value[..end], value.len()).into()
}

/// A failed request: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Methods the path accepts, for `405`.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: msg.into(),
                details: Vec::new(),
                omitted: 0,
            },
            allow: None,
        }
    }

    /// 400 with the bad fields: the first [`MAX_DETAILS`] listed, the rest counted.
    pub fn invalid(msg: impl Into<String>, mut details: Vec<FieldError>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, msg);
        e.body.omitted = details.len().saturating_sub(MAX_DETAILS);
        details.truncate(MAX_DETAILS);
        e.body.details = details;
        e
    }

    /// 415: a write whose body is not JSON.
    pub fn unsupported_media_type(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg)
    }

    /// 400 without field details (e.g. a malformed query string).
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    /// 401: a write without a valid token.
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, msg)
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, msg)
    }

    /// 404: the thing named in the path does not exist.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }

    /// 408: the client did not send what it had to in time.
    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, msg)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, msg)
    }

    /// 503: a capacity limit is reached; the client should retry later.
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, msg)
    }

    /// 500: something failed on our side.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.body.error
    }

    /// 404 for a path the API does not have.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no such API path: {}", cut(path)),
        )
    }

    /// 405, listing the methods the path takes.
    pub fn method_not_allowed(method: &http::Method, path: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} is not allowed on {} (allowed: {allow})",
                cut(path)
            ),
        );
        e.allow = Some(allow);
        e
    }

    /// 413: the request body is larger than the API accepts.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {} KiB", limit / 1024),
        )
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Builds the response.
    pub fn into_response(self) -> Response<Body> {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.body.error, "request failed");
        } else {
            tracing::debug!(status = %self.status, error = %self.body.error, "request refused");
        }
        let mut resp = body::json(self.status, &self.body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Db(_) | StoreError::Corrupt(_) | StoreError::Task(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// Why the certificate authority refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// No trusted root has this fingerprint.
    #[error("no trusted root has fingerprint {0} (see GET /v1/ca)")]
    NoSuchRoot(String),
    /// The issuing root cannot be removed.
    #[error("root {0} is the issuing root; activate another root first, then remove this one")]
    Issuing(String),
    /// The issuing CA is the operator's, so roots are rotated by the operator.
    #[error(
        "this control plane issues with the operator's CA (--ca-cert/--ca-key); rotate by \
         restarting it with the new CA, not through the API"
    )]
    Operator,
    /// The request cannot be signed as sent (bad CSR, TTL out of range).
    #[error("{0}")]
    Invalid(String),
    /// Key generation, signing or a key file failed.
    #[error("certificate authority failure: {0}")]
    Internal(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::Store(e) => e.into(),
            CaError::NoSuchRoot(_) => ApiError::not_found(e.to_string()),
            CaError::Issuing(_) | CaError::Operator => ApiError::conflict(e.to_string()),
            CaError::Invalid(_) => ApiError::bad_request(e.to_string()),
            CaError::Internal(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// Why a bootstrap token was refused, or a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No credential at all.
    #[error(
        "no credential: send `Authorization: Bearer <bootstrap token>` (ferrulectl token \
         create) or connect over TLS with a certificate of this mesh"
    )]
    Missing,
    /// The token is not one this control plane issued (or its secret is wrong).
    #[error("the bootstrap token is not known to this control plane")]
    Unknown,
    /// The token was valid once but has expired.
    #[error(
        "the bootstrap token {id} expired at {at}; create a new one with `ferrulectl token create`"
    )]
    Expired {
        /// Token id.
        id: String,
        /// Expiry (RFC 3339).
        at: String,
    },
    /// An operator revoked the token.
    #[error(
        "the bootstrap token {0} was revoked; create a new one with `ferrulectl token create`"
    )]
    Revoked(String),
    /// No token has this id (revoke).
    #[error("no token has id {0}")]
    NoSuchToken(String),
    /// The request to create one is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(e) => e.into(),
            TokenError::Missing | TokenError::Unknown => ApiError::unauthorized(e.to_string()),
            TokenError::Expired { .. } | TokenError::Revoked(_) => {
                ApiError::forbidden(e.to_string())
            }
            TokenError::NoSuchToken(_) => ApiError::not_found(e.to_string()),
            TokenError::Invalid(_) => ApiError::bad_request(e.to_string()),
        }
    }
}
