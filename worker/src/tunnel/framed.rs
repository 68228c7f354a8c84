//! A TCP session on a pool link, framed so that the link can carry the next
//! session when this one ends cleanly (a TLS link then costs no new
//! handshake, a plain one no new connection).
//!
//! After the session header each direction of the link carries frames, each
//! a 4-byte big-endian tag and what it announces:
//! - `1..=MAX_FRAME`: that many bytes of the stream;
//! - [`EOF`]: the sender's side of the stream ended (a half-close); nothing
//!   more of this session follows in that direction;
//! - [`RAW`]: the rest of this direction is the stream's bytes as they are,
//!   up to the link's own end. A plain link turns raw on the first read that
//!   fills the small buffer (a bulk transfer), so bulk bytes move by
//!   `splice(2)` as on a single-end relay; the link then carries no other
//!   session.
//!
//! A session whose two directions both ended with [`EOF`] leaves the link
//! idle again: the entrance puts it back in its pool, the exit waits for the
//! next header. Any error closes the link, and the other end, finding the
//! link closed in the middle of a session, closes its own socket.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::limits::RateLimiter;
use super::link::Link;
use super::relay::{self, Activity, Counters, Pipe, RelayOpts};

/// Tag: this direction of the session ended.
pub const EOF: u32 = 0;
/// Tag: the rest of this direction is unframed, up to the link's end.
pub const RAW: u32 = u32::MAX;
/// First buffer per direction of a session that does not splice (TLS, or
/// `rate`); grown to `relay::COPY_BUF` once a read fills it.
const START_BUF: usize = 4096;
/// Largest data frame a receiver accepts.
pub const MAX_FRAME: u32 = 1 << 20;

/// How one direction of a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// With an [`EOF`] frame: the link may carry another session.
    Framed,
    /// Raw up to the link's end: the link is spent.
    Raw,
}

/// Relays `local` (user or target) and a session on `link` until both
/// directions end. `pending` holds bytes already read from the link (the
/// start of this session) and, on return, those read past its end (the start
/// of the next). `Ok(true)`: the link is idle and may carry another session.
pub async fn relay(
    mut local: TcpStream,
    link: &mut Link,
    pending: &mut Vec<u8>,
    counters: Counters<'_>,
    opts: &RelayOpts,
) -> io::Result<bool> {
    let activity = Activity::new();
    let (rx_rate, tx_rate) = match &opts.rate {
        Some((rx, tx)) => (Some(&**rx), Some(&**tx)),
        None => (None, None),
    };
    // Raw (spliced) bulk only where nothing needs to see the bytes.
    let may_raw = opts.rate.is_none();
    let work = async {
        let (lr, lw) = local.split();
        let ends = match link {
            Link::Plain(tcp) => {
                let (tr, tw) = tcp.split();
                let up = send(lr, tw, may_raw, counters.rx, rx_rate, &activity);
                let down = receive(tr, lw, pending, counters.tx, tx_rate, &activity);
                tokio::try_join!(up, down)?
            }
            tls => {
                let (tr, tw) = tokio::io::split(tls);
                let up = send(lr, tw, false, counters.rx, rx_rate, &activity);
                let down = receive(tr, lw, pending, counters.tx, tx_rate, &activity);
                tokio::try_join!(up, down)?
            }
        };
        Ok(ends == (End::Framed, End::Framed))
    };
    relay::until_idle(work, &activity, opts.read_timeout).await
}

/// The receiving half alone, over any streams (no splice): what the link
/// delivers for one session. `Ok(true)` when it ended with [`EOF`] (and
/// `pending` then holds what followed), `Ok(false)` after [`RAW`]. For the
/// fuzz target.
pub async fn receive_any(
    src: impl AsyncRead + Unpin,
    dst: impl AsyncWrite + Unpin,
    pending: &mut Vec<u8>,
) -> io::Result<bool> {
    let count = AtomicU64::new(0);
    let end = receive(
        NoSplice(src),
        NoSplice(dst),
        pending,
        &count,
        None,
        &Activity::new(),
    )
    .await?;
    Ok(end == End::Framed)
}

