//! A worker's life as the API and the process table show it: waiting for an
//! instance to reach a state, one echo attempt that reports *how* it failed,
//! and the `drover-worker --instance <id>` processes alive anywhere.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::api::{Api, worker_pid, worker_state};
use crate::procs::{proc_alive, proc_cmdline};

/// Waits until `GET /instances/{id}` satisfies `pred`; returns that instance.
pub async fn wait_instance(
    api: &Api,
    id: &str,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let v = api.instance(id).await;
        if pred(&v) {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until instance {id} {what}; last: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until instance `id` is `running` with a `ready` worker whose pid is
/// not `not` (a replacement); returns (pid, instance).
pub async fn wait_ready(api: &Api, id: &str, not: Option<u32>, deadline: Duration) -> (u32, Value) {
    let what = match not {
        Some(old) => format!("is ready in a new worker (not pid {old})"),
        None => "is ready".to_string(),
    };
    let v = wait_instance(api, id, deadline, &what, |v| {
        worker_state(v) == "ready"
            && v["status"] == "running"
            && worker_pid(v).is_some_and(|p| Some(p) != not)
    })
    .await;
    (worker_pid(&v).expect("checked"), v)
}

/// One round trip of `payload` on a fresh connection to `addr` within
/// `deadline`: `Err` says what went wrong (refused, reset, EOF, wrong bytes,
/// timeout) and after how many bytes.
pub async fn echo_attempt(
    addr: SocketAddr,
    payload: &[u8],
    deadline: Duration,
) -> Result<(), String> {
    let mut got = 0usize;
    let res = timeout(deadline, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut rd, mut wr) = stream.into_split();
        let data = payload.to_vec();
        let writer = tokio::spawn(async move {
            wr.write_all(&data).await?;
            Ok::<_, std::io::Error>(wr)
        });
        let mut buf = vec![0u8; payload.len()];
        while got < buf.len() {
            match rd.read(&mut buf[got..]).await {
                Ok(0) => return Err(format!("EOF after {got} of {} bytes", payload.len())),
                Ok(n) => got += n,
                Err(e) => return Err(format!("read: {e} after {got} bytes")),
            }
        }
        writer
            .await
            .map_err(|e| format!("writer task: {e}"))?
            .map_err(|e| format!("write: {e}"))?;
        if buf != payload {
            return Err("the echo differs from what was sent".into());
        }
        Ok(())
    })
    .await;
    match res {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no complete echo within {deadline:?} ({got} of {} bytes)",
            payload.len()
        )),
    }
}

/// Live `drover-worker --instance <id>` processes for any of `ids`, anywhere
/// on the machine (orphans included): pid and instance id.
pub fn worker_processes(ids: &[String]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(argv) = proc_cmdline(pid) else {
            continue;
        };
        let is_worker = argv.first().is_some_and(|a| a.ends_with("drover-worker"))
            && argv.get(1).is_some_and(|a| a == "--instance");
        if let Some(id) = argv.get(2).filter(|id| is_worker && ids.contains(id))
            && proc_alive(pid)
        {
            out.push((pid, id.clone()));
        }
    }
    out
}

/// Whether any socket (of any process) listens on TCP `addr` right now, per
/// `/proc/net/tcp` and `/proc/net/tcp6` (for ports others may legitimately
/// take once free, like a worker's ephemeral entry port, where a test
/// `bind` could fail for an unrelated reason).
pub fn tcp_listening(addr: SocketAddr) -> bool {
    let port = format!("{:04X}", addr.port());
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[3] == "0A" && f[1].rsplit(':').next() == Some(port.as_str())
            })
    })
}

/// Every socket on local TCP port `port` per `/proc/net/tcp{,6}`, as
/// `state local remote uid inode` (state in hex: 0A = LISTEN, 01 =
/// ESTABLISHED, 06 = TIME_WAIT …), for failure messages.
pub fn tcp_sockets_on(port: u16) -> Vec<String> {
    let hex = format!("{port:04X}");
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[1].rsplit(':').next() == Some(hex.as_str()) {
                out.push(format!(
                    "st={} {} -> {} uid={} inode={}",
                    f[3], f[1], f[2], f[7], f[9]
                ));
            }
        }
    }
    out
}

/// The state letter of every thread of `pid` (`R`, `S`, `T` stopped, `Z` …);
/// empty once the process is gone.
pub fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .chars()
                .next()
        })
        .collect()
}

/// Whether every thread of `pid` is stopped (SIGSTOP took effect), so none
/// can accept a connection any more.
pub fn all_stopped(pid: u32) -> bool {
    let s = thread_states(pid);
    !s.is_empty() && s.iter().all(|c| matches!(c, 'T' | 't'))
}

/// Whether no thread of `pid` runs any more (all gone, zombie or dead), so
/// its descriptors are closed: a thread-group leader shows `Z` while other
/// threads may still be exiting with the fd table.
pub fn all_exited(pid: u32) -> bool {
    thread_states(pid)
        .iter()
        .all(|c| matches!(c, 'Z' | 'X' | 'x'))
}
