//! The benchmark's application: an HTTP server that answers every request with the same body of
//! a fixed size, over HTTP/1.1 (keep-alive) or prior-knowledge h2c on the same port.
//!
//! A request with `content-type: application/grpc` is a gRPC unary call: the server reads the
//! request, checks its framing, and answers one framed message of the same fixed size followed
//! by the trailers `grpc-status: 0` (a malformed request gets `grpc-status: 3`, so broken
//! framing on a proxy's path shows up as errors instead of passing unnoticed).
//!
//! It does as little as possible per request (one `Bytes` clone, no allocation for the body) so
//! that the measured differences between direct and proxied runs are the proxies' cost.

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::cli::UpstreamArgs;
use crate::grpc;
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
pub(crate) fn body_of(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// What every response is made of, prepared once.
#[derive(Clone)]
struct Replies {
    /// The plain HTTP body.
    body: Bytes,
    /// The gRPC reply: the same bytes as one framed message.
    grpc_message: Bytes,
    /// `grpc-status: 0`.
    grpc_ok: HeaderMap,
}

impl Replies {
    fn new(body: Bytes) -> Self {
        let mut grpc_ok = HeaderMap::new();
        grpc_ok.insert("grpc-status", HeaderValue::from_static("0"));
        Replies {
            grpc_message: grpc::frame(&body),
            body,
            grpc_ok,
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Reply> {
        let is_grpc = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(grpc::CONTENT_TYPE.as_bytes()));
        if !is_grpc {
            let mut response = Response::new(Reply::new(self.body.clone(), None));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return response;
        }
        // A unary call: read the whole request before answering, as a gRPC server does.
        let status = match request.into_body().collect().await {
            Ok(collected) => match grpc::messages(&collected.to_bytes()) {
                Ok(messages) if messages.len() == 1 => None,
                Ok(messages) => Some(format!(
                    "expected 1 request message, got {}",
                    messages.len()
                )),
                Err(e) => Some(e),
            },
            Err(e) => Some(format!("reading the request: {e}")),
        };
        let mut response = match status {
            None => Response::new(Reply::new(
                self.grpc_message.clone(),
                Some(self.grpc_ok.clone()),
            )),
            Some(problem) => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("3"));
                if let Ok(message) = HeaderValue::from_str(&problem) {
                    trailers.insert("grpc-message", message);
                }
                Response::new(Reply::new(Bytes::new(), Some(trailers)))
            }
        };
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
        response
    }
}

/// A response body: one data frame, then optional trailers.
struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    /// Length of the data, for an exact size hint (HTTP/1.1 then sends Content-Length).
    len: u64,
}

impl Reply {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Reply {
            len: data.len() as u64,
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(if self.data.is_some() { self.len } else { 0 })
    }
}

/// Accepts connections forever, serving each on its own task.
pub(crate) async fn serve(listener: TcpListener, body: Bytes) {
    // `auto` sniffs the h2 preface, so one port serves both protocols like a real app would.
    let builder = auto::Builder::new(TokioExecutor::new());
    let replies = Replies::new(body);
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
        let replies = replies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let replies = replies.clone();
                async move { Ok::<_, Infallible>(replies.answer(request).await) }
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
    use crate::protocol::Protocol;

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
        let endpoint = Endpoint::resolve(&url, None, Protocol::Http2, false)
            .await
            .unwrap();
        let mut sender = crate::client::connect_http2(addr).await.unwrap();
        let response = sender.send_request(endpoint.request()).await.unwrap();
        assert_eq!(response.status(), 200);
        let drained = crate::client::drain(response.into_body()).await.unwrap();
        assert_eq!(drained.len, 1024);
        assert!(drained.trailers.is_none());
    }

    #[tokio::test]
    async fn answers_grpc_calls_with_a_framed_message_and_status_0() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, body_of(100)));

        let url = format!("http://{addr}{}", grpc::METHOD_PATH);
        let endpoint = Endpoint::resolve(&url, None, Protocol::Grpc, false)
            .await
            .unwrap();
        let mut sender = crate::client::connect_http2(addr).await.unwrap();
        let response = sender.send_request(endpoint.request()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], grpc::CONTENT_TYPE);
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned();
        let bytes = body.to_bytes();
        assert_eq!(grpc::messages(&bytes).unwrap(), vec![&[b'x'; 100][..]]);
        assert!(grpc::check_trailers(trailers.as_ref()).is_ok());
        // The load generator's judgement agrees.
        assert!(crate::client::once(&endpoint, Duration::from_secs(5))
            .await
            .is_ok());

        // Broken framing is a gRPC error, not a success.
        let mut bad = endpoint.request();
        *bad.body_mut() = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 9, 1]));
        let response = sender.send_request(bad).await.unwrap();
        let outcome = crate::client::judge(Protocol::Grpc, response).await;
        assert!(
            matches!(&outcome, crate::client::Outcome::Failed(e) if e.starts_with("grpc-status 3")),
            "{outcome:?}"
        );
    }
}