/// A stream with no socket under it.
struct NoSplice<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for NoSplice<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoSplice<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<T> Socket for NoSplice<T> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// The socket under a half, where `splice` can reach it.
trait Socket {
    fn socket(&self) -> Option<&TcpStream>;
}

impl Socket for tokio::net::tcp::ReadHalf<'_> {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl Socket for tokio::net::tcp::WriteHalf<'_> {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T> Socket for tokio::io::ReadHalf<T> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl<T> Socket for tokio::io::WriteHalf<T> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// Local → link: frames until the local side's EOF, or raw from the first
/// read that fills the small buffer when `may_raw` and both are sockets.
async fn send<R, W>(
    mut src: R,
    mut dst: W,
    may_raw: bool,
    count: &AtomicU64,
    rate: Option<&RateLimiter>,
    act: &Activity,
) -> io::Result<End>
where
    R: AsyncRead + Socket + Unpin,
    W: AsyncWrite + Socket + Unpin,
{
    let may_raw = may_raw && src.socket().is_some() && dst.socket().is_some();
    // The tag goes in front of the data: one write per frame, and a whole
    // frame fills TLS records exactly. Frames that cannot turn raw start
    // small (most sessions are a few short messages) and grow to the copy
    // buffer once a read fills them.
    let mut room = if may_raw {
        relay::SMALL_BUF
    } else {
        START_BUF - 4
    };
    let mut buf = Vec::with_capacity(4 + room);
    loop {
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        let n = src.read_buf(&mut buf).await?;
        if n == 0 {
            dst.write_all(&EOF.to_be_bytes()).await?;
            dst.flush().await?;
            return Ok(End::Framed);
        }
        if let Some(rate) = rate {
            rate.take(n).await;
        }
        let raw = may_raw && n >= room;
        let tag = if raw { RAW } else { n as u32 };
        buf[..4].copy_from_slice(&tag.to_be_bytes());
        dst.write_all(&buf).await?;
        dst.flush().await?;
        count.fetch_add(n as u64, Relaxed);
        act.touch();
        if n < relay::SMALL_BUF {
            crate::spin::message();
        }
        if !may_raw && n >= room && room < relay::COPY_BUF - 4 {
            room = relay::COPY_BUF - 4;
            buf = Vec::with_capacity(4 + room);
        }
        if raw {
            drop(buf);
            let (Some(src), Some(dst)) = (src.socket(), dst.socket()) else {
                unreachable!("may_raw checked both sockets");
            };
            relay::splice_half(src, dst, &Pipe::new()?, count, act).await?;
            return Ok(End::Raw);
        }
    }
}

/// Link → local: delivers frames until [`EOF`] (then shuts the local write
/// side) or [`RAW`] (then relays up to the link's end).
async fn receive<R, W>(
    mut src: R,
    mut dst: W,
    pending: &mut Vec<u8>,
    count: &AtomicU64,
    rate: Option<&RateLimiter>,
    act: &Activity,
) -> io::Result<End>
where
    R: AsyncRead + Socket + Unpin,
    W: AsyncWrite + Socket + Unpin,
{
    // A plain socket reads into spare capacity as it is. A TLS reader zeroes
    // whatever part of a buffer is not yet initialised on every read, which
    // for spare `Vec` capacity is all of it: zeroed once instead, starting
    // small (zeroing the copy buffer for every session cost a tenth of a
    // busy entrance's time) and grown once a read fills it. On a plain link
    // bulk turns raw, so frames are small (and any frame may be delivered
    // in pieces).
    let plain = src.socket().is_some();
    let size = if plain { relay::SMALL_BUF } else { START_BUF };
    let mut buf = Vec::with_capacity(size.max(pending.len()));
    buf.extend_from_slice(pending);
    if !plain {
        buf.resize(buf.capacity(), 0);
    }
    let (mut pos, mut end) = (0, pending.len());
    pending.clear();
    // Bytes of the current data frame not yet delivered.
    let mut frame_left = 0usize;
    loop {
        while pos < end {
            if frame_left > 0 {
                let n = frame_left.min(end - pos);
                if let Some(rate) = rate {
                    rate.take(n).await;
                }
                dst.write_all(&buf[pos..pos + n]).await?;
                pos += n;
                frame_left -= n;
                count.fetch_add(n as u64, Relaxed);
                act.touch();
                continue;
            }
            if end - pos < 4 {
                break;
            }
            let tag = u32::from_be_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"));
            pos += 4;
            match tag {
                EOF => {
                    // A peer that already closed makes shutdown fail; moot then.
                    let _ = dst.shutdown().await;
                    pending.extend_from_slice(&buf[pos..end]);
                    return Ok(End::Framed);
                }
                RAW => {
                    let rest = &buf[pos..end];
                    dst.write_all(rest).await?;
                    count.fetch_add(rest.len() as u64, Relaxed);
                    drop(buf);
                    raw_to_end(src, dst, count, act).await?;
                    return Ok(End::Raw);
                }
                n if n <= MAX_FRAME => {
                    frame_left = n as usize;
                    if frame_left < relay::SMALL_BUF {
                        crate::spin::message();
                    }
                }
                n => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("tunnel frame of {n} bytes (most is {MAX_FRAME})"),
                    ));
                }
            }
        }
        // At most a partial tag is left: move it to the front.
        buf.copy_within(pos..end, 0);
        end -= pos;
        pos = 0;
        let n = if plain {
            buf.truncate(end);
            src.read_buf(&mut buf).await?
        } else {
            src.read(&mut buf[end..]).await?
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tunnel link closed in the middle of a session",
            ));
        }
        end += n;
        if !plain && end == buf.len() && buf.len() < relay::COPY_BUF {
            buf.resize(relay::COPY_BUF, 0);
        }
    }
}

