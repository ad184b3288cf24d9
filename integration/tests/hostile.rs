//! Hostile HTTP input against a real sidecar (issue 15): malformed and smuggling-shaped
//! HTTP/1.1 byte sequences, heads over the limits on HTTP/1.1 and HTTP/2, cookie crumbs and a
//! `host` that disagrees with `:authority`, chunk extensions, and clients that half-close.
//!
//! One sidecar of service `front` sits in front of a recording upstream, which is also
//! registered straight as service `direct`: a request to the inbound listener reaches the
//! upstream as the sidecar's app, one to the outbound listener with `Host: direct` reaches it
//! as an endpoint. The upstream is raw TCP, so the tests see the exact bytes that reached it and
//! can prove that a refused request never did.
//!
//! Malformed sequences run four ways: on each listener, and on each path — as the
//! connection's first request (which the fast path takes, or hands over at once), and behind an
//! HTTP/1.0 keep-alive request, which moves the connection to the general (hyper) path first.
//!
//! Every socket operation has a deadline, so a proxy bug fails a test rather than hanging it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrule_integration::procs::{ControlPlane, Sidecar};
use ferrule_integration::TempDir;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest one exchange may take, to the proxy's close.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The proxy's limits (`ferrule_proxy::base`): head bytes and fields, on HTTP/1.1 and HTTP/2.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_HEADER_FIELDS: usize = 100;

// ---------------------------------------------------------------------------------------------
// The recording upstream.
// ---------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 upstream that records every request it receives, byte for byte, and answers
/// each `200 ok`. A request is recorded as soon as its head is in, so a request whose body
/// never completes still counts as having reached the app. Written by hand rather than on
/// hyper because hyper would hide what the tests look for (chunk extensions, repeated lines).
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(upstream_conn(stream, record.clone()));
            }
        });
        Upstream { addr, seen, task }
    }

    /// Requests received so far.
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The `n`th request received, head and body as they arrived.
    fn request(&self, n: usize) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()[n]).into_owned()
    }
}

/// Serves one connection of the recording upstream until it closes or breaks framing.
async fn upstream_conn(stream: TcpStream, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = Bytewise::new(rd);
    loop {
        let Some(head) = rd.until(b"\r\n\r\n", 256 * 1024).await else {
            return;
        };
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(head.clone());
            seen.len() - 1
        };
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let mut body = Vec::new();
        if text.contains("\r\ntransfer-encoding: chunked\r\n") {
            // Chunk lines, data and trailers as they came, up to the empty trailer line.
            loop {
                let Some(line) = rd.until(b"\r\n", 64 * 1024).await else {
                    return;
                };
                let size = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                body.extend_from_slice(&line);
                let size = size.split(';').next().unwrap_or_default().trim().to_owned();
                let Ok(size) = usize::from_str_radix(&size, 16) else {
                    return;
                };
                if size == 0 {
                    loop {
                        let Some(t) = rd.until(b"\r\n", 64 * 1024).await else {
                            return;
                        };
                        body.extend_from_slice(&t);
                        if t == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let Some(data) = rd.exactly(size + 2).await else {
                    return;
                };
                body.extend_from_slice(&data);
            }
        } else if let Some(len) = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            let Ok(len) = len.trim().parse::<usize>() else {
                return;
            };
            let Some(data) = rd.exactly(len).await else {
                return;
            };
            body = data;
        }
        seen.lock().unwrap()[index].extend_from_slice(&body);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if wr.write_all(ok).await.is_err() {
            return;
        }
    }
}

/// Reads a stream in pieces the upstream asks for, keeping what it read beyond them.
struct Bytewise<R> {
    io: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Bytewise<R> {
    fn new(io: R) -> Self {
        Bytewise {
            io,
            buf: Vec::new(),
        }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.io.read(&mut chunk).await {
            Ok(n) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// Everything up to and including `end`; `None` at EOF or beyond `max` bytes.
    async fn until(&mut self, end: &[u8], max: usize) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, end) {
                return Some(self.buf.drain(..i + end.len()).collect());
            }
            if self.buf.len() > max || !self.fill().await {
                return None;
            }
        }
    }

