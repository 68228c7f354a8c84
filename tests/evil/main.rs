//! `drover-evil-worker`: a compromised worker, for the e2e tests of issue 8
//! (a worker cannot hurt the master). Test-only; never installed.
//!
//! The master runs it as its worker binary (`DROVER_WORKER_BIN`), with the
//! real worker's argv (`--instance ID --control-fd 3`).
//!
//! 1. Peek at the first frame on fd 3 (`MSG_PEEK`, so it stays queued, and
//!    without a control buffer, so none of its fds are taken): the `Hello`.
//! 2. Its URL's key (`server://KEY@…`) names a behaviour when it starts with
//!    `evil-` (see [`drover_e2e::evil`]); any other instance `exec`s the real
//!    `drover-worker` (beside this binary) with the same argv, which then
//!    reads the untouched `Hello` and its fds as usual.
//! 3. A behaviour consumes the `Hello`, misbehaves, and then stays alive
//!    (bounded: [`LINGER`]) with its control socket open, so that its end is
//!    the master's doing. What it learns (answers to its `Bind`s) it reports
//!    in `Log` lines starting with `evil:`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use drover_e2e::evil::{
    Behaviour, CHILD_ARG, CHILD_REPORT, DONE_TCPS, HOG_MAX, STDERR_DONE, STDERR_FLOOD_BYTES,
};
use proto::message::{Bind, Log, Ready, Stats, Transport};
use proto::{MAX_FRAME, ToMaster, ToWorker, TunnelSpec, frame};

/// How long a behaviour keeps the process alive after misbehaving.
const LINGER: Duration = Duration::from_secs(120);
/// How long to wait for the whole `Hello` to arrive.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// How long the `Bind` flood of [`Behaviour::Deaf`] may go on.
const FLOOD_FOR: Duration = Duration::from_secs(60);
/// Messages of a `Log` or `Stats` flood.
const FLOOD_MESSAGES: u64 = 20_000;
/// How many of a `Log` flood's lines are a megabyte long.
const LONG_LINES: u64 = 16;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
        // A NoTerm child: SIGTERM ignored (inherited), in the worker's group.
        std::thread::sleep(LINGER);
        return ExitCode::SUCCESS;
    }
    let control_fd = args
        .iter()
        .position(|a| a == "--control-fd")
        .and_then(|i| args.get(i + 1))
        .and_then(|fd| fd.parse::<i32>().ok());
    if args.iter().any(|a| a == "--spare") {
        // A spare: the real worker waits for `Become`, then re-executes
        // argv[0] (us) as `--instance <id>`, and we see that one's Hello.
        exec_real_worker_as(&args, &args[0]);
    }
    let Some(control_fd) = control_fd else {
        // Not started by a master: behave as the real worker would.
        exec_real_worker(&args);
    };
    let Some(hello) = peek_hello(control_fd) else {
        exec_real_worker(&args);
    };
    let key = TunnelSpec::parse(hello.url.expose())
        .ok()
        .and_then(|spec| spec.key.map(|k| k.expose().to_string()));
    let Some(behaviour) = key.as_deref().and_then(Behaviour::from_key) else {
        exec_real_worker(&args);
    };
    // SAFETY: the master gave us fd 3 as our control socket; nobody else owns it.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(control_fd) });
    let mut evil = Evil {
        sock,
        buf: Vec::new(),
        spec: TunnelSpec::parse(hello.url.expose()).expect("parsed above"),
    };
    // Take the Hello (and close its listener fds: this worker serves nothing).
    let _ = evil.recv();
    evil.run(behaviour);
    linger(&evil.sock);
    ExitCode::SUCCESS
}

/// Replaces this process with the real worker, same argv.
fn exec_real_worker(args: &[String]) -> ! {
    let exe = std::env::current_exe().expect("own path");
    exec_real_worker_as(args, exe.with_file_name("drover-worker"))
}

/// [`exec_real_worker`] with `arg0` as the new image's argv[0].
fn exec_real_worker_as(args: &[String], arg0: impl AsRef<std::ffi::OsStr>) -> ! {
    let exe = std::env::current_exe().expect("own path");
    let real: PathBuf = exe.with_file_name("drover-worker");
    let err = std::process::Command::new(&real)
        .arg0(arg0)
        .args(&args[1..])
        .exec();
    eprintln!("drover-evil-worker: exec {}: {err}", real.display());
    std::process::exit(1);
}

