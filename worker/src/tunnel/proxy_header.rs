//! PROXY protocol v1 (text) and v2 (binary) headers sent to the target, so it
//! sees the user's address instead of the tunnel's.

use std::net::{IpAddr, SocketAddr};

/// v2 signature (12 bytes).
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family (IPv4-mapped IPv6 when they differ).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// `PROXY TCP4 src dst sport dport\r\n`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Binary v2 header, command PROXY, stream transport.
pub fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut b = Vec::with_capacity(16 + 36);
    b.extend_from_slice(V2_SIG);
    b.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.push(0x11);
            b.extend_from_slice(&12u16.to_be_bytes());
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b.push(0x21);
            b.extend_from_slice(&36u16.to_be_bytes());
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
        }
        _ => unreachable!("same_family returns one family"),
    }
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both versions encode the addresses as the spec lays them out.
    #[test]
    fn encodes() {
        let s: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(v1(s, d), b"PROXY TCP4 10.0.0.1 127.0.0.1 1234 80\r\n");
        let h = v2(s, d);
        assert_eq!(&h[..12], V2_SIG);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[10, 0, 0, 1]);
        assert_eq!(&h[24..26], &1234u16.to_be_bytes());
        let d6: SocketAddr = "[::1]:80".parse().unwrap();
        assert!(
            String::from_utf8(v1(s, d6))
                .unwrap()
                .starts_with("PROXY TCP6 ::ffff:10.0.0.1 ::1")
        );
        assert_eq!(v2(s, d6).len(), 16 + 36);
    }
}
