//! The gateway's client-id peek (`gateway::identify::parse`): any bytes are
//! decided without a panic, an `X-Client-Id` identity is 1..=256 bytes of one
//! header line, and a decided identity never changes with more bytes.
#![no_main]

use drover_fuzz::check_prefix_stable;
use drover_fuzz::identify::{Identity, Parse, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = match parse(data) {
        Parse::Done(id) | Parse::NeedMore { best: id } => id,
    };
    match &id {
        Some(Identity::ClientId(s)) => {
            assert!(!s.is_empty() && s.len() <= 256, "client id {s:?}");
            assert!(!s.contains("\r\n"), "client id spans lines: {s:?}");
        }
        Some(Identity::ForwardedFor(s)) => {
            assert!(
                s.parse::<std::net::IpAddr>().is_ok(),
                "forwarded-for {s:?} is not an IP"
            );
        }
        Some(Identity::Proxy(_)) | None => {}
        Some(Identity::Peer(ip)) => panic!("parse never knows the peer, yet said {ip}"),
    }
    if let Some(id) = id {
        let _ = (id.key(), id.source());
    }
    check_prefix_stable(data);
});
