//! One running `drover-worker` process.
//!
//! 1. [`worker_bin`] finds the binary beside the test executable
//!    (`target/debug/drover-worker`), or at `$DROVER_WORKER_BIN`.
//! 2. [`Worker::start`] spawns it with stdout and stderr piped; one reader
//!    thread per stream appends lines to a shared log and bumps a `watch`
//!    counter so waiters wake on every new line.
//! 3. Tests wait for marker lines, send signals and wait for the exit.
//! 4. `Drop` SIGKILLs and reaps a worker still running, and prints its log
//!    when the test is failing.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::reaped::Reaped;
use crate::stats::Stats;

/// Where the worker binary is: `$DROVER_WORKER_BIN`, else beside the test
/// executable (`target/<profile>/deps/e2e-…` → `target/<profile>/drover-worker`).
pub fn worker_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DROVER_WORKER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("drover-worker");
    assert!(
        bin.is_file(),
        "drover-worker binary not found at {}: run `cargo build --workspace --bins` first \
         (or set DROVER_WORKER_BIN)",
        bin.display()
    );
    bin
}

/// One line of output and the stream it came from.
#[derive(Debug, Clone)]
pub struct Line {
    pub stderr: bool,
    pub text: String,
}

#[derive(Default)]
struct Log {
    lines: Vec<Line>,
    /// Streams that reached EOF (2 = both closed, the process is gone).
    closed: u8,
}

/// A running `drover-worker "<url>"`.
pub struct Worker {
    url: String,
    proc: Reaped,
    log: Arc<Mutex<Log>>,
    changed: watch::Receiver<usize>,
}

impl Worker {
    /// Spawns `drover-worker "<url>"`.
    pub fn start(url: &str) -> Worker {
        Self::spawn(url, &[url])
    }

    /// Spawns `drover-worker` with arbitrary arguments.
    pub fn start_args(args: &[&str]) -> Worker {
        Self::spawn(&args.join(" "), args)
    }

    fn spawn(label: &str, args: &[&str]) -> Worker {
        let bin = worker_bin();
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_reader(stdout, false, log.clone(), tx.clone());
        spawn_reader(stderr, true, log.clone(), tx);
        Worker {
            url: label.to_string(),
            proc: Reaped::new(child),
            log,
            changed,
        }
    }

