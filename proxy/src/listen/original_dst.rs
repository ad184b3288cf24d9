//! The original destination of an intercepted connection: where the client meant to connect
//! before an iptables `REDIRECT` (installed by `ferrule-proxy init`) sent it to one of our
//! listeners. Read once per accepted connection, with the netfilter `SO_ORIGINAL_DST` socket
//! option (`IP6T_SO_ORIGINAL_DST` on IPv6) through socket2, so no `unsafe` of ours.
//!
//! Cost in explicit mode (no rules): one `getsockopt` per accepted connection, which fails at
//! once (no connection-tracking entry, or no netfilter at all); nothing per request.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The destination `stream`'s client connected to, if it is not where the connection was
/// accepted (`local`, the socket's own address), i.e. if the connection was redirected.
///
/// `None` for a connection addressed to the listener itself (explicit mode, or a peer sidecar
/// calling the inbound port), and when the kernel knows no original destination.
pub fn of(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    redirected(lookup(stream, local).ok()?, local)
}

/// `SO_ORIGINAL_DST` for an IPv4 socket, `IP6T_SO_ORIGINAL_DST` for an IPv6 one.
fn lookup(stream: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match local {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// The original destination when it differs from the address the connection arrived at. A
/// connection that was never translated reports its own local address (connection tracking
/// knows it, untranslated), which must not be taken for an interception.
fn redirected(original: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
    (original != local).then_some(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_translated_destination_counts() {
        let local: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        let meant: SocketAddr = "10.77.0.3:8000".parse().unwrap();
        assert_eq!(redirected(meant, local), Some(meant));
        assert_eq!(redirected(local, local), None);
        // Same port, another address: still a redirect (an app calling another pod's 4140).
        let other: SocketAddr = "10.77.0.3:4140".parse().unwrap();
        assert_eq!(redirected(other, local), Some(other));
    }

    #[tokio::test]
    async fn a_plain_loopback_connection_has_no_original_destination() {
        // Nothing redirects loopback here, so whatever the kernel answers (no entry, or no
        // netfilter at all), the connection is not taken for an intercepted one.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(of(&s, s.local_addr().unwrap()), None);
    }

    #[tokio::test]
    async fn a_wildcard_listener_compares_with_the_sockets_own_address() {
        // A connection made straight to a listener on 0.0.0.0 is not redirected, although
        // its address is not the listener's: the comparison must use the socket's own.
        let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let mut ctx = crate::base::ConnCtx::new(
            crate::base::Listener::Inbound,
            peer,
            l.local_addr().unwrap(),
        );
        super::super::intercepted(&mut ctx, &s);
        assert_eq!(ctx.local, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(ctx.original_dst, None);
    }
}
