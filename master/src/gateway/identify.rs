//! Who is this client? Decided from the first bytes without consuming them
//! (`MSG_PEEK`): the `X-Client-Id` header, else the first `X-Forwarded-For`
//! address (HTTP/1.x), else the source of a PROXY v1/v2 header, else the
//! peer IP. The peek is bounded in size ([`PEEK_MAX`]) and time
//! ([`PEEK_DEADLINE`], per connection): a slow or silent client falls back to
//! what is known by then and stalls nobody else.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// Bytes looked at, at most.
pub const PEEK_MAX: usize = 8192;
/// How long one connection may take to show its headers.
pub const PEEK_DEADLINE: Duration = Duration::from_secs(3);

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// How the client was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    ClientId(String),
    ForwardedFor(String),
    Proxy(IpAddr),
    Peer(IpAddr),
}

impl Identity {
    /// The key looked up in the bindings.
    pub fn key(&self) -> String {
        match self {
            Identity::ClientId(s) | Identity::ForwardedFor(s) => s.clone(),
            Identity::Proxy(ip) | Identity::Peer(ip) => ip.to_string(),
        }
    }

    pub fn source(&self) -> &'static str {
        match self {
            Identity::ClientId(_) => "x-client-id",
            Identity::ForwardedFor(_) => "x-forwarded-for",
            Identity::Proxy(_) => "proxy",
            Identity::Peer(_) => "peer",
        }
    }
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Decided: an identity from the bytes, or `None` (use the peer IP).
    Done(Option<Identity>),
    /// More bytes could change the answer; `best` is the answer if none come.
    NeedMore { best: Option<Identity> },
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Parse {
    let (proxy, rest) = match proxy_header(buf) {
        ProxyHeader::None => (None, buf),
        ProxyHeader::Partial => return Parse::NeedMore { best: None },
        ProxyHeader::Done { src, len } => (src.map(Identity::Proxy), &buf[len..]),
    };
    match http_identity(rest) {
        Http::Other => Parse::Done(proxy),
        Http::Found(id) => Parse::Done(Some(id)),
        Http::Headers => Parse::Done(proxy),
        Http::Partial => Parse::NeedMore { best: proxy },
    }
}

enum ProxyHeader {
    None,
    Partial,
    /// `src` is `None` for LOCAL / UNKNOWN headers.
    Done {
        src: Option<IpAddr>,
        len: usize,
    },
}

fn proxy_header(buf: &[u8]) -> ProxyHeader {
    // v2: 12-byte signature, ver/cmd, fam, 2-byte length, addresses.
    let sig_len = buf.len().min(V2_SIG.len());
    if buf[..sig_len] == V2_SIG[..sig_len] && !buf.is_empty() {
        if buf.len() < 16 {
            return ProxyHeader::Partial;
        }
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if buf.len() < len {
            return ProxyHeader::Partial;
        }
        let src = match (buf[12] & 0x0f, buf[13] >> 4) {
            (1, 1) if len >= 16 + 12 => Some(IpAddr::from(
                <[u8; 4]>::try_from(&buf[16..20]).expect("4 bytes"),
            )),
            (1, 2) if len >= 16 + 36 => Some(IpAddr::from(
                <[u8; 16]>::try_from(&buf[16..32]).expect("16 bytes"),
            )),
            _ => None,
        };
        return ProxyHeader::Done { src, len };
    }
    // v1: "PROXY TCP4 src dst sport dport\r\n", at most 107 bytes.
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] || buf.is_empty() {
        return ProxyHeader::None;
    }
    let Some(end) = buf.windows(2).take(107).position(|w| w == b"\r\n") else {
        return if buf.len() < 107 {
            ProxyHeader::Partial
        } else {
            ProxyHeader::None
        };
    };
    let line = String::from_utf8_lossy(&buf[..end]);
    let src = line.split(' ').nth(2).and_then(|s| s.parse().ok());
    ProxyHeader::Done { src, len: end + 2 }
}

