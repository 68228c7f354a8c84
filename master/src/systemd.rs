//! Telling systemd how the master is doing (`sd_notify(3)`), for
//! `Type=notify` + `WatchdogSec=` in `scripts/drover.service`.
//!
//! 1. [`ready`] once the store is open and the API listens: `READY=1` and a
//!    `STATUS=` line that names the API's bound address (the e2e harness
//!    reads the address from it), built by [`status_line`].
//! 2. [`spawn_watchdog`] starts one task that, every [`watchdog_interval`]
//!    (half of `$WATCHDOG_USEC`), sends `WATCHDOG=1` — but only while the
//!    supervisor's [`Heartbeat`] is fresh — and refreshes `STATUS=` from a
//!    closure when its text changed. A stuck supervisor loop therefore stops
//!    the pings and systemd kills and restarts the service (`Restart=on-failure`).
//! 3. [`stopping`] on SIGTERM/SIGINT (`STOPPING=1`), after dropping the
//!    watchdog handle so no count refresh overwrites the stop.
//!
//! Everything is a no-op without `$NOTIFY_SOCKET` (tests, a shell, another
//! supervisor). The wrappers that read the environment are thin; the work is
//! done by functions that take the socket path ([`send_to`]) so unit tests can
//! run in parallel without touching process-global variables. Failures to
//! notify are logged and never stop the master: systemd is an observer here.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

/// The notification socket systemd passes to `Type=notify` services.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Watchdog timeout in microseconds (`WatchdogSec=`).
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog is meant for, when set.
const WATCHDOG_PID: &str = "WATCHDOG_PID";
/// How often `STATUS=` is refreshed when systemd asked for no watchdog.
pub const STATUS_REFRESH: Duration = Duration::from_secs(5);
/// A notification never blocks the runtime longer than this (systemd reads
/// its socket promptly; a full queue means it is wedged, not us).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// `READY=1` and `STATUS=<status>`: the master is up. `status` must name the
/// API's bound address (see [`status_line`]).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// `STATUS=<text>`, shown by `systemctl status drover`.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(&one_line(text))]);
}

