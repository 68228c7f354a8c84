//! [`ControlChannel`]: frames and fds over the master–worker socketpair.
//!
//! 1. The master makes the pair with [`socketpair`] before spawning; the
//!    worker inherits its end as fd 3 and wraps it with
//!    [`ControlChannel::from_fd`].
//! 2. [`ControlChannel::send`] encodes one frame and writes it with its fds
//!    attached to the frame's first byte ([`fdpass::send`]).
//! 3. [`ControlChannel::recv`] reads into a buffer, keeps the fds of each
//!    read, and returns the next whole frame with the fds that belong to it.
//!
//! **Which frame owns received fds.** On Linux a stream read returns the fds
//! of at most one `sendmsg` and ends inside the bytes of that `sendmsg` (the
//! kernel stops reading once fds are attached), and
//! [`send`](ControlSender::send) attaches fds to the first byte of its frame
//! and never puts two frames in one `sendmsg`. So the last byte of a read
//! that brought fds belongs to the frame that named them: fds go to the frame
//! containing that byte (test: `fds_attach_to_their_frame`). The count must equal the message's
//! [`Message::fd_count`], else [`ProtoError::FdCount`] (and the fds are
//! closed). A peer cannot pile up fds: more than [`MAX_FDS`] waiting for an
//! unfinished frame is [`ProtoError::TooManyFds`].
//!
//! **Sharing.** `send` takes `&self`: writes go through a tokio `Mutex`, so
//! frames from concurrent tasks never interleave. [`ControlChannel::split`]
//! (or [`ControlChannel::sender`]) gives a cloneable [`ControlSender`] to hand
//! to other tasks while one task owns the [`ControlReceiver`].
//!
//! **Errors end the channel.** An invalid header ([`ProtoError::FrameTooLarge`],
//! [`ProtoError::EmptyFrame`]) is not consumed, so every later `recv` fails
//! the same way; a whole frame with a bad body is consumed, and the caller
//! decides (DESIGN §3: a bad frame ends that worker). Nothing here panics on
//! peer data or allocates more than [`crate::MAX_FRAME`] plus one read.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, sockopt};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use crate::fdpass::{self, MAX_FDS};
use crate::message::{Message, ToMaster, ToWorker};
use crate::{ProtoError, frame};

/// Bytes asked of the kernel per read. Frames are mostly tens of bytes; a
/// bigger one is assembled over several reads. Kept small because the
/// master holds one per worker (64 KiB × 200 workers was 12.8 MiB of heap).
const READ_CHUNK: usize = 8 * 1024;

/// The master's end: sends [`ToWorker`], receives [`ToMaster`].
pub type MasterChannel = ControlChannel<ToWorker, ToMaster>;
/// The worker's end: sends [`ToMaster`], receives [`ToWorker`].
pub type WorkerChannel = ControlChannel<ToMaster, ToWorker>;

/// A connected pair of close-on-exec Unix stream sockets: one end for the
/// master, the other for the worker (which the spawner moves to fd 3; `dup2`
/// clears close-on-exec on the copy).
pub fn socketpair() -> Result<(StdUnixStream, StdUnixStream), ProtoError> {
    let (a, b) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| ProtoError::io("creating the control socketpair", errno.into()))?;
    Ok((StdUnixStream::from(a), StdUnixStream::from(b)))
}

/// One end of the control socket: sends `Out`, receives `In`.
#[derive(Debug)]
pub struct ControlChannel<Out, In> {
    sender: ControlSender<Out>,
    receiver: ControlReceiver<In>,
}

/// The socket, registered with the runtime for reading only.
///
/// Registered for writing too, every read by the peer (which frees send
/// space) would wake this side's runtime: a wake-up of the master per
/// gateway handoff, on the CPU the worker needs next. Sends are direct
/// non-blocking writes; only a full socket makes one wait, through a
/// temporary writable registration ([`wait_writable`]).
type Socket = AsyncFd<StdUnixStream>;

impl<Out: Message, In: Message> ControlChannel<Out, In> {
    fn new(stream: Socket) -> Self {
        let stream = Arc::new(stream);
        Self {
            sender: ControlSender {
                stream: Arc::clone(&stream),
                pending: Arc::new(Mutex::new(Pending::default())),
                _out: PhantomData,
            },
            receiver: ControlReceiver {
                stream,
                buf: Vec::new(),
                chunk: vec![0; READ_CHUNK].into_boxed_slice(),
                base: 0,
                fds: VecDeque::new(),
                _in: PhantomData,
            },
        }
    }

