//! Drover's tunnel wire protocol (not NodePass's): handshake, pool headers,
//! control frames.
//!
//! Every connection to a server's tunnel port:
//! 1. client → `DRV` + version;  server → `DRV` + version + tls mode + nonce `sn`.
//! 2. TLS handshake when the mode is not 0 (the client checks what it requires).
//! 3. client → kind:
//!    - control: nonce `cn` + proof(key; sn, cn, binding);
//!      server → status, then on success proof(key; sn, cn, binding) and the
//!      session config (flow, max, tcp/udp, session id). Both derive the
//!      session key from (key; sn, cn).
//!    - pool: session id + proof(session key; sn, binding); server → status.
//! 4. An idle pool link waits for a [`Header`] written by the entrance side;
//!    after it the link carries one TCP stream in frames (`super::framed`),
//!    after which the link may wait for the next header, or UDP datagrams
//!    in frames until the link closes.
//!
//! Control frames after the handshake are 9 bytes: type + u64.
//!
//! The readers take any tokio stream, not just a socket, so tests and the
//! fuzz targets (`fuzz/`) feed them bytes from memory.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::auth::{self, NONCE, PROOF, Purpose};
use super::error::TunnelError;
use super::link::Link;

pub const MAGIC: &[u8; 3] = b"DRV";
/// 2: TCP sessions framed, links reused.
pub const VERSION: u8 = 2;
/// Everything up to an authenticated link must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub const KIND_CONTROL: u8 = 1;
pub const KIND_POOL: u8 = 2;

pub const STATUS_OK: u8 = 0;
pub const STATUS_BAD_KEY: u8 = 1;
pub const STATUS_NO_SESSION: u8 = 2;
pub const STATUS_POOL_FULL: u8 = 3;

/// Who has the entrance, as the server announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Server has the entrance; client dials targets (server mode 1).
    Reverse,
    /// Client has the entrance; server dials targets (server mode 2).
    Forward,
}

/// What the server tells an authenticated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub flow: Flow,
    pub max: u32,
    pub tcp: bool,
    pub udp: bool,
    pub id: [u8; 16],
}

impl SessionConfig {
    pub const LEN: usize = 1 + 4 + 1 + 1 + 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = match self.flow {
            Flow::Reverse => 1,
            Flow::Forward => 2,
        };
        b[1..5].copy_from_slice(&self.max.to_be_bytes());
        b[5] = self.tcp as u8;
        b[6] = self.udp as u8;
        b[7..].copy_from_slice(&self.id);
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, String> {
        let flow = match b[0] {
            1 => Flow::Reverse,
            2 => Flow::Forward,
            x => return Err(format!("unknown flow {x}")),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[7..]);
        Ok(Self {
            flow,
            max: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            tcp: b[5] != 0,
            udp: b[6] != 0,
            id,
        })
    }
}

/// Kind of session a pool link is about to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Tcp,
    Udp,
}

