//! Microbenchmarks of the sidecar's per-request hot paths and of snapshot loading:
//!
//! - route matching: a service lookup by host plus the first matching route, in tables
//!   compiled from a snapshot of 20 services with 5 routes each;
//! - balancer pick: round robin and least-request (P2C) over 3 and 100 endpoints;
//! - snapshot load: parsing and validating a 100-service, 1000-endpoint snapshot, checking its
//!   references and compiling it into tables (what a sidecar does for every push);
//! - header handling: hop-by-hop stripping, and extracting the authority and host.
//!
//! Short by design (`cargo bench -p ferrule-benches --bench hot_paths -- --quick` for a
//! smoke run); numbers compare between commits on one machine.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use ferrule_config::{LoadBalancer, Snapshot};
use ferrule_proxy::base::Identity;
use ferrule_proxy::codec::h1;
use ferrule_proxy::codec::headers::{authority, host_of, strip_hop_by_hop};
use ferrule_proxy::forward::upstream::Upstream;
use ferrule_proxy::plan::balance::{Balancer, Member};
use ferrule_proxy::plan::policy::Tables;
use ferrule_proxy::telemetry::metrics::Metrics;
use http::{HeaderMap, HeaderValue, Method, Request};
use serde_json::{json, Value};

/// A snapshot of `services` services with `routes` routes each (path prefixes, a method and a
/// header match, weighted subsets) and `endpoints` endpoints spread over them, as JSON.
fn snapshot_json(services: usize, routes: usize, endpoints: usize) -> Vec<u8> {
    let services_json: Vec<Value> = (0..services)
        .map(|s| {
            let routes: Vec<Value> = (0..routes)
                .map(|r| {
                    let mut m = json!({"pathPrefix": format!("/api/v{r}")});
                    if r % 2 == 1 {
                        m["method"] = json!("POST");
                    }
                    if r % 3 == 2 {
                        m["headers"] = json!({"x-tenant": format!("t{r}")});
                    }
                    json!({
                        "name": format!("r{r}"),
                        "match": m,
                        "backends": [
                            {"subset": {"version": "v1"}, "weight": 90},
                            {"subset": {"version": "v2"}, "weight": 10}
                        ],
                        "timeout": "2s"
                    })
                })
                .collect();
            json!({
                "kind": "Service",
                "name": format!("svc-{s}"),
                "protocol": "http",
                "routes": routes,
                "trafficPolicy": {"loadBalancer": if s % 2 == 0 { "round_robin" } else { "least_request" }}
            })
        })
        .collect();
    let endpoints_json: Vec<Value> = (0..endpoints)
        .map(|e| {
            json!({
                "kind": "Endpoint",
                "name": format!("ep-{e}"),
                "service": format!("svc-{}", e % services),
                "address": format!("10.0.{}.{}:8080", e / 250, e % 250),
                "labels": {"version": if e % 10 == 0 { "v2" } else { "v1" }},
                "sidecar": true
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": 42,
        "services": services_json,
        "endpoints": endpoints_json
    }))
    .expect("serialisable")
}

/// Parses, validates and compiles a snapshot, as a sidecar does on every push.
fn load(bytes: &[u8], prev: &Tables, metrics: &Arc<Metrics>) -> Tables {
    let snap = Snapshot::from_json(bytes).expect("valid snapshot");
    snap.check_references().expect("consistent snapshot");
    Tables::compile(
        Arc::new(snap),
        prev,
        "svc-0",
        None,
        metrics,
        &Identity::disabled(),
    )
}

fn route_matching(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let tables = load(
        &snapshot_json(20, 5, 200),
        &Tables::empty(&metrics),
        &metrics,
    );
    let request = |host: &str, method: Method, path: &str, tenant: Option<&str>| {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        if let Some(t) = tenant {
            builder = builder.header("x-tenant", t);
        }
        builder.body(()).expect("valid request")
    };
    let mut group = c.benchmark_group("route_matching");
    for (name, req) in [
        (
            "first_route",
            request("svc-7", Method::GET, "/api/v0/items", None),
        ),
        (
            "fifth_route_host_with_port",
            request("svc-19:8080", Method::GET, "/api/v4/items", None),
        ),
        (
            "header_match",
            request("svc-3", Method::GET, "/api/v2/x", Some("t2")),
        ),
        ("no_route", request("svc-11", Method::GET, "/other", None)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let host = host_of(authority(black_box(&req)).expect("has a host"));
                let service = tables.service(&host).expect("known service");
                black_box(service.route(&req).is_ok())
            })
        });
    }
    group.finish();
}

