//! Moving bytes between a user and a target on a single-end entrance (the
//! tunnel's pool links are relayed by `framed`).
//!
//! 1. No `rate`: each direction starts by copying through a small buffer and
//!    switches to `splice(2)` through a pipe once a read fills that buffer (a
//!    bulk transfer). Short request/response traffic never makes a pipe:
//!    that saves 8 syscalls per connection and keeps the tenant's pipe
//!    budget for the transfers that use it.
//! 2. With `rate`: one 64 KiB buffer per direction, allocated once per
//!    session.
//!
//! Either way an EOF in one direction becomes a write shutdown on the other
//! socket (half-close preserved end to end), the session ends when both
//! directions have, and `read` closes a session idle in both directions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::limits::RateLimiter;

/// Bytes per splice call and pipe capacity.
const PIPE_SIZE: usize = 1 << 20;
/// Buffer per direction on the copying path.
pub(super) const COPY_BUF: usize = 64 * 1024;
/// Buffer per direction before a plain relay turns to splice; a read that
/// fills it marks the direction as bulk.
pub(super) const SMALL_BUF: usize = 16 * 1024;

/// How a relay is limited and what it counts.
#[derive(Clone)]
pub struct RelayOpts {
    /// Close after this long with no byte in either direction; zero = never.
    pub read_timeout: Duration,
    /// Shared (rx, tx) buckets when `rate` is set.
    pub rate: Option<(Arc<RateLimiter>, Arc<RateLimiter>)>,
}

/// Counters the relay moves: bytes read from and written to the local socket.
pub struct Counters<'a> {
    pub rx: &'a AtomicU64,
    pub tx: &'a AtomicU64,
}

/// Relays until both directions end (or the idle timeout fires).
pub async fn relay(
    mut local: TcpStream,
    mut remote: TcpStream,
    counters: Counters<'_>,
    opts: &RelayOpts,
) -> io::Result<()> {
    let activity = Activity::new();
    let work = async {
        match &opts.rate {
            None => plain_both(&mut local, &mut remote, &counters, &activity).await,
            Some(_) => copy_both(local, remote, &counters, opts, &activity).await,
        }
    };
    until_idle(work, &activity, opts.read_timeout).await
}

/// Runs `work` unless nothing moves for `limit` (zero: no limit), which is
/// a `TimedOut` error.
pub(super) async fn until_idle<T>(
    work: impl Future<Output = io::Result<T>>,
    activity: &Activity,
    limit: Duration,
) -> io::Result<T> {
    if limit.is_zero() {
        return work.await;
    }
    tokio::select! {
        res = work => res,
        () = activity.idle_for(limit) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout (read)"))
        }
    }
}

/// Last time a byte moved, for the `read` idle timeout.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    pub(super) async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

async fn plain_both(
    a: &mut TcpStream,
    b: &mut TcpStream,
    c: &Counters<'_>,
    act: &Activity,
) -> io::Result<()> {
    let (ar, aw) = a.split();
    let (br, bw) = b.split();
    tokio::try_join!(plain_half(ar, bw, c.rx, act), plain_half(br, aw, c.tx, act))?;
    Ok(())
}

/// Moves `src` → `dst` until EOF, then shuts `dst`'s write side: copies
/// while reads are small, splices from the first read that fills the buffer.
async fn plain_half(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    count: &AtomicU64,
    act: &Activity,
) -> io::Result<()> {
    // Spare capacity, filled by `read_buf` without zeroing it first.
    let mut buf = Vec::with_capacity(SMALL_BUF);
    loop {
        buf.clear();
        // Through tokio's reader: a short read clears readiness, so waiting
        // for the next message costs no EAGAIN call.
        let n = src.read_buf(&mut buf).await?;
        if n == 0 {
            shutdown_write(dst.as_ref());
            return Ok(());
        }
        dst.write_all(&buf).await?;
        count.fetch_add(n as u64, Relaxed);
        act.touch();
        if n < SMALL_BUF {
            crate::spin::message();
        } else {
            drop(buf);
            return splice_half(src.as_ref(), dst.as_ref(), &Pipe::new()?, count, act).await;
        }
    }
}

/// Moves `src` → `dst` through `pipe` until EOF, then shuts `dst`'s write side.
pub(super) async fn splice_half(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    count: &AtomicU64,
    act: &Activity,
) -> io::Result<()> {
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pipe.write_fd(), PIPE_SIZE)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            shutdown_write(dst);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read_fd(), dst.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        // Counted once delivered, so the figure is what the other socket got.
        count.fetch_add(n as u64, Relaxed);
        act.touch();
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain fds we own for the duration of the call; null offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn shutdown_write(s: &TcpStream) {
    // SAFETY: shutdown on a socket we own; an error (already closed) is moot.
    unsafe {
        libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
    }
}

