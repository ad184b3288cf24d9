//! Unit tests of the plan, the attempt loop (against a scripted transport) and the renderer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_config::{parse_documents, Resource, Snapshot};
use http::Request;

use super::attempt::{self, AttemptError, Failure, HeadInfo, Transport};
use super::*;
use crate::codec::h1::{self, Parsed};
use crate::telemetry::metrics::Metrics;

const MESH: &str = "\
kind: Service
name: echo
trafficPolicy: {loadBalancer: round_robin}
routes:
  - name: slow
    match: {pathPrefix: /slow}
    timeout: 50ms
  - name: v2
    match: {pathPrefix: /v2}
    backends: [{subset: {version: v2}, weight: 100}]
  - name: nowhere
    match: {pathPrefix: /nowhere}
    backends: [{subset: {version: v9}, weight: 100}]
  - name: strict
    match: {pathPrefix: /strict}
    retries: {attempts: 2, on: [5xx], perTryTimeout: 10ms, backoff: {base: 1ms, max: 1ms}}
  - name: post-ok
    match: {pathPrefix: /post-ok}
    retries: {nonIdempotent: true, backoff: {base: 1ms, max: 1ms}}
  - name: all
    match: {pathPrefix: /}
---
kind: Service
name: grpc-svc
protocol: grpc
---
kind: Endpoint
name: a
service: echo
address: 127.0.0.1:1001
---
kind: Endpoint
name: b
service: echo
address: 127.0.0.1:1002
---
kind: Endpoint
name: c
service: echo
address: 127.0.0.1:1003
labels: {version: v2}
---
kind: Endpoint
name: g
service: grpc-svc
address: 127.0.0.1:1004
sidecar: true
";

fn policy(yaml: Option<&str>) -> Arc<Policy> {
    let policy = Arc::new(Policy::new(
        "echo",
        Arc::new(Metrics::new()),
        crate::base::Identity::disabled(),
    ));
    if let Some(yaml) = yaml {
        let mut snap = Snapshot {
            version: 7,
            ..Default::default()
        };
        for r in parse_documents(yaml, "test").unwrap() {
            match r {
                Resource::Service(s) => snap.services.push(s),
                Resource::Endpoint(e) => snap.endpoints.push(e),
            }
        }
        policy.apply(Arc::new(snap), "control-plane");
    }
    policy
}

fn ctx() -> ConnCtx {
    let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    ConnCtx::new(Listener::Outbound, a, a)
}

fn get(uri: &str, host: &str) -> Request<()> {
    Request::builder()
        .uri(uri)
        .header("host", host)
        .body(())
        .unwrap()
}

fn post(uri: &str, host: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("host", host)
        .body(())
        .unwrap()
}

fn reason(p: &Planned) -> Option<Reason> {
    p.as_ref().err().map(|e| e.error.reason)
}

fn addrs(d: &Decision) -> Vec<String> {
    match &d.dest {
        Dest::Balanced(t) => t
            .balancer
            .members()
            .iter()
            .map(|m| m.upstream.addr().to_string())
            .collect(),
        Dest::Fixed(u) => vec![u.addr().to_string()],
    }
}

#[test]
fn plan_picks_service_route_backend_and_deadline() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/slow/x", "echo:80")).unwrap();
    assert_eq!(
        d.route.as_ref().and_then(|r| r.name.as_deref()),
        Some("slow")
    );
    assert_eq!(d.timeout, Some(Duration::from_millis(50)));
    assert_eq!(d.service.as_ref().map(|s| &*s.name), Some("echo"));
    // The route without backends takes every endpoint of its service.
    assert_eq!(
        addrs(&d),
        ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]
    );
    assert!(p.fast_can_carry(&d));

    let d = p.plan(&ctx(), &get("/v2", "ECHO")).unwrap();
    assert_eq!(d.route.as_ref().and_then(|r| r.name.as_deref()), Some("v2"));
    assert_eq!(d.timeout, None);
    assert_eq!(addrs(&d), ["127.0.0.1:1003"]);
}

