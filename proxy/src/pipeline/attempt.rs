//! The one attempt loop: every request the proxy forwards, on every codec, is sent by
//! [`run`] over a [`Transport`].
//!
//! The loop owns the decisions that are the same whatever carries the bytes: which endpoint
//! next (the balancer, skipping endpoints already tried), the in-flight count the balancer
//! reads, the route's deadline over all attempts and each attempt's own, and whether a failure
//! is tried again. A transport owns only the exchange on one endpoint: get a connection (pooled
//! or new), send, read the response head; and it says whether it can send the request again.
//!
//! **Retries** follow the route's policy (`ferrule_config::resilience::RetryPolicy`), with
//! safe defaults: up to 3 attempts on a connect failure, a refused stream, a reset before the
//! response, a gateway error (502/503/504) or gRPC UNAVAILABLE. A failure where the request
//! never reached the app (connect failure, refused stream) is retried whatever the method;
//! any other only for an idempotent method, or a route that opts in, and only when the
//! transport still has the whole request to send again (bodies up to 64 KiB are kept for
//! that). Every retry needs room in the destination's budget (`plan::budget`), waits a jittered
//! exponential backoff or the response's `Retry-After` (a connect failure goes to another
//! endpoint at once), and happens inside the route's deadline, never after it. When retries
//! run out, the last response is passed on as it came, or the last failure is answered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferrule_config::resilience::{RetryOn, RetryPolicy};
use rand::Rng;
use tokio::time::Instant;

use crate::codec::headers::Wire;
use crate::codec::render::ProxyError;
use crate::forward::upstream::{BoxError, Upstream};
use crate::pipeline::{Decision, Dest, Pipeline};

/// Most attempts one request gets (the policy's `attempts` is validated to at most this).
pub const MAX_ATTEMPTS: usize = 10;

/// How one attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// No connection could be made; the request is untouched and may go to another endpoint.
    Refused(String),
    /// The endpoint refused the stream (HTTP/2 `REFUSED_STREAM`): the request was not
    /// processed.
    RefusedStream(BoxError),
    /// The endpoint failed the exchange (reset, closed, broken) after the request was
    /// (possibly) sent, before a response head.
    Failed(BoxError),
    /// The client broke the exchange (closed, or sent a malformed body): no answer.
    Abort,
}

/// What the loop reads of a response head to decide on a retry.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadInfo {
    /// The HTTP status.
    pub status: u16,
    /// `grpc-status` when the head carries one (a trailers-only gRPC response).
    pub grpc_status: Option<u32>,
    /// `Retry-After`, in seconds form.
    pub retry_after: Option<Duration>,
}

/// The exchange of one request with one endpoint.
pub trait Transport {
    /// What a successful attempt yields (a response head, and what is needed to relay it).
    type Output;

    /// Sends the request to `upstream` in `wire` and waits for the response head. `remaining`
    /// is the time left before the caller's deadline, which the transport passes on
    /// downstream (`ferrule-deadline`, and `grpc-timeout` for gRPC).
    fn attempt(
        &mut self,
        upstream: &Arc<Upstream>,
        wire: Wire,
        remaining: Option<Duration>,
    ) -> impl Future<Output = Result<Self::Output, AttemptError>>;

    /// What the loop reads of a response head.
    fn head(out: &Self::Output) -> HeadInfo;

    /// Makes the request ready to be sent again after an attempt that may have delivered it;
    /// `false` when it cannot be (its body was streamed, or was larger than the replay limit).
    fn rearm(&mut self) -> bool;

    /// Told of each attempt once it is over (it reached `upstream`, or failed or timed out
    /// on the way), so that the finish step can say how many were made and where the last
    /// went. Nothing by default.
    #[inline]
    fn attempted(&mut self, _upstream: &Upstream) {}
}

/// Why a request got no response from upstream.
#[derive(Debug)]
pub enum Failure {
    /// Answer the client with this error.
    Respond(ProxyError),
    /// The client broke the exchange: close, no answer.
    Abort,
}

/// A failure the retry policy may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retryable {
    ConnectFailure,
    RefusedStream,
    Reset,
    /// The attempt's own timeout passed (the route's has not).
    PerTryTimeout,
    /// A response whose status the policy retries.
    Status(u16),
    /// A trailers-only gRPC response whose status the policy retries.
    Grpc(u32),
}

impl Retryable {
    /// Whether the request cannot have reached the app, so a retry duplicates nothing.
    fn before_app(self) -> bool {
        matches!(self, Retryable::ConnectFailure | Retryable::RefusedStream)
    }

