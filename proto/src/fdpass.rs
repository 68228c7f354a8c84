//! File descriptors over a Unix socket (`SCM_RIGHTS`): [`BorrowedFd`]s in,
//! [`OwnedFd`]s out.
//!
//! 1. [`send`] writes bytes with up to [`MAX_FDS`] fds attached to the first
//!    of them (one `sendmsg`, `MSG_NOSIGNAL`); the kernel duplicates the fds
//!    into the receiver when it reads those bytes.
//! 2. [`recv`] reads bytes with room for [`MAX_FDS`] fds (`recvmsg`,
//!    `MSG_CMSG_CLOEXEC`, so a worker's exec'd children never inherit them).
//!    More than that is `MSG_CTRUNC`: the fds that did arrive are closed, the
//!    kernel drops the rest, and the call fails with
//!    [`ProtoError::TooManyFds`].
//!
//! Both work on blocking and non-blocking sockets; on a non-blocking one a
//! `WouldBlock` comes back as [`ProtoError::Io`] with that kind. On a Linux
//! stream socket a read returns the fds of at most one `sendmsg` and ends
//! inside that `sendmsg`'s bytes (see [`crate::channel`] for how frames claim
//! them).

use std::io::{IoSlice, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::ProtoError;

/// Most fds one message may carry.
pub const MAX_FDS: usize = 16;

/// Bytes of control buffer for one `SCM_RIGHTS` message of [`MAX_FDS`] fds.
// SAFETY: CMSG_SPACE is pure arithmetic.
const CMSG_CAPACITY: usize =
    unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;

/// A control buffer aligned for `cmsghdr` (whose first field is a `size_t`),
/// since nix reads the headers in place.
#[repr(C, align(8))]
struct CmsgBuffer([u8; CMSG_CAPACITY]);

/// Sends `bytes` with `fds` attached to the first byte; returns how many
/// bytes went out (maybe fewer than `bytes.len()`; the fds went with them).
/// `bytes` must not be empty when `fds` is not: the fds need a byte to ride on.
pub fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<usize, ProtoError> {
    if fds.len() > MAX_FDS {
        return Err(ProtoError::TooManyFds { max: MAX_FDS });
    }
    debug_assert!(
        fds.is_empty() || !bytes.is_empty(),
        "fds need at least one byte"
    );
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(bytes)];
    loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(ProtoError::io(
                    "sending to the control socket",
                    errno.into(),
                ));
            }
            Ok(n) => return Ok(n),
        }
    }
}

/// Receives into `buf`; returns the byte count (0 = end of stream) and the
/// fds that came with those bytes, already owned and close-on-exec.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), ProtoError> {
    loop {
        let mut cmsg = CmsgBuffer([0; CMSG_CAPACITY]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg.0),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(ProtoError::io(
                    "receiving from the control socket",
                    errno.into(),
                ));
            }
            Ok(msg) => msg,
        };
        let bytes = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        // Take ownership of every fd before anything can return early, so
        // each one is closed on every path.
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just installed these fds for us.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        if truncated {
            drop(fds);
            // SAFETY: the kernel filled `cmsg` and nothing has taken its fds:
            // nix does not walk a truncated buffer.
            unsafe { close_rights(&cmsg.0) };
            return Err(ProtoError::TooManyFds { max: MAX_FDS });
        }
        return Ok((bytes, fds));
    }
}