/// Written by the entrance on a pool link to start one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: HeaderKind,
    /// Entrance-side session number, for logs on both ends.
    pub session: u32,
    /// The user's address as the entrance saw it (`ip:port`).
    pub remote: String,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let remote = &self.remote.as_bytes()[..self.remote.len().min(255)];
        let mut b = Vec::with_capacity(6 + remote.len());
        b.push(match self.kind {
            HeaderKind::Tcp => 1,
            HeaderKind::Udp => 2,
        });
        b.extend_from_slice(&self.session.to_be_bytes());
        b.push(remote.len() as u8);
        b.extend_from_slice(remote);
        b
    }

    /// Parses a header at the start of `buf`: the header and the bytes it
    /// took, `None` while `buf` holds only part of one.
    pub fn parse(buf: &[u8]) -> io::Result<Option<(Self, usize)>> {
        let Some(fixed) = buf.first_chunk::<6>() else {
            return Ok(None);
        };
        let kind = match fixed[0] {
            1 => HeaderKind::Tcp,
            2 => HeaderKind::Udp,
            x => return Err(invalid(format!("unknown session kind {x}"))),
        };
        let len = 6 + usize::from(fixed[5]);
        let Some(remote) = buf.get(6..len) else {
            return Ok(None);
        };
        let remote = String::from_utf8(remote.to_vec())
            .map_err(|_| invalid("remote address is not UTF-8".into()))?;
        let header = Self {
            kind,
            session: u32::from_be_bytes([fixed[1], fixed[2], fixed[3], fixed[4]]),
            remote,
        };
        Ok(Some((header, len)))
    }

    /// Reads one header from `link` into `buf` (which may already hold part
    /// of it) and takes it out; what was read past it stays in `buf`.
    pub async fn read(link: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> io::Result<Self> {
        loop {
            if let Some((header, used)) = Self::parse(buf)? {
                buf.drain(..used);
                return Ok(header);
            }
            // Small: an idle link's task waits here holding it (64 idle links
            // with 4 KiB each cost 0.3 MiB of RSS). Enough for the header and
            // a short first request; the session's relay reads the rest.
            let mut chunk = [0u8; 512];
            let n = link.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Control channel messages (both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Ping(u64),
    Pong(u64),
    /// The entrance waited for a pool link: the client should grow the pool.
    Starved(u64),
    /// Client → server: how many pool links to hold; the entrance closes
    /// idle ones beyond it.
    Capacity(u64),
}

impl Control {
    pub fn encode(self) -> [u8; 9] {
        let (t, v) = match self {
            Control::Ping(v) => (1, v),
            Control::Pong(v) => (2, v),
            Control::Starved(v) => (3, v),
            Control::Capacity(v) => (4, v),
        };
        let mut b = [0u8; 9];
        b[0] = t;
        b[1..].copy_from_slice(&v.to_be_bytes());
        b
    }

    pub fn decode(b: [u8; 9]) -> io::Result<Self> {
        let v = u64::from_be_bytes(b[1..].try_into().expect("8 bytes"));
        Ok(match b[0] {
            1 => Control::Ping(v),
            2 => Control::Pong(v),
            3 => Control::Starved(v),
            4 => Control::Capacity(v),
            x => return Err(invalid(format!("unknown control frame type {x}"))),
        })
    }
}

/// The server's reply to the preamble.
pub struct Offer {
    pub tls: u8,
    pub nonce: [u8; NONCE],
}

/// Client: sends the preamble and reads the server's offer.
pub async fn client_preamble(
    tcp: &mut (impl AsyncRead + AsyncWrite + Unpin),
    peer: &str,
) -> Result<Offer, TunnelError> {
    let mut out = [0u8; 4];
    out[..3].copy_from_slice(MAGIC);
    out[3] = VERSION;
    let fail = |e: io::Error| TunnelError::peer(peer, format!("handshake: {e}"));
    tcp.write_all(&out).await.map_err(fail)?;
    let mut reply = [0u8; 5 + NONCE];
    tcp.read_exact(&mut reply).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            TunnelError::peer(peer, "closed the connection during the handshake (not a drover server, or it refused us)")
        } else {
            fail(e)
        }
    })?;
    if &reply[..3] != MAGIC {
        return Err(TunnelError::peer(
            peer,
            "is not a drover server (bad handshake magic)",
        ));
    }
    if reply[3] != VERSION {
        return Err(TunnelError::peer(
            peer,
            format!(
                "speaks tunnel protocol {} but we speak {VERSION}: run the same drover version on both ends",
                reply[3]
            ),
        ));
    }
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&reply[5..]);
    Ok(Offer {
        tls: reply[4],
        nonce,
    })
}

