//! A tunnel connection: plain TCP or TLS over TCP, on either end.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One connection between the two tunnel ends.
pub enum Link {
    Plain(TcpStream),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Link {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::TlsClient(s) => s.get_ref().0,
            Link::TlsServer(s) => s.get_ref().0,
        }
    }

    /// Whether an idle link is still usable: no EOF, no unexpected bytes.
    /// Idle links carry nothing (TLS tickets are off), so any readable byte
    /// means the peer closed or broke it.
    pub fn is_alive(&self) -> bool {
        let fd: RawFd = self.tcp().as_raw_fd();
        let mut byte = 0u8;
        // SAFETY: a 1-byte peek into a valid buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// TLS keying material bound to this connection (empty when plain), so
    /// the key proof cannot be relayed through a TLS man-in-the-middle.
    pub fn channel_binding(&self) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        let res = match self {
            Link::Plain(_) => return Vec::new(),
            Link::TlsClient(s) => s
                .get_ref()
                .1
                .export_keying_material(&mut out, b"EXPORTER-drover-auth", None)
                .map(|_| ()),
            Link::TlsServer(s) => s
                .get_ref()
                .1
                .export_keying_material(&mut out, b"EXPORTER-drover-auth", None)
                .map(|_| ()),
        };
        match res {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Link::Plain($s) => $e,
            Link::TlsClient($s) => $e,
            Link::TlsServer($s) => $e,
        }
    };
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Link::Plain(s) => s.is_write_vectored(),
            Link::TlsClient(s) => s.is_write_vectored(),
            Link::TlsServer(s) => s.is_write_vectored(),
        }
    }
}
