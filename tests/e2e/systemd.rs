//! Running under systemd: the real `drover` talks `sd_notify` to a datagram
//! socket this test binds as `$NOTIFY_SOCKET` (playing the service manager),
//! and `scripts/drover.service` passes `systemd-analyze verify`.
//!
//! 1. Start `drover "master://127.0.0.1:0/api"` with `NOTIFY_SOCKET` and
//!    `WATCHDOG_USEC=2000000` (so pings are due every second).
//! 2. `READY=1` arrives with a `STATUS=` naming the bound API address, and
//!    that address accepts connections.
//! 3. `STATUS=` carries the instance counts: `0 running` at first, `1
//!    running` once an instance is created through the API.
//! 4. `WATCHDOG=1` arrives again and again at about half `WATCHDOG_USEC`:
//!    counted over a window, within generous bounds.
//! 5. SIGTERM → `STOPPING=1`, then exit status 0.
//!
//! The master is spawned here rather than by `Master::start`, which clears
//! `NOTIFY_SOCKET` on purpose; its output goes to a file shown on failure.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use drover_e2e::master::master_bin;
use drover_e2e::{Api, DEADLINE, free_addr, worker_bin};

/// `WATCHDOG_USEC` given to the master: pings every second.
const WATCHDOG_USEC: &str = "2000000";
/// Pings are counted over this window after `READY=1`: about 6 are due.
const PING_WINDOW: Duration = Duration::from_secs(6);
/// Bounds of the count: pings every 0.5–2 s (half of `WATCHDOG_USEC` is 1 s).
const PINGS: std::ops::RangeInclusive<usize> = 3..=12;
/// One read on the notify socket; short so deadlines are checked often.
const RECV_SLICE: Duration = Duration::from_millis(100);

/// The fake service manager's end: every datagram the master sent.
struct Notify {
    sock: UnixDatagram,
    received: Vec<String>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).expect("binding the notify socket");
        sock.set_read_timeout(Some(RECV_SLICE))
            .expect("read timeout");
        Notify {
            sock,
            received: Vec::new(),
        }
    }

    /// Reads datagrams until `at` (or until `master` exits).
    fn until_time(&mut self, master: &mut Running, at: Instant) {
        let left = at.saturating_duration_since(Instant::now());
        self.until(master, left, |_| false);
    }

    /// Reads datagrams until one satisfies `want`, returning it; `None` when
    /// `timeout` passes or `master` exits first.
    fn until(
        &mut self,
        master: &mut Running,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < end {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.received.push(msg.clone());
                    if want(&msg) {
                        return Some(msg);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if master.exited().is_some() {
                        return None;
                    }
                }
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
        None
    }
}

