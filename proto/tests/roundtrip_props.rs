//! Property tests of proto's round trips (issue 8):
//!
//! 1. URL: a generated valid [`TunnelSpec`] written with `Display` parses back
//!    to itself, and so does its `config_url` (every param at its effective
//!    value); the canonical text is a fixed point.
//! 2. Messages: generated `ToWorker` / `ToMaster` messages survive
//!    `to_json` → `from_json`, and `frame::encode` → `frame::decode`, also as
//!    a stream of frames cut at arbitrary points; a `Hello` of another
//!    protocol version is refused as such, never misread.
//! 3. The same messages through a real socketpair [`proto::ControlChannel`],
//!    each with as many real fds as it names.
//!
//! Case counts are kept modest (CI runs on 2 cores); `PROPTEST_CASES`
//! raises them for a longer local run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proto::message::{
    Adopt, Bind, BindError, Bound, Hello, ListenerInfo, ListenerRole, Log, Message, Ready,
    Settings, Stats, TlsMaterial, Transport,
};
use proto::spec::{Block, HostPort, LogLevel, Params, Role};
use proto::{
    MAX_FRAME, MasterChannel, PROTOCOL_VERSION, ProtoError, Secret, ToMaster, ToWorker, TunnelSpec,
    WorkerChannel, frame, message,
};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    // No regression files in the tree: a failure prints its minimal input,
    // and a bug it finds gets a unit test of its own.
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- generators: URLs ----

/// Any text, control characters and non-ASCII included.
fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(any::<char>(), len).prop_map(|c| c.into_iter().collect())
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u16; 8]>().prop_map(Ipv6Addr::from)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4().prop_map(IpAddr::V4), ipv6().prop_map(IpAddr::V6)]
}

/// A DNS name the grammar accepts: labels of letters, digits, `-`, `_`,
/// not starting or ending with `-`.
fn hostname() -> impl Strategy<Value = String> {
    vec("[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,8}[a-zA-Z0-9_])?", 1..4).prop_map(|l| l.join("."))
}

/// A host as the grammar keeps it: empty (all interfaces), an IP in its
/// canonical text, `localhost`, or a name.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("localhost".to_string()),
        ip().prop_map(|ip| ip.to_string()),
        hostname(),
    ]
}

fn host_port() -> impl Strategy<Value = HostPort> {
    (host(), 1..=u16::MAX).prop_map(|(host, port)| HostPort { host, port })
}

/// Whole milliseconds (what the URL syntax writes), small ones often.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..5_000).prop_map(Duration::from_millis),
        (0u64..86_400).prop_map(Duration::from_secs),
        (0u64..315_360_000_000).prop_map(Duration::from_millis),
    ]
}

fn log_level() -> impl Strategy<Value = LogLevel> {
    prop_oneof![
        Just(LogLevel::Debug),
        Just(LogLevel::Info),
        Just(LogLevel::Warn),
        Just(LogLevel::Error),
        Just(LogLevel::Event),
        Just(LogLevel::None),
    ]
}

fn params(role: Role) -> impl Strategy<Value = Params> {
    let a = (
        log_level(),
        0u8..=2,
        proptest::option::of(text(1..16)),
        proptest::option::of(text(1..16)),
        proptest::option::of(prop_oneof![
            hostname().prop_filter("none means no SNI", |h| h != "none"),
            ip().prop_map(|ip| ip.to_string()),
        ]),
        proptest::option::of("[0-9a-f]{64}"),
        1u32..=65536,
        1u32..=65536,
    );
    let b = (
        0u8..=2,
        duration(),
        0u32..=1_000_000,
        0u32..=1 << 20,
        0u8..=2,
        any::<[bool; 3]>(),
        // notcp and noudp, never both.
        prop_oneof![
            Just((false, false)),
            Just((true, false)),
            Just((false, true))
        ],
        proptest::option::of(ip()),
    );
    let c = (duration(), 0u8..=2, proptest::option::of(duration()));
    (a, b, c).prop_map(
        move |(
            (log, tls, crt, key, sni, fp, min, max),
            (mode, read, rate, slot, proxy, [socks, http, tls_block], (notcp, noudp), dial),
            (dns, lbs, idle),
        )| {
            let (crt, key) = if role == Role::Server && tls == 2 {
                // A tls=2 server needs both files.
                (
                    crt.or_else(|| Some("/etc/drover/t.crt".into())),
                    key.or_else(|| Some("/etc/drover/t.key".into())),
                )
            } else {
                (crt, key)
            };
            Params {
                log,
                tls,
                crt,
                key,
                sni,
                fp,
                min,
                max,
                mode,
                read,
                rate,
                slot,
                proxy,
                block: Block {
                    socks,
                    http,
                    tls: tls_block,
                },
                notcp,
                noudp,
                dial,
                dns,
                lbs,
                idle,
            }
        },
    )
}

