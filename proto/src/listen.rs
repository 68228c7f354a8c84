//! Listening sockets as both sides make them: `SO_REUSEADDR`, a deep
//! backlog, non-blocking, close-on-exec, dual-stack for "all interfaces", and
//! on loopback a congestion control that does not pace ([`crate::congestion`]).
//! The master binds an instance's listeners with these; a standalone worker
//! binds its own.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use crate::spec::HostPort;

/// Listen backlog: connections wait here while a worker restarts.
pub const BACKLOG: i32 = 4096;

/// The socket address to listen on: an empty host is all interfaces
/// (dual-stack); a name is resolved (first address).
pub fn listen_addr(addr: &HostPort) -> io::Result<SocketAddr> {
    if addr.host.is_empty() {
        return Ok(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            addr.port,
        ));
    }
    if let Some(ip) = addr.ip() {
        return Ok(SocketAddr::new(ip, addr.port));
    }
    use std::net::ToSocketAddrs;
    (addr.host.as_str(), addr.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host name does not resolve"))
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    Ok(s)
}

/// Binds with a fallback to IPv4 when "all interfaces" cannot be IPv6 here.
fn with_v4_fallback<T>(
    addr: SocketAddr,
    bind: impl Fn(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    match bind(addr) {
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.kind() != io::ErrorKind::AddrInUse =>
        {
            bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        other => other,
    }
}

/// A non-blocking TCP listener.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    with_v4_fallback(addr, |addr| {
        let s = socket(addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        crate::congestion::tune_loopback(&s, addr.ip());
        s.listen(BACKLOG)?;
        Ok(s.into())
    })
}

/// A non-blocking UDP socket.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    with_v4_fallback(addr, |addr| {
        let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound port refuses a second TCP bind with AddrInUse.
    #[test]
    fn conflict_is_addr_in_use() {
        let a = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = bind_tcp(a.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let u = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(bind_udp(u.local_addr().unwrap()).is_err());
    }
}
