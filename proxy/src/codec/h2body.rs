//! Message bodies over HTTP/2 streams, in both directions, for the client (`h2client`) and the
//! server (`h2server`) alike: [`H2Body`] receives one, [`pump`] sends one within the peer's
//! flow-control window.
//!
//! The sending side is written for the common case of a small message: frames that are
//! already at hand (a gRPC message and its trailers, say) are all queued in one go, so h2
//! writes them together, and only a body that is still arriving waits for more.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// An error of any body.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body arriving on an HTTP/2 stream: a request's (`h2server`) or a response's
/// (`h2client`). Received data is handed back to the connection's flow control as soon as it
/// is passed on, so the peer can keep sending.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// Bytes still to come by the message's `content-length`, if it has one (h2 fails the
    /// stream when the data does not match it), so the next hop can be given the length.
    remaining: Option<u64>,
}

impl H2Body {
    /// The body that `recv` receives, for a message with `headers`.
    pub fn new(recv: h2::RecvStream, headers: &HeaderMap) -> H2Body {
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        H2Body {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = self.remaining.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Sends `body` on `stream`, trailers included, then ends the stream. Frames at hand are
/// queued at once; data waits only for flow-control capacity the peer has not granted yet.
///
/// A reset from the peer ends the pump quietly (the peer no longer wants the body); a body
/// error resets the stream with the error's own HTTP/2 reason if it has one, else `on_error`.
pub async fn pump<B>(body: B, mut stream: h2::SendStream<Bytes>, on_error: h2::Reason)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    tokio::pin!(body);
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            // The peer no longer wants the body (it answered early, or reset the stream).
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                tracing::debug!(error = %e, "body failed; resetting the stream");
                let reason = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason);
                stream.send_reset(reason.unwrap_or(on_error));
                return;
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let last = body.is_end_stream();
                if !send_data(&mut stream, data, last).await || last {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                return;
            }
        }
    }
}

/// Queues `data` as the peer's window allows: what it allows now goes at once, without a
/// yield, the rest as capacity is granted. False if the stream can no longer send.
async fn send_data(stream: &mut h2::SendStream<Bytes>, mut data: Bytes, last: bool) -> bool {
    if data.is_empty() {
        return !last || stream.send_data(data, true).is_ok();
    }
    while !data.is_empty() {
        // h2 grants what the connection window allows right away; capacity() shows it.
        stream.reserve_capacity(data.len());
        let mut granted = stream.capacity();
        if granted == 0 {
            granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                // Reset, or the connection is gone.
                _ => return false,
            };
        }
        let chunk = data.split_to(granted.min(data.len()));
        if stream.send_data(chunk, last && data.is_empty()).is_err() {
            return false;
        }
    }
    true
}
