//! Protections every listener has from the first day: slow headers time out, oversized heads
//! get 431, ambiguous framing gets 400, malformed requests get 400.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferrule_integration::apps::echo_app;
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::TempDir;

fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_refuse_abusive_requests() {
    let dir = TempDir::new("hygiene");
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply("kind: Service\nname: echo\nprotocol: http\n");
    let app = echo_app("echo").await;
    let sidecar = Sidecar::start(SidecarOpts {
        control_plane: &cp.url,
        service: "echo",
        app: app.addr,
        data_dir: &dir.sub("echo"),
        labels: "",
        extra: &["--header-read-timeout", "1s"],
    });
    sidecar.wait_ready().await;
    let addrs = [sidecar.inbound, sidecar.outbound];
    tokio::task::spawn_blocking(move || {
        for addr in addrs {
            // Content-Length and Transfer-Encoding together: 400, connection closed.
            let r = exchange(
                addr,
                b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            );
            assert!(r.starts_with("HTTP/1.1 400"), "{addr}: {r}");
            assert!(r.contains("ferrule-error: bad-request"), "{r}");

            // An oversized head: 431.
            let big = format!("GET / HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
            let r = exchange(addr, big.as_bytes());
            assert!(r.starts_with("HTTP/1.1 431"), "{addr}: {}", &r[..r.len().min(200)]);

            // Garbage: 400.
            let r = exchange(addr, b"NOT HTTP AT ALL\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 400"), "{addr}: {r}");

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
        // A clean request on the same listener still works.
        let r = exchange(
            addrs[0],
            b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    })
    .await
    .unwrap();
}
