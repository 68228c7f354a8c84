//! Starting a worker process.
//!
//! 1. `socketpair()`; the worker's end becomes its fd 3.
//! 2. `drover-worker --instance <id> --control-fd 3`, empty environment, own
//!    process group, `PR_SET_PDEATHSIG(SIGKILL)` so it dies with the master.
//! 3. Under isolation (see `isolation`): join the instance's cgroups, set
//!    rlimits, drop to the tenant's uid/gid, `no_new_privs`, private cwd.
//! 4. `Hello` with the URL (never on argv or in the environment), TLS
//!    material, settings and the listeners as `SCM_RIGHTS`.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use proto::message::{Hello, Message, Settings, TlsMaterial};
use proto::{MasterChannel, PROTOCOL_VERSION, Secret, ToWorker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::{Child, ChildStderr, Command};

use super::isolation::{Confinement, WORKER_NOFILE};
use super::listeners::Listeners;
use super::log_budget::{self, LogBudget, LogVerdict};

/// A worker must take each message within this: one whose control socket
/// stays full that long is not reading it (hung or compromised) and is
/// killed, so it can never stall its instance's task (and with it the API's
/// stop and delete).
pub const SEND_DEADLINE: Duration = Duration::from_secs(5);
/// Why a worker killed by [`Worker::send`] ended (in `worker.last_exit`).
pub const DEAF: &str = "not reading its control socket";

/// A running worker process and its control channel.
pub struct Worker {
    pub child: Child,
    pub pid: u32,
    pub channel: MasterChannel,
    /// Set when [`Worker::send`] killed it for not reading.
    pub deaf: Arc<AtomicBool>,
}

impl Worker {
    /// Signals the worker's whole process group.
    pub fn signal_group(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), sig);
    }

    /// Sends a message (fds duplicated into the worker); a worker that does
    /// not take it within [`SEND_DEADLINE`] is SIGKILLed and marked
    /// [`Worker::deaf`]. Errors are not returned: a worker that cannot be
    /// written to is dying, and its exit status says how.
    pub async fn send(&self, msg: &ToWorker, fds: &[BorrowedFd<'_>]) {
        if tokio::time::timeout(SEND_DEADLINE, self.channel.send(msg, fds))
            .await
            .is_err()
        {
            tracing::error!(
                pid = self.pid,
                kind = msg.kind(),
                "worker {DEAF}; killing it"
            );
            self.deaf.store(true, Ordering::Relaxed);
            self.signal_group(Signal::SIGKILL);
        }
    }
}

/// The worker binary: `DROVER_WORKER_BIN`, else beside our own executable.
pub fn worker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DROVER_WORKER_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("drover-worker")))
        .unwrap_or_else(|| PathBuf::from("drover-worker"))
}

/// What the worker needs besides its listeners.
pub struct Launch<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub log: &'a str,
    pub tls: Option<TlsMaterial>,
    pub settings: Settings,
    /// Tenant confinement when isolation is on.
    pub confine: Option<Confinement>,
}

