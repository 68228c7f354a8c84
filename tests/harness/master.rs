//! One running `drover` master: the process, its log, its data dir.
//!
//! 1. [`master_bin`] finds `drover` beside `drover-worker` (the harness already
//!    knows where that is), or at `$DROVER_BIN`.
//! 2. [`Master::start`] runs it on `master://127.0.0.1:0/api` in its own
//!    process group, with a fresh temporary `DROVER_DATA_DIR` and
//!    `DROVER_WORKER_BIN`; it reads the API key from `API Key created: …` and
//!    the bound address from `API listening on http://…` (stderr).
//! 3. [`Master::restart`] starts a new master on the same data dir and URL
//!    after the previous one exited; the key is the one the first start
//!    printed (later starts never print it).
//! 4. [`Master::api`] / [`Master::api_v1`] talk HTTP (see [`crate::api`]),
//!    [`Master::events`] opens a raw SSE stream (see [`crate::sse`]).
//! 5. `Drop` SIGKILLs the master's process group and any worker it left,
//!    reaps the master, and prints its log when the test is failing.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::sync::watch;

use crate::DEADLINE;
use crate::api::Api;
use crate::procs::{children, proc_alive, proc_cmdline};
use crate::reaped::Reaped;
use crate::sse::SseStream;
use crate::worker::{spawn_line_reader, worker_bin};

/// How often workers report stats and the master persists counters (the
/// master's `STATS_INTERVAL`): tests that check "within one interval" wait
/// for this much time to pass, as the contract is stated in time.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// The master URL tests use unless they need another prefix.
pub const DEFAULT_URL: &str = "master://127.0.0.1:0/api";

/// The log marker of the first start (followed by the key).
const KEY_MARKER: &str = "API Key created: ";
/// The log marker once the API accepts connections (followed by the URL).
const LISTEN_MARKER: &str = "API listening on ";

/// Where the master binary is: `$DROVER_BIN`, else beside `drover-worker`.
pub fn master_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DROVER_BIN") {
        return PathBuf::from(path);
    }
    let bin = worker_bin().with_file_name("drover");
    assert!(
        bin.is_file(),
        "drover binary not found at {}: run `cargo build --workspace --bins` first \
         (or set DROVER_BIN)",
        bin.display()
    );
    bin
}

/// A new, empty data dir for a master (removed when dropped).
fn fresh_data_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("drover-e2e-master-")
        .tempdir()
        .expect("temporary data dir")
}

#[derive(Default)]
pub(crate) struct Log {
    pub(crate) lines: Vec<String>,
    /// Streams that reached EOF (2 = both closed).
    pub(crate) closed: u8,
}

/// A running `drover "master://…"`.
pub struct Master {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The API prefix from the log line, e.g. `/api`.
    pub prefix: String,
    url: String,
    /// The worker binary it runs (`DROVER_WORKER_BIN`).
    worker: PathBuf,
    /// The uid/gid it runs as, when not ours.
    cred: Option<(u32, u32)>,
    /// Environment variables set for it besides the harness's own.
    env: Vec<(String, String)>,
    key: Mutex<String>,
    dir: Arc<TempDir>,
    proc: Reaped,
    log: Arc<Mutex<Log>>,
    changed: watch::Receiver<usize>,
    http: reqwest::Client,
}

impl Master {
    /// A master on [`DEFAULT_URL`] with a fresh data dir.
    pub async fn start() -> Master {
        Self::start_url(DEFAULT_URL).await
    }

    /// A master on `url` (e.g. `master://127.0.0.1:0/admin`) with a fresh data dir.
    pub async fn start_url(url: &str) -> Master {
        let dir = fresh_data_dir();
        Self::launch(url, Arc::new(dir), None, worker_bin(), None, Vec::new()).await
    }

    /// A master on `url` whose data dir is `dir` (e.g. with a tmpfs mounted
    /// on it).
    pub async fn start_in(url: &str, dir: TempDir) -> Master {
        Self::launch(url, Arc::new(dir), None, worker_bin(), None, Vec::new()).await
    }