    /// Wraps a std stream (one end of [`socketpair`]); makes it
    /// non-blocking. Must run inside a tokio runtime.
    pub fn from_std(stream: StdUnixStream) -> Result<Self, ProtoError> {
        stream
            .set_nonblocking(true)
            .map_err(|err| ProtoError::io("making the control socket non-blocking", err))?;
        // SAFETY: the AsyncFd owns the stream, so its fd stays open and the
        // same for as long as it is registered.
        let stream = unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }
            .map_err(|err| ProtoError::io("registering the control socket", err.into()))?;
        Ok(Self::new(stream))
    }

    /// Wraps an inherited fd (the worker's fd 3) after checking that it is
    /// a stream socket. Must run inside a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ProtoError> {
        let kind = nix::sys::socket::getsockopt(&fd, sockopt::SockType).map_err(|errno| {
            ProtoError::io(
                "checking the inherited control fd (not started by drover?)",
                errno.into(),
            )
        })?;
        if kind != SockType::Stream {
            return Err(ProtoError::io(
                "checking the inherited control fd (not started by drover?)",
                io::Error::other(format!("not a stream socket but {kind:?}")),
            ));
        }
        Self::from_std(StdUnixStream::from(fd))
    }

    /// Sends one message with its fds; see [`ControlSender::send`].
    pub async fn send(&self, msg: &Out, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        self.sender.send(msg, fds).await
    }

    /// Receives the next message; see [`ControlReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<(In, Vec<OwnedFd>)>, ProtoError> {
        self.receiver.recv().await
    }

    /// A sender for another task (shares the write lock).
    pub fn sender(&self) -> ControlSender<Out> {
        self.sender.clone()
    }

    /// Splits into a cloneable sender and the receiver.
    pub fn split(self) -> (ControlSender<Out>, ControlReceiver<In>) {
        (self.sender, self.receiver)
    }
}

impl<Out, In> AsFd for ControlChannel<Out, In> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sender.stream.get_ref().as_fd()
    }
}

/// A frame whose send began but may not have finished.
#[derive(Debug, Default)]
struct Pending {
    frame: Vec<u8>,
    written: usize,
}

/// The sending side; clone it freely, all clones share one write lock.
#[derive(Debug)]
pub struct ControlSender<Out> {
    stream: Arc<Socket>,
    /// Behind the lock so a frame a cancelled `send` started is finished by
    /// the next one instead of being cut into by it.
    pending: Arc<Mutex<Pending>>,
    _out: PhantomData<fn(Out)>,
}

impl<Out> Clone for ControlSender<Out> {
    fn clone(&self) -> Self {
        Self {
            stream: Arc::clone(&self.stream),
            pending: Arc::clone(&self.pending),
            _out: PhantomData,
        }
    }
}

impl<Out: Message> ControlSender<Out> {
    /// Sends one message; `fds` must number exactly `msg.fd_count()` (at most
    /// [`MAX_FDS`]) and are duplicated into the peer, so the caller keeps its
    /// own.
    ///
    /// Cancel-safe in this sense: dropped before its first byte went out, it
    /// sent nothing; dropped later, the next `send` writes the rest of the
    /// frame (whose fds already went) before its own.
    pub async fn send(&self, msg: &Out, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        if fds.len() != msg.fd_count() {
            return Err(ProtoError::FdCount {
                ty: msg.kind(),
                expected: msg.fd_count(),
                got: fds.len(),
            });
        }
        if fds.len() > MAX_FDS {
            return Err(ProtoError::TooManyFds { max: MAX_FDS });
        }
        let frame = frame::encode(msg)?;
        let mut pending = self.pending.lock().await;
        if pending.written > 0 {
            self.write(&mut pending, &[]).await?;
        }
        *pending = Pending { frame, written: 0 };
        self.write(&mut pending, fds).await
    }

