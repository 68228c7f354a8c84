//! A spawned process that the harness reaps exactly once, so its pid cannot
//! be reused by another process while a test still signals it. Shared by
//! [`crate::Master`] and [`crate::Worker`].

use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Reaped {
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
}

impl Reaped {
    pub fn new(child: Child) -> Reaped {
        Reaped {
            pid: child.id(),
            child: Mutex::new(child),
            status: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`, only while not reaped.
    pub fn signal(&self, signal: Signal) {
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        // Lock order everywhere: status, then child.
        let mut status = self.status.lock().expect("status");
        if status.is_none() {
            *status = self
                .child
                .lock()
                .expect("child")
                .try_wait()
                .expect("try_wait");
        }
        *status
    }

    /// The exit status once it has exited; `None` if it still runs after
    /// `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        let mut status = self.status.lock().expect("status");
        let mut child = self.child.lock().expect("child");
        if status.is_none() {
            *status = Some(child.wait().expect("wait"));
        }
        status.expect("reaped")
    }
}