    /// The URL (or argument list) it was started with.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Every line so far, stdout and stderr interleaved as read.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .lock()
            .expect("log")
            .lines
            .iter()
            .map(|l| l.text.clone())
            .collect()
    }

    /// Stderr lines only.
    pub fn stderr_lines(&self) -> Vec<String> {
        let log = self.log.lock().expect("log");
        log.lines
            .iter()
            .filter(|l| l.stderr)
            .map(|l| l.text.clone())
            .collect()
    }

    /// Stdout lines only.
    pub fn stdout_lines(&self) -> Vec<String> {
        let log = self.log.lock().expect("log");
        log.lines
            .iter()
            .filter(|l| !l.stderr)
            .map(|l| l.text.clone())
            .collect()
    }

    /// The number of lines so far: pass it to [`Worker::wait_for_line_since`]
    /// to wait for a line logged after this point.
    pub fn mark(&self) -> usize {
        self.log.lock().expect("log").lines.len()
    }

    /// Lines (after `mark`) containing `needle`.
    pub fn lines_since(&self, mark: usize, needle: &str) -> Vec<String> {
        let log = self.log.lock().expect("log");
        log.lines
            .iter()
            .skip(mark)
            .filter(|l| l.text.contains(needle))
            .map(|l| l.text.clone())
            .collect()
    }

    /// How many lines so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines_since(0, needle).len()
    }

    /// Waits for a line containing `needle` (already logged or to come) and
    /// returns it. Panics with the log when the deadline passes or the worker
    /// exits first.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_since(0, needle, timeout).await
    }

    /// Waits for a line containing `needle` among the lines after `mark`.
    pub async fn wait_for_line_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> String {
        self.wait_for_nth_line_since(mark, needle, 1, timeout).await
    }

    /// Waits until `n` lines containing `needle` have been logged in total,
    /// and returns the `n`th.
    pub async fn wait_for_nth_line(&self, needle: &str, n: usize, timeout: Duration) -> String {
        self.wait_for_nth_line_since(0, needle, n, timeout).await
    }

    async fn wait_for_nth_line_since(
        &self,
        mark: usize,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> String {
        self.wait_for_match(mark, n, &format!("{needle:?}"), timeout, |l| {
            l.contains(needle)
        })
        .await
    }

    /// Waits for a line at `level` (`"WARN"`, `"ERROR"`, …) containing `needle`.
    pub async fn wait_for_level_line(
        &self,
        level: &str,
        needle: &str,
        timeout: Duration,
    ) -> String {
        let level = format!(" {level} ");
        self.wait_for_match(
            0,
            1,
            &format!("{level:?} line with {needle:?}"),
            timeout,
            |l| l.contains(&level) && l.contains(needle),
        )
        .await
    }

    /// Waits for a WARN or ERROR line containing `needle` (a refusal's reason).
    pub async fn wait_for_problem(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_match(
            0,
            1,
            &format!("WARN/ERROR line with {needle:?}"),
            timeout,
            |l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains(needle),
        )
        .await
    }

    /// Waits until `n` lines after `mark` satisfy `pred`; returns the `n`th.
    pub async fn wait_for_match(
        &self,
        mark: usize,
        n: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let end = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.clone();
        loop {
            let closed = {
                let log = self.log.lock().expect("log");
                let found = log
                    .lines
                    .iter()
                    .skip(mark)
                    .filter(|l| pred(&l.text))
                    .nth(n - 1);
                if let Some(line) = found {
                    return line.text.clone();
                }
                log.closed == 2
            };
            if closed {
                panic!(
                    "worker `{}` exited ({:?}) before logging {n}× {what}\n{}",
                    self.url,
                    self.try_status(),
                    self.dump()
                );
            }
            let wait = tokio::time::timeout_at(end, changed.changed()).await;
            if wait.is_err() {
                panic!(
                    "timed out after {timeout:?} waiting for worker `{}` to log {n}× {what}\n{}",
                    self.url,
                    self.dump()
                );
            }
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        self.proc.signal(signal);
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.proc.try_status()
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for the process to exit and for its output to be fully read.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let status = self.proc.wait(timeout).await.unwrap_or_else(|| {
            panic!(
                "worker `{}` did not exit within {timeout:?}\n{}",
                self.url,
                self.dump()
            )
        });
        // The readers see EOF once every copy of the pipes is closed.
        crate::wait::wait_until(timeout, "the worker's output is read to the end", || {
            self.log.lock().expect("log").closed == 2
        })
        .await;
        status
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&self) -> ExitStatus {
        self.proc.kill()
    }

    /// Sends SIGTERM, expects exit status 0 and a `CHECK_POINT` line logged
    /// after the signal; returns it parsed.
    pub async fn stop_and_read_stats(&self) -> Stats {
        let mark = self.mark();
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(crate::DEADLINE).await;
        assert!(
            status.success(),
            "exit status after SIGTERM: {status}\n{}",
            self.dump()
        );
        let line = self
            .lines_since(mark, "CHECK_POINT|")
            .pop()
            .unwrap_or_else(|| panic!("no CHECK_POINT line after SIGTERM\n{}", self.dump()));
        Stats::parse(&line).unwrap_or_else(|| panic!("malformed CHECK_POINT line {line:?}"))
    }

    /// The last `CHECK_POINT` line, parsed.
    pub fn last_stats(&self) -> Option<Stats> {
        self.lines().iter().rev().find_map(|l| Stats::parse(l))
    }

    /// The whole log, for failure messages.
    pub fn dump(&self) -> String {
        let log = self.log.lock().expect("log");
        let mut out = format!(
            "----- log of worker pid {} `{}` -----\n",
            self.proc.pid(),
            self.url
        );
        for line in &log.lines {
            out.push_str(if line.stderr { "  " } else { "o " });
            out.push_str(&line.text);
            out.push('\n');
        }
        out.push_str("----- end of log -----");
        out
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    stderr: bool,
    log: Arc<Mutex<Log>>,
    tx: Arc<watch::Sender<usize>>,
) {
    spawn_line_reader(stream, log, tx, move |log, line| match line {
        Some(text) => log.lines.push(Line { stderr, text }),
        None => log.closed += 1,
    });
}

/// Reads `stream` line by line on a thread of its own, recording each line
/// (without its end) and then the EOF (`None`) into `log` with `record`;
/// `tx` counts the records, so waiters wake on each.
pub(crate) fn spawn_line_reader<L: Send + 'static>(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<L>>,
    tx: Arc<watch::Sender<usize>>,
    record: impl Fn(&mut L, Option<String>) + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    record(&mut log.lock().expect("log"), Some(text));
                    tx.send_modify(|n| *n += 1);
                }
            }
        }
        record(&mut log.lock().expect("log"), None);
        tx.send_modify(|n| *n += 1);
    });
}

/// Runs `drover-worker args…` to completion and returns its output, or an
/// error (after killing it) when it is still running after `timeout`.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Result<Output, String> {
    let bin = worker_bin();
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stderr = err_thread.join().unwrap_or_default();
            return Err(format!(
                "still running after {timeout:?} (killed: {status}); stderr: {:?}",
                String::from_utf8_lossy(&stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}
