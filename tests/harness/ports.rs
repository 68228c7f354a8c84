//! Free loopback ports for the workers' listeners.
//!
//! Tests run in parallel, so a fixed port would collide. Ports come from
//! below the kernel's ephemeral range, so neither our own `bind(0)` servers
//! nor outgoing connections can take a port between the moment it is handed
//! out and the moment the worker binds it; a process-global set makes sure
//! one port is never handed out twice.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Lowest port handed out.
const FIRST: u16 = 12_000;

static STATE: Mutex<Option<(u16, HashSet<u16>)>> = Mutex::new(None);

/// The low end of the kernel's ephemeral range (ports below are never
/// picked by `bind(0)` or `connect`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|low: &u16| *low > FIRST + 2_000)
        .unwrap_or(32_768)
}

/// A loopback port that is free for both TCP and UDP right now and was never
/// handed out before in this process.
pub fn free_port() -> u16 {
    let mut guard = STATE.lock().expect("port state poisoned");
    let high = ephemeral_low();
    let (next, used) = guard.get_or_insert_with(|| {
        // Start somewhere different per process so two test binaries running
        // at once rarely probe the same ports.
        let span = u32::from(high - FIRST);
        let start = FIRST + (std::process::id() * 7919 % span) as u16;
        (start, HashSet::new())
    });
    for _ in 0..(high - FIRST) {
        let port = *next;
        *next = if *next + 1 >= high { FIRST } else { *next + 1 };
        if used.contains(&port) {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free loopback port left in {FIRST}..{high}");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// TCP connections to or from `port` in TIME_WAIT: one per connection closed
/// on that port within the last minute (the side that closed first keeps it).
pub fn closed_recently(port: u16) -> usize {
    const TIME_WAIT: &str = "06";
    let port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let on_port = |addr: &str| addr.rsplit(':').next() == Some(port.as_str());
            f.len() > 3 && f[3] == TIME_WAIT && (on_port(f[1]) || on_port(f[2]))
        })
        .count()
}