    async fn exactly(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The sidecar, and a raw client.
// ---------------------------------------------------------------------------------------------

/// Fields drop in order: the sidecar and the control plane before their directory.
struct Setup {
    sidecar: Sidecar,
    up: Upstream,
    _cp: ControlPlane,
    _dir: TempDir,
}

async fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let up = Upstream::start().await;
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(&format!(
        "kind: Service\nname: front\nprotocol: http\n---\n\
         kind: Service\nname: direct\nprotocol: http\n---\n\
         kind: Endpoint\nname: direct-1\nservice: direct\naddress: {}\n",
        up.addr
    ));
    let sidecar = Sidecar::for_service(&cp, &dir, "front", up.addr, &[]);
    sidecar.wait_ready().await;
    sidecar.wait_endpoints("direct", 1).await;
    Setup {
        sidecar,
        up,
        _cp: cp,
        _dir: dir,
    }
}

impl Setup {
    /// Both proxy listeners, named.
    fn listeners(&self) -> [(&'static str, SocketAddr); 2] {
        [
            ("inbound", self.sidecar.inbound),
            ("outbound", self.sidecar.outbound),
        ]
    }

    /// `ferrule_responses_total` for one status and reason.
    async fn responses(&self, status: &str, error: &str) -> f64 {
        self.sidecar
            .metric(
                "ferrule_responses_total",
                &[("status", status), ("error", error)],
            )
            .await
    }
}

/// How a client writes its bytes.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// All at once.
    Whole,
    /// All at once, then it shuts its write side (`nc -N`).
    HalfClose,
    /// The first this many bytes, then the rest 100 ms later (in a read of their own).
    SplitAt(usize),
}

/// Opens a connection to `addr`, writes `bytes` as `how` says (a write the proxy cuts short
/// by closing is fine), and reads until the proxy closes the connection or `within` passes.
/// Returns what came back and whether the proxy closed.
async fn try_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    how: Write,
    within: Duration,
) -> (Vec<u8>, bool) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let sent = match how {
            Write::SplitAt(at) => {
                let first = wr.write_all(&bytes[..at]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                first.is_ok() && wr.write_all(&bytes[at..]).await.is_ok()
            }
            _ => wr.write_all(&bytes).await.is_ok(),
        };
        if sent && matches!(how, Write::HalfClose) {
            let _ = wr.shutdown().await;
        }
        // Held until the reader is done, so the write side closes only when asked to.
        wr
    });
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(n) if n > 0 => out.extend_from_slice(&chunk[..n]),
                // EOF, or a reset after the proxy closed with bytes of ours unread.
                _ => return,
            }
        }
    };
    let closed = tokio::time::timeout(within, read).await.is_ok();
    writer.abort();
    (out, closed)
}

/// [`try_exchange`], which must end with the proxy closing within [`EXCHANGE_TIMEOUT`].
async fn exchange(addr: SocketAddr, bytes: &[u8], how: Write) -> Vec<u8> {
    let (out, closed) = try_exchange(addr, bytes, how, EXCHANGE_TIMEOUT).await;
    assert!(
        closed,
        "the connection to {addr} stayed open; received: {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// A response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The responses in `bytes` (each framed by `Content-Length`, as all of this suite's are),
/// and whatever followed the last whole one.
fn responses(mut bytes: &[u8]) -> (Vec<Response>, Vec<u8>) {
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let Some(status) = head
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse().ok())
        else {
            break;
        };
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let rest = &bytes[end + 4..];
        if rest.len() < len {
            break;
        }
        r.body = rest[..len].to_vec();
        bytes = &rest[len..];
        out.push(r);
    }
    (out, bytes.to_vec())
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed HTTP/1.1: a 4xx or a close, and nothing reaches the app.
// ---------------------------------------------------------------------------------------------

/// What a malformed sequence must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// This status from the proxy (with `ferrule-error`), then the connection closes.
    Status(u16),
    /// No response: the connection closes.
    Close,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    want: Want,
    /// What it gets instead behind a request the general path serves, when that differs.
    general: Option<Want>,
}

