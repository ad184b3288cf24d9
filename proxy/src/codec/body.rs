//! The request body the proxy forwards, and the recording that lets a retry send it again.
//!
//! A body arrives from hyper's HTTP/1.1 server or from an HTTP/2 stream and is streamed to the
//! next hop as it arrives. A request that may be retried is sent through a *recording* body:
//! it passes every frame on unchanged and keeps a reference to it (a `Bytes` clone, no copy)
//! up to [`REPLAY_LIMIT`]. If the body ended within the limit, a retry sends the recording
//! again; a larger body, or one still arriving when the attempt failed, is not replayable and
//! the request is not retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::codec::h2body::H2Body;

/// Largest body kept for a retry (the resilience policy's "bodies buffered for replay up to
/// 64 KiB").
pub const REPLAY_LIMIT: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// From hyper's HTTP/1.1 server.
    Http1(Incoming),
    /// From an HTTP/2 stream.
    Http2(H2Body),
    /// The first attempt of a retryable request: the body it wraps, recorded as it passes.
    Recorded(Box<RequestBody>, Recorder),
    /// A retry: the recorded frames, sent again.
    Replay(Replay),
}

/// What a recording body has seen, shared with the attempt loop's transport.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Recording>>);

#[derive(Debug, Default)]
struct Recording {
    data: Vec<Bytes>,
    size: usize,
    trailers: Option<HeaderMap>,
    /// The body ended and every frame was kept.
    complete: bool,
    /// More than the limit went by (or the body failed): nothing can be replayed.
    spoiled: bool,
}

impl Recorder {
    /// A body to send the recording again, if the body ended within the limit.
    pub fn replay(&self) -> Option<RequestBody> {
        let r = self.0.lock().expect("recording lock poisoned");
        (r.complete && !r.spoiled).then(|| {
            RequestBody::Replay(Replay {
                data: r.data.iter().rev().cloned().collect(),
                trailers: r.trailers.clone(),
            })
        })
    }

    fn see(&self, frame: &Frame<Bytes>) {
        let mut r = self.0.lock().expect("recording lock poisoned");
        if r.spoiled {
            return;
        }
        if let Some(data) = frame.data_ref() {
            r.size += data.len();
            if r.size > REPLAY_LIMIT {
                // Let the frames go: the request can no longer be retried.
                r.spoiled = true;
                r.data = Vec::new();
                return;
            }
            r.data.push(data.clone());
        } else if let Some(t) = frame.trailers_ref() {
            r.trailers = Some(t.clone());
        }
    }

    fn end(&self, ok: bool) {
        let mut r = self.0.lock().expect("recording lock poisoned");
        if ok {
            r.complete = true;
        } else {
            r.spoiled = true;
        }
    }
}

/// Recorded frames, in reverse so that sending pops from the end.
#[derive(Debug)]
pub struct Replay {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl RequestBody {
    /// A body with nothing in it (to send again a request that had none).
    pub fn empty() -> RequestBody {
        RequestBody::Replay(Replay {
            data: Vec::new(),
            trailers: None,
        })
    }

    /// This body, recorded for a retry; a body that is already over needs no recording.
    pub fn recorded(self) -> (RequestBody, Option<Recorder>) {
        if self.is_end_stream() {
            return (self, None);
        }
        let rec = Recorder::default();
        (
            RequestBody::Recorded(Box::new(self), rec.clone()),
            Some(rec),
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Recorded(b, rec) => {
                let polled = Pin::new(&mut **b).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => rec.see(frame),
                    Poll::Ready(Some(Err(_))) => rec.end(false),
                    Poll::Ready(None) => rec.end(true),
                    Poll::Pending => {}
                }
                // A body whose last frame says it is the end may never be polled to `None`.
                if matches!(polled, Poll::Ready(Some(Ok(_)))) && b.is_end_stream() {
                    rec.end(true);
                }
                polled
            }
            RequestBody::Replay(r) => Poll::Ready(match r.data.pop() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => r.trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Http1(b) => b.is_end_stream(),
            RequestBody::Http2(b) => b.is_end_stream(),
            RequestBody::Recorded(b, _) => b.is_end_stream(),
            RequestBody::Replay(r) => r.data.is_empty() && r.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Http1(b) => b.size_hint(),
            RequestBody::Http2(b) => b.size_hint(),
            RequestBody::Recorded(b, _) => b.size_hint(),
            RequestBody::Replay(r) => {
                SizeHint::with_exact(r.data.iter().map(|d| d.len() as u64).sum())
            }
        }
    }
}