#[test]
fn plan_refusals_carry_their_reason_and_service() {
    let none = Pipeline::outbound(policy(None));
    assert_eq!(
        reason(&none.plan(&ctx(), &get("/", "echo"))),
        Some(Reason::NoConfig)
    );

    let p = Pipeline::outbound(policy(Some(MESH)));
    let unknown = p.plan(&ctx(), &get("/", "other")).unwrap_err();
    assert_eq!(unknown.error.reason, Reason::UnknownService);
    assert!(unknown.service.is_none());
    assert!(
        unknown.error.detail.contains("echo, grpc-svc"),
        "{}",
        unknown.error.detail
    );

    let empty = p.plan(&ctx(), &get("/nowhere", "echo")).unwrap_err();
    assert_eq!(empty.error.reason, Reason::NoEndpoints);
    assert_eq!(empty.service.as_ref().map(|s| &*s.name), Some("echo"));

    let no_host = Request::builder().uri("/").body(()).unwrap();
    assert_eq!(reason(&p.plan(&ctx(), &no_host)), Some(Reason::BadRequest));
    let connect = Request::builder()
        .method("CONNECT")
        .uri("echo:443")
        .body(())
        .unwrap();
    assert_eq!(reason(&p.plan(&ctx(), &connect)), Some(Reason::BadRequest));
}

#[test]
fn plan_reads_an_in_place_head_as_it_reads_a_request() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let raw = b"GET /v2/a?q=1 HTTP/1.1\r\nHost: echo\r\n\r\n";
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let Parsed::Ready(head) = h1::parse_request(raw, &mut storage) else {
        panic!("not parsed");
    };
    let from_head = p.plan(&ctx(), &head).unwrap();
    let from_request = p.plan(&ctx(), &get("/v2/a?q=1", "echo")).unwrap();
    assert_eq!(
        from_head.route.as_ref().map(|r| r.name.clone()),
        from_request.route.as_ref().map(|r| r.name.clone())
    );
    assert_eq!(addrs(&from_head), addrs(&from_request));
}

#[test]
fn wire_follows_client_and_destination() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let grpc = Request::builder()
        .uri("/svc/M")
        .header("host", "grpc-svc")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let d = p.plan(&ctx(), &grpc).unwrap();
    assert!(!p.fast_can_carry(&d));
    assert_eq!(p.wire(&d, true), Wire::Http2);
    assert_eq!(p.wire(&d, false), Wire::Http2);
    // An HTTP/1.1 client to a gRPC service's sidecar keeps HTTP/1.1 on that hop, and the
    // fast path still declines it (a non-sidecar endpoint would need translating).
    let d = p.plan(&ctx(), &get("/", "grpc-svc")).unwrap();
    assert_eq!(p.wire(&d, true), Wire::Http1);
    assert_eq!(p.wire(&d, false), Wire::Http2);
    assert!(!p.fast_can_carry(&d));

    let inbound = Pipeline::inbound(policy(Some(MESH)), "echo", "127.0.0.1:9".parse().unwrap());
    let d = inbound.plan(&ctx(), &get("/", "echo")).unwrap();
    assert_eq!(addrs(&d), ["127.0.0.1:9"]);
    assert_eq!(inbound.wire(&d, false), Wire::Http1);
}

/// A transport that answers attempts from a script and records where each went. A scripted
/// response is its status as text ("503"; "head" is a 200), with `Retry-After` after a space.
struct Script {
    outcomes: VecDeque<Result<&'static str, AttemptError>>,
    seen: Vec<(SocketAddr, usize)>,
    /// The remaining time each attempt was given.
    remaining: Vec<Option<Duration>>,
    /// Never answers (for the deadline).
    hang: bool,
    /// The first this many attempts never answer (for the per-try timeout).
    hang_first: usize,
    /// Whether the request can be sent again.
    replayable: bool,
}

impl Script {
    fn new(outcomes: Vec<Result<&'static str, AttemptError>>) -> Self {
        Script {
            outcomes: outcomes.into(),
            seen: Vec::new(),
            remaining: Vec::new(),
            hang: false,
            hang_first: 0,
            replayable: true,
        }
    }
}

impl Transport for Script {
    type Output = &'static str;

    async fn attempt(
        &mut self,
        upstream: &Arc<Upstream>,
        _wire: Wire,
        remaining: Option<Duration>,
    ) -> Result<&'static str, AttemptError> {
        // The loop counts the request in flight on the endpoint while the attempt runs.
        self.seen.push((upstream.addr(), upstream.in_flight()));
        self.remaining.push(remaining);
        if self.hang || self.seen.len() <= self.hang_first {
            std::future::pending::<()>().await;
        }
        self.outcomes
            .pop_front()
            .expect("an attempt beyond the script")
    }

    fn head(out: &&'static str) -> HeadInfo {
        let mut words = out.split(' ');
        HeadInfo {
            status: words.next().and_then(|s| s.parse().ok()).unwrap_or(200),
            grpc_status: None,
            retry_after: words
                .next()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs),
        }
    }

    fn rearm(&mut self) -> bool {
        self.replayable
    }
}