fn case(name: &'static str, bytes: &[u8]) -> Case {
    Case {
        name,
        bytes: bytes.to_vec(),
        want: Want::Status(400),
        general: None,
    }
}

/// A POST to `direct` with `headers` (each line with its CRLF) and `body`.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("POST /smuggle HTTP/1.1\r\nHost: direct\r\n{headers}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

/// A chunked POST whose body is `body`.
fn chunked(body: &[u8]) -> Vec<u8> {
    post("Transfer-Encoding: chunked\r\n", body)
}

/// A GET whose request line is `line` and whose headers are `headers`.
fn get(line: &str, headers: &str) -> Vec<u8> {
    format!("{line}\r\n{headers}\r\n").into_bytes()
}

/// The table: request smuggling shapes (CL.TE, TE.CL, obfuscated Transfer-Encoding),
/// malformed lengths, hosts and targets, broken syntax, and malformed chunked bodies.
fn malformed() -> Vec<Case> {
    let smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: direct\r\n\r\n";
    let mut ext_200k = b"3;x=".to_vec();
    ext_200k.extend_from_slice(&b"A\x00".repeat(100 * 1024));
    ext_200k.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(b"this is not an HTTP/2 frame at all, not even close......");
    vec![
        // Request smuggling: both framing headers, in either order, and obfuscated codings.
        case(
            "CL.TE",
            &post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                smuggled,
            ),
        ),
        case(
            "TE.CL",
            &post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
            ),
        ),
        case(
            "CL.TE, TE after a tab",
            &post(
                "Content-Length: 6\r\nTransfer-Encoding:\tchunked\r\n",
                smuggled,
            ),
        ),
        case(
            "CL.TE, TE in capitals",
            &post(
                "Content-Length: 6\r\nTRANSFER-ENCODING: CHUNKED\r\n",
                smuggled,
            ),
        ),
        case(
            "TE twice on two lines",
            &post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                smuggled,
            ),
        ),
        case(
            "TE chunked, chunked",
            &post("Transfer-Encoding: chunked, chunked\r\n", smuggled),
        ),
        case(
            "TE chunked then cow",
            &post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n",
                smuggled,
            ),
        ),
        case(
            "TE gzip, chunked",
            &post("Transfer-Encoding: gzip, chunked\r\n", smuggled),
        ),
        case(
            "TE chunked, identity",
            &post("Transfer-Encoding: chunked, identity\r\n", smuggled),
        ),
        case(
            "TE identity with CL",
            &post(
                "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
                b"hello",
            ),
        ),
        case(
            "TE xchunked",
            &post("Transfer-Encoding: xchunked\r\n", smuggled),
        ),
        case(
            "TE quoted",
            &post("Transfer-Encoding: \"chunked\"\r\n", smuggled),
        ),
        case("TE empty", &post("Transfer-Encoding:\r\n", smuggled)),
        case(
            "TE space before the colon",
            &post("Transfer-Encoding : chunked\r\n", smuggled),
        ),
        case(
            "TE folded onto a second line",
            &post("Transfer-Encoding:\r\n chunked\r\n", smuggled),
        ),
        case(
            "TE after a vertical tab",
            &post("Transfer-Encoding:\x0bchunked\r\n", smuggled),
        ),
        case(
            "TE with a NUL",
            &post("Transfer-Encoding: chunked\x00\r\n", smuggled),
        ),
        case(
            "TE in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: direct\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        // Content-Length that is not one decimal number.
        case(
            "CL twice, different",
            &post("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        ),
        case("CL as a list", &post("Content-Length: 5, 5\r\n", b"hello")),
        case("CL negative", &post("Content-Length: -5\r\n", b"hello")),
        case("CL with a plus", &post("Content-Length: +5\r\n", b"hello")),
        case("CL in hex", &post("Content-Length: 0x5\r\n", b"hello")),
        case(
            "CL with a space inside",
            &post("Content-Length: 1 0\r\n", b"0123456789"),
        ),
        case(
            "CL of 20 digits",
            &post("Content-Length: 99999999999999999999\r\n", b"x"),
        ),
        case("CL empty", &post("Content-Length:\r\n", b"")),
        // Host and target (issue 15, defect 1).
        case("no Host", &get("GET / HTTP/1.1", "")),
        case(
            "no Host, absolute form",
            &get("GET http://direct/ HTTP/1.1", ""),
        ),
        case(
            "two Hosts",
            &get("GET / HTTP/1.1", "Host: direct\r\nHost: other\r\n"),
        ),
        case(
            "two equal Hosts",
            &get("GET / HTTP/1.1", "Host: direct\r\nHost: direct\r\n"),
        ),
        case("empty Host", &get("GET / HTTP/1.1", "Host:\r\n")),
        case(
            "Host with a space",
            &get("GET / HTTP/1.1", "Host: direct x\r\n"),
        ),
        case(
            "Host with a path",
            &get("GET / HTTP/1.1", "Host: direct/x\r\n"),
        ),
        case(
            "Host with userinfo",
            &get("GET / HTTP/1.1", "Host: user@direct\r\n"),
        ),
        case("GET *", &get("GET * HTTP/1.1", "Host: direct\r\n")),
        case("OPTIONS *", &get("OPTIONS * HTTP/1.1", "Host: direct\r\n")),
        case(
            "authority form without CONNECT",
            &get("GET direct:80 HTTP/1.1", "Host: direct\r\n"),
        ),
        case(
            "userinfo in the target",
            &get("GET http://user@direct/ HTTP/1.1", "Host: direct\r\n"),
        ),
        case(
            "a scheme that is not one",
            &get("GET 1x://direct/ HTTP/1.1", "Host: direct\r\n"),
        ),
        // Syntax.
        case(
            "space in a header name",
            &get("GET / HTTP/1.1", "Host: direct\r\nBad Name: x\r\n"),
        ),
        case(
            "header without a colon",
            &get("GET / HTTP/1.1", "Host: direct\r\nNoColon\r\n"),
        ),
        case(
            "NUL in a header value",
            &get("GET / HTTP/1.1", "Host: direct\r\nX: a\x00b\r\n"),
        ),
        case(
            "bare CR in a header value",
            &get("GET / HTTP/1.1", "Host: direct\r\nX: a\rb\r\n"),
        ),
        case(
            "first header folded",
            &get("GET / HTTP/1.1", " Host: direct\r\n"),
        ),
        case(
            "two spaces in the request line",
            &get("GET  / HTTP/1.1", "Host: direct\r\n"),
        ),
        case(
            "method with a bracket",
            &get("G(T / HTTP/1.1", "Host: direct\r\n"),
        ),
        case("HTTP/1.2", &get("GET / HTTP/1.2", "Host: direct\r\n")),
        case(
            "lower-case version",
            &get("GET / http/1.1", "Host: direct\r\n"),
        ),
        case("HTTP/0.9", b"GET /\r\n\r\n"),
        case(
            "DEL in the target",
            &get("GET /\x7f HTTP/1.1", "Host: direct\r\n"),
        ),
        case(
            "space in the target",
            &get("GET /a b HTTP/1.1", "Host: direct\r\n"),
        ),
        Case {
            name: "HTTP/2 preface then garbage",
            bytes: preface,
            // The preface starts HTTP/2; behind an HTTP/1.1 request it is a bad request line.
            want: Want::Close,
            general: Some(Want::Status(400)),
        },
        // Chunked bodies (issue 15, defect 4, and the decoder's rules).
        case(
            "NUL in a chunk extension",
            &chunked(b"3;a=\x00\r\nabc\r\n0\r\n\r\n"),
        ),
        case(
            "ESC in a chunk extension",
            &chunked(b"3;a=\x1b[31m\r\nabc\r\n0\r\n\r\n"),
        ),
        case("200 KiB chunk extension with NULs", &chunked(&ext_200k)),
        case(
            "LF inside a chunk extension",
            &chunked(b"3;a\nb\r\nabc\r\n0\r\n\r\n"),
        ),
        case("chunk size not hex", &chunked(b"zz\r\nabc\r\n0\r\n\r\n")),
        case(
            "chunk size overflowing",
            &chunked(b"10000000000000003\r\nabc\r\n0\r\n\r\n"),
        ),
        case("chunk size negative", &chunked(b"-3\r\nabc\r\n0\r\n\r\n")),
        case("chunk size 0x", &chunked(b"0x3\r\nabc\r\n0\r\n\r\n")),
        case("chunk size 5 6", &chunked(b"5 6\r\nhello\r\n0\r\n\r\n")),
        case(
            "chunk data overrunning its size",
            &chunked(b"3\r\nabcdef\r\n0\r\n\r\n"),
        ),
        case(
            "chunk line ended by LF only",
            &chunked(b"3\nabc\r\n0\r\n\r\n"),
        ),
        case(
            "NUL in a trailer",
            &chunked(b"3\r\nabc\r\n0\r\nX-T: a\x00\r\n\r\n"),
        ),
    ]
}

/// What sends a connection to the general path before the case's bytes: an HTTP/1.0 request
/// (the fast path takes only HTTP/1.1) that keeps the connection open.
const TO_GENERAL: &[u8] = b"GET /prefix HTTP/1.0\r\nHost: direct\r\nConnection: keep-alive\r\n\r\n";

/// Issue 15, chaos scenario 1 and defects 1 and 4: every malformed sequence gets a 4xx (with
/// `ferrule-error`, counted) or a close, on both listeners and both paths, and none reaches
/// the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_gets_a_4xx_or_a_close_and_never_reaches_the_app() {
    let s = setup("hostile-malformed").await;
    let cases = malformed();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let before = (
        s.responses("400", "bad-request").await,
        s.responses("431", "header-too-large").await,
    );
    let mut refusals = 0.0;
    let mut failures = Vec::new();
    for (listener, addr) in s.listeners() {
        for general in [false, true] {
            for c in &cases {
                let want = if general {
                    c.general.unwrap_or(c.want)
                } else {
                    c.want
                };
                let mut bytes = if general {
                    TO_GENERAL.to_vec()
                } else {
                    Vec::new()
                };
                bytes.extend_from_slice(&c.bytes);
                let seen_before = s.up.count();
                let within = Duration::from_secs(3);
                let (got, closed) = try_exchange(addr, &bytes, Write::Whole, within).await;
                let (mut resps, rest) = responses(&got);
                let what = format!(
                    "{:?} on {listener}{}",
                    c.name,
                    if general { " (general path)" } else { "" }
                );
                if !closed {
                    let got = String::from_utf8_lossy(&got);
                    failures.push(format!("{what}: the connection stayed open after {got:?}"));
                }
                // The request that moved the connection is answered by the app.
                if general {
                    let first = (!resps.is_empty()).then(|| resps.remove(0));
                    if first.as_ref().map(|r| (r.status, &r.body[..])) != Some((200, b"ok")) {
                        failures.push(format!("{what}: the HTTP/1.0 request got {first:?}"));
                        continue;
                    }
                }
                // A close may follow HTTP/2 frames (the preface case), never an HTTP/1 answer.
                let outcome = match (&resps[..], rest.is_empty()) {
                    ([], _) if !rest.starts_with(b"HTTP/") => Ok(Want::Close),
                    ([r], true) if r.header("ferrule-error").is_some() => {
                        Ok(Want::Status(r.status))
                    }
                    _ => Err(String::from_utf8_lossy(&got).into_owned()),
                };
                if outcome != Ok(want) {
                    failures.push(format!("{what}: want {want:?}, got {outcome:?}"));
                }
                if let Want::Status(_) = want {
                    refusals += 1.0;
                }
                // Nothing but the HTTP/1.0 request reached the app.
                let reached = s.up.count() - seen_before;
                let expected = usize::from(general);
                if reached != expected {
                    let last = s.up.request(s.up.count() - 1);
                    failures.push(format!(
                        "{what}: {reached} request(s) reached the app: {last:?}"
                    ));
                } else if general && !s.up.request(seen_before).starts_with("GET /prefix ") {
                    failures.push(format!(
                        "{what}: the app got {:?}",
                        s.up.request(seen_before)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Each refusal was counted once, as a 400 bad-request.
    let after = (
        s.responses("400", "bad-request").await,
        s.responses("431", "header-too-large").await,
    );
    assert_eq!((after.0 - before.0, after.1 - before.1), (refusals, 0.0));

    // The same listeners still serve a clean request on each path.
    for (listener, addr) in s.listeners() {
        let mut bytes = TO_GENERAL.to_vec();
        bytes
            .extend_from_slice(b"GET /clean HTTP/1.1\r\nHost: direct\r\nConnection: close\r\n\r\n");
        let (resps, _) = responses(&exchange(addr, &bytes, Write::Whole).await);
        let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200], "{listener}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Chunk extensions are dropped on the way (issue 15, defect 4).
// ---------------------------------------------------------------------------------------------

/// A well-formed chunk extension reaches the app on neither path: the chunks arrive without
/// it, the data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_are_dropped_on_both_paths() {
    let s = setup("hostile-extensions").await;
    for (listener, addr) in s.listeners() {
        for general in [false, true] {
            let mut bytes = if general {
                TO_GENERAL.to_vec()
            } else {
                Vec::new()
            };
            bytes.extend_from_slice(b"POST /ext HTTP/1.1\r\nHost: direct\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
            // An extension with a quoted string, a tab and obs-text: valid, and still dropped.
            bytes.extend_from_slice(
                b"3;name=\"a b\"\t;x=\xff\r\nabc\r\n2 ; y\r\nde\r\n0;last\r\n\r\n",
            );
            let seen = s.up.count();
            let (resps, _) = responses(&exchange(addr, &bytes, Write::Whole).await);
            let what = format!("{listener}, general path {general}");
            assert_eq!(
                resps.last().map(|r| r.status),
                Some(200),
                "{what}: {resps:?}"
            );
            let got = s.up.request(s.up.count() - 1);
            assert_eq!(s.up.count() - seen, 1 + usize::from(general), "{what}");
            let body = &got[got.find("\r\n\r\n").unwrap() + 4..];
            assert_eq!(body, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", "{what}: {got:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A client that half-closes still gets its response (issue 15, defect 5).
// ---------------------------------------------------------------------------------------------

/// `printf 'GET / HTTP/1.0\r\nHost: echo\r\n\r\n' | nc -N`: the client's FIN right after its
/// request. hyper took the FIN for a disconnect and dropped the request (which the app may have
/// served). Every path answers such a client now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_its_response() {
    let s = setup("hostile-half-close").await;
    let requests: [(&str, &[u8]); 3] = [
        (
            "HTTP/1.0 (general path)",
            b"GET /fin10 HTTP/1.0\r\nHost: direct\r\n\r\n",
        ),
        (
            "HTTP/1.1 (fast path)",
            b"GET /fin11 HTTP/1.1\r\nHost: direct\r\n\r\n",
        ),
        (
            "HTTP/1.1 behind HTTP/1.0 (general path)",
            b"GET /prefix HTTP/1.0\r\nHost: direct\r\nConnection: keep-alive\r\n\r\n\
              GET /fin11 HTTP/1.1\r\nHost: direct\r\n\r\n",
        ),
    ];
    for (listener, addr) in s.listeners() {
        for (what, bytes) in requests {
            let seen = s.up.count();
            let (resps, rest) = responses(&exchange(addr, bytes, Write::HalfClose).await);
            let answered = bytes.windows(5).filter(|w| w == b"GET /").count();
            let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
            assert_eq!(
                statuses,
                vec![200; answered],
                "{what} on {listener}: {rest:?}"
            );
            assert_eq!(s.up.count() - seen, answered, "{what} on {listener}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Header limits: 431 beyond them on HTTP/1.1 and HTTP/2, and exactly at them the request
//    passes (chaos scenario 2; defect 2).
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 GET to `direct` of exactly `bytes` bytes (request line to the final CRLF), with
/// `fields` header lines in all (`Host` and `Connection: close` included).
fn head_of(bytes: usize, fields: usize) -> Vec<u8> {
    let mut head = b"GET /limits HTTP/1.1\r\nHost: direct\r\nConnection: close\r\n".to_vec();
    for i in 2..fields - 1 {
        head.extend_from_slice(format!("x-f{i:03}: v\r\n").as_bytes());
    }
    // The last field takes the bytes left (`x-pad: ` and its CRLF, then the final CRLF).
    let fixed = head.len() + "x-pad: ".len() + 2 + 2;
    assert!(bytes >= fixed, "{bytes} bytes cannot hold {fields} fields");
    head.extend_from_slice(b"x-pad: ");
    head.extend(std::iter::repeat_n(b'p', bytes - fixed));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), bytes);
    head
}

/// One HTTP/2 request on `send` with `headers` (in order, repeats kept); its status, its
/// `ferrule-error` and its body.
async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(String, String)],
) -> (u16, Option<String>, Bytes) {
    let mut req = http::Request::get(format!("http://direct{path}"));
    let h = req.headers_mut().unwrap();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = send
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get("ferrule-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, reason, body)
}

async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// `n` regular fields `x-fNNN: v`.
fn fields(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("x-f{i:03}"), "v".to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_limits_get_431_and_heads_at_them_pass() {
    let s = setup("hostile-limits").await;
    let before = s.responses("431", "header-too-large").await;
    let mut refused = 0.0;

    // HTTP/1.1: size and count, on both listeners and both paths. At the limits the request
    // reaches the app whole; one byte or one field more gets 431 and reaches nothing.
    let over = head_of(MAX_HEADER_BYTES + 1, 3);
    let cases = [
        (
            "64 KiB head",
            head_of(MAX_HEADER_BYTES, 3),
            Write::Whole,
            200,
        ),
        ("64 KiB + 1 head", over.clone(), Write::Whole, 431),
        // The last bytes in a read of their own that takes the head from under the limit to
        // complete and over it (the fast path's buffer has grown past 64 KiB by then).
        ("64 KiB + 1 head, split", over, Write::SplitAt(60_000), 431),
        (
            "100 fields",
            head_of(4096, MAX_HEADER_FIELDS),
            Write::Whole,
            200,
        ),
        (
            "101 fields",
            head_of(4096, MAX_HEADER_FIELDS + 1),
            Write::Whole,
            431,
        ),
    ];
    for (listener, addr) in s.listeners() {
        for general in [false, true] {
            for (what, head, how, want) in &cases {
                let what = format!("{what} on {listener}, general path {general}");
                let mut bytes = if general {
                    TO_GENERAL.to_vec()
                } else {
                    Vec::new()
                };
                let how = match *how {
                    Write::SplitAt(at) => Write::SplitAt(at + bytes.len()),
                    how => how,
                };
                bytes.extend_from_slice(head);
                let seen = s.up.count();
                let (resps, _) = responses(&exchange(addr, &bytes, how).await);
                let last = resps
                    .last()
                    .unwrap_or_else(|| panic!("{what}: no response"));
                assert_eq!(last.status, *want, "{what}: {:?}", last.head);
                assert_eq!(resps.len(), 1 + usize::from(general), "{what}");
                let reached = s.up.count() - seen - usize::from(general);
                if *want == 200 {
                    assert_eq!(reached, 1, "{what}");
                    // Every field but Host and Connection (the proxy's own) arrived as sent.
                    let got = s.up.request(s.up.count() - 1);
                    let sent = String::from_utf8_lossy(head);
                    for line in sent.split("\r\n").skip(3).filter(|l| !l.is_empty()) {
                        assert!(got.contains(&format!("\r\n{line}\r\n")), "{what}: {line}");
                    }
                } else {
                    assert_eq!(reached, 0, "{what}");
                    assert_eq!(last.header("ferrule-error"), Some("header-too-large"));
                    refused += 1.0;
                }
            }
        }
    }

    // HTTP/2, on both listeners: the authority counts as the Host line it becomes, so 99
    // fields pass and 100 do not; a header list of exactly 64 KiB (RFC 9113 §6.5.2: name,
    // value and 32 per field, the pseudo-headers included) passes, one byte more does not.
    let pseudo = "GET".len() + "http".len() + "direct".len() + "/h2-size".len() + 4 * 32;
    let pad_for = |total: usize| {
        let fixed = pseudo + "x-pad".len() + 32;
        vec![("x-pad".to_owned(), "p".repeat(total - fixed))]
    };
    for (listener, addr) in s.listeners() {
        let mut send = h2_connect(addr).await;
        let cases = [
            ("/h2-fields", fields(MAX_HEADER_FIELDS - 1), 200),
            ("/h2-fields", fields(MAX_HEADER_FIELDS), 431),
            ("/h2-fields", fields(1000), 431),
            ("/h2-size", pad_for(MAX_HEADER_BYTES), 200),
            ("/h2-size", pad_for(MAX_HEADER_BYTES + 1), 431),
        ];
        for (path, headers, want) in cases {
            let what = format!("HTTP/2 {path} with {} fields on {listener}", headers.len());
            let seen = s.up.count();
            let (status, reason, _) = h2_get(&mut send, path, &headers).await;
            assert_eq!(status, want, "{what}");
            if want == 431 {
                assert_eq!(reason.as_deref(), Some("header-too-large"), "{what}");
                assert_eq!(s.up.count(), seen, "{what}: reached the app");
                refused += 1.0;
            } else {
                assert_eq!(s.up.count(), seen + 1, "{what}");
            }
        }
    }
    let after = s.responses("431", "header-too-large").await;
    assert_eq!(after - before, refused);
}

// ---------------------------------------------------------------------------------------------
// 5. HTTP/2 going on as HTTP/1.1: cookie crumbs and `host` (issue 15, defect 3).
// ---------------------------------------------------------------------------------------------

/// Cookie crumbs reach an HTTP/1.1 app as one `cookie` line, joined with "; ", and are counted
/// after joining (150 crumbs pass the 100-field limit); a `host` that disagrees with
/// `:authority` gets 400 and reaches nothing, one that agrees goes on once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_are_joined_and_host_must_match_the_authority() {
    let s = setup("hostile-h2-host").await;
    let before = s.responses("400", "bad-request").await;
    for (listener, addr) in s.listeners() {
        let mut send = h2_connect(addr).await;

        let crumbs: Vec<(String, String)> = (0..150)
            .map(|i| ("cookie".to_owned(), format!("c{i}={i}")))
            .collect();
        let seen = s.up.count();
        let (status, _, _) = h2_get(&mut send, "/cookies", &crumbs).await;
        assert_eq!(status, 200, "{listener}");
        assert_eq!(s.up.count(), seen + 1);
        let got = s.up.request(seen).to_ascii_lowercase();
        let cookies: Vec<&str> = got
            .split("\r\n")
            .filter(|l| l.starts_with("cookie:"))
            .collect();
        let joined: Vec<String> = (0..150).map(|i| format!("c{i}={i}")).collect();
        assert_eq!(
            cookies,
            [format!("cookie: {}", joined.join("; "))],
            "{listener}"
        );

        for host in ["evil", "direct.evil", "direct:81"] {
            let seen = s.up.count();
            let headers = [("host".to_owned(), host.to_owned())];
            let (status, reason, _) = h2_get(&mut send, "/host", &headers).await;
            assert_eq!(
                (status, reason.as_deref()),
                (400, Some("bad-request")),
                "{host}"
            );
            assert_eq!(s.up.count(), seen, "{host} on {listener} reached the app");
        }
        // The same name in another case agrees, and the app sees one Host line.
        let seen = s.up.count();
        let headers = [("host".to_owned(), "DIRECT".to_owned())];
        let (status, _, _) = h2_get(&mut send, "/host-ok", &headers).await;
        assert_eq!(status, 200, "{listener}");
        let got = s.up.request(seen).to_ascii_lowercase();
        assert_eq!(got.matches("\r\nhost:").count(), 1, "{got:?}");
    }
    let after = s.responses("400", "bad-request").await;
    assert_eq!(after - before, 6.0);
}
