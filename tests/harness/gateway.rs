//! The master's gateway from the outside: where it listens, backends that
//! answer with their name, HTTP requests carrying a client identity, and a
//! master started on an existing data dir with another URL.
//!
//! 1. [`gateway_addr`] reads `gateway listening addr=…` from the master's log
//!    (start the master with `gateway=127.0.0.1:0`).
//! 2. [`NameServer`] is a tenant's backend: it reads one HTTP request (any
//!    bytes before it — a PROXY header — are kept too) and answers
//!    `200 OK` with its name as the body; it records what each connection
//!    sent.
//! 3. [`http_request`] / [`proxy_v2`] build what a client sends; [`ask`] and
//!    [`ask_from`] send it and return the body (the backend's name) or why
//!    there was none.
//! 4. [`DirMaster`] runs `drover <url>` on the data dir of an earlier
//!    [`crate::Master`] (which must have exited), e.g. to add
//!    `gateway_default=<id>` once the id is known; `Drop` kills it and its
//!    workers and prints its log when the test is failing.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::api::Api;
use crate::master::{Log, Master, is_worker, master_bin, parse_listen_line, spawn_reader};
use crate::procs::{children, proc_alive};
use crate::worker::worker_bin;
use crate::{DEADLINE, servers::PROXY_V2_SIGNATURE};

/// The log marker of the gateway listener (followed by `addr=IP:PORT`).
pub const GATEWAY_MARKER: &str = "gateway listening";

/// `… gateway listening addr=127.0.0.1:PORT` → the address.
pub fn parse_gateway_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(GATEWAY_MARKER)? + GATEWAY_MARKER.len()..];
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.trim_matches('"').parse().ok())
}

/// Where `master`'s gateway listens (it must run with `gateway=…`).
pub async fn gateway_addr(master: &Master) -> SocketAddr {
    let line = master.wait_for_line(GATEWAY_MARKER, DEADLINE).await;
    parse_gateway_line(&line)
        .unwrap_or_else(|| panic!("cannot read the gateway address from {line:?}"))
}

/// Aborts its task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What each connection sent, in accept order.
type Received = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A backend that answers every HTTP request with its own name.
pub struct NameServer {
    pub addr: SocketAddr,
    pub name: String,
    conns: Received,
    _task: Task,
}

/// Whether `buf` holds a whole HTTP request head (possibly after a PROXY
/// header, which may itself contain `\r\n\r\n`).
fn request_complete(buf: &[u8]) -> bool {
    let Some(at) = buf.windows(7).position(|w| w == b"HTTP/1.") else {
        return false;
    };
    buf[at..].windows(4).any(|w| w == b"\r\n\r\n")
}

impl NameServer {
    pub async fn start(name: &str) -> NameServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind name server");
        let addr = listener.local_addr().expect("local_addr");
        let conns: Received = Arc::default();
        let c = conns.clone();
        let reply = {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                name.len()
            );
            Arc::new([head.as_bytes(), name.as_bytes()].concat())
        };
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = Arc::new(Mutex::new(Vec::new()));
                c.lock().expect("conns").push(record.clone());
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut r = record.lock().expect("record");
                                r.extend_from_slice(&buf[..n]);
                                if request_complete(&r) {
                                    break;
                                }
                            }
                        }
                    }
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                    let _ = stream.shutdown().await;
                    // Drain until the client closes, so no unread byte turns
                    // the close into a reset that could eat the reply.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        NameServer {
            addr,
            name: name.to_string(),
            conns,
            _task: Task(task),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns.lock().expect("conns").len()
    }

    /// What connection `index` (accept order) sent so far.
    pub fn received(&self, index: usize) -> Vec<u8> {
        let r = self.conns.lock().expect("conns")[index].clone();
        r.lock().expect("record").clone()
    }
}

/// `GET / HTTP/1.1` with `Host` and `headers`, ending the head.
pub fn http_request(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = String::from("GET / HTTP/1.1\r\nHost: gateway.test\r\n");
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) from `src` to `dst`.
pub fn proxy_v2(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut h = PROXY_V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// Sends `request` on a new connection to `addr` and returns the body of the
/// answer (a [`NameServer`]'s name), or why there was none.
pub async fn ask(addr: SocketAddr, request: &[u8]) -> Result<String, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    ask_on(stream, request).await
}

/// Like [`ask`] from the local address `from` (e.g. `127.0.0.2`).
pub async fn ask_from(from: IpAddr, addr: SocketAddr, request: &[u8]) -> Result<String, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("binding {from}: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr} from {from}: {e}"))?;
    ask_on(stream, request).await
}

