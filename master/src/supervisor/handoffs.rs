//! Gateway connections sent to a worker and not yet acknowledged.
//!
//! A worker can die with an `Adopt` still unread in its control socket (a
//! `sendmsg` succeeds until the last of its threads is gone), and the socket
//! inside that frame dies with it. So the master keeps its own reference to
//! each handed connection until the worker answers `Adopted` (shared with
//! the sender: keeping it costs no `dup` and no `close` on the connection's
//! path), and gives the unanswered ones to the next worker — those nothing
//! was read from or written to yet (see [`untouched`]), so the client sees
//! only a delay. The worker answers off the connection's path, after the
//! session started, so one it had begun to serve is closed rather than
//! served twice.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

/// More unanswered handoffs than this (a hung worker under a flood) are sent
/// without a kept copy, so a stuck worker cannot pin the master's fds.
pub const MAX_IN_FLIGHT: usize = 512;

/// A connection the gateway accepted for an instance.
#[derive(Debug)]
pub struct Handed {
    pub stream: Arc<TcpStream>,
    pub client: String,
    pub peer: SocketAddr,
}

/// Unanswered handoffs of the current worker, by `Adopt` seq.
#[derive(Debug, Default)]
pub struct InFlight {
    last_seq: u64,
    open: BTreeMap<u64, Handed>,
}

impl InFlight {
    /// Keeps `stream` open until [`ack`](Self::ack) of the returned seq; 0
    /// when nothing is kept (full).
    pub fn track(&mut self, stream: &Arc<TcpStream>, client: &str, peer: SocketAddr) -> u64 {
        if self.open.len() >= MAX_IN_FLIGHT {
            return 0;
        }
        self.last_seq += 1;
        self.open.insert(
            self.last_seq,
            Handed {
                stream: Arc::clone(stream),
                client: client.to_owned(),
                peer,
            },
        );
        self.last_seq
    }

    /// The worker took `seq` (or the send failed): drop the copy. False when
    /// it is not held any more.
    pub fn ack(&mut self, seq: u64) -> bool {
        self.open.remove(&seq).is_some()
    }

    /// The worker is gone: the handoffs it never answered and never
    /// touched, oldest first, and how many it had begun to serve (dropped
    /// here, which closes them: their bytes went with the worker).
    pub fn take_unanswered(&mut self) -> (Vec<Handed>, usize) {
        let (fresh, begun): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_values()
            .partition(|h| untouched(&h.stream));
        (fresh, begun.len())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

/// Whether no byte was read from or written to `stream` since it was
/// accepted, and its sending side is still open.
///
/// Compares what the kernel received with what is still unread, reading the
/// unread count first: bytes arriving in between can only make the
/// connection look touched (closed, never served twice).
pub fn untouched(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer given.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } != 0 {
        return false;
    }
    // SAFETY: tcp_info is plain integers, so all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if got != 0 || (len as usize) < std::mem::size_of::<libc::tcp_info>() {
        return false;
    }
    // linux/tcp_states.h; libc does not export them.
    const TCP_ESTABLISHED: u8 = 1;
    const TCP_CLOSE_WAIT: u8 = 8;
    let open = matches!(info.tcpi_state, TCP_ESTABLISHED | TCP_CLOSE_WAIT);
    // The client's FIN, once received, counts as one byte received.
    let fin = u64::from(info.tcpi_state == TCP_CLOSE_WAIT);
    let read_nothing = u64::try_from(unread).is_ok_and(|u| info.tcpi_bytes_received == u + fin);
    let wrote_nothing = info.tcpi_data_segs_out == 0 && info.tcpi_notsent_bytes == 0;
    open && read_nothing && wrote_nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    /// An answered handoff is closed once the sender lets go too; an
    /// unanswered one survives the sender letting go and still carries the
    /// client's bytes.
    #[test]
    fn unanswered_handoffs_keep_the_connection() {
        let mut f = InFlight::default();
        let (mut c1, s1) = pair();
        let (mut c2, s2) = pair();
        let (s1, s2) = (Arc::new(s1), Arc::new(s2));
        let a = f.track(&s1, "one", PEER);
        let b = f.track(&s2, "two", PEER);
        assert!(a != 0 && b != 0 && a != b);
        drop((s1, s2));
        assert!(f.ack(b));
        assert!(!f.ack(b), "a second answer finds nothing");
        c2.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(c2.read(&mut [0u8; 1]).expect("read"), 0, "closed");
        c1.write_all(b"hello").expect("write");
        let (left, begun) = f.take_unanswered();
        assert_eq!((left.len(), begun), (1, 0));
        assert_eq!(left[0].client, "one");
        let mut buf = [0u8; 5];
        (&*left[0].stream).read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        assert_eq!(f.len(), 0);
    }

    /// Past the bound nothing is kept, and seq 0 asks for no answer.
    #[test]
    fn bounded() {
        let mut f = InFlight::default();
        let (_c, s) = pair();
        let s = Arc::new(s);
        for _ in 0..MAX_IN_FLIGHT {
            assert_ne!(f.track(&s, "x", PEER), 0);
        }
        assert_eq!(f.track(&s, "x", PEER), 0);
        assert_eq!(f.len(), MAX_IN_FLIGHT);
    }

    /// A connection counts as touched once a byte was read from it or
    /// written to it, or its sending side was shut; unread bytes alone do not.
    #[test]
    fn touched_connections_are_not_handed_again() {
        use std::net::Shutdown;
        let (mut c, s) = pair();
        assert!(untouched(&s), "fresh");
        c.write_all(b"hello").expect("write");
        wait_readable(&s, 5);
        assert!(untouched(&s), "unread bytes only");
        let mut one = [0u8; 1];
        (&s).read_exact(&mut one).expect("read");
        assert!(!untouched(&s), "one byte read");

        let (_c, s) = pair();
        (&s).write_all(b"x").expect("write");
        assert!(!untouched(&s), "one byte written");

        let (_c, s) = pair();
        s.shutdown(Shutdown::Write).expect("shutdown");
        assert!(!untouched(&s), "sending side shut");

        let (mut c, s) = pair();
        c.write_all(b"bye").expect("write");
        drop(c);
        wait_readable(&s, 0);
        assert!(
            untouched(&s),
            "the client sent and closed its side, nothing read"
        );
        let mut three = [0u8; 3];
        (&s).read_exact(&mut three).expect("read");
        assert!(!untouched(&s), "read after the client closed");

        let mut f = InFlight::default();
        let (_c1, s1) = pair();
        let (_c2, s2) = pair();
        let (s1, s2) = (Arc::new(s1), Arc::new(s2));
        f.track(&s1, "fresh", PEER);
        f.track(&s2, "begun", PEER);
        (&*s2).write_all(b"x").expect("write");
        let (left, begun) = f.take_unanswered();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].client, "fresh");
        assert_eq!(begun, 1);
    }

    /// Waits (bounded) until `s` has `n` unread bytes, or EOF for 0.
    fn wait_readable(s: &TcpStream, n: usize) {
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        let got = s.peek(&mut buf).expect("peek");
        if n > 0 && got < n {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while s.peek(&mut buf).expect("peek") < n {
                assert!(std::time::Instant::now() < deadline, "bytes never arrived");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}