/// A valid spec: what `TunnelSpec::parse` could have produced.
fn spec() -> impl Strategy<Value = TunnelSpec> {
    prop_oneof![Just(Role::Server), Just(Role::Client)]
        .prop_flat_map(|role| {
            (
                Just(role),
                proptest::option::of(text(1..24)),
                host_port(),
                vec(host_port(), 1..6),
                params(role),
            )
        })
        .prop_map(|(role, key, tunnel, targets, params)| TunnelSpec {
            role,
            key: key.map(Secret::new),
            tunnel,
            targets,
            params,
        })
        // A local target on the tunnel's own port is refused (it would loop).
        .prop_filter("target loops to the tunnel", |s| {
            !s.targets
                .iter()
                .any(|t| t.port == s.tunnel.port && t.is_local() && s.tunnel.is_local())
        })
}

proptest! {
    #![proptest_config(cases(512))]

    /// Display writes a URL that parses back to the very same spec, and that
    /// text is canonical (writing it again gives the same text).
    #[test]
    fn url_display_round_trips(spec in spec()) {
        let url = spec.to_string();
        let back = TunnelSpec::parse(&url)
            .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
        prop_assert_eq!(&back, &spec, "{}", url);
        prop_assert_eq!(back.to_string(), url);
    }

    /// The config URL (every param at its effective value, NodePass's
    /// `config`) parses back to the same spec, and is its own config.
    #[test]
    fn config_url_round_trips(spec in spec()) {
        let config = spec.config_url();
        let back = TunnelSpec::parse(&config)
            .map_err(|e| TestCaseError::fail(format!("{config}: {e}")))?;
        prop_assert_eq!(&back, &spec, "{}", config);
        prop_assert_eq!(back.config_url(), config);
    }
}

// ---- generators: messages ----

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![Just(Transport::Tcp), Just(Transport::Udp)]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        text(0..12),
        text(0..64),
        text(0..8),
        proptest::option::of((text(0..64), text(0..64))),
        vec(
            (
                text(0..16),
                transport(),
                prop_oneof![Just(ListenerRole::Tunnel), Just(ListenerRole::Entrance)],
            ),
            0..4,
        ),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(instance, url, log, tls, listeners, (stats, grace, idle))| Hello {
                protocol: PROTOCOL_VERSION,
                instance,
                url: Secret::new(url),
                log,
                tls: tls.map(|(cert_pem, key)| TlsMaterial {
                    cert_pem,
                    key_pem: Secret::new(key),
                }),
                listeners: listeners
                    .into_iter()
                    .map(|(addr, proto, role)| ListenerInfo { addr, proto, role })
                    .collect(),
                settings: Settings {
                    stats_interval_ms: stats,
                    grace_ms: grace,
                    idle_ms: idle,
                },
            },
        )
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        hello().prop_map(ToWorker::Hello),
        any::<u64>().prop_map(|seq| ToWorker::Ping { seq }),
        (
            transport(),
            text(0..32),
            // Flow info is not part of an address's text (nor of a peer).
            (any::<std::net::IpAddr>(), any::<u16>()).prop_map(std::net::SocketAddr::from),
            any::<u64>()
        )
            .prop_map(|(kind, client, peer, seq)| Adopt {
                kind,
                client,
                peer,
                seq
            }
            .into()),
        Just(ToWorker::ResetCounters),
        any::<u64>().prop_map(|grace_ms| ToWorker::Shutdown { grace_ms }),
        (text(0..24), transport()).prop_map(|(addr, proto)| Bound { addr, proto }.into()),
        (text(0..24), transport(), text(0..64)).prop_map(|(addr, proto, reason)| BindError {
            addr,
            proto,
            reason
        }
        .into()),
    ]
}

