//! Gateway connections sent to a worker and not yet acknowledged.
//!
//! A worker can die with an `Adopt` still unread in its control socket (a
//! `sendmsg` succeeds until the last of its threads is gone), and the socket
//! inside that frame dies with it. So the master keeps a duplicate of each
//! handed connection until the worker answers `Adopted` — which it does
//! before touching the socket — and gives the unanswered ones to the next
//! worker. Nothing was read from them, so the client sees only a delay.

use std::collections::BTreeMap;
use std::net::TcpStream;

/// More unanswered handoffs than this (a hung worker under a flood) are sent
/// without a kept copy, so a stuck worker cannot pin the master's fds.
pub const MAX_IN_FLIGHT: usize = 512;

/// A connection the gateway accepted for an instance.
#[derive(Debug)]
pub struct Handed {
    pub stream: TcpStream,
    pub client: String,
}

/// Unanswered handoffs of the current worker, by `Adopt` seq.
#[derive(Debug, Default)]
pub struct InFlight {
    last_seq: u64,
    open: BTreeMap<u64, Handed>,
}

impl InFlight {
    /// Keeps a duplicate of `stream` until [`ack`](Self::ack) of the returned
    /// seq; 0 when nothing is kept (full, or the duplicate failed).
    pub fn track(&mut self, stream: &TcpStream, client: &str) -> u64 {
        if self.open.len() >= MAX_IN_FLIGHT {
            return 0;
        }
        let Ok(copy) = stream.try_clone() else {
            return 0;
        };
        self.last_seq += 1;
        self.open.insert(
            self.last_seq,
            Handed {
                stream: copy,
                client: client.to_owned(),
            },
        );
        self.last_seq
    }

    /// The worker took `seq` (or the send failed): drop the copy. False when
    /// it is not held any more.
    pub fn ack(&mut self, seq: u64) -> bool {
        self.open.remove(&seq).is_some()
    }

    /// The worker is gone: the handoffs it never answered, oldest first.
    pub fn take_unanswered(&mut self) -> Vec<Handed> {
        std::mem::take(&mut self.open).into_values().collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    /// An answered handoff is dropped; an unanswered one survives its
    /// original being closed and still carries the client's bytes.
    #[test]
    fn unanswered_handoffs_keep_the_connection() {
        let mut f = InFlight::default();
        let (mut c1, s1) = pair();
        let (_c2, s2) = pair();
        let a = f.track(&s1, "one");
        let b = f.track(&s2, "two");
        assert!(a != 0 && b != 0 && a != b);
        drop(s1);
        assert!(f.ack(b));
        assert!(!f.ack(b), "a second answer finds nothing");
        c1.write_all(b"hello").expect("write");
        let left = f.take_unanswered();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].client, "one");
        let mut buf = [0u8; 5];
        (&left[0].stream).read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        assert_eq!(f.len(), 0);
    }

    /// Past the bound nothing is kept, and seq 0 asks for no answer.
    #[test]
    fn bounded() {
        let mut f = InFlight::default();
        let (_c, s) = pair();
        for _ in 0..MAX_IN_FLIGHT {
            assert_ne!(f.track(&s, "x"), 0);
        }
        assert_eq!(f.track(&s, "x"), 0);
        assert_eq!(f.len(), MAX_IN_FLIGHT);
    }
}