    /// The `condition` label of the retry metrics.
    fn label(self) -> &'static str {
        match self {
            Retryable::ConnectFailure => "connect-failure",
            Retryable::RefusedStream => "refused-stream",
            Retryable::Reset => "reset",
            Retryable::PerTryTimeout => "per-try-timeout",
            Retryable::Status(s) if s >= 500 => "5xx",
            Retryable::Status(_) => "status",
            Retryable::Grpc(_) => "grpc",
        }
    }

    /// Whether `policy` retries this failure at all.
    fn enabled(self, policy: &RetryPolicy) -> bool {
        let on = |r| policy.on.contains(&r);
        match self {
            Retryable::ConnectFailure => on(RetryOn::ConnectFailure),
            Retryable::RefusedStream => on(RetryOn::RefusedStream),
            Retryable::Reset => on(RetryOn::Reset),
            // An attempt that timed out is the 504 a gateway would have answered.
            Retryable::PerTryTimeout => on(RetryOn::GatewayError) || on(RetryOn::Status5xx),
            Retryable::Status(s) => status_retried(policy, s),
            Retryable::Grpc(g) => grpc_retried(policy, g),
        }
    }
}

fn status_retried(policy: &RetryPolicy, s: u16) -> bool {
    let on = |r| policy.on.contains(&r);
    (s >= 500 && on(RetryOn::Status5xx))
        || ((502..=504).contains(&s) && on(RetryOn::GatewayError))
        || policy.status_codes.contains(&s)
}

fn grpc_retried(policy: &RetryPolicy, g: u32) -> bool {
    let on = |r| policy.on.contains(&r);
    match g {
        1 => on(RetryOn::Cancelled),
        4 => on(RetryOn::DeadlineExceeded),
        8 => on(RetryOn::ResourceExhausted),
        14 => on(RetryOn::Unavailable),
        _ => false,
    }
}

/// The failure a response head stands for, if the policy retries it.
fn retryable_head(policy: &RetryPolicy, h: &HeadInfo) -> Option<Retryable> {
    if let Some(g) = h.grpc_status {
        if grpc_retried(policy, g) {
            return Some(Retryable::Grpc(g));
        }
    }
    status_retried(policy, h.status).then_some(Retryable::Status(h.status))
}

/// The wait before retry number `n` (1 for the first): full jitter over an exponentially
/// growing cap, so that callers that failed together do not come back together.
fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let cap = policy
        .backoff
        .base
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(policy.backoff.max);
    let ms = cap.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// How the current attempt ended, for the decision about the next.
enum Ended<O> {
    Response(O, Retryable, HeadInfo),
    Error(Retryable, String),
}