fn to_master() -> impl Strategy<Value = ToMaster> {
    prop_oneof![
        (text(0..24), transport()).prop_map(|(addr, proto)| Bind { addr, proto }.into()),
        (any::<u32>(), proptest::option::of(text(0..24)), any::<u8>())
            .prop_map(|(pid, entry, mode)| Ready { pid, entry, mode }.into()),
        any::<u64>().prop_map(|seq| ToMaster::Pong { seq }),
        (any::<u8>(), any::<[u64; 9]>()).prop_map(|(mode, n)| Stats {
            mode,
            ping: n[0],
            pool: n[1],
            tcps: n[2],
            udps: n[3],
            tcprx: n[4],
            tcptx: n[5],
            udprx: n[6],
            udptx: n[7],
            idle_ms: n[8],
        }
        .into()),
        (text(0..8), text(0..200)).prop_map(|(level, line)| Log { level, line }.into()),
        any::<u64>().prop_map(|seq| ToMaster::Adopted { seq }),
        text(0..100).prop_map(|message| ToMaster::Fatal { message }),
    ]
}

/// Decodes every frame of `stream` fed in chunks ending at `cuts`; checks
/// that nothing decodes before its frame is whole.
fn decode_stream<M: Message>(stream: &[u8], cuts: &[usize]) -> Result<Vec<M>, TestCaseError> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    let mut buf = Vec::new();
    let mut fed = 0;
    let mut out = Vec::new();
    for end in ends {
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        while let Some((msg, used)) =
            frame::decode::<M>(&buf).map_err(|e| TestCaseError::fail(format!("decode: {e}")))?
        {
            prop_assert!(used <= buf.len());
            out.push(msg);
            buf.drain(..used);
        }
    }
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(out)
}

