//! A future that is polled only when its own waker fired: for the timers and signals a
//! connection's task waits on beside a busy connection, which wakes the task far more often
//! than they do (used by both HTTP/2 codecs).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future polled only when its own waker has fired since its last poll (and on the first
/// poll), so a task that waits for it among other things, most of which wake it far more
/// often, pays one flag per wake-up for it instead of a poll.
pub(crate) struct OnWake<F> {
    future: F,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> OnWake<F> {
    pub(crate) fn new(future: F) -> OnWake<F> {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        OnWake {
            future,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut self.future).poll(&mut Context::from_waker(&self.waker))
    }
}

impl OnWake<Pin<Box<tokio::time::Sleep>>> {
    /// Sets the timer to fire at `deadline` (it is polled next time, to take the new time).
    pub(crate) fn reset(&mut self, deadline: tokio::time::Instant) {
        self.future.as_mut().reset(deadline);
        self.flag.woken.store(true, Ordering::Release);
    }
}