fn refused() -> Result<&'static str, AttemptError> {
    Err(AttemptError::Refused("connection refused".into()))
}

#[tokio::test]
async fn a_refused_connect_moves_the_request_to_another_endpoint() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    let mut t = Script::new(vec![refused(), Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    assert_eq!(t.seen.len(), 2);
    assert_ne!(
        t.seen[0].0, t.seen[1].0,
        "the same endpoint was tried twice"
    );
    assert!(t.seen.iter().all(|(_, in_flight)| *in_flight == 1));
    let Dest::Balanced(target) = &d.dest else {
        panic!()
    };
    assert!(target
        .balancer
        .members()
        .iter()
        .all(|m| m.upstream.in_flight() == 0));
}

#[tokio::test]
async fn every_endpoint_refused_is_connect_failed_after_the_cap() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    let mut t = Script::new(vec![refused(), refused(), refused()]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!("expected a response")
    };
    assert_eq!(e.reason, Reason::ConnectFailed);
    assert!(e.detail.contains("3 endpoint(s) of echo"), "{}", e.detail);
    // The default policy: three attempts.
    assert_eq!(t.seen.len(), 3);
    let mut distinct: Vec<_> = t.seen.iter().map(|(a, _)| *a).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);

    // A subset of one endpoint: one attempt, then the same error.
    let d = p.plan(&ctx(), &get("/v2", "echo")).unwrap();
    let mut t = Script::new(vec![refused()]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::ConnectFailed);
    assert_eq!(t.seen.len(), 1);
}

#[tokio::test]
async fn a_failure_after_sending_a_post_is_not_retried() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &post("/", "echo")).unwrap();
    let mut t = Script::new(vec![Err(AttemptError::Failed("reset".into()))]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::UpstreamError);
    assert_eq!(t.seen.len(), 1);

    let mut t = Script::new(vec![Err(AttemptError::Abort)]);
    assert!(matches!(
        attempt::run(&p, &d, &mut t).await,
        Err(Failure::Abort)
    ));
}

#[tokio::test]
async fn the_inbound_app_is_tried_once() {
    let p = Pipeline::inbound(policy(Some(MESH)), "echo", "127.0.0.1:9".parse().unwrap());
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    let mut t = Script::new(vec![refused()]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::AppUnavailable);
    assert_eq!(t.seen.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_route_deadline_covers_every_attempt() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/slow", "echo")).unwrap();
    let mut t = Script::new(vec![]);
    t.hang = true;
    let started = tokio::time::Instant::now();
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::Timeout);
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert!(e.detail.contains("echo"), "{}", e.detail);
}

#[test]
fn the_renderer_writes_one_table_in_every_form() {
    use http_body_util::BodyExt;
    for reason in Reason::ALL {
        let e = ProxyError::new(reason, "what happened");
        // HTTP/1.1 bytes.
        let bytes = String::from_utf8(e.to_http1(true, false)).unwrap();
        let status = reason.status();
        assert!(
            bytes.starts_with(&format!(
                "HTTP/1.1 {} {}\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap()
            )),
            "{bytes}"
        );
        assert!(bytes.contains(&format!("\r\nferrule-error: {}\r\n", reason.as_str())));
        assert!(bytes.contains("\r\nconnection: close\r\n"));
        let body = format!("ferrule: {}: what happened\n", reason.as_str());
        assert!(bytes.ends_with(&format!("\r\n\r\n{body}")), "{bytes}");
        assert!(bytes.contains(&format!("content-length: {}\r\n", body.len())));
        // A HEAD request gets the same head and no body.
        let head = String::from_utf8(e.to_http1(false, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && !head.contains("connection: close"));
        // An http::Response.
        let resp = e.clone().into_response(false);
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["ferrule-error"], reason.as_str());
        let got = futures_util::FutureExt::now_or_never(resp.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(got, body.as_bytes());
        // A trailers-only gRPC response.
        let grpc = e.into_response(true);
        assert_eq!(grpc.status(), http::StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], reason.grpc_status());
        assert_eq!(grpc.headers()["ferrule-error"], reason.as_str());
        assert_eq!(grpc.headers()["grpc-message"], "what happened");
    }
}