fn balancer_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_pick");
    for members in [3usize, 100] {
        let list: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("ep-{i}").into(),
                upstream: Upstream::new(SocketAddr::from(([10, 0, 0, 1], 8000 + i as u16))),
                weight: 1 + (i % 3) as u32,
                sidecar: true,
                zone: None,
                identity: None,
            })
            .collect();
        for (name, lb) in [
            ("round_robin", LoadBalancer::RoundRobin),
            ("least_request", LoadBalancer::LeastRequest),
        ] {
            let balancer = Balancer::new(lb, list.clone(), Arc::new(AtomicUsize::new(0)));
            group.bench_with_input(BenchmarkId::new(name, members), &balancer, |b, balancer| {
                b.iter(|| black_box(balancer.pick(black_box(&[]), None)))
            });
        }
    }
    group.finish();
}

fn snapshot_load(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let bytes = snapshot_json(100, 5, 1000);
    let empty = Tables::empty(&metrics);
    let previous = load(&bytes, &empty, &metrics);
    let mut group = c.benchmark_group("snapshot_load");
    group.throughput(criterion::Throughput::Bytes(bytes.len() as u64));
    group.bench_function("100_services_1000_endpoints_first", |b| {
        b.iter(|| black_box(load(black_box(&bytes), &empty, &metrics)))
    });
    // A reload reuses the previous tables' upstreams and cursors.
    group.bench_function("100_services_1000_endpoints_reload", |b| {
        b.iter(|| black_box(load(black_box(&bytes), &previous, &metrics)))
    });
    group.finish();
}

fn header_handling(c: &mut Criterion) {
    let mut typical = HeaderMap::new();
    for (name, value) in [
        ("host", "echo.default:8080"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
        ("x-request-id", "5f1c2d3e-0000-4a4a-9b9b-123456789abc"),
        ("authorization", "Bearer abcdefghijklmnopqrstuvwxyz"),
    ] {
        typical.insert(name, HeaderValue::from_static(value));
    }
    let mut hop_by_hop = typical.clone();
    for (name, value) in [
        ("connection", "keep-alive, x-custom-hop"),
        ("keep-alive", "timeout=5"),
        ("x-custom-hop", "1"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
    ] {
        hop_by_hop.insert(name, HeaderValue::from_static(value));
    }
    let mut group = c.benchmark_group("header_handling");
    group.bench_function("strip_hop_by_hop_none_present", |b| {
        b.iter_batched_ref(
            || typical.clone(),
            |headers| strip_hop_by_hop(black_box(headers), true),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("strip_hop_by_hop_six_present", |b| {
        b.iter_batched_ref(
            || hop_by_hop.clone(),
            |headers| strip_hop_by_hop(black_box(headers), false),
            criterion::BatchSize::SmallInput,
        )
    });
    let origin_form = Request::builder()
        .uri("/v2/items?page=2")
        .header(http::header::HOST, "Echo.Default:8080")
        .body(())
        .expect("valid request");
    let absolute_form = Request::builder()
        .uri("http://echo.default:8080/v2/items")
        .body(())
        .expect("valid request");
    group.bench_function("authority_and_host_of_host_header", |b| {
        b.iter(|| black_box(host_of(authority(black_box(&origin_form)).expect("host"))))
    });
    group.bench_function("authority_and_host_of_absolute_uri", |b| {
        b.iter(|| black_box(host_of(authority(black_box(&absolute_form)).expect("host"))))
    });
    group.finish();
}

/// The HTTP/1.1 fast path's per-request head work: parse a request head in place and write it
/// for the next hop; parse a response head and write it for the client.
fn fast_path_heads(c: &mut Criterion) {
    let request = b"GET /v2/items?page=2 HTTP/1.1\r\nHost: echo.default:8080\r\n\
        User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Request-Id: 4bf92f3577b34da6\r\n\
        Connection: keep-alive\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
        Content-Length: 1024\r\nDate: Wed, 25 Nov 2026 21:00:00 GMT\r\n\r\n";
    let mut group = c.benchmark_group("fast_path_heads");
    let mut out = Vec::with_capacity(1024);
    group.bench_function("request_parse_and_rewrite", |b| {
        b.iter(|| {
            let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            let h1::Parsed::Ready(head) = h1::parse_request(black_box(request), &mut storage)
            else {
                panic!("the fast path takes this request");
            };
            h1::write_request_head(&mut out, &head, head.authority.expect("host"), false);
            black_box(out.len())
        })
    });
    group.bench_function("response_parse_and_rewrite", |b| {
        b.iter(|| {
            let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            let head = h1::parse_response(black_box(response), &mut storage, false)
                .expect("valid")
                .expect("complete");
            out.clear();
            h1::write_response_head(&mut out, &head);
            h1::end_head(&mut out, false);
            black_box(out.len())
        })
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that every item is
// documented (the workspace denies missing docs, and the macros generate an undocumented
// public function).
fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    route_matching(&mut c);
    balancer_pick(&mut c);
    snapshot_load(&mut c);
    header_handling(&mut c);
    fast_path_heads(&mut c);
    c.final_summary();
}
