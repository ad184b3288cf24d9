//! Why the proxy answered a request itself: every reason in one table, with its stable code
//! (sent as `ferrule-error`, used as the `error` label in metrics and logs), its HTTP status and
//! the gRPC status a gRPC caller gets instead. The renderer (`codec::render`) writes these
//! rows in each wire form; nothing else decides a status for a proxy-made response.

use http::StatusCode;

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The proxy holds no snapshot yet.
    NoConfig,
    /// No service is named by the request's host.
    UnknownService,
    /// The service has routes but none matches the request.
    NoRoute,
    /// The chosen backend has no endpoints.
    NoEndpoints,
    /// Every endpoint tried refused or failed the connection.
    ConnectFailed,
    /// The route's timeout elapsed before the response headers arrived.
    Timeout,
    /// The request is malformed or cannot be proxied.
    BadRequest,
    /// The request head is larger than the proxy accepts.
    HeaderTooLarge,
    /// The upstream failed after the request was sent (reset, protocol error).
    UpstreamError,
    /// The local application did not accept the connection.
    AppUnavailable,
    /// The proxy is shutting down.
    Draining,
    /// The service's authorization policy denies the caller.
    Unauthorized,
    /// The destination's concurrency limit and its queue are full, or the request waited in
    /// the queue longer than the queue timeout (circuit breaker).
    Overloaded,
    /// The route's rate limit refused the request (`Retry-After` says when to come back).
    RateLimited,
    /// The route's fault injection aborted the request (status chosen by the policy).
    FaultInjected,
    /// The route's fallback response, served because no endpoint could take the request
    /// (status, headers and body chosen by the policy).
    Fallback,
}

/// One row of the table.
struct Row {
    code: &'static str,
    status: StatusCode,
    /// gRPC status code, as the decimal text of `grpc-status`.
    grpc: &'static str,
}

const UNIMPLEMENTED: &str = "12";
const DEADLINE_EXCEEDED: &str = "4";
const INTERNAL: &str = "13";
/// For anything a retry elsewhere might fix.
const UNAVAILABLE: &str = "14";
const RESOURCE_EXHAUSTED: &str = "8";
const PERMISSION_DENIED: &str = "7";

impl Reason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 16] = [
        Reason::NoConfig,
        Reason::UnknownService,
        Reason::NoRoute,
        Reason::NoEndpoints,
        Reason::ConnectFailed,
        Reason::Timeout,
        Reason::BadRequest,
        Reason::HeaderTooLarge,
        Reason::UpstreamError,
        Reason::AppUnavailable,
        Reason::Draining,
        Reason::Unauthorized,
        Reason::Overloaded,
        Reason::RateLimited,
        Reason::FaultInjected,
        Reason::Fallback,
    ];

    const fn row(self) -> Row {
        use StatusCode as S;
        let (code, status, grpc) = match self {
            Reason::NoConfig => ("no-config", S::SERVICE_UNAVAILABLE, UNAVAILABLE),
            Reason::UnknownService => ("unknown-service", S::NOT_FOUND, UNIMPLEMENTED),
            Reason::NoRoute => ("no-route", S::NOT_FOUND, UNIMPLEMENTED),
            Reason::NoEndpoints => ("no-endpoints", S::SERVICE_UNAVAILABLE, UNAVAILABLE),
            Reason::ConnectFailed => ("connect-failed", S::BAD_GATEWAY, UNAVAILABLE),
            Reason::Timeout => ("timeout", S::GATEWAY_TIMEOUT, DEADLINE_EXCEEDED),
            Reason::BadRequest => ("bad-request", S::BAD_REQUEST, INTERNAL),
            Reason::HeaderTooLarge => (
                "header-too-large",
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                RESOURCE_EXHAUSTED,
            ),
            Reason::UpstreamError => ("upstream-error", S::BAD_GATEWAY, UNAVAILABLE),
            Reason::AppUnavailable => ("app-unavailable", S::BAD_GATEWAY, UNAVAILABLE),
            Reason::Draining => ("draining", S::SERVICE_UNAVAILABLE, UNAVAILABLE),
            Reason::Unauthorized => ("unauthorized", S::FORBIDDEN, PERMISSION_DENIED),
            // UNAVAILABLE rather than RESOURCE_EXHAUSTED: the breaker protects a destination
            // from this one sidecar, a transient condition the caller should retry with
            // backoff (gRPC clients retry UNAVAILABLE by default, and gRPC's own HTTP mapping
            // turns 503 into it); RESOURCE_EXHAUSTED is the caller's own quota (rate limit).
            Reason::Overloaded => ("overloaded", S::SERVICE_UNAVAILABLE, UNAVAILABLE),
            Reason::RateLimited => ("rate-limited", S::TOO_MANY_REQUESTS, RESOURCE_EXHAUSTED),
            // The next two are defaults only: the policy's status replaces them
            // (`codec::render::Custom`).
            Reason::FaultInjected => ("fault-injected", S::SERVICE_UNAVAILABLE, UNAVAILABLE),
            Reason::Fallback => ("fallback", S::SERVICE_UNAVAILABLE, UNAVAILABLE),
        };
        Row { code, status, grpc }
    }

    /// The stable reason code.
    pub const fn as_str(self) -> &'static str {
        self.row().code
    }

    /// The HTTP status of the response.
    pub const fn status(self) -> StatusCode {
        self.row().status
    }

    /// The gRPC status code a gRPC caller gets (as the text of `grpc-status`).
    pub const fn grpc_status(self) -> &'static str {
        self.row().grpc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert!(r.status().is_client_error() || r.status().is_server_error());
            assert_ne!(
                r.grpc_status(),
                "0",
                "{r:?} must not look like success to gRPC"
            );
        }
        assert_eq!(Reason::HeaderTooLarge.status().as_u16(), 431);
        assert_eq!(Reason::Timeout.grpc_status(), "4");
    }
}