fn retried(p: &Pipeline, condition: &str) -> u64 {
    let text = p.policy.metrics.encode();
    let needle = format!(
        "ferrule_retries_total{{direction=\"outbound\",service=\"echo\",condition=\"{condition}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_gateway_error_on_a_get_is_retried_on_another_endpoint() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    let mut t = Script::new(vec![Ok("503"), Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    assert_eq!(t.seen.len(), 2);
    assert_ne!(t.seen[0].0, t.seen[1].0);
    assert_eq!(retried(&p, "5xx"), 1);

    // A 500 is not a gateway error: the default policy passes it on.
    let mut t = Script::new(vec![Ok("500")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "500");
    assert_eq!(t.seen.len(), 1);

    // Out of attempts, the last response is passed on as it came.
    let mut t = Script::new(vec![Ok("502"), Ok("503"), Ok("504")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "504");
    assert_eq!(t.seen.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_only_where_it_never_reached_the_app_unless_the_route_opts_in() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &post("/", "echo")).unwrap();
    let mut t = Script::new(vec![Ok("503")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "503");
    assert_eq!(t.seen.len(), 1);
    let mut t = Script::new(vec![refused(), Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    let mut t = Script::new(vec![
        Err(AttemptError::RefusedStream("refused".into())),
        Ok("head"),
    ]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");

    let d = p.plan(&ctx(), &post("/post-ok", "echo")).unwrap();
    let mut t = Script::new(vec![Err(AttemptError::Failed("reset".into())), Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    assert_eq!(retried(&p, "reset"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_sent_again_is_not_retried() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    let mut t = Script::new(vec![Ok("503")]);
    t.replayable = false;
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "503");
    // A refused connect never sent it, so it still moves.
    let mut t = Script::new(vec![refused(), Ok("head")]);
    t.replayable = false;
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
}

#[tokio::test(start_paused = true)]
async fn the_per_try_timeout_retries_within_the_policy() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/strict", "echo")).unwrap();
    let started = tokio::time::Instant::now();
    let mut t = Script::new(vec![Ok("head")]);
    t.hang_first = 1;
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    // 10 ms for the first try, 1 ms of backoff at most.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(10) && took <= Duration::from_millis(11),
        "{took:?}"
    );
    assert_eq!(retried(&p, "per-try-timeout"), 1);

    // Both tries time out: 504, after exactly two.
    let mut t = Script::new(vec![]);
    t.hang = true;
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::Timeout);
    assert_eq!(t.seen.len(), 2);
    // `on: [5xx]` takes every 5xx, not only gateway errors; `attempts: 2` stops at two.
    let mut t = Script::new(vec![Ok("500"), Ok("501")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "501");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_never_outlives_the_deadline() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    let started = tokio::time::Instant::now();
    let mut t = Script::new(vec![Ok("503 2"), Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // The route's 50 ms deadline has no room for a 2 s wait: the 503 is the answer.
    let d = p.plan(&ctx(), &get("/slow", "echo")).unwrap();
    let started = tokio::time::Instant::now();
    let mut t = Script::new(vec![Ok("503 2")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "503 2");
    assert!(started.elapsed() < Duration::from_millis(50));
    // The route's timeout is not the caller's deadline: nothing to pass on.
    assert_eq!(t.remaining, [None]);
    // The caller's is, as the time left when each attempt starts.
    let mut req = get("/", "echo");
    req.headers_mut()
        .insert("ferrule-deadline", "5000".parse().unwrap());
    let d = p.plan(&ctx(), &req).unwrap();
    let mut t = Script::new(vec![Ok("503 2"), Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    assert_eq!(t.remaining[0], Some(Duration::from_millis(5000)));
    let second = t.remaining[1].unwrap();
    assert!(second <= Duration::from_millis(3000), "{second:?}");
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_and_counts_the_refusals() {
    let yaml = MESH.replace(
        "trafficPolicy: {loadBalancer: round_robin}",
        "trafficPolicy: {loadBalancer: round_robin, retryBudget: {percent: 50, minPerSecond: 0}}",
    );
    let p = Pipeline::outbound(policy(Some(&yaml)));
    let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
    // Each request deposits one; 50% of them may be retried. 10 requests, each failing
    // three times: 5 retries in all.
    let mut attempts = 0;
    for _ in 0..10 {
        let mut t = Script::new(vec![Ok("503"), Ok("503"), Ok("503")]);
        let d = p.plan(&ctx(), &get("/", "echo")).unwrap();
        assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "503");
        attempts += t.seen.len();
    }
    drop(d);
    assert_eq!(attempts, 15);
    assert_eq!(retried(&p, "5xx"), 5);
    let text = p.policy.metrics.encode();
    assert!(
        text.contains("ferrule_retries_refused_by_budget_total{direction=\"outbound\",service=\"echo\",condition=\"5xx\"} 10"),
        "{text}"
    );
}

#[test]
fn incoming_deadlines_shorten_the_route_timeout() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let mut req = get("/slow", "echo");
    req.headers_mut()
        .insert("ferrule-deadline", "20".parse().unwrap());
    assert_eq!(
        p.plan(&ctx(), &req).unwrap().timeout,
        Some(Duration::from_millis(20))
    );
    // A later deadline does not lengthen the route's.
    req.headers_mut()
        .insert("ferrule-deadline", "20000".parse().unwrap());
    assert_eq!(
        p.plan(&ctx(), &req).unwrap().timeout,
        Some(Duration::from_millis(50))
    );
    // gRPC's own header, on gRPC requests.
    let mut grpc = get("/", "echo");
    grpc.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    grpc.headers_mut()
        .insert("grpc-timeout", "2S".parse().unwrap());
    assert_eq!(
        p.plan(&ctx(), &grpc).unwrap().timeout,
        Some(Duration::from_secs(2))
    );
    // Garbage is ignored, not trusted.
    let mut bad = get("/", "echo");
    bad.headers_mut()
        .insert("ferrule-deadline", "-5".parse().unwrap());
    assert_eq!(p.plan(&ctx(), &bad).unwrap().timeout, None);
    // The inbound side takes the caller's deadline for the app.
    let inbound = Pipeline::inbound(policy(Some(MESH)), "echo", "127.0.0.1:9".parse().unwrap());
    assert_eq!(
        inbound.plan(&ctx(), &req).unwrap().timeout,
        Some(Duration::from_secs(20))
    );
    assert_eq!(
        parse_grpc_timeout(b"100m"),
        Some(Duration::from_millis(100))
    );
    assert_eq!(parse_grpc_timeout(b"123456789S"), None);
    assert_eq!(parse_grpc_timeout(b"5x"), None);
}

#[tokio::test]
async fn every_attempt_outcome_reaches_the_endpoint_health() {
    // The /v2 subset has one endpoint, c: one of one is beyond the 50% ejection cap, so c
    // is never ejected and its failure streak shows every outcome the loop reported. A POST,
    // so that no failure is retried (each attempt is one outcome).
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &post("/v2", "echo")).unwrap();
    let Dest::Balanced(target) = &d.dest else {
        panic!()
    };
    let streak = || {
        target.balancer.members()[0]
            .upstream
            .health()
            .report(std::time::Instant::now())
            .consecutive_failures
    };
    // A 5xx response head is a failure, though it is relayed to the client.
    let mut t = Script::new(vec![Ok("503"), Ok("500")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "503");
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "500");
    assert_eq!(streak(), 2);
    // A refused connect and a failed exchange are failures.
    let mut t = Script::new(vec![refused(), Err(AttemptError::Failed("reset".into()))]);
    assert!(attempt::run(&p, &d, &mut t).await.is_err());
    assert!(attempt::run(&p, &d, &mut t).await.is_err());
    assert_eq!(streak(), 4);
    // A client that broke the exchange says nothing about the endpoint.
    let mut t = Script::new(vec![Err(AttemptError::Abort)]);
    assert!(matches!(
        attempt::run(&p, &d, &mut t).await,
        Err(Failure::Abort)
    ));
    assert_eq!(streak(), 4);
    // Any other response head is a success, and feeds the latency estimate.
    let mut t = Script::new(vec![Ok("404")]);
    attempt::run(&p, &d, &mut t).await.unwrap();
    assert_eq!(streak(), 0);
    let health = target.balancer.members()[0].upstream.health();
    assert!(health.latency(std::time::Instant::now()).is_some());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_the_deadline_is_a_failure() {
    let p = Pipeline::outbound(policy(Some(MESH)));
    let d = p.plan(&ctx(), &get("/slow", "echo")).unwrap();
    let mut t = Script::new(vec![]);
    t.hang = true;
    assert!(attempt::run(&p, &d, &mut t).await.is_err());
    let Dest::Balanced(target) = &d.dest else {
        panic!()
    };
    let failures: u32 = target
        .balancer
        .members()
        .iter()
        .map(|m| {
            m.upstream
                .health()
                .report(std::time::Instant::now())
                .consecutive_failures
        })
        .sum();
    assert_eq!(failures, 1);
}

const RINGS: &str = "\
kind: Service
name: by-header
trafficPolicy: {loadBalancer: ring_hash, hashKey: {header: x-user}}
---
kind: Service
name: by-cookie
trafficPolicy: {loadBalancer: ring_hash, hashKey: {cookie: session}}
---
kind: Service
name: by-ip
trafficPolicy: {loadBalancer: ring_hash, hashKey: {sourceIp: true}}
---
kind: Service
name: plain
---
kind: Endpoint
name: h
service: by-header
address: 127.0.0.1:2001
---
kind: Endpoint
name: k
service: by-cookie
address: 127.0.0.1:2002
---
kind: Endpoint
name: i
service: by-ip
address: 127.0.0.1:2003
---
kind: Endpoint
name: p
service: plain
address: 127.0.0.1:2004
";

#[test]
fn plan_hashes_the_ring_key_from_a_header_a_cookie_or_the_source_ip() {
    use crate::plan::balance::hash_key;
    let p = Pipeline::outbound(policy(Some(RINGS)));
    let with = |host: &str, name: &str, value: &str| {
        Request::builder()
            .uri("/")
            .header("host", host)
            .header(name, value)
            .body(())
            .unwrap()
    };
    let hash = |req: &Request<()>| p.plan(&ctx(), req).unwrap().hash;
    assert_eq!(
        hash(&with("by-header", "x-user", "alice")),
        Some(hash_key(b"alice"))
    );
    // Without the key: no hash (a random endpoint).
    assert_eq!(hash(&with("by-header", "x-other", "alice")), None);
    assert_eq!(
        hash(&with("by-cookie", "cookie", "a=1; session=s1")),
        Some(hash_key(b"s1"))
    );
    assert_eq!(hash(&with("by-cookie", "cookie", "a=1")), None);
    assert_eq!(hash(&get("/", "by-ip")), Some(hash_key(&[127, 0, 0, 1])));
    // Other balancers never pay for a hash.
    assert_eq!(hash(&with("plain", "x-user", "alice")), None);
    // The fast path's in-place head gives the same key (header names case-insensitive).
    let raw = b"GET / HTTP/1.1\r\nHost: by-header\r\nX-User: alice\r\n\r\n";
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let Parsed::Ready(head) = h1::parse_request(raw, &mut storage) else {
        panic!("not parsed");
    };
    assert_eq!(
        p.plan(&ctx(), &head).unwrap().hash,
        Some(hash_key(b"alice"))
    );
}

/// Resilience policy on every step: a breaker of one slot and one waiter, a rate limit, an
/// abort forced by header, a fallback on a subset without endpoints.
const GUARDED: &str = "\
kind: Service
name: echo
trafficPolicy:
  circuitBreaker: {maxRequests: 1, maxPending: 1, queueTimeout: 40ms}
routes:
  - name: limited
    match: {pathPrefix: /limited}
    rateLimit: {requestsPerSecond: 1, burst: 2, side: outbound}
  - name: shadow
    match: {pathPrefix: /shadow}
    rateLimit: {requestsPerSecond: 1, burst: 1, side: outbound, shadow: true}
  - name: inbound-only
    match: {pathPrefix: /in}
    rateLimit: {requestsPerSecond: 1, burst: 1, key: {header: x-user}}
  - name: chaos
    match: {pathPrefix: /chaos}
    faults:
      abort: {httpStatus: 418, grpcStatus: 9, percent: 0}
      delay: {fixed: 30ms, percent: 0}
      allowHeader: true
  - name: chaos-late
    match: {pathPrefix: /late}
    timeout: 10ms
    faults: {delay: {fixed: 30ms, percent: 100}}
  - name: empty
    match: {pathPrefix: /empty}
    backends: [{subset: {version: none}, weight: 100}]
    fallback: {status: 200, headers: {x-fallback: 'yes'}, body: cached}
  - name: all
    match: {pathPrefix: /}
    fallback: {status: 503, body: sorry}
---
kind: Endpoint
name: a
service: echo
address: 127.0.0.1:1001
";

fn with_header(uri: &str, name: &str, value: &str) -> Request<()> {
    Request::builder()
        .uri(uri)
        .header("host", "echo")
        .header(name, value)
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_outbound_rate_limit_refuses_with_retry_after_and_shadow_lets_through() {
    let p = Pipeline::outbound(policy(Some(GUARDED)));
    let req = get("/limited", "echo");
    assert!(p.plan(&ctx(), &req).is_ok());
    assert!(p.plan(&ctx(), &req).is_ok());
    let e = p.plan(&ctx(), &req).unwrap_err();
    assert_eq!(e.error.reason, Reason::RateLimited);
    assert_eq!(e.service.as_ref().map(|s| &*s.name), Some("echo"));
    let resp = e.error.into_response(false);
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["ferrule-error"], "rate-limited");
    // Shadow mode: over the limit, still planned, and counted.
    for _ in 0..3 {
        assert!(p.plan(&ctx(), &get("/shadow", "echo")).is_ok());
    }
    let text = p.policy.metrics.encode();
    assert!(
        text.contains(
            r#"ferrule_rate_limited_total{direction="outbound",service="echo",kind="shadow"} 2"#
        ),
        "{text}"
    );
    // An inbound-side limit is not the caller's to enforce.
    for _ in 0..3 {
        assert!(p.plan(&ctx(), &get("/in", "echo")).is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn an_inbound_rate_limit_is_keyed_and_survives_a_snapshot_of_the_same_policy() {
    let pol = policy(Some(GUARDED));
    let inbound = Pipeline::inbound(pol.clone(), "echo", "127.0.0.1:9".parse().unwrap());
    let alice = with_header("/in", "x-user", "alice");
    assert!(inbound.plan(&ctx(), &alice).is_ok());
    let e = inbound.plan(&ctx(), &alice).unwrap_err();
    assert_eq!(e.error.reason, Reason::RateLimited);
    assert!(inbound
        .plan(&ctx(), &with_header("/in", "x-user", "bob"))
        .is_ok());
    // Other routes of the service are not limited inbound.
    assert!(inbound.plan(&ctx(), &get("/x", "echo")).is_ok());
    // The same policy again (a new version): alice's bucket is still empty.
    let snap = pol.load().snapshot.clone().unwrap();
    let mut next = (*snap).clone();
    next.version += 1;
    pol.apply(Arc::new(next), "control-plane");
    assert_eq!(
        reason(&inbound.plan(&ctx(), &alice)),
        Some(Reason::RateLimited)
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_queues_then_fails_fast_and_its_state_survives_a_snapshot() {
    let pol = policy(Some(GUARDED));
    let p = Pipeline::outbound(pol.clone());
    let d = p.plan(&ctx(), &get("/x", "echo")).unwrap();
    let Dest::Balanced(t) = &d.dest else { panic!() };
    let held = t.breaker.acquire(None).await.unwrap();
    // The same destination after a snapshot swap shares the breaker, and its slot is taken.
    let snap = pol.load().snapshot.clone().unwrap();
    let mut next = (*snap).clone();
    next.version += 1;
    pol.apply(Arc::new(next), "control-plane");
    let d2 = p.plan(&ctx(), &get("/x", "echo")).unwrap();
    let Dest::Balanced(t2) = &d2.dest else {
        panic!()
    };
    assert!(Arc::ptr_eq(&t.breaker, &t2.breaker));
    // One waits for the queue timeout (40 ms) and gets overloaded, which the route's
    // fallback answers; with the queue full, the next fails at once.
    let start = tokio::time::Instant::now();
    let waiter = async {
        let mut t = Script::new(vec![]);
        attempt::run(&p, &d2, &mut t).await
    };
    let second = async {
        tokio::task::yield_now().await;
        let mut t = Script::new(vec![]);
        let r = attempt::run(&p, &d2, &mut t).await;
        (r, start.elapsed())
    };
    let (first, (second, fast)) = tokio::join!(waiter, second);
    let Err(Failure::Respond(first)) = first else {
        panic!()
    };
    assert_eq!(first.reason, Reason::Fallback);
    assert!(first.detail.contains("overloaded"), "{}", first.detail);
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    let Err(Failure::Respond(second)) = second else {
        panic!()
    };
    assert_eq!(second.reason, Reason::Fallback);
    assert_eq!(fast, Duration::ZERO);
    assert_eq!(second.status(), 503);
    drop(held);
    // With the slot back, the request goes through.
    let mut t = Script::new(vec![Ok("head")]);
    assert_eq!(attempt::run(&p, &d2, &mut t).await.unwrap(), "head");
    assert_eq!(t2.breaker.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn faults_forced_by_header_delay_then_abort_with_the_policy_status() {
    let p = Pipeline::outbound(policy(Some(GUARDED)));
    // No header, 0%: nothing injected.
    let d = p.plan(&ctx(), &get("/chaos", "echo")).unwrap();
    assert_eq!(d.faults, crate::plan::fault::Injected::default());
    let d = p
        .plan(
            &ctx(),
            &with_header("/chaos", "ferrule-fault", "delay,abort"),
        )
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut t = Script::new(vec![]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    assert!(t.seen.is_empty(), "an aborted request reached a transport");
    assert_eq!(e.reason, Reason::FaultInjected);
    let bytes = String::from_utf8(e.to_http1(false, false)).unwrap();
    assert!(bytes.starts_with("HTTP/1.1 418 "), "{bytes}");
    assert!(bytes.contains("\r\nferrule-error: fault-injected\r\n"));
    let grpc = e.into_response(true);
    assert_eq!(grpc.headers()["grpc-status"], "9");
    // A delay alone goes on to the endpoint after waiting.
    let d = p
        .plan(&ctx(), &with_header("/chaos", "ferrule-fault", "delay"))
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut t = Script::new(vec![Ok("head")]);
    assert_eq!(attempt::run(&p, &d, &mut t).await.unwrap(), "head");
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    // The delay is inside the route's deadline: a delay longer than it times out at it.
    let d = p.plan(&ctx(), &get("/late", "echo")).unwrap();
    let start = tokio::time::Instant::now();
    let mut t = Script::new(vec![Ok("head")]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::Timeout);
    assert_eq!(start.elapsed(), Duration::from_millis(10));
}

#[tokio::test]
async fn the_fallback_answers_when_no_endpoint_can_take_the_request() {
    let p = Pipeline::outbound(policy(Some(GUARDED)));
    // A subset without endpoints: at planning.
    let e = p.plan(&ctx(), &get("/empty", "echo")).unwrap_err().error;
    assert_eq!(e.reason, Reason::Fallback);
    let bytes = String::from_utf8(e.to_http1(false, false)).unwrap();
    assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
    assert!(bytes.contains("\r\nx-fallback: yes\r\n"));
    assert!(bytes.contains("\r\nferrule-error: fallback\r\n"));
    assert!(bytes.ends_with("\r\n\r\ncached"), "{bytes}");
    // Every endpoint refusing connections: after the attempts.
    let d = p.plan(&ctx(), &get("/x", "echo")).unwrap();
    let mut t = Script::new(vec![refused()]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.reason, Reason::Fallback);
    assert!(e.detail.contains("connect-failed"), "{}", e.detail);
    let resp = e.into_response(false);
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["ferrule-error"], "fallback");
    // A gRPC caller gets UNAVAILABLE, not an HTTP body it cannot read.
    let d = p.plan(&ctx(), &get("/x", "echo")).unwrap();
    let mut t = Script::new(vec![refused()]);
    let Err(Failure::Respond(e)) = attempt::run(&p, &d, &mut t).await else {
        panic!()
    };
    assert_eq!(e.into_response(true).headers()["grpc-status"], "14");
}

const MIRRORED: &str = "\
kind: Service
name: echo
routes:
  - name: always
    match: {pathPrefix: /always}
    mirror: {service: shadow, percent: 100}
  - name: never
    match: {pathPrefix: /never}
    mirror: {service: shadow, percent: 0}
  - name: plain
    match: {pathPrefix: /}
---
{kind: Service, name: shadow}
---
{kind: Endpoint, name: a, service: echo, address: '127.0.0.1:1001'}
---
{kind: Endpoint, name: s, service: shadow, address: '127.0.0.1:1002'}
";

#[test]
fn the_plan_draws_a_mirrored_copy_and_the_fast_path_hands_it_over() {
    let policy = policy(Some(MIRRORED));
    let p = Pipeline::outbound(policy.clone());
    let d = p.plan(&ctx(), &get("/always", "echo")).unwrap();
    let m = mirror::drawn(&d).expect("a 100% mirror draws every request");
    assert_eq!(&*m.target.service, "shadow");
    assert_eq!(m.target.balancer.members().len(), 1);
    assert!(!p.fast_can_carry(&d), "a drawn copy is the general path's");
    for path in ["/never", "/plain"] {
        let d = p.plan(&ctx(), &get(path, "echo")).unwrap();
        assert!(!d.mirror && mirror::drawn(&d).is_none(), "{path}");
        assert!(p.fast_can_carry(&d), "{path} stays on the fast path");
    }
    // Both routes share the shadow's bound on copies in flight, and a reload keeps it.
    let gate = |path: &str| {
        let d = p.plan(&ctx(), &get(path, "echo")).unwrap();
        d.route
            .as_ref()
            .unwrap()
            .mirror
            .as_ref()
            .unwrap()
            .gate
            .clone()
    };
    let before = gate("/always");
    assert!(Arc::ptr_eq(&before, &gate("/never")));
    let snap = policy.load().snapshot.clone().unwrap();
    policy.apply(
        Arc::new(Snapshot {
            version: snap.version + 1,
            ..(*snap).clone()
        }),
        "control-plane",
    );
    assert_eq!(policy.version(), snap.version + 1);
    assert!(Arc::ptr_eq(&before, &gate("/always")));
}
