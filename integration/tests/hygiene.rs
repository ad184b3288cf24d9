//! Protections every listener has from the first day: slow headers time out, oversized heads
//! get 431, ambiguous framing gets 400, malformed requests get 400. And the sidecar's optional
//! CPU scheduling hint (`--sched-slice`) reaches every one of its threads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferrule_integration::apps::echo_app;
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::TempDir;
use ferrule_proxy::sched::{self, Slice};

fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One ready sidecar of service `echo` (in `protocol`) in front of an echo app. Fields drop in
/// order: the processes before their directory.
struct One {
    sidecar: Sidecar,
    _app: ferrule_integration::apps::EchoApp,
    _cp: ControlPlane,
    _dir: TempDir,
}

impl One {
    async fn start(protocol: &str, extra: &'static [&'static str]) -> One {
        let dir = TempDir::new(&format!("hygiene-{protocol}"));
        let cp = ControlPlane::start(&dir.sub("cp"), &[]);
        cp.apply(&format!(
            "kind: Service\nname: echo\nprotocol: {protocol}\n"
        ));
        let app = echo_app("echo").await;
        let sidecar = Sidecar::start(SidecarOpts {
            control_plane: &cp.url,
            service: "echo",
            app: app.addr,
            data_dir: &dir.sub("echo"),
            labels: "",
            extra,
        });
        sidecar.wait_ready().await;
        One {
            sidecar,
            _app: app,
            _cp: cp,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_refuse_abusive_requests() {
    let one = One::start("http", &["--header-read-timeout", "1s"]).await;
    let sidecar = &one.sidecar;
    let addrs = [sidecar.inbound, sidecar.outbound];
    let refusals = || async {
        let m = metrics_text(sidecar).await;
        (
            responses(&m, "400", "bad-request"),
            responses(&m, "431", "header-too-large"),
        )
    };
    let before = refusals().await;
    tokio::task::spawn_blocking(move || {
        for addr in addrs {
            // Content-Length and Transfer-Encoding together: 400, connection closed.
            let r = exchange(
                addr,
                b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            );
            assert!(r.starts_with("HTTP/1.1 400"), "{addr}: {r}");
            assert!(r.contains("ferrule-error: bad-request"), "{r}");

            // An oversized head: 431, from the proxy's renderer (not hyper's bare one).
            let big = format!("GET / HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
            let r = exchange(addr, big.as_bytes());
            assert!(r.starts_with("HTTP/1.1 431"), "{addr}: {}", &r[..r.len().min(200)]);
            assert!(r.contains("ferrule-error: header-too-large"), "{addr}: {r}");

            // Garbage: 400, from the renderer.
            let r = exchange(addr, b"NOT HTTP AT ALL\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 400"), "{addr}: {r}");
            assert!(r.contains("ferrule-error: bad-request"), "{addr}: {r}");

            // Slowloris: a head that never completes is cut off by the header read timeout.
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            let t = Instant::now();
            s.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nX-Slow: ").unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(5),
                "{addr}: a stalled head held the connection for {took:?}"
            );
        }
        // A malformed head after a good request on a connection the general path serves
        // (HTTP/1.0): the first is answered, then the renderer's 400, then the close.
        let r = exchange(
            addrs[0],
            b"GET / HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\nGET /\x01 HTTP/1.1\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"), "{r}");
        let second = &r[r.find("HTTP/1.1 400").unwrap_or_else(|| panic!("no 400: {r}"))..];
        assert!(second.contains("ferrule-error: bad-request"), "{r}");

        // A clean request on the same listener still works.
        let r = exchange(
            addrs[0],
            b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    })
    .await
    .unwrap();
    // Each refusal is counted once, whichever layer found it (two listeners: the framing, the
    // garbage and the pipelined head are 400s, the oversized heads 431s).
    let after = refusals().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (5.0, 2.0));
}