/// Closes the fds in every `SCM_RIGHTS` header of a control buffer that nix
/// refuses to walk because it was truncated (`MSG_CTRUNC`): the kernel
/// installed as many fds as fitted and wrote a header counting them.
///
/// # Safety
/// `buf` was zeroed, then filled by one `recvmsg`, and no fd in it is owned
/// elsewhere.
unsafe fn close_rights(buf: &[u8]) {
    let header = size_of::<libc::cmsghdr>();
    // SAFETY: CMSG_LEN is pure arithmetic.
    let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
    let align = size_of::<usize>();
    let mut offset = 0;
    while offset + header <= buf.len() {
        // SAFETY: in bounds (checked above); read_unaligned needs no alignment.
        let hdr: libc::cmsghdr = unsafe { ptr::read_unaligned(buf[offset..].as_ptr().cast()) };
        let len = hdr.cmsg_len as usize;
        // The zeroed tail ends the walk (len 0).
        if len < data_offset || offset + len > buf.len() {
            break;
        }
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            for raw in buf[offset + data_offset..offset + len].chunks_exact(size_of::<RawFd>()) {
                let fd =
                    RawFd::from_ne_bytes(raw.try_into().expect("chunks_exact gives whole fds"));
                // SAFETY: the kernel installed this fd for us and nobody owns it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        offset += len.div_ceil(align) * align;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;

    fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
    }

    /// A listener passed over a socketpair accepts connections made to the
    /// original's address; the copy is close-on-exec.
    #[test]
    fn passes_a_listener() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");

        let sent = send(a.as_fd(), b"L", &[listener.as_fd()]).expect("send");
        assert_eq!(sent, 1);
        drop(listener);

        let mut buf = [0u8; 16];
        let (n, mut fds) = recv(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((&buf[..n], fds.len()), (&b"L"[..], 1));
        let fd = fds.pop().expect("one fd");
        assert!(is_cloexec(fd.as_fd()));

        let received = TcpListener::from(fd);
        assert_eq!(received.local_addr().expect("addr"), addr);
        let mut client = TcpStream::connect(addr).expect("connect");
        let (mut server, _) = received.accept().expect("accept on the received copy");
        client.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
    }

    /// Several fds in one message arrive in order; plain bytes bring none.
    #[test]
    fn several_fds_and_none() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = listeners.iter().map(AsFd::as_fd).collect();
        send(a.as_fd(), b"three", &borrowed).expect("send");

        let mut buf = [0u8; 16];
        let (n, fds) = recv(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(n, 5);
        for (fd, original) in fds.into_iter().zip(&listeners) {
            let copy = TcpListener::from(fd);
            assert_eq!(copy.local_addr().ok(), original.local_addr().ok());
        }

        send(a.as_fd(), b"none", &[]).expect("send");
        let (n, fds) = recv(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((n, fds.len()), (4, 0));
    }

    /// More than `MAX_FDS` fds: the receiver fails with `TooManyFds` and
    /// every copy that arrived is closed (the peer of the passed socket sees
    /// EOF once the sender drops its own).
    #[test]
    fn too_many_fds_are_closed() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (passed, mut watch) = UnixStream::pair().expect("socketpair");
        let copies = [passed.as_fd(); MAX_FDS + 4];
        // `send` refuses as well, so go round it to play a misbehaving peer.
        let raw: Vec<RawFd> = copies.iter().map(AsRawFd::as_raw_fd).collect();
        let iov = [IoSlice::new(b"x")];
        socket::sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        drop(passed);

        let mut buf = [0u8; 16];
        assert!(matches!(
            recv(b.as_fd(), &mut buf),
            Err(ProtoError::TooManyFds { max: MAX_FDS })
        ));
        watch
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        assert_eq!(watch.read(&mut byte).expect("EOF, not a timeout"), 0);

        assert!(matches!(
            send(a.as_fd(), b"x", &[a.as_fd(); MAX_FDS + 1]),
            Err(ProtoError::TooManyFds { .. })
        ));
    }

    /// A non-blocking socket with nothing to read reports `WouldBlock`.
    #[test]
    fn would_block() {
        let (_a, b) = UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let err = recv(b.as_fd(), &mut [0u8; 4]).expect_err("nothing to read");
        assert!(
            matches!(&err, ProtoError::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock),
            "{err:?}"
        );
    }

    /// End of stream is 0 bytes.
    #[test]
    fn eof() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(a);
        let (n, fds) = recv(b.as_fd(), &mut [0u8; 4]).expect("eof");
        assert_eq!((n, fds.len()), (0, 0));
    }
}
