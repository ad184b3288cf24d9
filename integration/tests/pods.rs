//! Transparent interception in real pods (network namespaces on a bridge): `ferrule-proxy
//! init` installs its iptables rules idempotently and removes exactly them; an unmodified app
//! (Python's http.server) called by curl with a pod's IP, with no proxy setting, crosses both
//! sidecars over mutual TLS; a service's virtual address and an unknown destination work; a
//! pod without a sidecar cannot reach a strict pod's app.
//!
//! Needs root, iproute2, iptables, setpriv (util-linux), python3 and curl. Without them each
//! test says why and returns; with `FERRULE_PODS_REQUIRED=1` (CI) it fails instead.

use std::time::Duration;

use ferrule_integration::bins::bin;
use ferrule_integration::eventually;
use ferrule_integration::pods::{missing_prerequisites, Mesh, Net, Netns, ADMIN_PORT, PROXY_UID};
use ferrule_integration::procs::Sidecar;

const TD: &str = "cluster.local";

fn id(service: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{service}")
}

/// Whether the test can run here; prints why not (or fails, when pods are required).
fn can_run(test: &str) -> bool {
    let Some(why) = missing_prerequisites() else {
        return true;
    };
    if std::env::var_os("FERRULE_PODS_REQUIRED").is_some_and(|v| v == "1") {
        panic!("{test}: FERRULE_PODS_REQUIRED=1 but pods cannot be built here: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// `ferrule-proxy init` with `args` in `ns`; its stdout, or a panic with its stderr.
fn init(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    let out = ns.run(bin("ferrule-proxy"), &all);
    assert!(
        out.status.success(),
        "ferrule-proxy {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn init_installs_idempotently_and_cleanup_removes_exactly_its_rules() {
    if !can_run("init_installs_idempotently_and_cleanup_removes_exactly_its_rules") {
        return;
    }
    let ns = Netns::isolated("init");
    // Someone else's rules, which must survive everything below.
    let theirs = "*nat\n:OTHER - [0:0]\n-A OTHER -p udp -j RETURN\n-A PREROUTING -p udp -j OTHER\n-A OUTPUT -d 10.0.0.0/8 -j RETURN\nCOMMIT\n";
    let mut restore = ns.command("iptables-restore");
    restore.arg("--noflush").stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), theirs.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let before = ns.nat_table();

    let flags = [
        "--proxy-uid",
        "2102",
        "--control-plane",
        "https://10.77.0.1:7070",
        "--exclude-inbound-ports",
        "22",
        "--exclude-outbound-ports",
        "5432",
        "--exclude-outbound-cidrs",
        "169.254.169.254",
    ];
    // The dry run prints the transaction and changes nothing.
    let mut dry = flags.to_vec();
    dry.push("--dry-run");
    let printed = init(&ns, &dry);
    assert_eq!(ns.nat_table(), before, "--dry-run changed the table");
    // The exact text is the unit tests' business (proxy/src/init/rules.rs); here, what it
    // prints is what it installs.
    let ours: Vec<&str> = printed.lines().filter(|l| l.starts_with("-A")).collect();
    for rule in [
        "-A FERRULE_INBOUND -p tcp --dport 22 -j RETURN",
        "-A FERRULE_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A FERRULE_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A FERRULE_OUTBOUND -d 10.77.0.1/32 -p tcp --dport 7070 -j RETURN",
        "-A FERRULE_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert!(ours.contains(&rule), "{rule} not in\n{printed}");
    }

    init(&ns, &flags);
    let installed = ns.nat_table();
    // Before's lines, our two chains and the printed rules, as iptables-save writes them back
    // (with the implied `-m tcp`, in its own order); theirs untouched, one jump each.
    let mut want: Vec<String> = before.lines().map(str::to_owned).collect();
    want.push(":FERRULE_INBOUND - [0:0]".into());
    want.push(":FERRULE_OUTBOUND - [0:0]".into());
    want.extend(
        ours.iter()
            .map(|l| l.replace("-p tcp --dport", "-p tcp -m tcp --dport")),
    );
    let mut got: Vec<&str> = installed.lines().collect();
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "installed:\n{installed}");

    // Twice: the same rules, not twice as many.
    init(&ns, &flags);
    assert_eq!(ns.nat_table(), installed, "a second init changed the rules");

    // Cleanup removes ours and nothing else; a second cleanup has nothing to do.
    init(&ns, &["--cleanup"]);
    assert_eq!(ns.nat_table(), before, "cleanup did not restore the table");
    let again = init(&ns, &["--cleanup"]);
    assert!(again.contains("no Ferrule rules to remove"), "{again}");
    assert_eq!(ns.nat_table(), before);
}

/// A counter of a sidecar's `/metrics`.
async fn counter(s: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.metric(name, labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_app_calls_another_pod_by_ip_through_both_sidecars() {
    if !can_run("an_unmodified_app_calls_another_pod_by_ip_through_both_sidecars") {
        return;
    }
    let mut net = Net::new();
    let mesh = Mesh::start(&net);
    let vip = net.spare(210);
    mesh.cp.apply(&format!(
        "kind: Service\nname: web\nprotocol: http\n---\n\
         kind: Service\nname: orders\nprotocol: http\naddresses: [\"{vip}:80\"]\n\
         authorization:\n  defaultAction: deny\n  rules:\n    - {{action: allow, from: [\"{}\"]}}\n",
        id("web")
    ));
    let mut a = net.pod("a");
    let mut b = net.pod("b");
    let mut c = net.pod("c");
    a.http_server(8000, "pod a\n");
    b.http_server(8000, "pod b\n");
    // c has no sidecar and no rules: an ordinary host of the network.
    c.http_server(8000, "pod c\n");
    a.intercept(&mesh.cp.url);
    b.intercept(&mesh.cp.url);
    let web = mesh.sidecar(&a, "web", 8000);
    let orders = mesh.sidecar(&b, "orders", 8000);
    assert_eq!(web.admin.port(), ADMIN_PORT);
    web.wait_ready().await;
    orders.wait_ready().await;
    web.wait_endpoints("orders", 1).await;
    // The endpoint peers reach is the pod's address and the app's port, with its identity.
    let cfg = web.config().await;
    let ep = cfg["snapshot"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service"] == "orders")
        .unwrap()
        .clone();
    assert_eq!(ep["address"], format!("{}:8000", b.addr), "{ep}");
    assert_eq!(ep["identity"], id("orders"), "{ep}");
    // The sidecars run as their own user, which is what keeps their traffic out of the rules.
    let status = std::fs::read_to_string(format!("/proc/{}/status", web.proc.pid())).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:")
            && l.split_whitespace().nth(1) == Some(&PROXY_UID.to_string())),
        "{status}"
    );

    let out_ok = [("direction", "outbound"), ("service", "orders")];
    let in_ok = [("direction", "inbound"), ("service", "orders")];
    let by_service = [("direction", "outbound"), ("resolved", "service")];
    let to_app = [("direction", "inbound"), ("resolved", "app")];
    let allowed = [("decision", "allow")];
    let handshakes = [("direction", "inbound"), ("result", "ok")];
    let requests = "ferrule_requests_total";
    let resolved = "ferrule_original_dst_requests_total";
    let before = (
        counter(&web, requests, &out_ok).await,
        counter(&orders, requests, &in_ok).await,
        counter(&orders, "ferrule_authz_decisions_total", &allowed).await,
    );

    // The app in pod a calls pod b by its IP, as it would without a mesh.
    const N: usize = 5;
    let url = format!("http://{}:8000/", b.addr);
    for _ in 0..N {
        let (body, ok) = a.curl(&url);
        assert!(ok, "curl {url} from pod a: {body}");
        assert_eq!(body, "pod b\n");
    }
    // It crossed a's outbound sidecar, which found the service by the original destination,
    // and b's inbound sidecar, which took mutual TLS from a's identity: orders allows only
    // web, and denies everyone else (and plaintext callers).
    assert_eq!(counter(&web, requests, &out_ok).await, before.0 + N as f64);
    assert_eq!(counter(&web, resolved, &by_service).await, N as f64);
    assert_eq!(
        counter(&orders, requests, &in_ok).await,
        before.1 + N as f64
    );
    assert_eq!(counter(&orders, resolved, &to_app).await, N as f64);
    assert_eq!(
        counter(&orders, "ferrule_authz_decisions_total", &allowed).await,
        before.2 + N as f64
    );
    assert!(counter(&orders, "ferrule_tls_handshakes_total", &handshakes).await >= 1.0);

    // The service's virtual address: nobody has it, the outbound sidecar knows it.
    let (body, ok) = a.curl(&format!("http://{vip}/"));
    assert!(ok, "curl the virtual address: {body}");
    assert_eq!(body, "pod b\n");
    assert_eq!(counter(&web, resolved, &by_service).await, N as f64 + 1.0);
    assert_eq!(
        counter(&orders, requests, &in_ok).await,
        before.1 + N as f64 + 1.0
    );

    // A destination outside the mesh (pod c) is passed through unchanged.
    let passed = [("direction", "outbound"), ("resolved", "passthrough")];
    let unknown = [("direction", "outbound"), ("service", "unknown")];
    let (body, ok) = a.curl(&format!("http://{}:8000/", c.addr));
    assert!(ok, "curl pod c from pod a: {body}");
    assert_eq!(body, "pod c\n");
    assert_eq!(counter(&web, resolved, &passed).await, 1.0);
    assert_eq!(counter(&web, requests, &unknown).await, 1.0);

    // Pod c has no sidecar: its plaintext call to the strict service's pod is redirected to
    // b's inbound listener and refused there, before a byte reaches the app.
    let refused = [("direction", "inbound"), ("result", "plaintext_refused")];
    let in_before = counter(&orders, requests, &in_ok).await;
    let (body, ok) = c.curl(&url);
    assert!(
        !ok,
        "pod c reached the strict pod's app without a sidecar: {body}"
    );
    eventually(
        Duration::from_secs(5),
        "b counts the refused plaintext",
        || async { counter(&orders, "ferrule_tls_handshakes_total", &refused).await == 1.0 },
    )
    .await;
    assert_eq!(counter(&orders, requests, &in_ok).await, in_before);
    // The admin port is left alone by the rules (that is how this test reads the metrics),
    // and the app itself never answered pod c: its log has no request from c.
    let app_log = std::fs::read_to_string(b.dir.join("app.log")).unwrap();
    assert!(!app_log.contains(&c.addr.to_string()), "{app_log}");
}
