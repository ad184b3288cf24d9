//! The stream idle timeout: an exchange whose bodies move no byte, either way, for the route's
//! `idleTimeout` (5 minutes unless set) is ended. A long gRPC stream that keeps moving is never
//! cut (unlike a total timeout), and a stuck one does not hold its connection and its upstream
//! forever.
//!
//! Both bodies of an exchange share one [`Activity`]: the last time either passed a frame on,
//! in milliseconds since a process-wide epoch, in one atomic. Only the response body keeps a
//! timer ([`IdleBody`]), created the first time it waits for a frame and re-armed only when it
//! fires early (the activity moved since), so a busy stream costs a clock read and an atomic
//! store per frame, never a timer update.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    Instant::now()
        .saturating_duration_since(epoch())
        .as_millis() as u64
}

/// When one exchange's bodies last moved a frame.
#[derive(Debug, Clone)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Starts counting from now.
    pub fn new() -> Self {
        Activity(Arc::new(AtomicU64::new(now_ms())))
    }

    /// A frame went by.
    pub fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// The stream was idle too long.
#[derive(Debug, thiserror::Error)]
#[error("no data either way for {0:?} (the route's idle timeout)")]
pub struct IdleTimeout(Duration);

/// A response body ended with an error once its exchange has been idle for `idle`.
#[derive(Debug)]
pub struct IdleBody<B> {
    inner: B,
    /// The exchange's activity and its idle timeout; `None`: not watched.
    watch: Option<(Activity, Duration)>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleBody<B> {
    /// `inner`, ended once `activity` has not moved for `idle`.
    pub fn new(inner: B, activity: Activity, idle: Duration) -> Self {
        IdleBody {
            inner,
            watch: Some((activity, idle)),
            timer: None,
        }
    }

    /// `inner`, not watched (the sidecar that planned the route watches the exchange).
    pub fn unwatched(inner: B) -> Self {
        IdleBody {
            inner,
            watch: None,
            timer: None,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some((activity, idle)) = &this.watch else {
            return polled.map(|f| f.map(|f| f.map_err(Into::into)));
        };
        if let Poll::Ready(frame) = polled {
            if matches!(frame, Some(Ok(_))) {
                activity.touch();
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = *idle;
        loop {
            let due = epoch() + Duration::from_millis(activity.last()) + idle;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: idle for real, unless a frame moved since the timer was set.
            if Instant::now() >= epoch() + Duration::from_millis(activity.last()) + idle {
                return Poll::Ready(Some(Err(IdleTimeout(idle).into())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// A body fed by hand: a frame whenever the test sends one.
    fn fed() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        impl Body<Data = Bytes, Error = BoxError> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        (tx, StreamBody::new(Box::pin(stream)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_moving_stream_lives_and_an_idle_one_ends() {
        let (tx, inner) = fed();
        let activity = Activity::new();
        let mut body = IdleBody::new(inner, activity.clone(), Duration::from_secs(1));
        // Frames every 600 ms, in either direction (the request side touches the activity),
        // for 5 s: never 1 s idle.
        for i in 0..8 {
            if i % 2 == 0 {
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
                assert!(body.frame().await.unwrap().is_ok());
            } else {
                activity.touch();
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("idle timeout"), "{err}");
        // The last activity was 600 ms ago: 400 ms more.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }
}