/// The raw rest of a direction: spliced between sockets, copied otherwise;
/// the link's end becomes a write shutdown of `dst`.
async fn raw_to_end<R, W>(
    mut src: R,
    mut dst: W,
    count: &AtomicU64,
    act: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Socket + Unpin,
    W: AsyncWrite + Socket + Unpin,
{
    if let (Some(s), Some(d)) = (src.socket(), dst.socket()) {
        return relay::splice_half(s, d, &Pipe::new()?, count, act).await;
    }
    relay::copy_half(&mut src, &mut dst, count, None, act).await
}

/// Reads `pending` first, then `inner`: a link between sessions, with the
/// bytes of the next session already read.
pub struct Prefixed<'a, R> {
    pub pending: &'a mut Vec<u8>,
    pub inner: &'a mut R,
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            return Pin::new(&mut *this.inner).poll_read(cx, buf);
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncWrite + Unpin> AsyncWrite for Prefixed<'_, R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::tcp_pair;
    use super::*;

    const OPTS: RelayOpts = RelayOpts {
        read_timeout: Duration::ZERO,
        rate: None,
    };

    /// One session between a user and a target over the two ends of `link`,
    /// as entrance and exit run it: `up` goes user → target, then a reply
    /// after the half-close. Returns whether each end may reuse the link.
    async fn session(
        entrance: &mut Link,
        exit: &mut Link,
        up: &[u8],
        reply: &[u8],
    ) -> (bool, bool) {
        let (mut user, u_in) = tcp_pair().await;
        let (t_out, mut target) = tcp_pair().await;
        let counts = [
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ];
        let (mut after_in, mut after_out) = (Vec::new(), Vec::new());
        let e = relay(
            u_in,
            entrance,
            &mut after_in,
            Counters {
                rx: &counts[0],
                tx: &counts[1],
            },
            &OPTS,
        );
        let x = relay(
            t_out,
            exit,
            &mut after_out,
            Counters {
                rx: &counts[2],
                tx: &counts[3],
            },
            &OPTS,
        );
        let peers = async {
            user.write_all(up).await.unwrap();
            user.shutdown().await.unwrap();
            let mut got = Vec::new();
            target.read_to_end(&mut got).await.unwrap();
            assert!(got == up, "target got {} bytes of {}", got.len(), up.len());
            target.write_all(reply).await.unwrap();
            target.shutdown().await.unwrap();
            let mut back = Vec::new();
            user.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, reply);
        };
        let (e, x, ()) = tokio::join!(e, x, peers);
        let (up_n, reply_n) = (up.len() as u64, reply.len() as u64);
        let got: Vec<u64> = counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(
            got,
            [up_n, reply_n, reply_n, up_n],
            "entrance rx/tx, exit rx/tx"
        );
        assert!(after_in.is_empty() && after_out.is_empty());
        (e.unwrap(), x.unwrap())
    }

    /// Short sessions end with the link idle, and the next one runs on it.
    #[tokio::test]
    async fn short_sessions_share_one_link() {
        let (a, b) = tcp_pair().await;
        let (mut entrance, mut exit) = (Link::Plain(a), Link::Plain(b));
        for round in 0..3u8 {
            let up = vec![round; 100 + usize::from(round)];
            let ends = session(&mut entrance, &mut exit, &up, b"reply after half-close").await;
            assert_eq!(ends, (true, true), "round {round}");
        }
        assert!(
            entrance.is_alive() && exit.is_alive(),
            "nothing left on the link"
        );
    }

    /// A bulk direction turns raw (spliced); every byte arrives and the link
    /// is spent.
    #[tokio::test]
    async fn bulk_turns_raw_and_spends_the_link() {
        let (a, b) = tcp_pair().await;
        let (mut entrance, mut exit) = (Link::Plain(a), Link::Plain(b));
        let bulk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let ends = session(&mut entrance, &mut exit, &bulk, b"ok").await;
        assert_eq!(ends, (false, false));
    }

    /// Anything short of a bulk read stays framed, in either direction.
    #[tokio::test]
    async fn small_frames_carry_any_length_exactly() {
        let (a, b) = tcp_pair().await;
        let (mut entrance, mut exit) = (Link::Plain(a), Link::Plain(b));
        // Below the small buffer: framed both ways.
        let up: Vec<u8> = (0..relay::SMALL_BUF as u32 - 1).map(|i| i as u8).collect();
        assert_eq!(
            session(&mut entrance, &mut exit, &up, &[]).await,
            (true, true)
        );
        assert_eq!(
            session(&mut entrance, &mut exit, &[], &up).await,
            (true, true)
        );
    }

    /// Bytes after the end of a session stay for the next one; a truncated
    /// session and an oversized frame are errors.
    #[tokio::test]
    async fn receiver_keeps_what_follows_and_refuses_junk() {
        for (wire, want) in [
            (&b"\0\0\0\x05hello\0\0\0\0NEXT"[..], Ok(b"NEXT".to_vec())),
            (&b"\0\0\0\x05hel"[..], Err(io::ErrorKind::UnexpectedEof)),
            (
                &[0x00, 0x10, 0x00, 0x01][..],
                Err(io::ErrorKind::InvalidData),
            ),
        ] {
            let (mut peer, b) = tcp_pair().await;
            let mut link = Link::Plain(b);
            let (t_out, mut target) = tcp_pair().await;
            let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
            let mut after = Vec::new();
            let x = relay(
                t_out,
                &mut link,
                &mut after,
                Counters { rx: &rx, tx: &tx },
                &OPTS,
            );
            let peer_side = async {
                peer.write_all(wire).await.unwrap();
                target.shutdown().await.unwrap();
                if want.is_err() {
                    peer.shutdown().await.unwrap();
                }
                let mut got = Vec::new();
                let _ = target.read_to_end(&mut got).await;
                got
            };
            let (res, got) = tokio::join!(x, peer_side);
            match want {
                Ok(next) => {
                    assert!(res.unwrap(), "link reusable");
                    assert_eq!(got, b"hello");
                    assert_eq!(after, next);
                    assert_eq!(tx.load(Relaxed), 5);
                }
                Err(kind) => assert_eq!(res.unwrap_err().kind(), kind),
            }
        }
    }
}
