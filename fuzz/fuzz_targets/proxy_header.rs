//! The gateway's PROXY v1/v2 header parser (inside `gateway::identify::parse`).
//!
//! The first byte picks a mode:
//! 0. `PROXY ` + the rest: the v1 text parser on anything;
//! 1. the v2 signature + the rest: the v2 binary parser on anything;
//! 2. / 3. a v1 / v2 header written by the worker's encoder
//!    (`tunnel::proxy_header`) for addresses taken from the input, then the
//!    rest of the input: the gateway must read back the source address the
//!    worker wrote (IPv4-mapped when the families differ), unless the bytes
//!    after it carry an HTTP identity, which takes precedence.
//!
//! In every mode a decided identity must not change with one more byte.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use drover_fuzz::check_prefix_stable;
use drover_fuzz::identify::{Identity, Parse, parse};
use drover_worker::tunnel::proxy_header;
use libfuzzer_sys::fuzz_target;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Takes `N` bytes from the front of `rest` (zeros once it runs out).
fn take<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = rest.len().min(N);
    out[..n].copy_from_slice(&rest[..n]);
    *rest = &rest[n..];
    out
}

/// An address from the input: a family byte, 16 address bytes, a port.
fn addr(rest: &mut &[u8]) -> SocketAddr {
    let [family] = take::<1>(rest);
    let octets = take::<16>(rest);
    let port = u16::from_be_bytes(take::<2>(rest));
    let ip = if family & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut buf = Vec::with_capacity(data.len() + 64);
    match mode % 4 {
        0 => buf.extend_from_slice(b"PROXY "),
        1 => buf.extend_from_slice(V2_SIG),
        mode => {
            let (src, dst) = (addr(&mut rest), addr(&mut rest));
            let header = if mode == 2 {
                proxy_header::v1(src, dst)
            } else {
                proxy_header::v2(src, dst)
            };
            buf.extend_from_slice(&header);
            buf.extend_from_slice(rest);
            let expected = match (src.ip(), dst.is_ipv4()) {
                (IpAddr::V4(ip), false) => IpAddr::V6(ip.to_ipv6_mapped()),
                (ip, _) => ip,
            };
            let got = match parse(&buf) {
                Parse::Done(id) | Parse::NeedMore { best: id } => id,
            };
            match got {
                Some(Identity::Proxy(ip)) => assert_eq!(ip, expected, "{buf:?}"),
                Some(Identity::ClientId(_) | Identity::ForwardedFor(_)) => {}
                other => panic!("header for {src} -> {dst} read as {other:?}: {buf:?}"),
            }
            check_prefix_stable(&buf);
            return;
        }
    }
    buf.extend_from_slice(rest);
    let _ = parse(&buf);
    check_prefix_stable(&buf);
});
