//! IO adapters shared by the codecs: a connection whose first bytes were already read
//! ([`Prefixed`]), and a pair of borrowing halves of one stream ([`split_ref`]) for code that
//! reads and writes the same connection from two futures of one task.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection (or its reading half) whose first bytes were already read, by the fast path
/// or to look for the HTTP/2 preface: they are read again first, then the socket.
#[derive(Debug)]
pub struct Prefixed<T> {
    /// Bytes to hand out before reading `io`.
    pub prefix: Bytes,
    /// The connection.
    pub io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A stream lent to [`split_ref`]'s halves.
pub type Shared<'a, T> = Mutex<&'a mut T>;

/// Lends a stream to [`split_ref`].
pub fn share<T>(io: &mut T) -> Shared<'_, T> {
    Mutex::new(io)
}

fn lock<'s, 'a, T>(shared: &'s Shared<'a, T>) -> MutexGuard<'s, &'a mut T> {
    // A panic while polling leaves the stream no worse than any other IO error would.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lends one stream to a reading half and a writing half that two futures of the same task
/// can hold at once (a request body pumped while the response head is awaited).
///
/// Why not `TcpStream::split`: it exists only for a plain TCP socket, and a TLS stream reads
/// and writes through one state. Why not `tokio::io::split`: it needs an owned stream, which
/// the fast path lends out and takes back request by request. Each poll holds the lock for the
/// length of one `poll_read` or `poll_write` call, never across an await, and both halves are
/// polled by one task, so it is never contended (a `RefCell` would do, but the futures must be
/// `Send`). Callers use the halves only while both directions are busy at once, which is rare:
/// a request body still arriving while the response has begun.
pub fn split_ref<'s, 'a, T>(
    shared: &'s Shared<'a, T>,
) -> (RefRead<'s, 'a, T>, RefWrite<'s, 'a, T>) {
    (RefRead(shared), RefWrite(shared))
}

/// The reading half of [`split_ref`].
#[derive(Debug)]
pub struct RefRead<'s, 'a, T>(&'s Shared<'a, T>);

/// The writing half of [`split_ref`].
#[derive(Debug)]
pub struct RefWrite<'s, 'a, T>(&'s Shared<'a, T>);

impl<T: AsyncRead + Unpin> AsyncRead for RefRead<'_, '_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut io = lock(self.0);
        Pin::new(&mut **io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RefWrite<'_, '_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut io = lock(self.0);
        Pin::new(&mut **io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut io = lock(self.0);
        Pin::new(&mut **io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(self.0).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = lock(self.0);
        Pin::new(&mut **io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = lock(self.0);
        Pin::new(&mut **io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn halves_read_and_write_the_same_stream_concurrently() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let shared = share(&mut a);
        let (mut rd, mut wr) = split_ref(&shared);
        let mut got = [0u8; 5];
        let (r, w, p) = tokio::join!(rd.read_exact(&mut got), wr.write_all(b"ping"), async {
            b.write_all(b"hello").await.unwrap();
            let mut seen = [0u8; 4];
            b.read_exact(&mut seen).await.unwrap();
            seen
        });
        r.unwrap();
        w.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(&p, b"ping");
    }
}