enum Http {
    /// Not an HTTP request.
    Other,
    /// Headers complete, no identity header in them.
    Headers,
    Found(Identity),
    Partial,
}

fn http_identity(buf: &[u8]) -> Http {
    // Request line: an upper-case method, a space.
    let letters = buf.iter().take_while(|c| c.is_ascii_uppercase()).count();
    if letters == buf.len() {
        return if letters < 8 {
            Http::Partial
        } else {
            Http::Other
        };
    }
    if !(3..=7).contains(&letters) || buf[letters] != b' ' {
        return Http::Other;
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Http::Partial;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut forwarded = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-client-id") && !value.is_empty() && value.len() <= 256 {
            return Http::Found(Identity::ClientId(value.to_string()));
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") && forwarded.is_none() {
            let first = value.split(',').next().unwrap_or("").trim();
            if let Ok(ip) = first.parse::<IpAddr>() {
                forwarded = Some(ip.to_string());
            }
        }
    }
    match forwarded {
        Some(ip) => Http::Found(Identity::ForwardedFor(ip)),
        None => Http::Headers,
    }
}

/// The identity, when the bytes already received decide it: one
/// non-blocking `MSG_PEEK`, no wait. `None`: wait with [`identify_waiting`].
///
/// Most clients have sent their first bytes by the time the gateway accepts
/// them; a runtime-driven peek would first wait for the runtime to learn
/// that the new socket is readable (one more wake-up per connection).
pub fn identify_now(stream: &std::net::TcpStream, peer: SocketAddr) -> Option<Identity> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; PEEK_MAX];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let n = match recv(stream.as_raw_fd(), &mut buf, flags) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return None,
        // Closed or broken: nothing more will come; the handoff sorts it out.
        Err(_) => 0,
    };
    if n == 0 {
        return Some(Identity::Peer(peer.ip()));
    }
    match parse(&buf[..n]) {
        Parse::Done(id) => Some(id.unwrap_or(Identity::Peer(peer.ip()))),
        Parse::NeedMore { best } if n >= PEEK_MAX => {
            Some(best.unwrap_or(Identity::Peer(peer.ip())))
        }
        Parse::NeedMore { .. } => None,
    }
}

/// [`identify`] for a plain accepted (non-blocking) socket: registers it
/// with the runtime for the wait and gives it back unregistered, for the
/// handoff.
pub async fn identify_waiting(
    stream: std::net::TcpStream,
    peer: SocketAddr,
) -> std::io::Result<(Identity, std::net::TcpStream)> {
    let stream = TcpStream::from_std(stream)?;
    let who = identify(&stream, peer).await;
    Ok((who, stream.into_std()?))
}

