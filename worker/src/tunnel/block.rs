//! `block`: refuse SOCKS, HTTP or TLS on the entrance by peeking at the first
//! bytes, without consuming them.
//!
//! A protocol where the server speaks first sends nothing, so the peek gives
//! up after [`FIRST_BYTES_WAIT`] and lets the connection through.

use std::time::Duration;

use proto::spec::Block;
use tokio::net::TcpStream;

/// How long to wait for the user's first bytes before letting it through.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);
const PEEK: usize = 8;

/// The blocked protocol the connection starts with, if any.
pub async fn check(user: &TcpStream, block: Block) -> Option<&'static str> {
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
    let mut buf = [0u8; PEEK];
    loop {
        let n = match tokio::time::timeout_at(deadline, user.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return None,
        };
        if n == 0 {
            return None;
        }
        match classify(&buf[..n], block) {
            Verdict::Blocked(what) => return Some(what),
            Verdict::Allowed => return None,
            Verdict::NeedMore if n < PEEK && tokio::time::Instant::now() < deadline => {
                // peek returns at once while bytes are buffered; wait for more to arrive.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Verdict::NeedMore => return None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Blocked(&'static str),
    Allowed,
    NeedMore,
}

fn classify(b: &[u8], block: Block) -> Verdict {
    if block.socks && matches!(b[0], 4 | 5) {
        return Verdict::Blocked("SOCKS");
    }
    if block.tls && b[0] == 0x16 {
        if b.len() < 2 {
            return Verdict::NeedMore;
        }
        if b[1] == 3 {
            return Verdict::Blocked("TLS");
        }
    }
    if block.http && b[0].is_ascii_uppercase() {
        // An HTTP request line starts with an upper-case method and a space.
        let letters = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
        if letters < b.len() {
            if b[letters] == b' ' && (3..=7).contains(&letters) {
                return Verdict::Blocked("HTTP");
            }
        } else if letters < PEEK {
            return Verdict::NeedMore;
        }
    }
    Verdict::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each protocol is recognised only when blocked; others pass.
    #[test]
    fn classifies() {
        let all = Block {
            socks: true,
            http: true,
            tls: true,
        };
        assert_eq!(classify(b"GET / HT", all), Verdict::Blocked("HTTP"));
        assert_eq!(classify(b"OPTIONS ", all), Verdict::Blocked("HTTP"));
        assert_eq!(classify(b"GE", all), Verdict::NeedMore);
        assert_eq!(classify(b"\x05\x01\x00", all), Verdict::Blocked("SOCKS"));
        assert_eq!(classify(b"\x16\x03\x01", all), Verdict::Blocked("TLS"));
        assert_eq!(classify(b"SSH-2.0-", all), Verdict::Allowed);
        assert_eq!(classify(b"hello wo", all), Verdict::Allowed);
        let http_only = Block {
            http: true,
            ..Block::default()
        };
        assert_eq!(classify(b"\x05\x01\x00", http_only), Verdict::Allowed);
        assert_eq!(classify(b"GET / HT", Block::default()), Verdict::Allowed);
    }
}