/// Like [`ask`] on an open connection.
pub async fn ask_on(mut stream: TcpStream, request: &[u8]) -> Result<String, String> {
    let exchange = async {
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("writing the request: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(body) = complete_body(&got)? {
                return Ok(body);
            }
            match stream.read(&mut buf).await {
                Ok(0) if got.is_empty() => return Err("closed without an answer".to_string()),
                Ok(0) => {
                    return Err(format!(
                        "closed in the middle of the answer: {:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => {
                    return Err(format!(
                        "{e} after {} bytes of the answer ({:?})",
                        got.len(),
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
        }
    };
    match timeout(DEADLINE, exchange).await {
        Ok(res) => res,
        Err(_) => Err(format!("no answer within {DEADLINE:?}")),
    }
}

/// The body once the whole answer (head + `Content-Length` bytes) is in.
fn complete_body(got: &[u8]) -> Result<Option<String>, String> {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&got[..end]);
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("unexpected answer {head:?}"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    let body = &got[end + 4..];
    Ok((body.len() >= len).then(|| String::from_utf8_lossy(&body[..len]).into_owned()))
}

/// `drover <url>` on an existing data dir (that of a [`Master`] that exited).
pub struct DirMaster {
    pub addr: SocketAddr,
    pub prefix: String,
    url: String,
    pid: u32,
    key: String,
    child: Mutex<Child>,
    log: Arc<Mutex<Log>>,
    changed: watch::Receiver<usize>,
    http: reqwest::Client,
}

impl DirMaster {
    /// Starts on `previous`'s data dir and key with `url`; `previous` must
    /// have exited.
    pub async fn start(url: &str, previous: &Master) -> DirMaster {
        assert!(
            previous.try_status().is_some(),
            "DirMaster: master pid {} still runs on {}",
            previous.pid(),
            previous.data_dir().display()
        );
        Self::launch(url, previous.data_dir(), &previous.key()).await
    }

    async fn launch(url: &str, dir: &Path, key: &str) -> DirMaster {
        let bin = master_bin();
        let mut child = Command::new(&bin)
            .arg(url)
            .env("DROVER_DATA_DIR", dir)
            .env("DROVER_WORKER_BIN", worker_bin())
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DROVER_BIN")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        spawn_reader(
            child.stdout.take().expect("stdout"),
            log.clone(),
            tx.clone(),
        );
        spawn_reader(child.stderr.take().expect("stderr"), log.clone(), tx);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(DEADLINE)
            .build()
            .expect("building the HTTP client");
        let mut m = DirMaster {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            prefix: String::new(),
            url: url.to_string(),
            pid: child.id(),
            key: key.to_string(),
            child: Mutex::new(child),
            log,
            changed,
            http,
        };
        let line = m.wait_for_line("API listening on ", DEADLINE).await;
        let (addr, prefix) = parse_listen_line(&line)
            .unwrap_or_else(|| panic!("cannot read the API address from {line:?}"));
        m.addr = addr;
        m.prefix = prefix;
        m
    }

    /// The API with the key of the first start.
    pub fn api(&self) -> Api {
        Api::new(
            self.http.clone(),
            format!("http://{}{}", self.addr, self.prefix),
            Some(self.key.clone()),
        )
    }

    /// Where its gateway listens.
    pub async fn gateway_addr(&self) -> SocketAddr {
        let line = self.wait_for_line(GATEWAY_MARKER, DEADLINE).await;
        parse_gateway_line(&line)
            .unwrap_or_else(|| panic!("cannot read the gateway address from {line:?}"))
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_for_line(&self, needle: &str, deadline: Duration) -> String {
        let end = tokio::time::Instant::now() + deadline;
        let mut changed = self.changed.clone();
        loop {
            let closed = {
                let log = self.log.lock().expect("log");
                if let Some(l) = log.lines.iter().find(|l| l.contains(needle)) {
                    return l.clone();
                }
                log.closed == 2
            };
            if closed {
                panic!("master exited before logging {needle:?}\n{}", self.dump());
            }
            if tokio::time::timeout_at(end, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {deadline:?} waiting for the master to log {needle:?}\n{}",
                    self.dump()
                );
            }
        }
    }

    /// The whole log, for failure messages.
    pub fn dump(&self) -> String {
        let log = self.log.lock().expect("log");
        let mut out = format!(
            "----- log of master pid {} `{}` -----\n",
            self.pid, self.url
        );
        for l in &log.lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("----- end of master log -----");
        out
    }
}

impl Drop for DirMaster {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("child");
        let running = matches!(child.try_wait(), Ok(None));
        let workers: Vec<u32> = if running {
            children(self.pid)
                .into_iter()
                .filter(|p| is_worker(*p))
                .collect()
        } else {
            Vec::new()
        };
        if running {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
        let _ = child.wait();
        for pid in workers {
            if proc_alive(pid) && is_worker(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway address comes out of its log line.
    #[test]
    fn parses_the_gateway_line() {
        let line = "2026-11-25T13:12:27.214148Z  INFO gateway listening addr=127.0.0.1:41234";
        assert_eq!(
            parse_gateway_line(line),
            Some("127.0.0.1:41234".parse().unwrap())
        );
    }

    /// A request head is complete only after the request line, even when a
    /// PROXY v2 header (which starts with CRLF CRLF) precedes it.
    #[test]
    fn request_completion() {
        let v2 = proxy_v2(
            "192.0.2.1:1000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        assert!(!request_complete(&v2));
        let full = [v2.as_slice(), &http_request(&[])].concat();
        assert!(request_complete(&full));
        assert!(!request_complete(&full[..full.len() - 1]));
    }

    /// The body is returned once Content-Length bytes are in.
    #[test]
    fn answer_body() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nalice";
        assert_eq!(complete_body(a), Ok(Some("alice".into())));
        assert_eq!(complete_body(&a[..a.len() - 1]), Ok(None));
        assert!(complete_body(b"HTTP/1.1 502 Bad\r\n\r\n").is_err());
    }
}