/// Server: reads the client's preamble and answers with the offer.
pub async fn server_preamble(
    tcp: &mut (impl AsyncRead + AsyncWrite + Unpin),
    tls: u8,
) -> io::Result<[u8; NONCE]> {
    let mut pre = [0u8; 4];
    tcp.read_exact(&mut pre).await?;
    if &pre[..3] != MAGIC {
        return Err(invalid("not a drover client (bad magic)".into()));
    }
    let nonce = auth::nonce();
    let mut reply = [0u8; 5 + NONCE];
    reply[..3].copy_from_slice(MAGIC);
    reply[3] = VERSION;
    reply[4] = tls;
    reply[5..].copy_from_slice(&nonce);
    tcp.write_all(&reply).await?;
    if pre[3] != VERSION {
        return Err(invalid(format!(
            "client speaks tunnel protocol {} but we speak {VERSION}",
            pre[3]
        )));
    }
    Ok(nonce)
}

/// Client: authenticates a control link; returns the session config and key.
pub async fn client_control(
    link: &mut Link,
    key: &[u8],
    sn: &[u8; NONCE],
    peer: &str,
) -> Result<(SessionConfig, [u8; PROOF]), TunnelError> {
    let binding = link.channel_binding();
    let cn = auth::nonce();
    let mut out = Vec::with_capacity(1 + NONCE + PROOF);
    out.push(KIND_CONTROL);
    out.extend_from_slice(&cn);
    out.extend_from_slice(&auth::prove(
        key,
        Purpose::ClientControl,
        &[sn, &cn, &binding],
    ));
    let fail = |e: io::Error| TunnelError::peer(peer, format!("handshake: {e}"));
    link.write_all(&out).await.map_err(fail)?;
    link.flush().await.map_err(fail)?;
    let mut status = [0u8; 1];
    link.read_exact(&mut status).await.map_err(fail)?;
    match status[0] {
        STATUS_OK => {}
        STATUS_BAD_KEY => {
            return Err(TunnelError::peer(
                peer,
                "server refused our key proof (wrong key?)",
            ));
        }
        x => {
            return Err(TunnelError::peer(
                peer,
                format!("server refused the session (status {x})"),
            ));
        }
    }
    let mut proof = [0u8; PROOF];
    link.read_exact(&mut proof).await.map_err(fail)?;
    if !auth::verify(key, Purpose::ServerControl, &[sn, &cn, &binding], &proof) {
        return Err(TunnelError::peer(
            peer,
            "server could not prove it knows the key (wrong key, or not our server)",
        ));
    }
    let mut cfg = [0u8; SessionConfig::LEN];
    link.read_exact(&mut cfg).await.map_err(fail)?;
    let cfg = SessionConfig::decode(&cfg).map_err(|e| TunnelError::peer(peer, e))?;
    Ok((cfg, auth::prove(key, Purpose::Session, &[sn, &cn])))
}

/// Client: authenticates a pool link against the session.
pub async fn client_pool(
    link: &mut Link,
    session_id: &[u8; 16],
    session_key: &[u8],
    sn: &[u8; NONCE],
) -> io::Result<u8> {
    let binding = link.channel_binding();
    let mut out = Vec::with_capacity(1 + 16 + PROOF);
    out.push(KIND_POOL);
    out.extend_from_slice(session_id);
    out.extend_from_slice(&auth::prove(session_key, Purpose::Pool, &[sn, &binding]));
    link.write_all(&out).await?;
    link.flush().await?;
    let mut status = [0u8; 1];
    link.read_exact(&mut status).await?;
    Ok(status[0])
}

/// What an authenticated-or-not client asked the server for.
pub enum Request {
    Control {
        cn: [u8; NONCE],
        proof: [u8; PROOF],
    },
    Pool {
        session: [u8; 16],
        proof: [u8; PROOF],
    },
}