/// Held (shared) across each fork+exec of a worker. Between the two, the
/// child holds a copy of every master fd, listeners included, so a port the
/// master just closed would stay bound until that child's exec.
static FORKS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits until no worker spawn begun before this call is between fork and
/// exec: after closing listeners, their ports are then really free.
/// Spawns take a few milliseconds at most, and so does this.
pub fn forks_settled() {
    drop(
        FORKS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
}

/// Spawns a worker and sends it `Hello`. stderr lines (panics) go to `on_stderr`.
pub async fn spawn(
    bin: &Path,
    mut launch: Launch<'_>,
    listeners: &Listeners,
    on_stderr: impl Fn(String) + Send + Sync + 'static,
) -> Result<Worker, String> {
    let confine = launch.confine.take();
    let (child, pid, channel) = start(bin, &["--instance", launch.id], confine)?;
    let worker = Worker {
        child,
        pid,
        channel,
        deaf: Arc::default(),
    };
    hello(worker, launch, listeners, on_stderr).await
}

/// A confined worker process waiting for `Become` (see `spares`).
pub struct Spare {
    pub child: Child,
    pub pid: u32,
    pub channel: MasterChannel,
    /// Its cgroup leaf name, renamed to the instance id when taken.
    pub leaf: String,
}

/// Starts a spare worker (`--spare`), confined by `confine` (its cgroup
/// leaf named `leaf`).
pub fn start_spare(
    bin: &Path,
    confine: Option<Confinement>,
    leaf: String,
) -> Result<Spare, String> {
    let (child, pid, channel) = start(bin, &["--spare"], confine)?;
    Ok(Spare {
        child,
        pid,
        channel,
        leaf,
    })
}

/// Turns a spare into `launch.id`'s worker: `Become`, then `Hello` (the
/// spare re-executes itself in between; the socket keeps both frames).
pub async fn adopt_spare(
    spare: Spare,
    launch: Launch<'_>,
    listeners: &Listeners,
    on_stderr: impl Fn(String) + Send + Sync + 'static,
) -> Result<Worker, String> {
    let worker = Worker {
        child: spare.child,
        pid: spare.pid,
        channel: spare.channel,
        deaf: Arc::default(),
    };
    let become_ = ToWorker::Become {
        instance: launch.id.to_string(),
    };
    if let Err(e) = worker.channel.send(&become_, &[]).await {
        worker.signal_group(Signal::SIGKILL);
        return Err(format!("sending Become: {e}"));
    }
    hello(worker, launch, listeners, on_stderr).await
}

/// Forks and execs `bin args… --control-fd 3` under `confine`.
fn start(
    bin: &Path,
    args: &[&str],
    confine: Option<Confinement>,
) -> Result<(Child, u32, MasterChannel), String> {
    let (master_end, worker_end) = proto::socketpair().map_err(|e| format!("socketpair: {e}"))?;
    let child_fd = worker_end.as_raw_fd();
    // Everything the child needs is prepared here: between fork and exec only
    // async-signal-safe calls are allowed (no allocation).
    let cred = confine.as_ref().map(|c| (c.uid, c.gid));
    let workdir = confine
        .as_ref()
        .and_then(|c| std::ffi::CString::new(c.workdir.as_os_str().as_encoded_bytes()).ok());
    let cgroup_fds: Vec<i32> = confine.as_ref().map_or(Vec::new(), |c| {
        c.cgroups.iter().map(|f| f.as_raw_fd()).collect()
    });
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--control-fd")
        .arg("3")
        .env_clear()
        // The one setting a worker takes from the environment (`worker::spin`).
        .envs(std::env::var_os("DROVER_SPIN_US").map(|v| ("DROVER_SPIN_US", v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // SAFETY: only async-signal-safe calls (dup2, fcntl, setpgid, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if child_fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpgid(0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &cgroup_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // No core dumps: a worker's memory holds tunnel keys.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            if let Some((uid, gid)) = cred {
                let files = libc::rlimit {
                    rlim_cur: WORKER_NOFILE,
                    rlim_max: WORKER_NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &files) < 0 {
                    // Without CAP_SYS_RESOURCE: as many as the inherited hard limit allows.
                    let mut cur = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) == 0 {
                        cur.rlim_cur = cur.rlim_max.min(WORKER_NOFILE);
                        libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
                    }
                }
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(dir) = &workdir
                && libc::chdir(dir.as_ptr()) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // After setuid: a credential change clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = {
        let _forking = FORKS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cmd.spawn()
    }
    .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    drop(worker_end);
    drop(confine);
    let pid = child.id().ok_or("worker exited at once")?;
    let channel =
        MasterChannel::from_std(master_end).map_err(|e| format!("control channel: {e}"))?;
    Ok((child, pid, channel))
}

/// Starts reading the worker's stderr and sends it `Hello`.
async fn hello(
    mut worker: Worker,
    launch: Launch<'_>,
    listeners: &Listeners,
    on_stderr: impl Fn(String) + Send + Sync + 'static,
) -> Result<Worker, String> {
    if let Some(stderr) = worker.child.stderr.take() {
        tokio::spawn(read_stderr(stderr, on_stderr));
    }
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        instance: launch.id.to_string(),
        url: Secret::new(launch.url),
        log: launch.log.to_string(),
        tls: launch.tls,
        listeners: listeners.infos(),
        settings: launch.settings,
    };
    if let Err(e) = worker
        .channel
        .send(&ToWorker::Hello(hello), &listeners.fds())
        .await
    {
        worker.signal_group(Signal::SIGKILL);
        return Err(format!("sending Hello: {e}"));
    }
    Ok(worker)
}

/// Hands the worker's stderr to `on_line` line by line, as the worker's
/// `Log` lines are taken: each cut to [`log_budget::MAX_LINE`] (the rest of
/// a longer line is read and dropped, never buffered) and under a
/// [`LogBudget`] of its own.
async fn read_stderr(stderr: ChildStderr, on_line: impl Fn(String)) {
    /// Bytes skipped per read past a line's first `MAX_LINE`.
    const SKIP_CHUNK: u64 = 64 * 1024;
    // One per worker, and a worker's stderr is nearly always silent.
    let mut reader = tokio::io::BufReader::with_capacity(4 * 1024, stderr);
    let mut budget = LogBudget::new();
    let mut line = Vec::new();
    let mut skip = Vec::new();
    loop {
        line.clear();
        let limit = log_budget::MAX_LINE as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut cut = 0;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() as u64 == limit {
            // A longer line: read past its end, keeping nothing.
            loop {
                skip.clear();
                match (&mut reader)
                    .take(SKIP_CHUNK)
                    .read_until(b'\n', &mut skip)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(n) if skip.last() == Some(&b'\n') => {
                        cut += n - 1;
                        break;
                    }
                    Ok(n) => cut += n,
                }
            }
        }
        let text = log_budget::clip_more(String::from_utf8_lossy(&line).into_owned(), cut);
        match budget.take() {
            LogVerdict::Pass(dropped) => {
                if dropped > 0 {
                    on_line(format!(
                        "({dropped} stderr lines dropped: the worker wrote too fast)"
                    ));
                }
                on_line(text);
            }
            LogVerdict::Drop => {}
        }
    }
}
