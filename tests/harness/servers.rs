//! Backends and a recording proxy, each on `127.0.0.1:0`, each returning its
//! address.
//!
//! They run as tasks on the test's tokio runtime; dropping a server stops its
//! accept loop (connections in flight end with their peers or the runtime).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::data::pattern;

/// Aborts its task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `127.0.0.1:0`, where backends bind unless told otherwise.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn listen(at: SocketAddr) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(at)
        .await
        .unwrap_or_else(|e| panic!("bind backend at {at}: {e}"));
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Counts shared by a TCP backend and its connection tasks.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    received: AtomicU64,
}

/// A TCP echo server: writes back every byte it reads; on EOF it half-closes
/// and ends the connection.
pub struct EchoServer {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    _task: Task,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        Self::start_at(any_port()).await
    }

    /// Binds `at` (e.g. a [`crate::free_addr`] shared with a UDP backend).
    pub async fn start_at(at: SocketAddr) -> EchoServer {
        let (listener, addr) = listen(at).await;
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = echo(stream, &c.received).await;
                });
            }
        });
        EchoServer {
            addr,
            counts,
            _task: Task(task),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Bytes received so far, over all connections.
    pub fn received(&self) -> u64 {
        self.counts.received.load(Ordering::SeqCst)
    }
}

async fn echo(mut stream: TcpStream, received: &AtomicU64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            stream.shutdown().await?;
            return Ok(());
        }
        received.fetch_add(n as u64, Ordering::SeqCst);
        stream.write_all(&buf[..n]).await?;
    }
}

/// A "sink-and-reply" TCP server: reads until EOF, then writes the SHA-256 of
/// everything it read followed by `reply_len` bytes of
/// [`SinkReplyServer::reply_tail`], then closes.
pub struct SinkReplyServer {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    _task: Task,
}

/// Seed of the reply tail's pattern.
const REPLY_SEED: u64 = 0x5EED;

impl SinkReplyServer {
    pub async fn start(reply_len: usize) -> SinkReplyServer {
        Self::start_at(any_port(), reply_len).await
    }

    /// Binds `at` (e.g. a [`crate::free_addr`] shared with a UDP backend).
    pub async fn start_at(at: SocketAddr, reply_len: usize) -> SinkReplyServer {
        let (listener, addr) = listen(at).await;
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let tail = Arc::new(Self::reply_tail(reply_len));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                let tail = tail.clone();
                tokio::spawn(async move {
                    let mut hasher = Sha256::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                c.received.fetch_add(n as u64, Ordering::SeqCst);
                                hasher.update(&buf[..n]);
                            }
                            Err(_) => return,
                        }
                    }
                    let digest: [u8; 32] = hasher.finalize().into();
                    if stream.write_all(&digest).await.is_ok()
                        && stream.write_all(&tail).await.is_ok()
                    {
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        SinkReplyServer {
            addr,
            counts,
            _task: Task(task),
        }
    }

    /// The bytes that follow the digest in every reply.
    pub fn reply_tail(len: usize) -> Vec<u8> {
        pattern(len, REPLY_SEED)
    }

    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> u64 {
        self.counts.received.load(Ordering::SeqCst)
    }
}

/// A UDP echo server: sends every datagram back to its source unchanged.
pub struct UdpEchoServer {
    pub addr: SocketAddr,
    datagrams: Arc<AtomicUsize>,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    _task: Task,
}

impl UdpEchoServer {
    pub async fn start() -> UdpEchoServer {
        Self::start_at(any_port()).await
    }

    /// Binds `at` (e.g. a [`crate::free_addr`] shared with a TCP backend).
    pub async fn start_at(at: SocketAddr) -> UdpEchoServer {
        let socket = UdpSocket::bind(at)
            .await
            .unwrap_or_else(|e| panic!("bind udp backend at {at}: {e}"));
        let addr = socket.local_addr().expect("local_addr");
        let datagrams = Arc::new(AtomicUsize::new(0));
        let sources = Arc::new(Mutex::new(Vec::new()));
        let (d, s) = (datagrams.clone(), sources.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                d.fetch_add(1, Ordering::SeqCst);
                {
                    let mut s = s.lock().expect("sources");
                    if !s.contains(&from) {
                        s.push(from);
                    }
                }
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        UdpEchoServer {
            addr,
            datagrams,
            sources,
            _task: Task(task),
        }
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> usize {
        self.datagrams.load(Ordering::SeqCst)
    }

    /// Distinct source addresses seen so far.
    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources.lock().expect("sources").clone()
    }
}

/// A PROXY protocol header as the target received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1 {
        proto: String,
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// The binary header: signature, `ver_cmd`, `fam`, addresses.
    V2 {
        ver_cmd: u8,
        fam: u8,
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// Something else arrived first; what and why.
    Invalid(String),
}

/// The v2 signature.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A TCP backend that reads a PROXY v1 or v2 header first, records it, then
/// echoes the rest of the connection.
pub struct ProxyHeaderServer {
    pub addr: SocketAddr,
    headers: Arc<Mutex<Vec<ProxyHeader>>>,
    _task: Task,
}

impl ProxyHeaderServer {
    pub async fn start() -> ProxyHeaderServer {
        let (listener, addr) = listen(any_port()).await;
        let headers = Arc::new(Mutex::new(Vec::new()));
        let h = headers.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let header = read_proxy_header(&mut stream).await;
                    let valid = !matches!(header, ProxyHeader::Invalid(_));
                    h.lock().expect("headers").push(header);
                    if valid {
                        let _ = echo(stream, &AtomicU64::new(0)).await;
                    }
                });
            }
        });
        ProxyHeaderServer {
            addr,
            headers,
            _task: Task(task),
        }
    }

    /// Headers received so far, one per connection.
    pub fn headers(&self) -> Vec<ProxyHeader> {
        self.headers.lock().expect("headers").clone()
    }
}