/// A pipe for one splice direction, made per session and closed with it.
///
/// Not kept for reuse: Linux charges a pipe's capacity to its owner's uid
/// (`pipe-user-pages-soft`, 64 MiB), which every worker of a tenant shares.
/// Idle pipes kept by 200 workers used it up in a soak, and from then on
/// every new pipe got a single page: splice throughput collapsed.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub(super) fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills two fds on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: freshly created and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe moves more per call; the default 64 KiB is the fallback.
        // SAFETY: fcntl on our own fd.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(Self { read, write })
    }
    fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
    fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

async fn copy_both(
    local: TcpStream,
    remote: TcpStream,
    c: &Counters<'_>,
    opts: &RelayOpts,
    act: &Activity,
) -> io::Result<()> {
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    let (rx_rate, tx_rate) = match &opts.rate {
        Some((rx, tx)) => (Some(&**rx), Some(&**tx)),
        None => (None, None),
    };
    tokio::try_join!(
        copy_half(&mut lr, &mut rw, c.rx, rx_rate, act),
        copy_half(&mut rr, &mut lw, c.tx, tx_rate, act)
    )?;
    Ok(())
}

pub(super) async fn copy_half<R, W>(
    r: &mut R,
    w: &mut W,
    count: &AtomicU64,
    rate: Option<&RateLimiter>,
    act: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // A peer that already closed makes shutdown fail; the half-close is moot then.
            let _ = w.shutdown().await;
            return Ok(());
        }
        if let Some(rate) = rate {
            rate.take(n).await;
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        count.fetch_add(n as u64, Relaxed);
        act.touch();
        if n < SMALL_BUF {
            crate::spin::message();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::tcp_pair;
    use super::*;

    async fn run(rate: bool) {
        // user <-> (u_in | relay | t_out) <-> target
        let (mut user, u_in) = tcp_pair().await;
        let (t_out, mut target) = tcp_pair().await;
        let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
        let opts = RelayOpts {
            read_timeout: Duration::ZERO,
            rate: rate.then(|| (RateLimiter::new(1000), RateLimiter::new(1000))),
        };
        let relay = relay(u_in, t_out, Counters { rx: &rx, tx: &tx }, &opts);
        let peers = async {
            let payload = vec![7u8; 300_000];
            user.write_all(&payload).await.unwrap();
            user.shutdown().await.unwrap();
            let mut got = Vec::new();
            target.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), payload.len());
            target.write_all(b"reply after half-close").await.unwrap();
            target.shutdown().await.unwrap();
            let mut back = Vec::new();
            user.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"reply after half-close");
        };
        let (r, ()) = tokio::join!(relay, peers);
        r.unwrap();
        assert_eq!((rx.load(Relaxed), tx.load(Relaxed)), (300_000, 22));
    }

    /// Splice path: bytes arrive, half-close is carried, counters are exact.
    #[tokio::test]
    async fn splice_relay_half_close() {
        run(false).await;
    }

    /// A direction that starts small and turns bulk mid-stream switches to
    /// splice without losing or reordering a byte.
    #[tokio::test]
    async fn small_then_bulk_keeps_every_byte() {
        let (mut user, u_in) = tcp_pair().await;
        let (t_out, mut target) = tcp_pair().await;
        let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
        let opts = RelayOpts {
            read_timeout: Duration::ZERO,
            rate: None,
        };
        let relay = relay(u_in, t_out, Counters { rx: &rx, tx: &tx }, &opts);
        let bulk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let peers = async {
            for round in 0..3u8 {
                user.write_all(&[round; 10]).await.unwrap();
                let mut got = [0u8; 10];
                target.read_exact(&mut got).await.unwrap();
                assert_eq!(got, [round; 10]);
            }
            user.write_all(&bulk).await.unwrap();
            user.shutdown().await.unwrap();
            let mut got = Vec::new();
            target.read_to_end(&mut got).await.unwrap();
            assert!(got == bulk, "bulk bytes differ after the switch");
            target.shutdown().await.unwrap();
            let mut back = Vec::new();
            user.read_to_end(&mut back).await.unwrap();
            assert!(back.is_empty());
        };
        let (r, ()) = tokio::join!(relay, peers);
        r.unwrap();
        assert_eq!((rx.load(Relaxed), tx.load(Relaxed)), (30 + 1_000_000, 0));
    }

    /// Copy path (rate limited) behaves the same.
    #[tokio::test]
    async fn copy_relay_half_close() {
        run(true).await;
    }

    /// `read` closes a session idle in both directions.
    #[tokio::test]
    async fn idle_timeout_closes() {
        let (_user, u_in) = tcp_pair().await;
        let (t_out, _target) = tcp_pair().await;
        let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
        let opts = RelayOpts {
            read_timeout: Duration::from_millis(100),
            rate: None,
        };
        let err = relay(u_in, t_out, Counters { rx: &rx, tx: &tx }, &opts)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
