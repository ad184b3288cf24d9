//! The benchmark's application: an HTTP server that answers every request with the same body of
//! a fixed size, over HTTP/1.1 (keep-alive) or prior-knowledge h2c on the same port.
//!
//! It does as little as possible per request (one `Bytes` clone, no allocation for the body) so
//! that the measured differences between direct and sidecar runs are the sidecars' cost.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::cli::UpstreamArgs;
use crate::Result;

/// Runs `ferrule-bench upstream`: binds, prints `upstream listening on IP:PORT` (the harness
/// waits for that line), and serves until interrupted.
pub(crate) async fn run(args: UpstreamArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "upstream listening on {local}")?;
    stdout.flush()?;
    drop(stdout);
    tokio::select! {
        () = serve(listener, body_of(args.body_size)) => Ok(()),
        signal = tokio::signal::ctrl_c() => Ok(signal?),
    }
}

/// The response body: `size` bytes of printable filler.
fn body_of(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// Accepts connections forever, serving each on its own task.
pub(crate) async fn serve(listener: TcpListener, body: Bytes) {
    // `auto` sniffs the h2 preface, so one port serves both protocols like a real app would.
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually EMFILE under heavy load: back off instead of spinning, keep serving.
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Responses are small; without TCP_NODELAY they can wait for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            // Errors here are clients going away mid-request; nothing to do about them.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{get, Endpoint};

    #[tokio::test]
    async fn serves_the_fixed_body_over_http1_and_h2() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, body_of(1024)));

        let endpoint = Endpoint::http1(addr, "/anything").unwrap();
        let (status, body) = get(&endpoint, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), 1024);

        let url = format!("http://{addr}/");
        let endpoint = Endpoint::resolve(&url, None, true, false).await.unwrap();
        let mut sender = crate::client::connect_http2(addr).await.unwrap();
        let response = sender.send_request(endpoint.request()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            crate::client::drain(response.into_body()).await.unwrap(),
            1024
        );
    }
}