async fn read_proxy_header(stream: &mut TcpStream) -> ProxyHeader {
    let mut first = [0u8; 1];
    if stream.read_exact(&mut first).await.is_err() {
        return ProxyHeader::Invalid("connection closed before any byte".into());
    }
    match first[0] {
        b'P' => read_v1(stream).await,
        b'\r' => read_v2(stream).await,
        other => ProxyHeader::Invalid(format!("first byte {other:#04x} starts no PROXY header")),
    }
}

async fn read_v1(stream: &mut TcpStream) -> ProxyHeader {
    // The longest v1 line is 107 bytes including CRLF.
    let mut line = vec![b'P'];
    while !line.ends_with(b"\r\n") {
        if line.len() >= 107 {
            return ProxyHeader::Invalid(format!(
                "no CRLF within 107 bytes: {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        let mut b = [0u8; 1];
        if stream.read_exact(&mut b).await.is_err() {
            return ProxyHeader::Invalid(format!(
                "EOF in v1 line {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        line.push(b[0]);
    }
    let text = String::from_utf8_lossy(&line[..line.len() - 2]).to_string();
    let parts: Vec<&str> = text.split(' ').collect();
    let parsed = (|| {
        if parts.len() != 6 || parts[0] != "PROXY" {
            return None;
        }
        let src_ip: IpAddr = parts[2].parse().ok()?;
        let dst_ip: IpAddr = parts[3].parse().ok()?;
        let sport: u16 = parts[4].parse().ok()?;
        let dport: u16 = parts[5].parse().ok()?;
        Some(ProxyHeader::V1 {
            proto: parts[1].to_string(),
            src: SocketAddr::new(src_ip, sport),
            dst: SocketAddr::new(dst_ip, dport),
        })
    })();
    parsed.unwrap_or_else(|| ProxyHeader::Invalid(format!("malformed v1 line {text:?}")))
}

async fn read_v2(stream: &mut TcpStream) -> ProxyHeader {
    let mut head = [0u8; 16];
    head[0] = b'\r';
    if stream.read_exact(&mut head[1..]).await.is_err() {
        return ProxyHeader::Invalid("EOF in the v2 header".into());
    }
    if head[..12] != PROXY_V2_SIGNATURE {
        return ProxyHeader::Invalid(format!("bad v2 signature {:02x?}", &head[..12]));
    }
    let (ver_cmd, fam) = (head[12], head[13]);
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut body = vec![0u8; len];
    if stream.read_exact(&mut body).await.is_err() {
        return ProxyHeader::Invalid(format!("EOF in the {len}-byte v2 address block"));
    }
    if fam != 0x11 || len < 12 {
        return ProxyHeader::Invalid(format!(
            "v2 ver_cmd {ver_cmd:#04x} fam {fam:#04x} len {len}"
        ));
    }
    let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    ProxyHeader::V2 {
        ver_cmd,
        fam,
        src: SocketAddr::new(ip(&body[0..4]), u16::from_be_bytes([body[8], body[9]])),
        dst: SocketAddr::new(ip(&body[4..8]), u16::from_be_bytes([body[10], body[11]])),
    }
}

/// What one connection through a [`RecordingProxy`] carried.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Client → upstream.
    pub up: Vec<u8>,
    /// Upstream → client.
    pub down: Vec<u8>,
}

/// A TCP proxy to `upstream` that records the bytes of every connection, in
/// accept order.
pub struct RecordingProxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    _task: Task,
}

impl RecordingProxy {
    pub async fn start(upstream: SocketAddr) -> RecordingProxy {
        let (listener, addr) = listen(any_port()).await;
        let conns: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = Arc::new(Mutex::new(Recorded::default()));
                c.lock().expect("conns").push(record.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let r1 = record.clone();
                    let up = tokio::spawn(copy_recording(cr, sw, move |b| {
                        r1.lock().expect("rec").up.extend_from_slice(b)
                    }));
                    let r2 = record;
                    let down = tokio::spawn(copy_recording(sr, cw, move |b| {
                        r2.lock().expect("rec").down.extend_from_slice(b)
                    }));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        RecordingProxy {
            addr,
            conns,
            _task: Task(task),
        }
    }

    /// Connections so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().expect("conns").len()
    }

    /// A snapshot of connection `index` (accept order).
    pub fn recorded(&self, index: usize) -> Recorded {
        let record = self.conns.lock().expect("conns")[index].clone();
        record.lock().expect("rec").clone()
    }
}

async fn copy_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut record: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
