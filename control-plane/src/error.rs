//! The one place where failures become HTTP responses.
//!
//! Every error the API returns has the same JSON shape, [`ErrorBody`]:
//! `{"error": "<summary>", "details": [{"resource", "path", "message"}, ...]}`, with `details`
//! present only for validation failures. Handlers return [`ApiError`]; nothing else builds an
//! error response.

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
    /// Every bad field, with its resource and path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
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
            },
            allow: None,
        }
    }

    /// 400 with every bad field.
    pub fn invalid(msg: impl Into<String>, details: Vec<FieldError>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, msg);
        e.body.details = details;
        e
    }

    /// 400 without field details (e.g. a malformed query string).
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    /// 401: a write without a valid token.
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, msg)
    }

    /// 404 for a path the API does not have.
    pub fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no such API path: {path}"))
    }

    /// 405, listing the methods the path takes.
    pub fn method_not_allowed(method: &http::Method, path: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path} (allowed: {allow})"),
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
