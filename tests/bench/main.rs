//! `drover-bench`: the small load driver behind `scripts/bench`.
//!
//! Python is too slow to time microsecond round trips or to open tens of
//! thousands of connections per second, so those loops live here. Every
//! subcommand talks to loopback addresses only (anything else is refused),
//! is bounded in time, and prints one line of JSON on stdout.
//!
//! ```text
//! drover-bench echo     --port P [--udp] [--max-seconds S]
//! drover-bench pingpong --addr 127.0.0.1:P [--size 64] [--count N] [--warmup-ms 300]
//!                       [--warmup-count 500] [--max-seconds S]
//! drover-bench connrate --addr 127.0.0.1:P[,…] [--concurrency C] [--seconds S] [--max-conns N]
//!                       [--size 64] [--timeout-ms T]
//! drover-bench probe    --addr 127.0.0.1:P[,127.0.0.1:Q…] [--seconds S] [--interval-ms I]
//!                       [--timeout-ms T]
//! drover-bench cipher   [--seconds S]
//! ```
//!
//! * `echo`: TCP echo (one thread per connection) and, with `--udp`, a UDP
//!   echo on the same port number. Prints `{"tcp":P,"udp":P}` once listening.
//! * `pingpong`: one persistent connection (TCP_NODELAY); a `size`-byte
//!   request, wait for the whole echo; a warm-up of at least `warmup-count`
//!   round trips and `warmup-ms` (the scheduler needs a few tens of ms to
//!   settle client and server on their CPUs), then `count` timed round trips.
//! * `connrate`: `concurrency` threads, each repeating connect → send
//!   `size` bytes → read the echo → close; connections per second and the
//!   connect-to-echo latency percentiles. With several `--addr`s each thread
//!   takes them in turn and the latencies are also given per address.
//! * `probe`: one connection attempt after another (round robin over the
//!   addresses), counting how each ended: echoed, refused, reset, timed out.
//!   Runs until `seconds` pass or stdin is closed, then prints the counts.
//! * `cipher`: bytes/s of AES-128-GCM sealing and opening 16 KiB TLS records
//!   in place on one core, with the `ring` build that rustls uses in
//!   `drover-worker` (what tls=1 links negotiate):
//!   `{"encrypt":B,"decrypt":B,"record":16384}`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const USAGE: &str =
    "usage: drover-bench echo|pingpong|connrate|probe|cipher [options] (see the source header)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("drover-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let res = match cmd.as_str() {
        "echo" => echo(&opts),
        "pingpong" => pingpong(&opts),
        "connrate" => connrate(&opts),
        "probe" => probe(&opts),
        "cipher" => cipher(&opts),
        _ => Err(USAGE.to_string()),
    };
    match res {
        Ok(v) => {
            if !v.is_null() {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drover-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` pairs and `--flag`s.
struct Opts(Vec<(String, Option<String>)>);

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().cloned(),
                _ => None,
            };
            out.push((name.to_string(), value));
        }
        Ok(Self(out))
    }

    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.text(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}")),
        }
    }

    /// `--addr`, a comma-separated list of loopback socket addresses.
    fn addrs(&self) -> Result<Vec<SocketAddr>, String> {
        let text = self.text("addr").ok_or("--addr is required")?;
        text.split(',').map(loopback).collect()
    }
}

/// Parses `s` and refuses anything but a loopback address.
fn loopback(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("not an address: {s:?}"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{a}: only loopback addresses are allowed"));
    }
    Ok(a)
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Percentiles of nanosecond samples, in µs.
fn summary_us(mut ns: Vec<u64>) -> Value {
    ns.sort_unstable();
    let us = |x: u64| (x as f64 / 100.0).round() / 10.0;
    let mean = if ns.is_empty() {
        0.0
    } else {
        ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64
    };
    json!({
        "n": ns.len(),
        "min": us(pct(&ns, 0.0)),
        "p50": us(pct(&ns, 50.0)),
        "p90": us(pct(&ns, 90.0)),
        "p99": us(pct(&ns, 99.0)),
        "max": us(ns.last().copied().unwrap_or(0)),
        "mean": (mean / 100.0).round() / 10.0,
    })
}

// ---------------------------------------------------------------- echo

fn echo(o: &Opts) -> Result<Value, String> {
    let port: u16 = o.num("port", 0)?;
    let max = Duration::from_secs_f64(o.num("max-seconds", 3600.0)?);
    let tcp = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("bind tcp: {e}"))?;
    let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
    let mut udp_port = Value::Null;
    if o.flag("udp") {
        let udp = UdpSocket::bind(("127.0.0.1", port)).map_err(|e| format!("bind udp: {e}"))?;
        udp_port = json!(port);
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
    }
    println!("{}", json!({"tcp": port, "udp": udp_port}));
    let _ = io::stdout().flush();
    thread::spawn(move || {
        thread::sleep(max);
        std::process::exit(0);
    });
    for conn in tcp.incoming() {
        let Ok(s) = conn else {
            // EMFILE and friends: do not spin.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || echo_conn(s));
    }
    Ok(Value::Null)
}

fn echo_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------- pingpong

fn pingpong(o: &Opts) -> Result<Value, String> {
    let addr = *o.addrs()?.first().ok_or("--addr is empty")?;
    let size: usize = o.num("size", 64)?;
    let count: usize = o.num("count", 20_000)?;
    let warm_ms: u64 = o.num("warmup-ms", 300)?;
    let warm_count: usize = o.num("warmup-count", 500)?;
    let max = Duration::from_secs_f64(o.num("max-seconds", 30.0)?);
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut resp = vec![0u8; size];
    let mut round = |s: &mut TcpStream| -> Result<(), String> {
        s.write_all(&req).map_err(|e| format!("write: {e}"))?;
        s.read_exact(&mut resp).map_err(|e| format!("read: {e}"))?;
        if resp != req {
            return Err("echo differs from the request".into());
        }
        Ok(())
    };
    let mut warm = 0usize;
    let warm_until = started + Duration::from_millis(warm_ms);
    while warm < warm_count || Instant::now() < warm_until {
        round(&mut s)?;
        warm += 1;
        if started.elapsed() > max {
            return Err("time bound hit during the warm-up".into());
        }
    }
    let mut ns = Vec::with_capacity(count);
    let mut truncated = false;
    for _ in 0..count {
        let t = Instant::now();
        round(&mut s)?;
        ns.push(t.elapsed().as_nanos() as u64);
        if started.elapsed() > max {
            truncated = true;
            break;
        }
    }
    Ok(json!({
        "addr": addr.to_string(), "size": size, "warmup_rounds": warm,
        "truncated": truncated, "rtt_us": summary_us(ns),
    }))
}

// ---------------------------------------------------------------- connrate

#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    timeout: AtomicU64,
    eof: AtomicU64,
    other: AtomicU64,
}

impl Outcomes {
    fn count(&self, e: &io::Error) {
        use io::ErrorKind::*;
        let c = match e.kind() {
            ConnectionRefused => &self.refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => &self.reset,
            TimedOut | WouldBlock => &self.timeout,
            UnexpectedEof => &self.eof,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "ok": g(&self.ok), "refused": g(&self.refused), "reset": g(&self.reset),
            "timeout": g(&self.timeout), "eof": g(&self.eof), "other": g(&self.other),
        })
    }
}

/// connect → send → read the echo → close. Returns the time to the whole echo.
fn one_exchange(addr: &SocketAddr, req: &[u8], timeout: Duration) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req)?;
    let mut got = 0;
    let mut buf = [0u8; 1024];
    while got < req.len() {
        let n = s.read(&mut buf[..(req.len() - got).min(1024)])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(t.elapsed())
}

fn connrate(o: &Opts) -> Result<Value, String> {
    let addrs = o.addrs()?;
    let conc: usize = o.num("concurrency", 1)?;
    let secs: f64 = o.num("seconds", 3.0)?;
    let max_conns: u64 = o.num("max-conns", 50_000)?;
    let size: usize = o.num("size", 64)?;
    let timeout = Duration::from_millis(o.num("timeout-ms", 2000)?);
    if conc == 0 || conc > 1024 {
        return Err("--concurrency must be 1..=1024".into());
    }
    // Lower-case payload: the master's gateway reads it as "not HTTP, no
    // PROXY header" and identifies the client by its address.
    let req: Arc<Vec<u8>> = Arc::new((0..size).map(|i| b'a' + (i % 26) as u8).collect());
    let out = Arc::new(Outcomes::default());
    let issued = Arc::new(AtomicU64::new(0));
    // Latencies per address: with several addresses every thread takes them
    // in turn, so they are compared under the same conditions.
    let lat = Arc::new(Mutex::new(vec![Vec::<u64>::new(); addrs.len()]));
    let addrs = Arc::new(addrs);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut threads = Vec::new();
    for t in 0..conc {
        let (req, out, issued, lat, addrs) = (
            req.clone(),
            out.clone(),
            issued.clone(),
            lat.clone(),
            addrs.clone(),
        );
        threads.push(thread::spawn(move || {
            let mut mine = vec![Vec::with_capacity(4096); addrs.len()];
            let mut i = t;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_conns {
                let k = i % addrs.len();
                i += 1;
                match one_exchange(&addrs[k], &req, timeout) {
                    Ok(d) => {
                        out.ok.fetch_add(1, Ordering::Relaxed);
                        mine[k].push(d.as_nanos() as u64);
                    }
                    Err(e) => {
                        out.count(&e);
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            let mut all = lat.lock().expect("latency lock");
            for (k, v) in mine.into_iter().enumerate() {
                all[k].extend(v);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per = std::mem::take(&mut *lat.lock().expect("latency lock"));
    let total: usize = per.iter().map(Vec::len).sum();
    let mut per_addr = serde_json::Map::new();
    if addrs.len() > 1 {
        for (k, v) in per.iter().enumerate() {
            per_addr.insert(addrs[k].to_string(), summary_us(v.clone()));
        }
    }
    Ok(json!({
        "addr": addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        "concurrency": conc, "elapsed_s": elapsed,
        "rate": total as f64 / elapsed, "outcomes": out.json(),
        "latency_us": summary_us(per.concat()), "per_addr": per_addr,
    }))
}

// ---------------------------------------------------------------- probe

fn probe(o: &Opts) -> Result<Value, String> {
    let addrs = o.addrs()?;
    let secs: f64 = o.num("seconds", 60.0)?;
    let interval = Duration::from_millis(o.num("interval-ms", 2)?);
    let timeout = Duration::from_millis(o.num("timeout-ms", 3000)?);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let req = b"probe-0123456789abcdef".to_vec();
    let out = Outcomes::default();
    let mut failures = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut i = 0usize;
    let mut ns = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let addr = addrs[i % addrs.len()];
        i += 1;
        let at = started.elapsed().as_secs_f64();
        match one_exchange(&addr, &req, timeout) {
            Ok(d) => {
                out.ok.fetch_add(1, Ordering::Relaxed);
                ns.push(d.as_nanos() as u64);
            }
            Err(e) => {
                out.count(&e);
                if failures.len() < 200 {
                    failures
                        .push(json!({"t": at, "addr": addr.to_string(), "error": e.to_string()}));
                }
            }
        }
        thread::sleep(interval);
    }
    Ok(json!({
        "attempts": i, "elapsed_s": started.elapsed().as_secs_f64(), "outcomes": out.json(),
        "latency_us": summary_us(ns), "failures": failures,
    }))
}

// ---------------------------------------------------------------- cipher

fn cipher(o: &Opts) -> Result<Value, String> {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
    const RECORD: usize = 16 * 1024;
    // Records in flight: 1 MiB, as a busy link's buffers would be (not one
    // record hot in L1 the whole time).
    const RECORDS: usize = 64;
    let secs: f64 = o.num("seconds", 1.0)?;
    if !(0.01..=60.0).contains(&secs) {
        return Err("--seconds must be 0.01..=60".into());
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0x5a; 16]).map_err(|_| "aes key")?);
    let nonce = |seq: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    // The TLS 1.3 record header is the additional data, as in rustls.
    let aad = || Aad::from([0x17, 0x03, 0x03, 0x40, 0x11]);
    let mut records: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| (0..RECORD).map(|j| (i * 7 + j) as u8).collect())
        .collect();
    let (mut sealed, mut opened) = (0u64, 0u64);
    let (mut seal_time, mut open_time) = (Duration::ZERO, Duration::ZERO);
    let half = Duration::from_secs_f64(secs / 2.0);
    let mut seq = 0u64;
    // Seal all, time it; open all, time it; until each side has its half.
    while seal_time < half || open_time < half {
        let t = Instant::now();
        let tags = records
            .iter_mut()
            .enumerate()
            .map(|(i, r)| key.seal_in_place_separate_tag(nonce(seq + i as u64), aad(), r))
            .collect::<Result<Vec<Tag>, _>>()
            .map_err(|_| "seal failed")?;
        seal_time += t.elapsed();
        sealed += (RECORDS * RECORD) as u64;
        let t = Instant::now();
        for ((i, r), tag) in records.iter_mut().enumerate().zip(tags) {
            key.open_in_place_separate_tag(nonce(seq + i as u64), aad(), tag, r, 0..)
                .map_err(|_| "open failed: the cipher is broken")?;
        }
        open_time += t.elapsed();
        opened += (RECORDS * RECORD) as u64;
        seq += RECORDS as u64;
    }
    Ok(json!({
        "encrypt": sealed as f64 / seal_time.as_secs_f64(),
        "decrypt": opened as f64 / open_time.as_secs_f64(),
        "record": RECORD,
    }))
}
