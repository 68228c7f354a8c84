//! Where listeners come from. Standalone, the worker binds them itself; under
//! the master they arrive pre-bound (or are asked for with `Bind`), so the
//! engine only ever asks a [`Binder`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use proto::spec::HostPort;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use super::error::TunnelError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Hands out listening sockets for tunnel and entrance addresses.
pub trait Binder: Send + Sync {
    fn tcp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<TcpListener, TunnelError>>;
    fn udp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<UdpSocket, TunnelError>>;
}

/// Binds in this process (standalone `drover-worker "<url>"`).
pub struct LocalBinder;

impl Binder for LocalBinder {
    fn tcp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<TcpListener, TunnelError>> {
        Box::pin(async move {
            let sa = listen_addr(addr).await?;
            let std = bind_tcp(sa).map_err(|source| TunnelError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            TcpListener::from_std(std).map_err(|source| TunnelError::Bind {
                addr: addr.to_string(),
                source,
            })
        })
    }

    fn udp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<UdpSocket, TunnelError>> {
        Box::pin(async move {
            let sa = listen_addr(addr).await?;
            let std = bind_udp(sa).map_err(|source| TunnelError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            UdpSocket::from_std(std).map_err(|source| TunnelError::Bind {
                addr: addr.to_string(),
                source,
            })
        })
    }
}

/// An empty host listens on all interfaces, dual-stack.
pub async fn listen_addr(addr: &HostPort) -> Result<SocketAddr, TunnelError> {
    if addr.host.is_empty() {
        return Ok(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            addr.port,
        ));
    }
    if let Some(ip) = addr.ip() {
        return Ok(SocketAddr::new(ip, addr.port));
    }
    tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| TunnelError::Bind {
            addr: addr.to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "host name does not resolve"),
        })
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

/// A non-blocking TCP listener with `SO_REUSEADDR` and a deep backlog.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let bind = |addr: SocketAddr| -> io::Result<std::net::TcpListener> {
        let s = socket(addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    };
    match bind(addr) {
        // No IPv6 on this host: all interfaces means all IPv4 interfaces.
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.kind() != io::ErrorKind::AddrInUse =>
        {
            bind(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        other => other,
    }
}

/// A non-blocking UDP socket.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let bind = |addr: SocketAddr| -> io::Result<std::net::UdpSocket> {
        let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    };
    match bind(addr) {
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.kind() != io::ErrorKind::AddrInUse =>
        {
            bind(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        other => other,
    }
}