/// The first frame on the control socket, left in place.
fn peek_hello(fd: i32) -> Option<proto::message::Hello> {
    let mut buf = vec![0u8; MAX_FRAME + frame::HEADER_LEN];
    let start = Instant::now();
    while start.elapsed() < HELLO_WAIT {
        // SAFETY: buf is valid for buf.len() bytes; no control buffer, so no fds are installed.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        if n <= 0 {
            return None;
        }
        match frame::decode::<ToWorker>(&buf[..n as usize]) {
            Ok(Some((ToWorker::Hello(hello), _))) => return Some(hello),
            Ok(Some(_)) | Err(_) => return None,
            // Part of the frame so far: look again once more arrived.
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    None
}

/// Keeps the process (and its control socket) alive, reading and dropping
/// whatever the master sends, until the master closes it or [`LINGER`].
fn linger(sock: &UnixStream) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let mut sink = [0u8; 4096];
    while start.elapsed() < LINGER {
        match (&*sock).read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// The `Stats` a flood ends with: `tcps` = [`DONE_TCPS`] tells the test
/// that the master has read everything before it.
fn done_stats() -> Stats {
    Stats {
        mode: 1,
        tcps: DONE_TCPS,
        ..Stats::default()
    }
}

/// Sleeps without reading anything, up to [`LINGER`].
fn sleep_deaf() {
    std::thread::sleep(LINGER);
}

struct Evil {
    sock: UnixStream,
    /// Bytes read but not yet taken as frames.
    buf: Vec<u8>,
    spec: TunnelSpec,
}

impl Evil {
    fn send(&self, msg: &ToMaster) -> bool {
        let bytes = frame::encode(msg).expect("encodable");
        (&self.sock).write_all(&bytes).is_ok()
    }

    fn raw(&self, bytes: &[u8]) -> bool {
        (&self.sock).write_all(bytes).is_ok()
    }

    fn report(&self, line: String) {
        self.send(
            &Log {
                level: "warn".into(),
                line: format!("evil: {line}"),
            }
            .into(),
        );
    }

    fn ready(&self) {
        self.send(
            &Ready {
                pid: std::process::id(),
                entry: None,
                mode: 1,
            }
            .into(),
        );
    }

    /// The next message from the master and how many fds came with it
    /// (closed at once). `None` at EOF or on a broken frame.
    fn recv(&mut self) -> Option<(ToWorker, usize)> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match frame::check(&self.buf) {
                Ok(Some(len)) => {
                    let msg =
                        proto::message::from_json::<ToWorker>(&self.buf[frame::HEADER_LEN..len]);
                    self.buf.drain(..len);
                    return msg.ok().map(|m| (m, fds.len()));
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            match proto::fdpass::recv(self.sock.as_fd(), &mut chunk) {
                Ok((0, _)) | Err(_) => return None,
                Ok((n, got)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    fds.extend(got);
                }
            }
        }
    }

    fn run(&mut self, behaviour: Behaviour) {
        match behaviour {
            Behaviour::Oversize => {
                self.ready();
                // A header claiming 2 GiB, then a little of the "body".
                self.raw(&(1u32 << 31).to_be_bytes());
                self.raw(&[b'{'; 1024]);
            }
            Behaviour::Garbage => {
                self.ready();
                // A well-sized frame whose body is not JSON.
                let body: Vec<u8> = (0..512u32).map(|i| (i * 7 + 13) as u8).collect();
                self.raw(&(body.len() as u32).to_be_bytes());
                self.raw(&body);
            }
            Behaviour::Noise => {
                self.ready();
                // Not framed at all: what a confused program might write.
                self.raw(b"GET / HTTP/1.1\r\nHost: drover\r\n\r\n");
            }
            Behaviour::FdSmuggle => {
                self.ready();
                // A Log (which carries no fds) with an fd attached.
                let bytes = frame::encode(&ToMaster::from(Log {
                    level: "info".into(),
                    line: "with an fd".into(),
                }))
                .expect("encodable");
                let _ = proto::fdpass::send(self.sock.as_fd(), &bytes, &[self.sock.as_fd()]);
            }
            Behaviour::LogFlood => {
                self.ready();
                let long = "L".repeat(MAX_FRAME - 100);
                for i in 0..FLOOD_MESSAGES {
                    // First lines as long as a frame allows, then short ones.
                    let line = if i < LONG_LINES {
                        long.clone()
                    } else {
                        format!("flood line {i}")
                    };
                    if !self.send(
                        &Log {
                            level: "info".into(),
                            line,
                        }
                        .into(),
                    ) {
                        return;
                    }
                }
                self.send(&done_stats().into());
            }
            Behaviour::StderrFlood => {
                self.ready();
                let mut err = std::io::stderr().lock();
                for i in 0..16 {
                    let _ = writeln!(err, "stderr line {i}");
                }
                // One line of STDERR_FLOOD_BYTES, then the marker on a line of its own.
                let chunk = vec![b'E'; 64 * 1024];
                for _ in 0..STDERR_FLOOD_BYTES / chunk.len() {
                    if err.write_all(&chunk).is_err() {
                        return;
                    }
                }
                let _ = writeln!(err, "\n{STDERR_DONE}");
                let _ = err.flush();
                self.send(&done_stats().into());
            }
            Behaviour::StatsFlood => {
                self.ready();
                for i in 0..FLOOD_MESSAGES {
                    // Counters that jump to the top of u64 and back down.
                    let n = if i % 2 == 0 { u64::MAX - i } else { i };
                    let stats = Stats {
                        mode: 1,
                        ping: n,
                        pool: n,
                        tcps: n,
                        udps: n,
                        tcprx: n,
                        tcptx: n,
                        udprx: n,
                        udptx: n,
                        idle_ms: n,
                    };
                    if !self.send(&stats.into()) {
                        return;
                    }
                }
                self.send(
                    &Stats {
                        tcprx: u64::MAX,
                        tcptx: u64::MAX,
                        udprx: u64::MAX,
                        udptx: u64::MAX,
                        ..done_stats()
                    }
                    .into(),
                );
                // Exit, so the next worker's counters add up on top of these.
                std::process::exit(0);
            }
            Behaviour::Bind(ports) => {
                self.ready();
                for addr in bind_targets(&self.spec, &ports) {
                    for proto in [Transport::Tcp, Transport::Udp] {
                        if !self.send(
                            &Bind {
                                addr: addr.clone(),
                                proto,
                            }
                            .into(),
                        ) {
                            return;
                        }
                        let answer = self.answer();
                        self.report(format!("bind {addr:?}/{proto} -> {answer}"));
                    }
                }
                self.report("bind done".into());
            }
            Behaviour::Silent => sleep_deaf(),
            Behaviour::NoPong => {
                self.ready();
                sleep_deaf();
            }
            Behaviour::NoShutdown => self.ready(),
            Behaviour::Hog => {
                self.ready();
                const MIB: usize = 1 << 20;
                let mut held: Vec<Vec<u8>> = Vec::new();
                while held.len() * MIB < HOG_MAX {
                    // Touched, so each MiB is resident (and charged).
                    held.push(vec![0x5a; MIB]);
                    std::thread::sleep(Duration::from_millis(1));
                }
                self.report(format!("hogging {} MiB", held.len()));
                linger(&self.sock);
            }
            Behaviour::NoTerm => {
                // SAFETY: setting a signal disposition to SIG_IGN in a single-threaded process.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                // The child inherits SIG_IGN and our process group.
                let exe = std::env::current_exe().expect("own path");
                match std::process::Command::new(exe)
                    .arg(CHILD_ARG)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                {
                    Ok(child) => self.report(format!(
                        "{}{}",
                        CHILD_REPORT.trim_start_matches("evil: "),
                        child.id()
                    )),
                    Err(e) => self.report(format!("cannot start a child: {e}")),
                }
                self.ready();
            }
            Behaviour::Deaf => {
                self.ready();
                // Binds whose answers it never reads, until the master's
                // answers fill the socket, then nothing.
                let start = Instant::now();
                while start.elapsed() < FLOOD_FOR {
                    let bind = Bind {
                        addr: "127.0.0.1:1".into(),
                        proto: Transport::Tcp,
                    };
                    if !self.send(&bind.into()) {
                        return;
                    }
                }
            }
        }
    }

    /// The master's answer to a `Bind`, as a report line: `Bound fds=N` or
    /// `BindError: reason`; other messages on the way are skipped.
    fn answer(&mut self) -> String {
        for _ in 0..1000 {
            match self.recv() {
                Some((ToWorker::Bound(_), fds)) => return format!("Bound fds={fds}"),
                Some((ToWorker::BindError(e), _)) => return format!("BindError: {}", e.reason),
                Some(_) => continue,
                None => return "no answer (control closed)".into(),
            }
        }
        "no answer".into()
    }
}

/// What a `Bind` behaviour asks for: the given ports on every spelling of a
/// local address, its own URL's addresses, and addresses that are not
/// addresses at all.
fn bind_targets(spec: &TunnelSpec, ports: &[u16]) -> Vec<String> {
    let mut out = Vec::new();
    for p in ports {
        for host in ["127.0.0.1", "0.0.0.0", "", "[::1]", "[::]", "localhost"] {
            out.push(format!("{host}:{p}"));
        }
    }
    out.push(spec.tunnel.to_string());
    for t in &spec.targets {
        out.push(t.to_string());
    }
    for junk in [
        "",
        "garbage",
        "/tmp/drover-evil.sock",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "192.0.2.1:80",
        "[::1:80",
        "\u{0}:80",
    ] {
        out.push(junk.to_string());
    }
    out.push(format!("{}:1", "a".repeat(5000)));
    out
}