async fn metrics_text(sidecar: &Sidecar) -> String {
    let url = format!("http://{}/metrics", sidecar.admin);
    let (status, _, body) = ferrule_integration::client::get(&url, None).await;
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

/// The sum of `ferrule_responses_total` over every label set with this status and reason.
fn responses(metrics: &str, status: &str, error: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("ferrule_responses_total{"))
        .filter(|l| l.contains(&format!("status=\"{status}\"")))
        .filter(|l| l.contains(&format!("error=\"{error}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The CPU slice of every thread of `pid` that still exists when it is read (the runtime's
/// blocking-pool threads come and go).
fn thread_slices(pid: u32) -> Vec<Slice> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|tid| sched::of_thread(tid).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sidecar_thread_runs_with_the_requested_cpu_slice() {
    let dir = TempDir::new("slice");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: echo\nprotocol: http\n");
    let app = echo_app("echo").await;
    let start = |name: &str, extra: &'static [&'static str]| {
        Sidecar::start(SidecarOpts {
            control_plane: &cp.url,
            service: "echo",
            app: app.addr,
            data_dir: &dir.sub(name),
            labels: "",
            extra,
        })
    };
    let short = start("short", &["--sched-slice", "300us"]);
    let long = start("long", &["--sched-slice", "2ms", "--threads", "2"]);
    let default = start("default", &[]);
    for s in [&short, &long, &default] {
        s.wait_ready().await;
    }
    let log = short.proc.log_text();
    // Kernels before 6.12 have no custom slices, and a seccomp profile may refuse the call: the
    // sidecar runs on and says so, which is all that can be checked there.
    if let Some(line) = log.lines().find(|l| l.contains("scheduler slice not set")) {
        eprintln!("skipped: {line}");
        return;
    }
    assert!(log.contains("scheduler slice set"), "{log}");
    assert!(default.proc.log_text().contains("--sched-slice off"));
    // The runtime's threads inherit the main thread's slice: `--threads 2` has the main thread
    // and two workers (blocking-pool threads come and go, and must match too).
    for (sidecar, want, threads) in [(&short, 300, 1), (&long, 2_000, 3)] {
        let slices = thread_slices(sidecar.proc.pid());
        assert!(slices.len() >= threads, "{slices:?}");
        let want = Slice::Length(Duration::from_micros(want));
        assert!(slices.iter().all(|s| *s == want), "{slices:?}");
    }
    // By default the slice is left as inherited: this test's own.
    let inherited = sched::of_thread(0).unwrap();
    let default_slices = thread_slices(default.proc.pid());
    assert!(!default_slices.is_empty());
    assert!(
        default_slices.iter().all(|s| *s == inherited),
        "{default_slices:?}"
    );
}

/// HTTP/2 heads are held to the limits of HTTP/1.1 heads (100 fields, 64 KiB), and refused
/// through the same renderer, counted. h2's own bare 431 starts only at twice the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_heads_over_the_limits_get_the_renderers_431() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let one = One::start("http2", &[]).await;
    let sidecar = &one.sidecar;
    let stream = tokio::net::TcpStream::connect(sidecar.inbound)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let before = responses(&metrics_text(sidecar).await, "431", "header-too-large");
    // (fields, bytes per value, expected status); the echo app itself takes header lists up to
    // 16 KiB, so the sizes that pass stay under that.
    let cases = [
        (100 - 1, 10, 200),
        (101, 10, 431),
        (8, 9 * 1024, 431),
        (8, 1024, 200),
    ];
    for (fields, size, want) in cases {
        let mut req = http::Request::get(format!("http://echo/h2-limits-{fields}-{size}"));
        for i in 0..fields {
            req = req.header(format!("x-f{i}"), "v".repeat(size));
        }
        let resp = send
            .send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap())
            .await;
        let resp = resp.unwrap_or_else(|e| panic!("{fields} x {size}: {e:?}"));
        let status = resp.status().as_u16();
        let reason = resp.headers().get("ferrule-error").cloned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, want, "{fields} fields of {size} bytes: {body:?}");
        if want == 431 {
            assert_eq!(reason.unwrap(), "header-too-large");
        }
    }
    let after = responses(&metrics_text(sidecar).await, "431", "header-too-large");
    assert_eq!(after - before, 2.0);
}