    /// Writes the rest of `pending.frame`, the fds with its first byte.
    async fn write(&self, pending: &mut Pending, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        while pending.written < pending.frame.len() {
            let fds = if pending.written == 0 { fds } else { &[] };
            let rest = &pending.frame[pending.written..];
            let socket = self.stream.get_ref();
            let sent = match fdpass::send(socket.as_fd(), rest, fds) {
                Err(ProtoError::Io { source, .. })
                    if source.kind() == io::ErrorKind::WouldBlock =>
                {
                    wait_writable(socket).await.map_err(|err| {
                        ProtoError::io("waiting to send on the control socket", err)
                    })?;
                    continue;
                }
                other => other?,
            };
            if sent == 0 {
                return Err(ProtoError::io(
                    "sending to the control socket",
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            pending.written += sent;
        }
        *pending = Pending::default();
        Ok(())
    }
}

/// The receiving side; one task owns it.
#[derive(Debug)]
pub struct ControlReceiver<In> {
    stream: Arc<Socket>,
    /// Received bytes not yet returned as messages; `buf[0]` is stream
    /// offset `base`.
    buf: Vec<u8>,
    /// Scratch for one read.
    chunk: Box<[u8]>,
    base: u64,
    /// Fds from reads, each with the stream offset of the last byte of the
    /// read that brought it, oldest first.
    fds: VecDeque<(u64, OwnedFd)>,
    _in: PhantomData<fn() -> In>,
}

impl<In: Message> ControlReceiver<In> {
    /// The next message and its fds; `Ok(None)` when the peer closed the
    /// socket between frames.
    ///
    /// Cancel-safe: bytes and fds are stored the moment they are read, so a
    /// `select!` may drop this future and call again.
    pub async fn recv(&mut self) -> Result<Option<(In, Vec<OwnedFd>)>, ProtoError> {
        loop {
            if let Some(len) = frame::check(&self.buf)? {
                return self.take(len).map(Some);
            }
            if self.fds.len() > MAX_FDS {
                self.fds.clear();
                return Err(ProtoError::TooManyFds { max: MAX_FDS });
            }
            let Self {
                stream,
                chunk,
                buf,
                base,
                fds: pending,
                ..
            } = self;
            let (n, fds) = stream
                .async_io(Interest::READABLE, |socket| {
                    would_block_to_io(fdpass::recv(socket.as_fd(), chunk))
                })
                .await
                .map_err(|err| ProtoError::io("waiting to receive on the control socket", err))??;
            if n == 0 {
                if buf.is_empty() {
                    return Ok(None);
                }
                pending.clear();
                return Err(ProtoError::Truncated { got: buf.len() });
            }
            buf.extend_from_slice(&chunk[..n]);
            let last = *base + buf.len() as u64 - 1;
            pending.extend(fds.into_iter().map(|fd| (last, fd)));
        }
    }

    /// Removes the first `len` buffered bytes (one whole frame) and decodes
    /// them with the fds that belong to them.
    fn take(&mut self, len: usize) -> Result<(In, Vec<OwnedFd>), ProtoError> {
        let end = self.base + len as u64;
        let mut fds = Vec::new();
        while self.fds.front().is_some_and(|(at, _)| *at < end) {
            fds.extend(self.fds.pop_front().map(|(_, fd)| fd));
        }
        let decoded = crate::message::from_json::<In>(&self.buf[frame::HEADER_LEN..len]);
        self.buf.drain(..len);
        self.base = end;
        // Bound the buffer after a large frame; at most MAX_FRAME + one read.
        if self.buf.capacity() > 2 * READ_CHUNK && self.buf.len() <= READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
        let msg = decoded?;
        if fds.len() != msg.fd_count() {
            return Err(ProtoError::FdCount {
                ty: msg.kind(),
                expected: msg.fd_count(),
                got: fds.len(),
            });
        }
        Ok((msg, fds))
    }
}

impl<In> AsFd for ControlReceiver<In> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.get_ref().as_fd()
    }
}

/// Waits until `socket` has send space, through a duplicate registered for
/// writing only while it waits (see [`Socket`]). Only a peer that stopped
/// reading fills the socket, so the extra syscalls are off every
/// normal path.
async fn wait_writable(socket: &StdUnixStream) -> io::Result<()> {
    // SAFETY: the AsyncFd owns the duplicate, so its fd stays open and the
    // same for as long as it is registered.
    let dup = unsafe { AsyncFd::register_with_interest(socket.try_clone()?, Interest::WRITABLE) }?;
    dup.writable().await?.retain_ready();
    Ok(())
}

/// Splits a [`fdpass`] result for `async_io`: `WouldBlock` goes out as the
/// `io::Error` that makes tokio wait for readiness, anything else stays inside.
fn would_block_to_io<T>(result: Result<T, ProtoError>) -> io::Result<Result<T, ProtoError>> {
    match result {
        Err(ProtoError::Io { source, .. }) if source.kind() == io::ErrorKind::WouldBlock => {
            Err(source)
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests;