    /// A master on `url` running as `uid`/`gid` (the test must be root to
    /// switch), with a fresh data dir that user owns.
    pub async fn start_as(url: &str, uid: u32, gid: u32) -> Master {
        let dir = fresh_data_dir();
        nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into()))
            .unwrap_or_else(|e| panic!("chown {} to {uid}:{gid}: {e}", dir.path().display()));
        Self::launch(
            url,
            Arc::new(dir),
            None,
            worker_bin(),
            Some((uid, gid)),
            Vec::new(),
        )
        .await
    }

    /// A master on `url` with a fresh data dir that runs `worker` as its
    /// worker binary (e.g. [`crate::evil::evil_worker_bin`]).
    pub async fn start_with_worker(url: &str, worker: &Path) -> Master {
        let dir = fresh_data_dir();
        Self::launch(
            url,
            Arc::new(dir),
            None,
            worker.to_path_buf(),
            None,
            Vec::new(),
        )
        .await
    }

    /// A master on `url` with a fresh data dir and `env` set besides the
    /// harness's own variables.
    pub async fn start_with_env(url: &str, env: &[(&str, &str)]) -> Master {
        let dir = fresh_data_dir();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(url, Arc::new(dir), None, worker_bin(), None, env).await
    }

    /// A new master on the same data dir and URL as `previous`, which must have
    /// exited; the API key is the one `previous` used.
    pub async fn restart(previous: &Master) -> Master {
        assert!(
            previous.try_status().is_some(),
            "restart: the previous master (pid {}) is still running",
            previous.pid()
        );
        Self::launch(
            &previous.url,
            previous.dir.clone(),
            Some(previous.key()),
            previous.worker.clone(),
            previous.cred,
            previous.env.clone(),
        )
        .await
    }

    async fn launch(
        url: &str,
        dir: Arc<TempDir>,
        known_key: Option<String>,
        worker: PathBuf,
        cred: Option<(u32, u32)>,
        env: Vec<(String, String)>,
    ) -> Master {
        let bin = master_bin();
        let mut cmd = Command::new(&bin);
        if let Some((uid, gid)) = cred {
            // std drops the supplementary groups too when switching from root.
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .arg(url)
            .env("DROVER_DATA_DIR", dir.path())
            .env("DROVER_WORKER_BIN", &worker)
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DROVER_BIN")
            .env_remove("DROVER_SPIN_US")
            .envs(env.iter().map(|(k, v)| (k, v)))
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
            child.stdout.take().expect("piped stdout"),
            log.clone(),
            tx.clone(),
        );
        spawn_reader(child.stderr.take().expect("piped stderr"), log.clone(), tx);
        let http = crate::api::http_client();
        let mut master = Master {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            prefix: String::new(),
            url: url.to_string(),
            worker,
            cred,
            env,
            key: Mutex::new(known_key.clone().unwrap_or_default()),
            dir,
            proc: Reaped::new(child),
            log,
            changed,
            http,
        };
        let line = master.wait_for_line(LISTEN_MARKER, DEADLINE).await;
        let (addr, prefix) = parse_listen_line(&line)
            .unwrap_or_else(|| panic!("cannot read the API address from {line:?}"));
        master.addr = addr;
        master.prefix = prefix;
        if known_key.is_none() {
            let line = master
                .lines()
                .into_iter()
                .find(|l| l.contains(KEY_MARKER))
                .unwrap_or_else(|| {
                    panic!(
                        "a first start logged no {KEY_MARKER:?} line\n{}",
                        master.dump()
                    )
                });
            let key = line[line.find(KEY_MARKER).expect("found") + KEY_MARKER.len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            master.set_key(&key);
        }
        master
    }

    /// The master's pid (also its process group).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The URL it was started with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data dir (`DROVER_DATA_DIR`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API key requests are sent with.
    pub fn key(&self) -> String {
        self.key.lock().expect("key").clone()
    }

    /// Uses `key` from now on (after a regeneration).
    pub fn set_key(&self, key: &str) {
        *self.key.lock().expect("key") = key.to_string();
    }

    /// `http://ADDR`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API at `{prefix}`, with the current key.
    pub fn api(&self) -> Api {
        Api::new(
            self.http.clone(),
            format!("{}{}", self.origin(), self.prefix),
            Some(self.key()),
        )
    }

    /// The API at `{prefix}/v1`, with the current key.
    pub fn api_v1(&self) -> Api {
        self.api().under("/v1")
    }

    /// The API at an arbitrary base path (`"/other"`), with the current key.
    pub fn api_path(&self, base_path: &str) -> Api {
        Api::new(
            self.http.clone(),
            format!("{}{base_path}", self.origin()),
            Some(self.key()),
        )
    }

    /// The API at `{prefix}{spelling}` (`""` or `"/v1"`).
    pub fn api_at(&self, spelling: &str) -> Api {
        self.api().under(spelling)
    }

    /// Opens `GET {prefix}/events` with the current key.
    pub async fn events(&self) -> SseStream {
        self.events_at("", None).await
    }

    /// Opens `GET {prefix}{spelling}/events` with the current key and an
    /// optional raw `Last-Event-ID` header value.
    pub async fn events_at(&self, spelling: &str, last_event_id: Option<&str>) -> SseStream {
        let path = format!("{}{spelling}/events", self.prefix);
        let key = self.key();
        SseStream::open(self.addr, &path, Some(&key), last_event_id).await
    }

    /// Every log line so far (stdout and stderr interleaved).
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").lines.clone()
    }

    /// How many log lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for a log line containing `needle`; panics with the log when the
    /// deadline passes or the master exits first.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let end = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.clone();
        loop {
            let closed = {
                let log = self.log.lock().expect("log");
                if let Some(line) = log.lines.iter().find(|l| l.contains(needle)) {
                    return line.clone();
                }
                log.closed == 2
            };
            if closed {
                panic!(
                    "master exited ({:?}) before logging {needle:?}\n{}",
                    self.try_status(),
                    self.dump()
                );
            }
            if tokio::time::timeout_at(end, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {timeout:?} waiting for the master to log {needle:?}\n{}",
                    self.dump()
                );
            }
        }
    }

    /// Sends `signal` to the master process (not its workers).
    pub fn signal(&self, signal: Signal) {
        self.proc.signal(signal);
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.proc.try_status()
    }

    /// Waits for the master to exit (and its output to be read to the end).
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let status =
            self.proc.wait(timeout).await.unwrap_or_else(|| {
                panic!("master did not exit within {timeout:?}\n{}", self.dump())
            });
        crate::wait::wait_until(timeout, "the master's output is read to the end", || {
            self.log.lock().expect("log").closed == 2
        })
        .await;
        status
    }

    /// SIGTERM, then waits for the exit and asserts status 0.
    pub async fn stop(&self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(DEADLINE).await;
        assert!(
            status.success(),
            "master exit status after SIGTERM: {status}\n{}",
            self.dump()
        );
    }

    /// SIGKILLs the master process only (its workers must follow by
    /// themselves) and reaps it.
    pub fn kill(&self) -> ExitStatus {
        self.proc.kill()
    }

    /// Pids of the master's live child processes right now.
    pub fn children(&self) -> Vec<u32> {
        if self.try_status().is_some() {
            return Vec::new();
        }
        children(self.pid())
    }

    /// The master's instance workers: its children but the spares
    /// (`drover-worker --spare`, kept ready per tenant).
    pub fn instance_workers(&self) -> Vec<u32> {
        self.children()
            .into_iter()
            .filter(|p| {
                !crate::procs::proc_cmdline(*p).is_some_and(|a| a.iter().any(|x| x == "--spare"))
            })
            .collect()
    }

    /// The whole log, for failure messages.
    pub fn dump(&self) -> String {
        let log = self.log.lock().expect("log");
        let mut out = format!(
            "----- log of master pid {} `{}` -----\n",
            self.pid(),
            self.url
        );
        for line in &log.lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("----- end of master log -----");
        out
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let workers: Vec<u32> = self
            .children()
            .into_iter()
            .filter(|pid| is_worker(*pid))
            .collect();
        if self.try_status().is_none() {
            let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        }
        self.kill();
        // Workers die with the master (PDEATHSIG); make sure of it anyway, so
        // a broken master cannot leave processes behind the test run.
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

pub(crate) fn is_worker(pid: u32) -> bool {
    proc_cmdline(pid).is_some_and(|argv| {
        argv.first()
            .is_some_and(|a| a.ends_with("drover-worker") || a.ends_with("drover-evil-worker"))
    })
}

/// `… API listening on http[s]://127.0.0.1:PORT/api addr=…` → (addr, `/api`).
pub(crate) fn parse_listen_line(line: &str) -> Option<(SocketAddr, String)> {
    let rest = &line[line.find(LISTEN_MARKER)? + LISTEN_MARKER.len()..];
    let url = rest.split_whitespace().next()?;
    let hostpath = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (addr, path) = match hostpath.find('/') {
        Some(at) => (&hostpath[..at], &hostpath[at..]),
        None => (hostpath, ""),
    };
    Some((addr.parse().ok()?, path.to_string()))
}

pub(crate) fn spawn_reader(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<Log>>,
    tx: Arc<watch::Sender<usize>>,
) {
    spawn_line_reader(stream, log, tx, |log, line| match line {
        Some(text) => log.lines.push(text),
        None => log.closed += 1,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address and prefix come out of the master's listening line.
    #[test]
    fn parses_the_listening_line() {
        let line = "2026-11-25T13:12:27.214148Z  INFO API listening on http://127.0.0.1:42369/api addr=127.0.0.1:42369 prefix=/api";
        let (addr, prefix) = parse_listen_line(line).expect("parses");
        assert_eq!(addr.to_string(), "127.0.0.1:42369");
        assert_eq!(prefix, "/api");
        let line = "2026-11-25T13:12:27.214148Z  INFO API listening on https://127.0.0.1:42369/x addr=127.0.0.1:42369 prefix=/x";
        let (addr, prefix) = parse_listen_line(line).expect("parses https");
        assert_eq!((addr.port(), prefix.as_str()), (42369, "/x"));
    }
}