/// Sends a planned request through `transport`, within the route's deadline, retrying as the
/// route's policy allows.
///
/// The deadlines are raced where each attempt is awaited, rather than a timeout wrapped
/// around the whole loop, because every async layer around the attempt (which holds the
/// transport's exchange, about a kilobyte on the fast path) is one more copy of it per request
/// (measured with callgrind: about 100 instructions per request).
pub async fn run<T: Transport>(
    p: &Pipeline,
    d: &Decision,
    transport: &mut T,
) -> Result<T::Output, Failure> {
    let started = Instant::now();
    let deadline = d.timeout.map(|t| (started + t, t));
    let caller_at = d.caller_deadline.map(|t| started + t);
    // Injected faults and the destination's breaker slot, held until the loop returns.
    let (_slot, waited) = match p.admit_now(d) {
        Some(slot) => (slot, false),
        None => (p.admit(d, deadline).await.map_err(Failure::Respond)?, true),
    };
    // Inbound requests go to the one local app once: the caller's sidecar does the retrying,
    // so that two hops never multiply each other's attempts.
    let (policy, target) = match (&d.dest, &d.route) {
        (Dest::Balanced(t), Some(r)) => (Some(&r.resilience.retries), Some(&**t)),
        _ => (None, None),
    };
    if let Some(t) = target {
        t.budget.deposit(d.start, &t.policy.retry_budget);
    }
    let max_attempts = policy.map_or(1, |r| (r.attempts as usize).clamp(1, MAX_ATTEMPTS));
    // Indices tried, on the stack.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut n_tried = 0;
    let mut retries = 0u32;
    // While every attempt so far failed to connect, each endpoint is tried once, never one
    // twice; the last connect error is what the client is told if none accepts.
    let mut only_connects = true;
    let mut last_connect_error = String::new();
    loop {
        let (upstream, wire, index) = match &d.dest {
            Dest::Fixed(u) => (u, p.wire(d, false), 0),
            Dest::Balanced(t) => {
                // Another endpoint than those tried, if there is one; a request retried for
                // its response may go back to an endpoint it tried (one endpoint, a 503).
                let pick = t.balancer.pick(&tried[..n_tried], d.hash).or_else(|| {
                    (!only_connects)
                        .then(|| t.balancer.pick(&[], d.hash))
                        .flatten()
                });
                match pick {
                    Some(i) => {
                        let member = &t.balancer.members()[i];
                        (&member.upstream, p.wire(d, member.sidecar), i)
                    }
                    None => {
                        return Err(Failure::Respond(p.connect_failure(
                            d,
                            n_tried,
                            &last_connect_error,
                        )));
                    }
                }
            }
        };
        // A first attempt admitted at once starts when the loop did: one clock read fewer
        // per request in the common case.
        let now = if n_tried == 0 && !waited {
            started
        } else {
            Instant::now()
        };
        let per_try = policy.and_then(|r| r.per_try_timeout).map(|t| now + t);
        let limit = match (deadline, per_try) {
            (Some((at, _)), Some(pt)) => Some(at.min(pt)),
            (Some((at, _)), None) => Some(at),
            (None, pt) => pt,
        };
        let remaining = caller_at.map(|at| at.saturating_duration_since(now));
        let ended = {
            let _in_flight = upstream.in_flight_guard();
            let outcome = match limit {
                Some(at) => {
                    tokio::time::timeout_at(at, transport.attempt(upstream, wire, remaining))
                        .await
                        .ok()
                }
                None => Some(transport.attempt(upstream, wire, remaining).await),
            };
            // Outlier detection and peak-EWMA: a refused connect or stream, a failed exchange,
            // an attempt that timed out and a 5xx are failures; a response head is a success,
            // timed to its arrival. A client that broke the exchange says nothing about the
            // endpoint.
            // The head is read once per attempt (on the general path it is header lookups).
            let rtt = now.elapsed();
            transport.attempted(upstream);
            let head = match &outcome {
                Some(Ok(out)) => {
                    let head = T::head(out);
                    p.observe(d, index, head.status < 500, rtt);
                    head
                }
                Some(Err(AttemptError::Abort)) => HeadInfo::default(),
                None | Some(Err(_)) => {
                    p.observe(d, index, false, rtt);
                    HeadInfo::default()
                }
            };
            match outcome {
                None => match deadline {
                    Some((at, t)) if Instant::now() >= at => {
                        return Err(Failure::Respond(p.timeout(d, t)))
                    }
                    _ => Ended::Error(
                        Retryable::PerTryTimeout,
                        format!(
                            "no response from endpoint {} within the per-try timeout",
                            upstream.addr()
                        ),
                    ),
                },
                Some(Ok(out)) => {
                    let Some(policy) = policy else {
                        return Ok(out);
                    };
                    match retryable_head(policy, &head) {
                        None => return Ok(out),
                        Some(r) => Ended::Response(out, r, head),
                    }
                }
                Some(Err(AttemptError::Abort)) => return Err(Failure::Abort),
                Some(Err(AttemptError::Refused(e))) => {
                    tracing::debug!(upstream = %upstream.addr(), error = %e, "connect failed");
                    Ended::Error(Retryable::ConnectFailure, e)
                }
                Some(Err(AttemptError::RefusedStream(e))) => {
                    Ended::Error(Retryable::RefusedStream, e.to_string())
                }
                Some(Err(AttemptError::Failed(e))) => Ended::Error(Retryable::Reset, e.to_string()),
            }
        };
        if n_tried < MAX_ATTEMPTS {
            tried[n_tried] = index;
            n_tried += 1;
        }
        match &ended {
            Ended::Error(Retryable::ConnectFailure, e) => last_connect_error.clone_from(e),
            _ => only_connects = false,
        }
        let (cause, retry_after) = match &ended {
            Ended::Response(_, r, head) => (*r, head.retry_after),
            Ended::Error(r, ..) => (*r, None),
        };
        // Whether this failure may be tried again, in the order of what is cheapest to check;
        // the budget last, so that it is only spent on a retry that is made.
        let wait = policy.and_then(|policy| {
            if n_tried >= max_attempts || !cause.enabled(policy) {
                return None;
            }
            let safe = cause.before_app() || d.idempotent || policy.non_idempotent;
            if !safe {
                return None;
            }
            let wait = match cause {
                // Another endpoint at once: the request never left.
                Retryable::ConnectFailure => Duration::ZERO,
                _ => backoff(policy, retries + 1).max(retry_after.unwrap_or_default()),
            };
            if let Some((at, _)) = deadline {
                if Instant::now() + wait >= at {
                    return None;
                }
            }
            Some(wait)
        });
        let retry = wait.is_some() && (cause == Retryable::ConnectFailure || transport.rearm());
        let retry = retry && {
            let t = target.expect("a retry policy comes with a balanced target");
            let room = t.budget.withdraw(d.start, &t.policy.retry_budget);
            p.policy
                .metrics
                .retry(p.metrics_for(d.service.as_ref()), cause.label(), room);
            room
        };
        if !retry {
            return match ended {
                Ended::Response(out, ..) => Ok(out),
                Ended::Error(Retryable::ConnectFailure, e) => {
                    Err(Failure::Respond(p.connect_failure(d, n_tried, &e)))
                }
                Ended::Error(Retryable::PerTryTimeout, e) => {
                    Err(Failure::Respond(p.per_try_timeout(&e)))
                }
                Ended::Error(_, e) => Err(Failure::Respond(p.upstream_failure(upstream, &e))),
            };
        }
        retries += 1;
        tracing::debug!(upstream = %upstream.addr(), cause = cause.label(), retry = retries, "retrying");
        // The response being retried is dropped here, with its connection.
        drop(ended);
        let wait = wait.unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
