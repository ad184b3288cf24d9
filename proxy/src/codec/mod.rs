//! HTTP codecs: bytes in, heads and bodies out, and back. No policy lives here: a codec that
//! needs a decision is handed one by the pipeline above it.
//!
//! - [`h1`]: HTTP/1.1 heads parsed and rewritten in place, and body framing (the fast path's
//!   wire pieces).
//! - [`h2server`], [`h2client`], [`h2body`]: HTTP/2 on the h2 crate, towards either side.
//! - [`h1guard`]: under hyper's HTTP/1.1 server: heads hyper would refuse are answered by the
//!   renderer instead, and requests framed twice are refused.
//! - [`body`]: the request body forwarded upstream, recorded for a retry and replayed.
//! - [`headers`]: body types, the one hop-by-hop rule, authority, next-hop rewrites.
//! - [`render`]: the one renderer of proxy-made responses, in every wire form.
//! - [`idle`]: the stream idle timeout over both bodies of an exchange.
//! - [`io`]: IO adapters shared by the codecs (read-ahead bytes, borrowing halves).
//! - [`wake`]: a future polled only when its own waker fired (timers beside a busy connection).

pub mod body;
pub mod h1;
pub mod h1guard;
pub mod h2body;
pub mod h2client;
pub mod h2server;
pub mod headers;
pub mod idle;
pub mod io;
pub mod render;
pub mod wake;

use http::{HeaderName, HeaderValue, Request, Version};

/// What planning reads of a request head: implemented by the fast path's in-place HTTP/1.1
/// heads and by `http::Request` (hyper's HTTP/1.1 server, the HTTP/2 server), so both are
/// planned by the same code.
pub trait HeadView {
    /// The method.
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// Whether some value of header `name` equals `value`.
    fn has_header(&self, name: &HeaderName, value: &HeaderValue) -> bool;
    /// The first value of header `name` (lower case), if any.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The authority: an absolute-form target's or HTTP/2's `:authority`, else `Host`.
    fn authority(&self) -> Option<&str>;
    /// Whether the request is gRPC.
    fn is_grpc(&self) -> bool;
    /// Whether it arrived over HTTP/2.
    fn is_http2(&self) -> bool;

    /// The value of cookie `name` in the first `Cookie` header, if it is there. (HTTP/2 may
    /// split cookies over several `cookie` fields; the HTTP/2 server joins them into one first,
    /// `headers::join_cookies`.)
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.header("cookie")?
            .split(|&b| b == b';')
            .map(|pair| pair.trim_ascii_start())
            .find_map(|pair| pair.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
    }
}

impl<B> HeadView for Request<B> {
    fn method(&self) -> &str {
        Request::method(self).as_str()
    }

    fn path(&self) -> &str {
        self.uri().path()
    }

    fn has_header(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        self.headers()
            .get_all(name)
            .iter()
            .any(|have| have == value)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().get(name).map(HeaderValue::as_bytes)
    }

    fn authority(&self) -> Option<&str> {
        headers::authority(self)
    }

    fn is_grpc(&self) -> bool {
        headers::is_grpc(self.headers())
    }

    fn is_http2(&self) -> bool {
        self.version() == Version::HTTP_2
    }
}

#[cfg(test)]
mod tests {
    use super::HeadView;

    #[test]
    fn reads_one_header_and_one_cookie() {
        let req = http::Request::builder()
            .header("x-user", "alice")
            .header("cookie", "a=1; session=s3cr3t;b=2")
            .body(())
            .unwrap();
        assert_eq!(req.header("x-user"), Some(&b"alice"[..]));
        assert_eq!(req.header("x-none"), None);
        assert_eq!(req.cookie("session"), Some(&b"s3cr3t"[..]));
        assert_eq!(req.cookie("b"), Some(&b"2"[..]));
        // A name that is only a prefix of another cookie's is not that cookie.
        assert_eq!(req.cookie("sess"), None);
    }
}