proptest! {
    #![proptest_config(cases(512))]

    /// Master → worker messages: JSON body and frame round trips; the
    /// frame's header says exactly the body's length.
    #[test]
    fn to_worker_round_trips(msg in to_worker()) {
        let json = message::to_json(&msg).expect("encode");
        prop_assert_eq!(&message::from_json::<ToWorker>(&json).expect("decode"), &msg);
        let f = frame::encode(&msg).expect("frame");
        prop_assert_eq!(&f[..4], &(json.len() as u32).to_be_bytes());
        let (back, used) = frame::decode::<ToWorker>(&f).expect("valid").expect("whole");
        prop_assert_eq!((back, used), (msg, f.len()));
    }

    /// Worker → master messages: same.
    #[test]
    fn to_master_round_trips(msg in to_master()) {
        let json = message::to_json(&msg).expect("encode");
        prop_assert_eq!(&message::from_json::<ToMaster>(&json).expect("decode"), &msg);
        let f = frame::encode(&msg).expect("frame");
        let (back, used) = frame::decode::<ToMaster>(&f).expect("valid").expect("whole");
        prop_assert_eq!((back, used), (msg, f.len()));
    }

    /// A stream of frames fed in arbitrary pieces decodes to the same
    /// messages in order, in both directions.
    #[test]
    fn frame_streams_split_anywhere(
        to_w in vec(to_worker(), 1..8),
        to_m in vec(to_master(), 1..8),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let stream: Vec<u8> = to_w.iter().flat_map(|m| frame::encode(m).expect("frame")).collect();
        prop_assert_eq!(decode_stream::<ToWorker>(&stream, &cuts)?, to_w);
        let stream: Vec<u8> = to_m.iter().flat_map(|m| frame::encode(m).expect("frame")).collect();
        prop_assert_eq!(decode_stream::<ToMaster>(&stream, &cuts)?, to_m);
    }

    /// A `Hello` of any other protocol version is refused as a version
    /// mismatch naming both versions, never decoded.
    #[test]
    fn other_protocol_versions_are_refused(mut h in hello(), version in any::<u32>()) {
        prop_assume!(version != PROTOCOL_VERSION);
        h.protocol = version;
        let f = frame::encode(&ToWorker::Hello(h)).expect("frame");
        match frame::decode::<ToWorker>(&f) {
            Err(ProtoError::VersionMismatch { ours, theirs }) => {
                prop_assert_eq!((ours, theirs), (PROTOCOL_VERSION, version));
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }
}

proptest! {
    // Each case moves a megabyte through JSON in a debug build: few cases.
    #![proptest_config(cases(16))]

    /// Large bodies, near the limit, frame and decode; one byte more than
    /// the limit is never encoded.
    #[test]
    fn large_log_lines(extra in 0usize..64, over in any::<bool>()) {
        // Body = {"type":"Log","level":"","line":"…"}: 33 bytes of JSON around the line.
        let around = message::to_json(&ToMaster::from(Log { level: String::new(), line: String::new() }))
            .expect("encode")
            .len();
        let len = if over { MAX_FRAME - around + 1 + extra } else { MAX_FRAME - around - extra };
        let msg = ToMaster::from(Log { level: String::new(), line: "x".repeat(len) });
        match frame::encode(&msg) {
            Ok(f) => {
                prop_assert!(!over);
                let (back, used) = frame::decode::<ToMaster>(&f).expect("valid").expect("whole");
                prop_assert_eq!((back, used), (msg, f.len()));
            }
            Err(ProtoError::FrameTooLarge { len }) => prop_assert!(over && len > MAX_FRAME as u64),
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

// ---- through a real control channel ----

/// Sends `to_w` master → worker and `to_m` worker → master over a fresh
/// socketpair (each message with the fds it names: a duplicate of `/dev/null`
/// each) and returns what arrived.
fn over_channel(
    to_w: &[ToWorker],
    to_m: &[ToMaster],
) -> Result<(Vec<ToWorker>, Vec<ToMaster>), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (a, b) = proto::socketpair().expect("socketpair");
        let mut master = MasterChannel::from_std(a).expect("master end");
        let mut worker = WorkerChannel::from_std(b).expect("worker end");
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let send_w = async {
            for msg in to_w {
                let fds: Vec<BorrowedFd<'_>> = (0..msg.fd_count()).map(|_| null.as_fd()).collect();
                master.send(msg, &fds).await.expect("send to worker");
            }
        };
        let recv_w = async {
            let mut got = Vec::new();
            for _ in to_w {
                let (msg, fds) = worker.recv().await.expect("recv").expect("a message");
                assert_eq!(fds.len(), msg.fd_count(), "{}", msg.kind());
                got.push(msg);
            }
            got
        };
        let ((), got_w) = tokio::join!(send_w, recv_w);
        let send_m = async {
            for msg in to_m {
                worker.send(msg, &[]).await.expect("send to master");
            }
        };
        let recv_m = async {
            let mut got = Vec::new();
            for _ in to_m {
                let (msg, fds) = master.recv().await.expect("recv").expect("a message");
                assert!(fds.is_empty());
                got.push(msg);
            }
            got
        };
        let ((), got_m) = tokio::join!(send_m, recv_m);
        Ok((got_w, got_m))
    })
}

proptest! {
    #![proptest_config(cases(64))]

    /// Sequences of messages cross a real socketpair in both directions,
    /// in order, each with its own fds.
    #[test]
    fn messages_cross_a_control_channel(
        to_w in vec(to_worker(), 1..8),
        to_m in vec(to_master(), 1..8),
    ) {
        let (got_w, got_m) = over_channel(&to_w, &to_m)?;
        prop_assert_eq!(got_w, to_w);
        prop_assert_eq!(got_m, to_m);
    }
}