/// Peeks at `stream` until the identity is decided, the peek bound is hit,
/// or [`PEEK_DEADLINE`] passes; never consumes a byte.
pub async fn identify(stream: &TcpStream, peer: SocketAddr) -> Identity {
    let deadline = tokio::time::Instant::now() + PEEK_DEADLINE;
    let mut buf = vec![0u8; PEEK_MAX];
    let mut best = None;
    let mut last_len = 0;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => break,
        };
        if n == 0 {
            break;
        }
        match parse(&buf[..n]) {
            Parse::Done(id) => {
                best = id;
                break;
            }
            Parse::NeedMore { best: b } => best = b,
        }
        if n >= PEEK_MAX || tokio::time::Instant::now() >= deadline {
            break;
        }
        // peek returns at once while bytes wait: sleep until more may have come.
        if n == last_len {
            pause = (pause * 2).min(Duration::from_millis(100));
        } else {
            pause = Duration::from_millis(1);
        }
        last_len = n;
        tokio::time::sleep(pause).await;
    }
    best.unwrap_or(Identity::Peer(peer.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> Option<Identity> {
        match parse(buf) {
            Parse::Done(id) => id,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// The precedence: X-Client-Id, X-Forwarded-For, PROXY source, peer.
    #[test]
    fn precedence() {
        let http = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.9, 10.0.0.1\r\nX-Client-Id: alice\r\n\r\n";
        assert_eq!(done(http), Some(Identity::ClientId("alice".into())));
        let xff = b"GET / HTTP/1.1\r\nx-forwarded-for: 10.0.0.9, 10.0.0.1\r\n\r\nbody";
        assert_eq!(done(xff), Some(Identity::ForwardedFor("10.0.0.9".into())));
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            done(v1),
            Some(Identity::Proxy("192.0.2.7".parse().unwrap()))
        );
        let v1_id =
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nX-Client-Id: bob\r\n\r\n";
        assert_eq!(done(v1_id), Some(Identity::ClientId("bob".into())));
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 4, 127, 0, 0, 1, 0x15, 0xb3, 0, 80,
        ]);
        v2.extend_from_slice(b"\x00\x01binary");
        assert_eq!(
            done(&v2),
            Some(Identity::Proxy("198.51.100.4".parse().unwrap()))
        );
        assert_eq!(done(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(done(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    /// Incomplete headers ask for more, with the best answer so far.
    #[test]
    fn partial() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost:"),
            Parse::NeedMore { best: None }
        );
        assert_eq!(parse(b"GE"), Parse::NeedMore { best: None });
        assert_eq!(parse(b"PROXY TCP4 1.2"), Parse::NeedMore { best: None });
        assert_eq!(parse(&V2_SIG[..5]), Parse::NeedMore { best: None });
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET / HT";
        assert_eq!(
            parse(v1),
            Parse::NeedMore {
                best: Some(Identity::Proxy("192.0.2.7".parse().unwrap()))
            }
        );
    }

    /// Garbage of every shape is decided without panicking.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                })
                .collect();
            let _ = parse(&buf);
            let mut with_sig = V2_SIG.to_vec();
            with_sig.extend_from_slice(&buf);
            let _ = parse(&with_sig);
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&buf);
            let _ = parse(&v1);
        }
    }

    /// Without waiting: decided bytes give the identity, undecided or no
    /// bytes give `None` (wait), a closed client gives its peer IP; nothing
    /// is consumed.
    #[test]
    fn identify_now_decides_only_from_what_is_there() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connect = || {
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, peer) = l.accept().unwrap();
            (c, s, peer)
        };
        // Waits (bounded) until `n` bytes can be peeked, or EOF for 0.
        let arrived = |s: &std::net::TcpStream, n: usize| {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..10_000 {
                let got = s.peek(&mut buf).unwrap();
                if got == n || (n > 0 && got > n) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("{n} bytes never arrived");
        };

        let (mut c, s, peer) = connect();
        assert_eq!(identify_now(&s, peer), None, "no bytes yet");
        c.write_all(b"GET / HTTP/1.1\r\nX-Client-Id: bob\r\n")
            .unwrap();
        arrived(&s, 34);
        assert_eq!(identify_now(&s, peer), None, "headers not finished");
        c.write_all(b"\r\n").unwrap();
        arrived(&s, 36);
        assert_eq!(
            identify_now(&s, peer),
            Some(Identity::ClientId("bob".into()))
        );
        let mut first = [0u8; 3];
        (&s).read_exact(&mut first).unwrap();
        assert_eq!(&first, b"GET", "the peek consumed nothing");

        let (mut c, s, peer) = connect();
        c.write_all(b"\x16\x03\x01 a TLS hello").unwrap();
        arrived(&s, 15);
        assert_eq!(identify_now(&s, peer), Some(Identity::Peer(peer.ip())));

        let (c, s, peer) = connect();
        drop(c);
        arrived(&s, 0);
        assert_eq!(identify_now(&s, peer), Some(Identity::Peer(peer.ip())));
    }
}
