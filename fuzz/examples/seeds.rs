//! Writes the seed inputs of every fuzz target: valid inputs made with the
//! product's own encoders (so they follow protocol changes), plus a few that
//! are wrong in the ways a peer could be wrong. `scripts/fuzz --seeds` runs it;
//! the fuzzer then grows `fuzz/corpus/<target>/` from them.
//!
//! Usage: `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus`

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use drover_fuzz::{Segment, Segments};
use drover_worker::tunnel::framed::{EOF, MAX_FRAME, RAW};
use drover_worker::tunnel::proxy_header;
use drover_worker::tunnel::wire::{
    self, Control, Flow, Header, HeaderKind, KIND_CONTROL, KIND_POOL, MAGIC, SessionConfig, VERSION,
};
use proto::message::{
    Adopt, Bind, BindError, Bound, Hello, ListenerInfo, ListenerRole, Log, Ready, Settings, Stats,
    TlsMaterial, Transport,
};
use proto::{PROTOCOL_VERSION, Secret, ToMaster, ToWorker, frame};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn main() {
    let root = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let root = Path::new(&root);
    let targets: [(&str, Vec<Vec<u8>>); 8] = [
        ("url", url()),
        ("wire_handshake", wire_handshake()),
        ("udp_frame", udp_frame()),
        ("tunnel_frames", tunnel_frames()),
        ("control_frame", control_frame()),
        ("control_fds", control_fds()),
        ("proxy_header", proxy()),
        ("client_id", client_id()),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create the corpus dir");
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}

fn url() -> Vec<Vec<u8>> {
    let fp = "ab".repeat(32);
    [
        "server://:10101/:8080?mode=1".to_string(),
        "client://secret@server.example:10101/127.0.0.1:3000?mode=2".into(),
        "server://secret@:10101/10.0.0.5:5432?mode=2&log=debug".into(),
        "client://:8443/10.0.0.7:443,10.0.0.8:443?mode=1&proxy=2&lbs=1".into(),
        "server://secret@:10101/:8080?mode=1&tls=1&max=512&slot=100&rate=50".into(),
        format!("client://s@203.0.113.9:10101/127.0.0.1:3000?tls=1&fp=sha256:{fp}&min=8"),
        "server://k%2Fy@[::1]:10101/[::1]:80?tls=2&crt=/etc/d/t.crt&key=/etc/d/t.key".into(),
        "client://my%20pass:x@[::1]:9/a.example:80,%20b.example:81?mode=2&type=0&block=13".into(),
        "client://:1/a:2?read=1m30s&dns=250ms&idle=10m&dial=127.0.0.2&noudp=1&sni=none".into(),
        "server://:7/x:9?read=1.5s&dns=0&notcp=1&log=none&proxy=1".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn header(kind: HeaderKind, session: u32, remote: &str) -> Vec<u8> {
    Header {
        kind,
        session,
        remote: remote.into(),
    }
    .encode()
}

fn wire_handshake() -> Vec<Vec<u8>> {
    let preamble = [&MAGIC[..], &[VERSION]].concat();
    let control = [&preamble[..], &[KIND_CONTROL], &[7; 16], &[9; 32]].concat();
    let pool = [
        &preamble[..],
        &[KIND_POOL],
        &[3; 16],
        &[5; 32],
        &header(HeaderKind::Tcp, 1, "203.0.113.5:40000"),
        &header(HeaderKind::Udp, 2, "[2001:db8::1]:53"),
    ]
    .concat();
    let cfg = SessionConfig {
        flow: Flow::Forward,
        max: 1024,
        tcp: true,
        udp: true,
        id: [1; 16],
    };
    let offer = [
        &preamble[..],
        &[0],
        &[4; 16],
        &[wire::STATUS_OK],
        &[6; 32],
        &cfg.encode(),
    ]
    .concat();
    let controls = [
        Control::Ping(1).encode(),
        Control::Pong(u64::MAX).encode(),
        Control::Starved(3).encode(),
        Control::Capacity(64).encode(),
    ]
    .concat();
    vec![
        control,
        pool,
        offer,
        header(HeaderKind::Tcp, 42, "127.0.0.1:5000"),
        cfg.encode().to_vec(),
        controls,
    ]
}

fn tunnel_frames() -> Vec<Vec<u8>> {
    let frame = |data: &[u8]| [&(data.len() as u32).to_be_bytes()[..], data].concat();
    let tag = |t: u32| t.to_be_bytes().to_vec();
    vec![
        // Two frames, the end, and the next session's header kept.
        [
            frame(b"hello"),
            frame(b" world"),
            tag(EOF),
            header(HeaderKind::Tcp, 7, "[::1]:9"),
        ]
        .concat(),
        // A frame, then raw to the end.
        [frame(b"abc"), tag(RAW), b"raw bytes".to_vec()].concat(),
        // Cut short in a frame; a frame over the limit.
        [tag(10), b"short".to_vec()].concat(),
        tag(MAX_FRAME + 1),
    ]
}

fn udp_frame() -> Vec<Vec<u8>> {
    let mut frames = vec![0u8];
    for datagram in [&b"hello"[..], b"", &[0xff; 300]] {
        frames.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        frames.extend_from_slice(datagram);
    }
    let too_big_for_7 = [&[7u8, 0, 8][..], b"12345678"].concat();
    vec![frames, too_big_for_7, vec![0, 0, 5, b'a']]
}

fn to_worker_samples() -> Vec<ToWorker> {
    vec![
        Hello {
            protocol: PROTOCOL_VERSION,
            instance: "a1b2c3d4".into(),
            url: Secret::new("server://k@:10101/127.0.0.1:8080?tls=2"),
            log: "info".into(),
            tls: Some(TlsMaterial {
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                key_pem: Secret::new("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n"),
            }),
            listeners: vec![
                ListenerInfo {
                    addr: ":10101".into(),
                    proto: Transport::Tcp,
                    role: ListenerRole::Tunnel,
                },
                ListenerInfo {
                    addr: ":8080".into(),
                    proto: Transport::Udp,
                    role: ListenerRole::Entrance,
                },
            ],
            settings: Settings {
                stats_interval_ms: 5000,
                grace_ms: 10000,
                idle_ms: Some(360000),
            },
        }
        .into(),
        ToWorker::Ping { seq: 42 },
        Adopt {
            kind: Transport::Tcp,
            client: "203.0.113.7".into(),
            peer: "203.0.113.7:40000".parse().unwrap(),
            seq: 9,
        }
        .into(),
        ToWorker::ResetCounters,
        ToWorker::Shutdown { grace_ms: 10000 },
        Bound {
            addr: "0.0.0.0:9000".into(),
            proto: Transport::Tcp,
        }
        .into(),
        BindError {
            addr: "0.0.0.0:80".into(),
            proto: Transport::Udp,
            reason: "Address already in use (os error 98)".into(),
        }
        .into(),
        ToWorker::Become {
            instance: "a1b2c3d4".into(),
        },
    ]
}

fn to_master_samples() -> Vec<ToMaster> {
    vec![
        Bind {
            addr: "0.0.0.0:9000".into(),
            proto: Transport::Udp,
        }
        .into(),
        Ready {
            pid: 4242,
            entry: Some("127.0.0.1:40123".into()),
            mode: 2,
        }
        .into(),
        ToMaster::Pong { seq: 42 },
        Stats {
            mode: 1,
            ping: 3,
            pool: 64,
            tcps: 2,
            tcprx: 1 << 40,
            ..Stats::default()
        }
        .into(),
        Log {
            level: "warn".into(),
            line: "target 10.0.0.5:5432 refused".into(),
        }
        .into(),
        ToMaster::Adopted { seq: 9 },
        ToMaster::Fatal {
            message: "cannot bind :8080".into(),
        },
    ]
}

fn frame_of<M: proto::message::Message>(msg: &M) -> Vec<u8> {
    frame::encode(msg).expect("a sample encodes")
}

fn control_frame() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = to_worker_samples().iter().map(frame_of).collect();
    seeds.extend(to_master_samples().iter().map(frame_of));
    let old_hello = br#"{"type":"Hello","protocol":1,"instance":"x"}"#;
    seeds.push(old_hello.to_vec());
    seeds.push(br#"{"type":"Nope","seq":1}"#.to_vec());
    seeds
}

fn seg(fds: usize, bytes: &[u8]) -> Segment<'_> {
    Segment { fds, bytes }
}

fn control_fds() -> Vec<Vec<u8>> {
    let worker: Vec<Vec<u8>> = to_worker_samples().iter().map(frame_of).collect();
    let master: Vec<Vec<u8>> = to_master_samples().iter().map(frame_of).collect();
    let (hello, ping, adopt, bound) = (&worker[0], &worker[1], &worker[2], &worker[5]);
    let seeds = [
        // Right: Hello with its two listeners, then Ping, Adopt, Bound.
        Segments {
            to_master: false,
            segments: vec![seg(2, hello), seg(0, ping), seg(1, adopt), seg(1, bound)],
        },
        // Hello split in two sends, its fds on the first; an Adopt without its fd.
        Segments {
            to_master: false,
            segments: vec![
                seg(2, &hello[..40]),
                seg(0, &hello[40..]),
                seg(0, adopt),
                seg(1, ping),
            ],
        },
        // More fds than one message may carry, then a frame cut short.
        Segments {
            to_master: false,
            segments: vec![seg(20, adopt), seg(1, &bound[..10])],
        },
        // The master's side: every worker message, one with a stray fd.
        Segments {
            to_master: true,
            segments: master
                .iter()
                .enumerate()
                .map(|(i, f)| seg(usize::from(i == 4), f))
                .collect(),
        },
    ];
    seeds.iter().map(Segments::encode).collect()
}

fn proxy() -> Vec<Vec<u8>> {
    let encoded = |mode: u8, src: [u8; 19], dst: [u8; 19], tail: &[u8]| {
        [&[mode][..], &src, &dst, tail].concat()
    };
    let v4 = [
        0, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x15, 0xb3,
    ];
    let mut v6 = [1u8; 19];
    v6[1..17].copy_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    let src: SocketAddr = "198.51.100.4:5555".parse().expect("addr");
    let dst: SocketAddr = "127.0.0.1:80".parse().expect("addr");
    let v2 = proxy_header::v2(src, dst);
    vec![
        [
            &[0u8][..],
            b"TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n\r\n",
        ]
        .concat(),
        [&[0u8][..], b"UNKNOWN\r\n"].concat(),
        [&[1u8][..], &v2[12..], b"\x00\x01binary"].concat(),
        encoded(2, v4, v4, b""),
        encoded(2, v4, v6, b"GET / HTTP/1.1\r\nX-Client-Id: bob\r\n\r\n"),
        encoded(3, v6, v6, b""),
        encoded(3, v6, v4, b"\x16\x03\x01"),
    ]
}

fn client_id() -> Vec<Vec<u8>> {
    let src: SocketAddr = "192.0.2.7:5555".parse().expect("addr");
    let dst: SocketAddr = "127.0.0.1:80".parse().expect("addr");
    let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    vec![
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Client-Id: alice\r\n\r\n".to_vec(),
        b"POST /a HTTP/1.1\r\nx-forwarded-for: 10.0.0.9, 10.0.0.1\r\n\r\nbody".to_vec(),
        b"GET / HTTP/1.1\r\nX-Forwarded-For: 2001:db8::1\r\nX-Client-Id: b\r\n\r\n".to_vec(),
        [&proxy_header::v1(src, dst)[..], get].concat(),
        [&proxy_header::v2(src, dst)[..], get].concat(),
        [&V2_SIG[..], &[0x20, 0x00, 0, 0]].concat(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\n".to_vec(),
    ]
}
