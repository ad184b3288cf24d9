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
use crate::codec::idle::Activity;

/// Largest body kept for a retry (the resilience policy's "bodies buffered for replay up to
/// 64 KiB").
pub const REPLAY_LIMIT: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream: as received (from hyper's HTTP/1.1 server or an
/// HTTP/2 stream) or replayed for a retry; optionally recorded for a retry, and optionally
/// marking its exchange's activity for the stream idle timeout (`codec::idle`).
#[derive(Debug)]
pub struct RequestBody {
    inner: Inner,
    recorder: Option<Recorder>,
    activity: Option<Activity>,
}

#[derive(Debug)]
enum Inner {
    Http1(Incoming),
    Http2(H2Body),
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
            RequestBody::of(Inner::Replay(Replay {
                data: r.data.iter().rev().cloned().collect(),
                trailers: r.trailers.clone(),
            }))
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
    /// A body from hyper's HTTP/1.1 server.
    pub fn http1(body: Incoming) -> Self {
        Self::of(Inner::Http1(body))
    }

    /// A body arriving on an HTTP/2 stream.
    pub fn http2(body: H2Body) -> Self {
        Self::of(Inner::Http2(body))
    }

    /// A body with nothing in it (to send again a request that had none).
    pub fn empty() -> Self {
        Self::of(Inner::Replay(Replay {
            data: Vec::new(),
            trailers: None,
        }))
    }

    fn of(inner: Inner) -> Self {
        RequestBody {
            inner,
            recorder: None,
            activity: None,
        }
    }

    /// This body, recorded for a retry; a body that is already over needs no recording.
    pub fn recorded(mut self) -> (RequestBody, Option<Recorder>) {
        if self.is_end_stream() {
            return (self, None);
        }
        let rec = Recorder::default();
        self.recorder = Some(rec.clone());
        (self, Some(rec))
    }

    /// This body, marking `activity` with each frame it passes on.
    pub fn watched(mut self, activity: Activity) -> Self {
        self.activity = Some(activity);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            Inner::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Replay(r) => Poll::Ready(match r.data.pop() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => r.trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        };
        if let Poll::Ready(Some(Ok(_))) = &polled {
            if let Some(a) = &this.activity {
                a.touch();
            }
        }
        if let Some(rec) = &this.recorder {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    rec.see(frame);
                    // A body whose last frame says it is the end may never be polled to `None`.
                    if this.inner_end() {
                        rec.end(true);
                    }
                }
                Poll::Ready(Some(Err(_))) => rec.end(false),
                Poll::Ready(None) => rec.end(true),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1(b) => b.size_hint(),
            Inner::Http2(b) => b.size_hint(),
            Inner::Replay(r) => SizeHint::with_exact(r.data.iter().map(|d| d.len() as u64).sum()),
        }
    }
}

impl RequestBody {
    fn inner_end(&self) -> bool {
        match &self.inner {
            Inner::Http1(b) => b.is_end_stream(),
            Inner::Http2(b) => b.is_end_stream(),
            Inner::Replay(r) => r.data.is_empty() && r.trailers.is_none(),
        }
    }
}
