//! Where listeners come from. Standalone, the worker binds them itself; under
//! the master they arrive pre-bound (or are asked for with `Bind`), so the
//! engine only ever asks a [`Binder`].

use std::future::Future;
use std::pin::Pin;

use proto::listen;
use proto::spec::HostPort;
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

fn bind_error(addr: &HostPort) -> impl Fn(std::io::Error) -> TunnelError + '_ {
    move |source| TunnelError::Bind {
        addr: addr.to_string(),
        source,
    }
}

impl Binder for LocalBinder {
    fn tcp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<TcpListener, TunnelError>> {
        Box::pin(async move {
            let std = listen::listen_addr(addr)
                .and_then(listen::bind_tcp)
                .map_err(bind_error(addr))?;
            TcpListener::from_std(std).map_err(bind_error(addr))
        })
    }

    fn udp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<UdpSocket, TunnelError>> {
        Box::pin(async move {
            let std = listen::listen_addr(addr)
                .and_then(listen::bind_udp)
                .map_err(bind_error(addr))?;
            UdpSocket::from_std(std).map_err(bind_error(addr))
        })
    }
}