/// `STOPPING=1`: the master has begun its graceful stop.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// The status text: `API on <api>; 3 running, 1 stopped, 0 error`, where
/// `api` is what the API is reached at (e.g. `http://127.0.0.1:9090/api`)
/// and the counts come from `Supervisor::counts()`.
pub fn status_line(api: &str, (running, stopped, error): (usize, usize, usize)) -> String {
    format!("API on {api}; {running} running, {stopped} stopped, {error} error")
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` when it is set
/// and `$WATCHDOG_PID` is unset or ours (`sd_watchdog_enabled(3)`), else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var_os(WATCHDOG_USEC).as_deref(),
        std::env::var_os(WATCHDOG_PID).as_deref(),
        std::process::id(),
    )
}

/// Proof of life from the supervisor loop, read by the watchdog task.
///
/// The loop promises to [`beat`](Heartbeat::beat) at least every `period`;
/// the watchdog deems it stuck once no beat came for
/// `2 × max(period, watchdog interval)` (the slack absorbs the loop's own
/// work and timer drift), and stops pinging systemd.
#[derive(Debug)]
pub struct Heartbeat {
    /// The loop's promised beat period.
    period: Duration,
    origin: Instant,
    /// Nanoseconds from `origin` to the last beat.
    last: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat for a loop that beats every `period`; it counts as beaten
    /// now, so the first pings go out before the loop's first round.
    pub fn new(period: Duration) -> Arc<Self> {
        Arc::new(Heartbeat {
            period,
            origin: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    /// The loop is alive: record the time.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        self.last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Time since the last beat, as of `now`.
    fn age_at(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// How old a beat may be before the loop counts as stuck, for a watchdog
    /// that pings every `interval`.
    fn stale_after(&self, interval: Duration) -> Duration {
        self.period.max(interval) * 2
    }
}

/// The running watchdog/status task; dropping it stops the task (drop it
/// before [`stopping`]).
#[derive(Debug, Default)]
pub struct WatchdogHandle {
    task: Option<JoinHandle<()>>,
}

impl WatchdogHandle {
    /// Whether a task runs (false without `$NOTIFY_SOCKET`).
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }
}

impl Drop for WatchdogHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the watchdog/status task (must be called inside the tokio runtime).
///
/// Every [`watchdog_interval`] (or [`STATUS_REFRESH`] when systemd set no
/// watchdog) it sends `WATCHDOG=1` if `heartbeat` is fresh, and `STATUS=`
/// with `status()` when that text changed since the last one sent. Without
/// `$NOTIFY_SOCKET` nothing is started.
pub fn spawn_watchdog(
    heartbeat: Arc<Heartbeat>,
    status: impl Fn() -> String + Send + Sync + 'static,
) -> WatchdogHandle {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return WatchdogHandle::default();
    };
    let interval = watchdog_interval();
    match interval {
        Some(every) => tracing::info!(every = ?every, "systemd watchdog on"),
        None => tracing::debug!("systemd notify on, no watchdog"),
    }
    let mut dog = Watchdog {
        socket,
        interval,
        heartbeat,
        status: Box::new(status),
        last_status: None,
        stuck: false,
    };
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(dog.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            dog.tick_at(Instant::now());
        }
    });
    WatchdogHandle { task: Some(task) }
}

/// State of the watchdog task between rounds.
struct Watchdog {
    socket: OsString,
    /// `None`: systemd wants no `WATCHDOG=1`, only status refreshes.
    interval: Option<Duration>,
    heartbeat: Arc<Heartbeat>,
    status: Box<dyn Fn() -> String + Send + Sync>,
    /// The `STATUS=` text last sent by this task.
    last_status: Option<String>,
    /// Whether the last round found the heartbeat stale (logged once).
    stuck: bool,
}

impl Watchdog {
    fn period(&self) -> Duration {
        self.interval.unwrap_or(STATUS_REFRESH)
    }

    /// One round: returns what was sent (for tests).
    fn tick_at(&mut self, now: Instant) -> Vec<String> {
        let mut msg = Vec::new();
        if let Some(interval) = self.interval {
            let age = self.heartbeat.age_at(now);
            let fresh = age <= self.heartbeat.stale_after(interval);
            if fresh {
                msg.push("WATCHDOG=1".to_string());
            } else if !self.stuck {
                // systemd will kill us within WatchdogSec; say why first.
                tracing::error!(
                    since = ?age,
                    "supervisor loop stuck: withholding systemd watchdog pings"
                );
            }
            if fresh && self.stuck {
                tracing::warn!("supervisor loop beating again: watchdog pings resume");
            }
            self.stuck = !fresh;
        }
        let text = one_line(&(self.status)());
        if self.last_status.as_deref() != Some(text.as_str()) {
            msg.push(format!("STATUS={text}"));
            self.last_status = Some(text);
        }
        if !msg.is_empty() {
            let joined: String = msg.iter().map(|m| format!("{m}\n")).collect();
            if let Err(e) = send_raw(&self.socket, joined.as_bytes()) {
                tracing::warn!(cause = %e, "cannot notify systemd");
            }
        }
        msg
    }
}

/// Sends `states` to `$NOTIFY_SOCKET`, if set; logs a failure.
fn notify(states: &[NotifyState]) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(e) = send_to(&socket, states) {
        tracing::warn!(cause = %e, socket = ?socket, "cannot notify systemd");
    }
}

/// Sends `states`, one `KEY=VALUE` line each, as one datagram to the
/// notification socket at `socket` (a path, or `@name` for an abstract one).
pub fn send_to(socket: &OsStr, states: &[NotifyState]) -> io::Result<()> {
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    send_raw(socket, msg.as_bytes())
}

fn send_raw(socket: &OsStr, msg: &[u8]) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "NOTIFY_SOCKET is neither an absolute path nor @abstract",
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let sent = sock.send_to_addr(msg, &addr)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ));
    }
    Ok(())
}

/// `STATUS=` is one line: a newline would start a bogus assignment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn interval_from(usec: Option<&OsStr>, pid: Option<&OsStr>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        // An unparsable pid cannot be ours (sd_watchdog_enabled fails too).
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram socket bound to a fresh temporary path, as systemd's.
    fn listener() -> (tempfile::TempDir, OsString, UnixDatagram) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        (dir, path.into_os_string(), sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    fn no_more(sock: &UnixDatagram) {
        sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        let got = sock.recv(&mut buf);
        assert!(
            matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "unexpected datagram: {got:?}"
        );
        sock.set_nonblocking(false).expect("blocking");
    }

    fn dog(socket: OsString, interval: Option<Duration>, hb: Arc<Heartbeat>) -> Watchdog {
        Watchdog {
            socket,
            interval,
            heartbeat: hb,
            status: Box::new(|| status_line("http://127.0.0.1:9090/api", (3, 1, 0))),
            last_status: None,
            stuck: false,
        }
    }

    /// Each notification is one datagram of newline-terminated assignments,
    /// as systemd parses them.
    #[test]
    fn sends_the_wire_format() {
        let cases: &[(&[NotifyState], &str)] = &[
            (
                &[
                    NotifyState::Ready,
                    NotifyState::Status("API on x; 0 running"),
                ],
                "READY=1\nSTATUS=API on x; 0 running\n",
            ),
            (&[NotifyState::Stopping], "STOPPING=1\n"),
            (&[NotifyState::Watchdog], "WATCHDOG=1\n"),
        ];
        let (_dir, path, sock) = listener();
        for (states, want) in cases {
            send_to(&path, states).expect("send");
            assert_eq!(recv(&sock), *want);
        }
    }

    /// An abstract socket (`@name`) works too; a relative path is refused.
    #[test]
    fn abstract_and_bad_addresses() {
        let name = format!("drover-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        send_to(OsStr::new(&format!("@{name}")), &[NotifyState::Ready]).expect("send");
        assert_eq!(recv(&sock), "READY=1\n");

        let err = send_to(OsStr::new("relative/notify"), &[NotifyState::Ready])
            .expect_err("relative path refused");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    /// A socket nobody listens on is an error for the caller to log, not a panic.
    #[test]
    fn missing_socket_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent");
        assert!(send_to(path.as_os_str(), &[NotifyState::Ready]).is_err());
    }

    /// The watchdog interval is half of WATCHDOG_USEC, and only for our pid.
    #[test]
    fn watchdog_interval_rules() {
        let me = 4242;
        let cases: &[(Option<&str>, Option<&str>, Option<Duration>)] = &[
            (None, None, None),
            (Some("30000000"), None, Some(Duration::from_secs(15))),
            (Some("2000000"), Some("4242"), Some(Duration::from_secs(1))),
            (Some("2000000"), Some("1"), None),
            (Some("2000000"), Some("x"), None),
            (Some("0"), None, None),
            (Some("abc"), None, None),
            (Some(""), None, None),
        ];
        for (usec, pid, want) in cases {
            let got = interval_from(usec.map(OsStr::new), pid.map(OsStr::new), me);
            assert_eq!(got, *want, "WATCHDOG_USEC={usec:?} WATCHDOG_PID={pid:?}");
        }
    }

    /// A fresh heartbeat gets WATCHDOG=1 every round; a stale one gets none,
    /// and pings resume once the loop beats again.
    #[test]
    fn pings_only_while_the_heartbeat_is_fresh() {
        let (_dir, path, sock) = listener();
        let hb = Heartbeat::new(Duration::from_secs(5));
        let interval = Duration::from_secs(1);
        let mut dog = dog(path, Some(interval), hb.clone());
        let start = Instant::now();
        hb.beat_at(start);

        let sent = dog.tick_at(start + Duration::from_secs(1));
        assert_eq!(
            sent,
            [
                "WATCHDOG=1",
                "STATUS=API on http://127.0.0.1:9090/api; 3 running, 1 stopped, 0 error"
            ]
        );
        assert_eq!(
            recv(&sock),
            "WATCHDOG=1\nSTATUS=API on http://127.0.0.1:9090/api; 3 running, 1 stopped, 0 error\n"
        );

        // Within 2 × max(period 5 s, interval 1 s) = 10 s: still fresh; the
        // unchanged status is not sent again.
        assert_eq!(dog.tick_at(start + Duration::from_secs(10)), ["WATCHDOG=1"]);
        assert_eq!(recv(&sock), "WATCHDOG=1\n");

        // Stuck: nothing at all (the status did not change either).
        assert!(dog.tick_at(start + Duration::from_secs(11)).is_empty());
        assert!(dog.tick_at(start + Duration::from_secs(30)).is_empty());
        no_more(&sock);

        hb.beat_at(start + Duration::from_secs(31));
        assert_eq!(dog.tick_at(start + Duration::from_secs(32)), ["WATCHDOG=1"]);
        assert_eq!(recv(&sock), "WATCHDOG=1\n");
    }

    /// A heartbeat counts as beaten when made, so the first pings go out
    /// before the supervisor loop's first round.
    #[test]
    fn new_heartbeat_is_fresh() {
        let hb = Heartbeat::new(Duration::from_secs(5));
        assert!(hb.age_at(Instant::now()) < Duration::from_secs(1));
    }

    /// Without a watchdog only changed STATUS= lines are sent.
    #[test]
    fn status_refresh_without_watchdog() {
        let (_dir, path, sock) = listener();
        let hb = Heartbeat::new(Duration::from_secs(5));
        let counts = Arc::new(std::sync::Mutex::new((0, 0, 0)));
        let mut dog = dog(path, None, hb);
        let c = counts.clone();
        dog.status = Box::new(move || status_line("127.0.0.1:1/api", *c.lock().unwrap()));
        let now = Instant::now();
        assert_eq!(
            dog.tick_at(now),
            ["STATUS=API on 127.0.0.1:1/api; 0 running, 0 stopped, 0 error"]
        );
        assert!(dog.tick_at(now).is_empty());
        *counts.lock().unwrap() = (1, 0, 2);
        assert_eq!(
            dog.tick_at(now),
            ["STATUS=API on 127.0.0.1:1/api; 1 running, 0 stopped, 2 error"]
        );
        assert_eq!(
            recv(&sock),
            "STATUS=API on 127.0.0.1:1/api; 0 running, 0 stopped, 0 error\n"
        );
        assert_eq!(
            recv(&sock),
            "STATUS=API on 127.0.0.1:1/api; 1 running, 0 stopped, 2 error\n"
        );
    }

    /// A multi-line status is flattened so it stays one assignment.
    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }
}
