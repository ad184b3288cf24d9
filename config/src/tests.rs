//! Tests of decoding and validation against documents an operator would write.

use super::*;

const ECHO: &str = r#"
kind: Service
name: echo
protocol: http
routes:
  - match: { pathPrefix: /v2 }
    backends: [ { subset: { version: v2 }, weight: 100 } ]
  - match: { pathPrefix: / }
    backends: [ { subset: { version: v1 }, weight: 90 }, { subset: { version: v2 }, weight: 10 } ]
trafficPolicy: { loadBalancer: round_robin }
mtls: { mode: permissive }
authorization:
  defaultAction: deny
  rules:
    - { action: allow, from: ["spiffe://cluster.local/ns/shop/*"], paths: ["/v2/*"], methods: [GET] }
---
kind: Endpoint
service: echo
name: echo-1
address: 127.0.0.1:9001
labels: { version: v1 }
identity: spiffe://cluster.local/ns/default/sa/echo
"#;

#[test]
fn accepts_the_documented_shape() {
    let rs = parse_documents(ECHO, "echo.yaml").unwrap();
    assert_eq!(rs.len(), 2);
    let Resource::Service(s) = &rs[0] else {
        panic!("not a service")
    };
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(s.routes.len(), 2);
    assert_eq!(s.routes[1].backends[1].weight, 10);
    assert_eq!(s.traffic_policy.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(s.mtls, MtlsMode::Permissive);
    let authz = s.authorization.as_ref().unwrap();
    assert_eq!(authz.default_action, authz::Action::Deny);
    assert_eq!(authz.rules[0].paths, ["/v2/*"]);
    let Resource::Endpoint(e) = &rs[1] else {
        panic!("not an endpoint")
    };
    assert_eq!(
        e.identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/echo")
    );
    assert_eq!(e.address.port(), 9001);
    assert_eq!(e.weight, 1);
    assert_eq!(e.labels["version"], "v1");
}

#[test]
fn serialised_form_parses_back_identically() {
    let rs = parse_documents(ECHO, "echo.yaml").unwrap();
    let json = serde_json::to_string(&rs).unwrap();
    assert_eq!(parse_documents(&json, "echo.json").unwrap(), rs);
}

#[test]
fn reports_every_bad_field_with_its_path() {
    let bad = r#"
kind: Service
name: echo
protocol: htp
routes:
  - match: { pathPrefix: v2, methd: GET }
    backends: [ { subset: { version: v2 }, weight: 101 } ]
  - match: { pathPrefix: / }
    backends: [ { weight: -1 } ]
    timeout: 5 seconds
---
kind: Endpoint
name: Bad_Name
service: echo
address: localhost
weight: 0
"#;
    let errs = parse_documents(bad, "bad.yaml").unwrap_err();
    let text: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
    let want = [
        "Service/echo: protocol: unknown protocol \"htp\"",
        "Service/echo: routes[0].match.pathPrefix: \"v2\" must start with '/'",
        "Service/echo: routes[0].match.methd: unknown field",
        "Service/echo: routes[0].backends[0].weight: must be between 0 and 100",
        "Service/echo: routes[1].backends[0].weight: must be between 0 and 100",
        "Service/echo: routes[1].timeout: \"5 seconds\" is not a duration",
        "Endpoint/Bad_Name: name: \"Bad_Name\" is not a valid name",
        "Endpoint/Bad_Name: address: \"localhost\" is not an IP:port address",
        "Endpoint/Bad_Name: weight: must be between 1 and 1000",
    ];
    for w in want {
        assert!(
            text.iter().any(|t| t.starts_with(w)),
            "missing {w:?} in {text:#?}"
        );
    }
    assert_eq!(text.len(), want.len(), "{text:#?}");
}

#[test]
fn unknown_kind_and_missing_fields() {
    let errs = parse_documents("kind: Srvice\nname: x\n---\nkind: Endpoint\n", "f").unwrap_err();
    let text = errs.to_string();
    assert!(text.contains("unknown kind \"Srvice\""), "{text}");
    assert!(text.contains("name: is required"), "{text}");
    assert!(text.contains("service: is required"), "{text}");
    assert!(text.contains("address: is required"), "{text}");
}

#[test]
fn duplicates_are_refused() {
    let doc = "kind: Service\nname: a\n---\nkind: Service\nname: a\n";
    let errs = parse_documents(doc, "f").unwrap_err();
    assert!(errs
        .to_string()
        .contains("Service/a: name: is defined more than once"));
}

#[test]
fn syntax_errors_name_the_file() {
    let errs = parse_documents("kind: [unclosed", "x.yaml").unwrap_err();
    assert!(
        errs.to_string().starts_with("x.yaml: invalid YAML"),
        "{errs}"
    );
    let errs = parse_documents("{\"kind\": ", "x.json").unwrap_err();
    assert!(
        errs.to_string().starts_with("x.json: invalid JSON"),
        "{errs}"
    );
}

#[test]
fn snapshot_round_trip_and_validation() {
    let rs = parse_documents(ECHO, "echo.yaml").unwrap();
    let mut snap = Snapshot {
        version: 7,
        ..Default::default()
    };
    for r in rs {
        match r {
            Resource::Service(s) => snap.services.push(s),
            Resource::Endpoint(e) => snap.endpoints.push(e),
        }
    }
    let bytes = snap.to_json();
    assert_eq!(Snapshot::from_json(&bytes).unwrap(), snap);

    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["services"][0]["routes"][0]["backends"][0]["weight"] = 500.into();
    v["endpoints"][0]["address"] = "nowhere".into();
    let errs = Snapshot::from_value(&v).unwrap_err().to_string();
    assert!(
        errs.contains("Service/echo: routes[0].backends[0].weight: must be between 0 and 100"),
        "{errs}"
    );
    assert!(errs.contains("Endpoint/echo-1: address"), "{errs}");
}

#[test]
fn all_zero_weights_are_refused() {
    let doc = "kind: Service\nname: a\nroutes:\n - backends: [{weight: 0, subset: {v: a}}, {weight: 0}]\n";
    let errs = parse_documents(doc, "f").unwrap_err();
    assert!(errs
        .to_string()
        .contains("routes[0].backends: at least one backend"));
}

const RESILIENT: &str = r#"
kind: Service
name: pay
trafficPolicy:
  connectTimeout: 250ms
  locality: { failoverBelow: 50 }
  circuitBreaker: { maxRequests: 10, maxPending: 0, queueTimeout: 50ms }
  outlierDetection: { consecutiveFailures: 3, baseEjectionTime: 1s, maxEjectedPercent: 34 }
  retryBudget: { percent: 10, minPerSecond: 1, window: 5s }
routes:
  - match: { pathPrefix: /slow }
    timeout: 2s
    idleTimeout: 1m
    retries:
      attempts: 4
      on: [5xx, reset, resource-exhausted]
      statusCodes: [409]
      perTryTimeout: 300ms
      backoff: { base: 10ms, max: 40ms }
      nonIdempotent: true
    fallback: { status: 200, headers: { content-type: application/json }, body: "[]" }
    faults:
      delay: { fixed: 100ms, percent: 20 }
      abort: { httpStatus: 503, grpcStatus: 14, percent: 10 }
      allowHeader: true
    rateLimit: { requestsPerSecond: 100, burst: 20, key: { header: x-tenant }, shadow: true, side: outbound }
    mirror: { service: pay, percent: 5 }
  - match: { pathPrefix: / }
"#;

#[test]
fn resilience_policy_decodes_and_round_trips() {
    use crate::resilience::*;
    use std::time::Duration;
    let rs = parse_documents(RESILIENT, "pay.yaml").unwrap();
    let Resource::Service(s) = &rs[0] else {
        panic!("not a service")
    };
    let dest = &s.traffic_policy.resilience;
    assert_eq!(dest.connect_timeout, Duration::from_millis(250));
    assert_eq!(dest.locality.failover_below, 50);
    assert!(dest.locality.enabled);
    assert_eq!(dest.circuit_breaker.max_requests, 10);
    assert_eq!(dest.circuit_breaker.max_pending, 0);
    assert_eq!(dest.outlier_detection.consecutive_failures, 3);
    // Fields left out keep their defaults.
    assert_eq!(dest.outlier_detection.failure_percent, 50);
    assert_eq!(dest.retry_budget.window, Duration::from_secs(5));
    let r = &s.routes[0].resilience;
    assert_eq!(r.idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(r.retries.attempts, 4);
    assert_eq!(
        r.retries.on,
        [
            RetryOn::Status5xx,
            RetryOn::Reset,
            RetryOn::ResourceExhausted
        ]
    );
    assert_eq!(r.retries.status_codes, [409]);
    assert!(r.retries.non_idempotent);
    assert_eq!(r.fallback.as_ref().unwrap().body, "[]");
    let f = r.faults.unwrap();
    assert_eq!(f.abort.unwrap().grpc_status, Some(14));
    assert!(f.allow_header);
    let rl = r.rate_limit.as_ref().unwrap();
    assert_eq!(rl.key, Some(RateKey::Header("x-tenant".into())));
    assert_eq!(rl.side, Side::Outbound);
    assert_eq!(r.mirror.as_ref().unwrap().percent, 5);
    // The second route has every default: safe retries, no faults.
    assert_eq!(s.routes[1].resilience, RouteResilience::default());
    assert_eq!(s.routes[1].resilience.retries.attempts, 3);

    let json = serde_json::to_string(&rs).unwrap();
    assert_eq!(parse_documents(&json, "pay.json").unwrap(), rs);
    // Defaults are not written out, so a plain service prints as it was applied.
    let plain = parse_documents("kind: Service\nname: a\nroutes: [{}]\n", "a").unwrap();
    let json = serde_json::to_string(&plain).unwrap();
    assert!(
        !json.contains("retries") && !json.contains("circuitBreaker"),
        "{json}"
    );
}

#[test]
fn bad_resilience_fields_are_reported_with_paths() {
    let bad = r#"
kind: Service
name: pay
trafficPolicy:
  connectTimeout: 0ms
  circuitBreaker: { maxRequests: 0, queueTimeout: soon }
  outlierDetection: { baseEjectionTime: 1m, maxEjectionTime: 10s, failurePercent: 101 }
  retryBudget: { percnt: 10 }
routes:
  - retries: { attempts: 0, on: [5xx, teapot], statusCodes: [99], backoff: { base: 1s, max: 10ms } }
    fallback: { headers: { Bad: x, content-length: "3" } }
    faults: { abort: { percent: 10 }, delay: { percent: 200 } }
    rateLimit: { burst: 0, key: { header: x, clientIdentity: true }, side: sideways }
    mirror: { service: nowhere, percent: 5 }
"#;
    let errs = parse_documents(bad, "bad.yaml").unwrap_err();
    let text: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
    let want = [
        "Service/pay: trafficPolicy.connectTimeout: must be between 1ms and 1m",
        "Service/pay: trafficPolicy.circuitBreaker.maxRequests: must be between 1 and 1000000",
        "Service/pay: trafficPolicy.circuitBreaker.queueTimeout: \"soon\" is not a duration",
        "Service/pay: trafficPolicy.outlierDetection.failurePercent: must be between 0 and 100",
        "Service/pay: trafficPolicy.outlierDetection.maxEjectionTime: must not be shorter",
        "Service/pay: trafficPolicy.retryBudget.percnt: unknown field",
        "Service/pay: routes[0].retries.attempts: must be between 1 and 10",
        "Service/pay: routes[0].retries.on[1]: unknown condition \"teapot\"",
        "Service/pay: routes[0].retries.statusCodes[0]: must be an HTTP status",
        "Service/pay: routes[0].retries.backoff.max: must not be shorter than base",
        "Service/pay: routes[0].fallback.status: is required",
        "Service/pay: routes[0].fallback.headers.Bad: is not a valid lower-case header name",
        "Service/pay: routes[0].fallback.headers.content-length: is set by the proxy",
        "Service/pay: routes[0].faults.abort: needs httpStatus, grpcStatus or both",
        "Service/pay: routes[0].faults.delay.fixed: is required",
        "Service/pay: routes[0].faults.delay.percent: must be between 0 and 100",
        "Service/pay: routes[0].rateLimit.requestsPerSecond: is required",
        "Service/pay: routes[0].rateLimit.burst: must be between 1 and 1000000",
        "Service/pay: routes[0].rateLimit.key: needs exactly one of header, clientIdentity",
        "Service/pay: routes[0].rateLimit.side: unknown side \"sideways\"",
    ];
    for w in want {
        assert!(
            text.iter().any(|t| t.starts_with(w)),
            "missing {w:?} in {text:#?}"
        );
    }
    assert_eq!(text.len(), want.len(), "{text:#?}");

    // A mirror must name a service of the snapshot.
    let doc = "kind: Service\nname: a\nroutes: [{mirror: {service: b}}]\n";
    let mut snap = Snapshot::default();
    for r in parse_documents(doc, "a").unwrap() {
        if let Resource::Service(s) = r {
            snap.services.push(s);
        }
    }
    let errs = snap.check_references().unwrap_err().to_string();
    assert!(
        errs.contains("Service/a: routes[0].mirror.service: service \"b\" does not exist"),
        "{errs}"
    );
}

#[test]
fn ring_hash_needs_a_hash_key_and_only_it_takes_one() {
    use crate::resilience::HashKey;
    let doc = |policy: &str| format!("kind: Service\nname: pay\ntrafficPolicy: {policy}\n");
    let ok = |policy: &str| {
        let rs = parse_documents(&doc(policy), "pay.yaml").unwrap();
        let Resource::Service(s) = &rs[0] else {
            panic!("not a service")
        };
        // What is printed parses back to the same policy.
        let json = serde_json::to_string(&rs).unwrap();
        assert_eq!(parse_documents(&json, "pay.json").unwrap(), rs);
        s.traffic_policy.clone()
    };
    let p = ok("{loadBalancer: ring_hash, hashKey: {header: x-user}}");
    assert_eq!(p.load_balancer, LoadBalancer::RingHash);
    assert_eq!(
        p.resilience.hash_key,
        Some(HashKey::Header("x-user".into()))
    );
    let p = ok("{loadBalancer: ring_hash, hashKey: {cookie: Session}}");
    assert_eq!(
        p.resilience.hash_key,
        Some(HashKey::Cookie("Session".into()))
    );
    let p = ok("{loadBalancer: ring_hash, hashKey: {sourceIp: true}}");
    assert_eq!(p.resilience.hash_key, Some(HashKey::SourceIp(true)));
    assert_eq!(
        ok("{loadBalancer: random}").load_balancer,
        LoadBalancer::Random
    );
    // Peak-EWMA is what a service gets without asking.
    assert_eq!(ok("{}").load_balancer, LoadBalancer::PeakEwma);

    let errors = |policy: &str| -> Vec<String> {
        let errs = parse_documents(&doc(policy), "pay.yaml").unwrap_err();
        errs.0.iter().map(|e| e.to_string()).collect()
    };
    let want = |policy: &str, msg: &str| {
        let got = errors(policy);
        assert!(
            got.len() == 1 && got[0].starts_with(msg),
            "{policy}: want {msg:?}, got {got:#?}"
        );
    };
    want(
        "{loadBalancer: ring_hash}",
        "Service/pay: trafficPolicy.hashKey: is required with loadBalancer ring_hash",
    );
    want(
        "{loadBalancer: round_robin, hashKey: {header: x-user}}",
        "Service/pay: trafficPolicy.hashKey: only applies to loadBalancer ring_hash, not round_robin",
    );
    // The default balancer takes no key either.
    want(
        "{hashKey: {sourceIp: true}}",
        "Service/pay: trafficPolicy.hashKey: only applies to loadBalancer ring_hash, not peak_ewma",
    );
    want(
        "{loadBalancer: ring_hash, hashKey: {header: X-User}}",
        "Service/pay: trafficPolicy.hashKey.header: is not a valid lower-case header name",
    );
    want(
        "{loadBalancer: ring_hash, hashKey: {cookie: 'a b'}}",
        "Service/pay: trafficPolicy.hashKey.cookie: is not a valid cookie name",
    );
    want(
        "{loadBalancer: ring_hash, hashKey: {header: x, cookie: y}}",
        "Service/pay: trafficPolicy.hashKey: needs exactly one of header, cookie, sourceIp: true",
    );
    want(
        "{loadBalancer: ring_hash, hashKey: {sourceIp: false}}",
        "Service/pay: trafficPolicy.hashKey: needs exactly one of",
    );
    // Every bad field at once: two keys, and one that is no key at all.
    assert_eq!(
        errors("{loadBalancer: ring_hash, hashKey: {header: x, sourceIp: true, path: y}}"),
        [
            "Service/pay: trafficPolicy.hashKey: needs exactly one of header, cookie, sourceIp: true",
            "Service/pay: trafficPolicy.hashKey.path: unknown field (expected one of: cookie, header, sourceIp)",
        ]
    );
    want(
        "{loadBalancer: maglev}",
        "Service/pay: trafficPolicy.loadBalancer: unknown load balancer \"maglev\"",
    );
}

#[test]
fn virtual_addresses_decode_round_trip_and_report_bad_entries() {
    let doc = "kind: Service\nname: pay\naddresses: [\"10.96.0.10:8080\", \"[fd00::a]:80\"]\n";
    let rs = parse_documents(doc, "pay.yaml").unwrap();
    let Resource::Service(s) = &rs[0] else {
        panic!("not a service")
    };
    let want: Vec<std::net::SocketAddr> = vec![
        "10.96.0.10:8080".parse().unwrap(),
        "[fd00::a]:80".parse().unwrap(),
    ];
    assert_eq!(s.addresses, want);
    let json = serde_json::to_string(&rs).unwrap();
    assert!(
        json.contains("\"addresses\":[\"10.96.0.10:8080\",\"[fd00::a]:80\"]"),
        "{json}"
    );
    assert_eq!(parse_documents(&json, "pay.json").unwrap(), rs);
    // No addresses: nothing printed, as before the field existed.
    let rs = parse_documents("kind: Service\nname: pay\n", "pay.yaml").unwrap();
    assert!(!serde_json::to_string(&rs).unwrap().contains("addresses"));

    // Every bad entry is reported with its index.
    let bad = "kind: Service\nname: pay\naddresses: [\"10.96.0.10\", \"0.0.0.0:80\", \"10.96.0.10:0\", 7, \"10.96.0.11:80\", \"10.96.0.11:80\"]\n";
    let errs = parse_documents(bad, "pay.yaml").unwrap_err();
    let text: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        text,
        [
            "Service/pay: addresses[0]: \"10.96.0.10\" is not an IP:port address (e.g. 10.96.0.10:8080)",
            "Service/pay: addresses[1]: \"0.0.0.0:80\" must name an IP and a port other than 0",
            "Service/pay: addresses[2]: \"10.96.0.10:0\" must name an IP and a port other than 0",
            "Service/pay: addresses[3]: must be a string (IP:port), found a number",
        ],
        "{text:#?}"
    );
    // Repeats within one service, once the entries themselves are good.
    let errs = parse_documents(
        "kind: Service\nname: pay\naddresses: [\"10.96.0.11:80\", \"10.96.0.12:80\", \"10.96.0.11:80\"]\n",
        "pay.yaml",
    )
    .unwrap_err();
    assert_eq!(
        errs.to_string(),
        "Service/pay: addresses[2]: repeats addresses[0]"
    );
    let errs =
        parse_documents("kind: Service\nname: pay\naddresses: 10.0.0.1:80\n", "p").unwrap_err();
    assert!(
        errs.to_string()
            .contains("Service/pay: addresses: must be a list"),
        "{errs}"
    );
}

#[test]
fn a_virtual_address_belongs_to_one_service_of_a_snapshot() {
    let doc = "kind: Service\nname: a\naddresses: [\"10.96.0.10:80\"]\n---\nkind: Service\nname: b\naddresses: [\"10.96.0.11:80\", \"10.96.0.10:80\"]\n";
    let mut snap = Snapshot::default();
    for r in parse_documents(doc, "f").unwrap() {
        if let Resource::Service(s) = r {
            snap.services.push(s);
        }
    }
    let errs = snap.check_references().unwrap_err().to_string();
    assert_eq!(
        errs,
        "Service/b: addresses[1]: 10.96.0.10:80 is also an address of Service/a"
    );
    // The same port on another IP is another address.
    snap.services[1].addresses[1] = "10.96.0.12:80".parse().unwrap();
    snap.check_references().unwrap();
}

/// Issue 15, defect 12: sizes and counts are bounded, and control characters refused, each
/// reported at its path; a snapshot (the whole mesh) is not held to the per-resource counts.
#[test]
fn sizes_counts_and_control_characters_are_refused_with_their_paths() {
    use serde_json::json;
    let problems = |v: serde_json::Value| -> Vec<String> {
        Resource::from_value(&v, None, "doc")
            .unwrap_err()
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    };
    let routes: Vec<serde_json::Value> = (0..257)
        .map(|i| json!({"match": {"pathPrefix": format!("/r{i}")}}))
        .collect();
    assert_eq!(
        problems(json!({"kind": "Service", "name": "big", "routes": routes})),
        ["routes: has 257 items; at most 256"]
    );
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let ep = |extra: serde_json::Value| {
        let mut v =
            json!({"kind": "Endpoint", "name": "e", "service": "s", "address": "10.0.0.1:80"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(
        problems(ep(json!({"labels": labels}))),
        ["labels: has 65 entries; at most 64"]
    );
    assert_eq!(
        problems(ep(json!({"zone": "z".repeat(2048)}))),
        ["zone: is 2048 bytes long; at most 1024"]
    );
    assert_eq!(
        problems(ep(
            json!({"zone": "eu\u{0}west", "labels": {"team": "a\u{1b}[2J", "k\u{7}": "v"}})
        )),
        [
            "zone: contains the control character U+0000",
            "labels.k\u{7}: the key contains the control character U+0007",
            "labels.team: contains the control character U+001B",
        ]
    );
    let header = "h".repeat(1 << 20);
    let p = problems(json!({"kind": "Service", "name": "s", "routes": [
        {"match": {"pathPrefix": "/", "headers": {"x-user": header}}}
    ]}));
    assert_eq!(
        p,
        ["routes[0].match.headers.x-user: is 1048576 bytes long; at most 1024"]
    );

    // At the limits: accepted. A fallback body may span lines.
    let routes: Vec<serde_json::Value> = (0..256)
        .map(|i| json!({"match": {"pathPrefix": format!("/r{i}")}}))
        .collect();
    assert!(Resource::from_value(
        &json!({"kind": "Service", "name": "big", "routes": routes}),
        None,
        "doc"
    )
    .is_ok());
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert!(Resource::from_value(
        &ep(json!({"labels": labels, "zone": "z".repeat(1024)})),
        None,
        "doc"
    )
    .is_ok());
    let svc = json!({"kind": "Service", "name": "s", "routes": [{"match": {"pathPrefix": "/"},
        "fallback": {"status": 503, "body": "{\n  \"error\": \"down\"\n}\n"}}]});
    assert!(Resource::from_value(&svc, None, "doc").is_ok());

    // A snapshot of 300 endpoints is one mesh, not one resource: no item cap.
    let endpoints: Vec<serde_json::Value> = (0..300)
        .map(|i| json!({"name": format!("e{i}"), "service": "s", "address": format!("10.0.1.{}:80", i % 250)}))
        .collect();
    let snap = json!({"version": 1, "services": [{"name": "s"}], "endpoints": endpoints});
    assert_eq!(Snapshot::from_value(&snap).unwrap().endpoints.len(), 300);
}
