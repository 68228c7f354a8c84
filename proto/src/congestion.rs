//! Loopback TCP connections use CUBIC when the system's default is BBR.
//!
//! BBR paces every flow, and without the `fq` qdisc TCP paces by itself with
//! a timer per burst of segments. Over loopback there is no bottleneck to
//! pace for, so the pacing only costs timer interrupts and wake-ups: one
//! stream through a reverse tunnel on loopback went from 21–22 to 25–28
//! Gbit/s and from 0.24–0.26 to 0.18–0.21 CPU s/GB with CUBIC
//! (`docs/tunnel.md`). Connections to other hosts keep the system's choice,
//! and so does a system whose default is not BBR.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::OnceLock;

/// Switches `sock` to CUBIC when `ip` — its peer, or a listener's own
/// address — is loopback and the system default is BBR. Sockets a listener
/// accepts inherit its choice.
pub fn tune_loopback(sock: &impl AsFd, ip: IpAddr) {
    if !ip.to_canonical().is_loopback() || !default_is_bbr() {
        return;
    }
    // CUBIC missing or not allowed here leaves the default: nothing to report.
    let _ = socket2::SockRef::from(sock).set_tcp_congestion(b"cubic");
}

/// Whether the system default congestion control is BBR (read once).
fn default_is_bbr() -> bool {
    static BBR: OnceLock<bool> = OnceLock::new();
    *BBR.get_or_init(|| system_default().is_some_and(|cc| cc.starts_with("bbr")))
}

/// The system default congestion control, as new sockets get it.
pub fn system_default() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .ok()
        .map(|cc| cc.trim().to_string())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    fn congestion(sock: &impl AsFd) -> String {
        let cc = socket2::SockRef::from(sock).tcp_congestion().unwrap();
        String::from_utf8_lossy(&cc)
            .trim_end_matches('\0')
            .to_string()
    }

    /// A loopback listener, and so what it accepts, leaves BBR for CUBIC;
    /// one on all interfaces keeps the system default either way.
    #[test]
    fn loopback_listeners_leave_bbr() {
        let default = super::system_default().expect("the system default");
        let want = if default.starts_with("bbr") {
            "cubic"
        } else {
            default.as_str()
        };
        let local = crate::listen::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let everywhere = crate::listen::bind_tcp("0.0.0.0:0".parse().unwrap()).unwrap();
        assert_eq!(congestion(&local), want);
        assert_eq!(congestion(&everywhere), default);
        local.set_nonblocking(false).unwrap();
        let _user = std::net::TcpStream::connect(local.local_addr().unwrap()).unwrap();
        assert_eq!(congestion(&local.accept().unwrap().0), want);
    }
}