/// Server: reads the client's request after the (optional) TLS layer.
///
/// Both kinds are the same length, so one exact read takes the whole
/// request (the client sends nothing more until it has the status).
pub async fn server_request(link: &mut (impl AsyncRead + Unpin)) -> io::Result<Request> {
    const _: () = assert!(
        NONCE == 16,
        "control and pool requests must be the same length"
    );
    let mut req = [0u8; 1 + 16 + PROOF];
    link.read_exact(&mut req).await?;
    let (kind, rest) = req.split_at(1);
    let (id, proof_bytes) = rest.split_at(16);
    let mut first = [0u8; 16];
    first.copy_from_slice(id);
    let mut proof = [0u8; PROOF];
    proof.copy_from_slice(proof_bytes);
    match kind[0] {
        KIND_CONTROL => Ok(Request::Control { cn: first, proof }),
        KIND_POOL => Ok(Request::Pool {
            session: first,
            proof,
        }),
        x => Err(invalid(format!("unknown connection kind {x}"))),
    }
}

/// UDP datagrams on a link: 2-byte big-endian length + payload.
pub mod udp_frame {
    use super::*;

    /// Largest datagram a frame can carry.
    pub const MAX: usize = u16::MAX as usize;

    /// Writes one datagram as a frame (one write call when it fits).
    pub async fn write(
        link: &mut (impl tokio::io::AsyncWrite + Unpin),
        buf: &mut Vec<u8>,
        data: &[u8],
    ) -> io::Result<()> {
        let len = u16::try_from(data.len())
            .map_err(|_| invalid("datagram larger than 65535 bytes".into()))?;
        buf.clear();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(data);
        link.write_all(buf).await?;
        link.flush().await
    }

    /// Reads one frame into `buf`; `Ok(None)` on a clean EOF between frames.
    pub async fn read<'b>(
        link: &mut (impl tokio::io::AsyncRead + Unpin),
        buf: &'b mut [u8],
    ) -> io::Result<Option<&'b [u8]>> {
        let mut len = [0u8; 2];
        match link.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = usize::from(u16::from_be_bytes(len));
        let dst = buf
            .get_mut(..len)
            .ok_or_else(|| invalid(format!("frame of {len} bytes exceeds the buffer")))?;
        link.read_exact(dst).await?;
        Ok(Some(dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header read takes exactly the header out of what it read, whether
    /// it starts in `buf` or on the link, and keeps the rest for the session.
    #[tokio::test]
    async fn header_read_keeps_what_follows() {
        let header = Header {
            kind: HeaderKind::Tcp,
            session: 9,
            remote: "[::1]:4000".into(),
        };
        let wire = [header.encode(), b"\0\0\0\x03abc".to_vec()].concat();
        for split in [0, 3, 6, wire.len()] {
            let mut buf = wire[..split].to_vec();
            let mut link = &wire[split..];
            assert_eq!(Header::read(&mut link, &mut buf).await.unwrap(), header);
            assert_eq!(buf, b"\0\0\0\x03abc", "split at {split}");
        }
        assert!(Header::parse(&wire[..5]).unwrap().is_none(), "partial");
        assert!(Header::parse(&[7, 0, 0, 0, 0, 0]).is_err(), "unknown kind");
        let mut short = &wire[..8];
        assert!(
            Header::read(&mut short, &mut Vec::new()).await.is_err(),
            "cut short"
        );
    }

    /// Control frames and headers decode to what was encoded; junk is an error.
    #[test]
    fn frames_round_trip() {
        for c in [
            Control::Ping(1),
            Control::Pong(u64::MAX),
            Control::Starved(3),
            Control::Capacity(64),
        ] {
            assert_eq!(Control::decode(c.encode()).unwrap(), c);
        }
        assert!(Control::decode([9; 9]).is_err());
        let cfg = SessionConfig {
            flow: Flow::Forward,
            max: 77,
            tcp: true,
            udp: false,
            id: [5; 16],
        };
        assert_eq!(SessionConfig::decode(&cfg.encode()).unwrap(), cfg);
        let mut bad = cfg.encode();
        bad[0] = 9;
        assert!(SessionConfig::decode(&bad).is_err());
    }
}
