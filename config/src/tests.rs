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
