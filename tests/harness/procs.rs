//! What `/proc` says about a process: alive, argv, environment, parent,
//! children, CPU time, anonymous memory, and whether a loopback port is free again.
//!
//! A zombie counts as gone: it holds no sockets and runs no code, and an
//! orphan's zombie may linger when PID 1 does not reap (as in containers).

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// `/proc/<pid>/stat` fields after the `(comm)` part: state is the first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub fn proc_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// The parent pid of `pid`.
pub fn proc_ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// CPU time `pid` has used (user + system), in clock ticks (1/100 s on Linux).
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime and stime are stat fields 14 and 15; `f` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident anonymous memory of `pid` in KiB (`RssAnon`: the heap and
/// stacks, not the binary's pages).
pub fn proc_rss_anon_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// argv of `pid`.
pub fn proc_cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The environment of `pid` as `NAME=value` entries.
pub fn proc_environ(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Live children of `pid` (every thread's `children` list).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if proc_alive(child) && !out.contains(&child) {
                out.push(child);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether a TCP listener can bind `addr` right now (the socket is closed at once).
pub fn tcp_port_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Whether a UDP socket can bind `addr` right now (the socket is closed at once).
pub fn udp_port_free(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_ok()
}