/// The master process; `Drop` kills its process group and reaps it.
struct Running {
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Running {
    fn start(dir: &Path, notify: &Path) -> Running {
        let log = dir.join("master.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file clone");
        let child = Command::new(master_bin())
            .arg("master://127.0.0.1:0/api")
            .env("DROVER_DATA_DIR", dir.join("data"))
            .env("DROVER_WORKER_BIN", worker_bin())
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            .env_remove("STATE_DIRECTORY")
            .env_remove("DROVER_BIN")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning drover");
        Running {
            child,
            status: None,
            log,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn dump(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("----- master log -----\n{text}----- end of master log -----")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// `…STATUS=API on http://127.0.0.1:PORT/api; 0 running, …` → the address.
/// The scheme is optional.
fn status_addr(msg: &str) -> Option<SocketAddr> {
    let status = msg.lines().find_map(|l| l.strip_prefix("STATUS="))?;
    let rest = &status[status.find("API on ")? + "API on ".len()..];
    let api = rest.split([';', ' ']).next()?;
    let api = api
        .strip_prefix("http://")
        .or_else(|| api.strip_prefix("https://"))
        .unwrap_or(api);
    api.split('/').next()?.parse().ok()
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// The `STATUS=` text of a notification, if it has one.
fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// Creates an instance through the master's API at `addr` (the key from its
/// first-start log line); returns its id.
fn create_instance(master: &Running, addr: SocketAddr) -> String {
    const MARKER: &str = "API Key created: ";
    let log = std::fs::read_to_string(&master.log).unwrap_or_default();
    let key = log
        .lines()
        .find_map(|l| Some(l[l.find(MARKER)? + MARKER.len()..].trim().to_string()))
        .unwrap_or_else(|| panic!("no {MARKER:?} in the master's log\n{}", master.dump()));
    let api = Api::new(
        drover_e2e::api::http_client(),
        format!("http://{addr}/api"),
        Some(key),
    );
    let url = format!("client://{}/127.0.0.1:1?mode=1", free_addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    drover_e2e::api::id_of(&rt.block_on(api.create_url(&url)))
}

/// READY=1 with the bound address in STATUS=, instance counts in STATUS=,
/// periodic WATCHDOG=1 and STOPPING=1 on SIGTERM, as a `Type=notify` unit
/// with `WatchdogSec=` needs.
#[test]
fn notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::Builder::new()
        .prefix("drover-e2e-systemd-")
        .tempdir()
        .expect("temporary dir");
    let socket = dir.path().join("notify");
    let mut notify = Notify::bind(&socket);
    let mut master = Running::start(dir.path(), &socket);

    let ready = notify
        .until(&mut master, DEADLINE, |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| {
            panic!(
                "no READY=1 within {DEADLINE:?} (master exited: {:?}); got {:?}",
                master.exited(),
                notify.received
            )
        });
    let addr = status_addr(&ready)
        .unwrap_or_else(|| panic!("READY=1 came without `STATUS=API on <addr>…`: {ready:?}"));
    assert_ne!(
        addr.port(),
        0,
        "STATUS names the requested port 0, not the bound one: {ready:?}"
    );
    TcpStream::connect_timeout(&addr, DEADLINE)
        .unwrap_or_else(|e| panic!("the API is not at {addr} from {ready:?}: {e}"));

    let ready_at = Instant::now();
    let ready_index = notify.received.len();
    assert!(
        status_of(&ready).is_some_and(|s| s.contains("; 0 running, 0 stopped, 0 error")),
        "READY's STATUS= should count no instance: {ready:?}"
    );

    // The counts follow the instances: one created, one running.
    let id = create_instance(&master, addr);
    notify
        .until(&mut master, DEADLINE, |m| {
            status_of(m).is_some_and(|s| s.contains("; 1 running, 0 stopped, 0 error"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no STATUS= with `1 running` within {DEADLINE:?} of creating {id}; got {:?}",
                notify.received
            )
        });

    // Pings keep coming, at about half WATCHDOG_USEC.
    notify.until_time(&mut master, ready_at + PING_WINDOW);
    assert!(
        master.exited().is_none(),
        "the master exited\n{}",
        master.dump()
    );
    let pings = notify.received[ready_index..]
        .iter()
        .filter(|m| has_line(m, "WATCHDOG=1"))
        .count();
    assert!(
        PINGS.contains(&pings),
        "{pings} WATCHDOG=1 in {PING_WINDOW:?} with WATCHDOG_USEC={WATCHDOG_USEC} (want {PINGS:?}); got {:?}",
        notify.received
    );

    kill(master.pid(), Signal::SIGTERM).expect("SIGTERM");
    notify
        .until(&mut master, DEADLINE, |m| has_line(m, "STOPPING=1"))
        .unwrap_or_else(|| {
            panic!(
                "no STOPPING=1 within {DEADLINE:?} of SIGTERM; got {:?}",
                notify.received
            )
        });
    let status = master
        .wait_exit(DEADLINE)
        .unwrap_or_else(|| panic!("master still running {DEADLINE:?} after SIGTERM"));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// `scripts/check-unit` accepts `scripts/drover.service` (skipped, with a
/// note, where systemd-analyze is not installed).
#[test]
fn unit_file_verifies() {
    let has_analyze = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_analyze {
        eprintln!(
            "note: systemd-analyze not found; skipping the unit check (apt-get install systemd)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-unit");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The address comes out of the status line, with or without a scheme.
#[test]
fn reads_the_address_from_the_status_line() {
    let cases = [
        (
            "READY=1\nSTATUS=API on http://127.0.0.1:42369/api; 0 running, 0 stopped, 0 error\n",
            Some("127.0.0.1:42369"),
        ),
        (
            "STATUS=API on 127.0.0.1:9090/api; 3 running, 1 stopped, 0 error\n",
            Some("127.0.0.1:9090"),
        ),
        (
            "STATUS=API on https://[::1]:9090/api; 1 running\n",
            Some("[::1]:9090"),
        ),
        ("READY=1\n", None),
        ("STATUS=starting\n", None),
    ];
    for (msg, want) in cases {
        let got = status_addr(msg).map(|a| a.to_string());
        assert_eq!(got.as_deref(), want, "{msg:?}");
    }
}
