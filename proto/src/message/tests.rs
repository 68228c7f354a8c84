//! Tests of the messages: one sample of every variant (shared with the
//! frame tests), round trips, decode errors, redaction, and the golden files
//! under `proto/tests/data/`.

use super::*;

/// One of every `ToWorker` variant, with every optional field set once.
pub(crate) fn to_worker_samples() -> Vec<ToWorker> {
    vec![
        Hello {
            protocol: PROTOCOL_VERSION,
            instance: "a1b2c3d4".into(),
            url: Secret::new("server://s3cr3tk3y@:10101/127.0.0.1:8080?tls=2&log=info"),
            log: "info".into(),
            tls: Some(TlsMaterial {
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                key_pem: Secret::new(
                    "-----BEGIN PRIVATE KEY-----\nPRIVATEKEYBYTES\n-----END PRIVATE KEY-----\n",
                ),
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

/// One of every `ToMaster` variant.
pub(crate) fn to_master_samples() -> Vec<ToMaster> {
    vec![
        Bind {
            addr: "0.0.0.0:9000".into(),
            proto: Transport::Tcp,
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
            mode: 2,
            ping: 3,
            pool: 64,
            tcps: 5,
            udps: 1,
            tcprx: 1000,
            tcptx: 2000,
            udprx: 300,
            udptx: 400,
            idle_ms: 1500,
        }
        .into(),
        Log {
            level: "info".into(),
            line: "tunnel handshake ok".into(),
        }
        .into(),
        ToMaster::Adopted { seq: 9 },
        ToMaster::Fatal {
            message: "bind 0.0.0.0:80: permission denied".into(),
        },
    ]
}

fn round_trip<M: Message + PartialEq>(msg: &M) {
    let json = to_json(msg).expect("encode");
    let value: serde_json::Value = serde_json::from_slice(&json).expect("our JSON parses");
    assert_eq!(value["type"], msg.kind(), "tag of {msg:?}");
    assert!(
        M::TYPES.contains(&msg.kind()),
        "{} missing from TYPES",
        msg.kind()
    );
    let back: M = from_json(&json).expect("decode");
    assert_eq!(&back, msg);
}

/// Every message survives encode → decode, and its tag is `kind()`.
#[test]
fn every_message_round_trips() {
    let workers = to_worker_samples();
    let masters = to_master_samples();
    for msg in &workers {
        round_trip(msg);
    }
    for msg in &masters {
        round_trip(msg);
    }
    // The samples cover every variant, so TYPES has no stale entry.
    assert_eq!(workers.len(), ToWorker::TYPES.len());
    assert_eq!(masters.len(), ToMaster::TYPES.len());
}

/// `None` options round-trip too (as `null`, and when left out).
#[test]
fn optional_fields() {
    let ready = ToMaster::from(Ready {
        pid: 1,
        entry: None,
        mode: 1,
    });
    round_trip(&ready);
    let without: ToMaster =
        from_json(br#"{"type":"Ready","pid":1,"mode":1}"#).expect("entry may be absent");
    assert_eq!(without, ready);
}

/// The fds each message must carry.
#[test]
fn fd_counts() {
    let expected = [2, 0, 1, 0, 0, 1, 0];
    for (msg, want) in to_worker_samples().iter().zip(expected) {
        assert_eq!(msg.fd_count(), want, "{}", msg.kind());
    }
    for msg in to_master_samples() {
        assert_eq!(msg.fd_count(), 0, "{}", msg.kind());
    }
}

/// `Debug` never shows the tunnel key or the TLS private key.
#[test]
fn debug_redacts_secrets() {
    let hello = &to_worker_samples()[0];
    let text = format!("{hello:?} {hello:#?}");
    assert!(!text.contains("s3cr3tk3y"), "{text}");
    assert!(!text.contains("PRIVATEKEYBYTES"), "{text}");
    assert!(text.contains("a1b2c3d4"), "the instance id stays visible");
}

/// Garbage is `NotJson`; JSON of a type this direction lacks is
/// `UnknownType`; a known type with bad fields is `InvalidMessage`.
#[test]
fn decode_errors_are_classified() {
    let cases: &[(&[u8], &str)] = &[
        (b"\x00\x01garbage", "NotJson"),
        (b"{\"type\":\"Ping\",\"seq\":1", "NotJson"),
        (b"{\"type\":\"Ping\",\"seq\":1} trailing", "NotJson"),
        (
            b"{\"type\":\"Launch\",\"seq\":1}",
            "UnknownType(\"Launch\")",
        ),
        (b"{\"type\":\"Pong\",\"seq\":1}", "UnknownType(\"Pong\")"),
        (b"{\"seq\":1}", "UnknownType(\"<missing>\")"),
        (b"{\"type\":7}", "UnknownType(\"<not a string>\")"),
        (b"[1,2,3]", "UnknownType(\"<missing>\")"),
        (b"{\"type\":\"Ping\",\"seq\":\"x\"}", "InvalidMessage"),
        (b"{\"type\":\"Ping\"}", "InvalidMessage"),
    ];
    for (body, want) in cases {
        let err = from_json::<ToWorker>(body).expect_err("must not decode");
        let got = match &err {
            ProtoError::NotJson(_) => "NotJson".to_owned(),
            ProtoError::UnknownType(ty) => format!("UnknownType({ty:?})"),
            ProtoError::InvalidMessage { ty, .. } => {
                assert_eq!(*ty, "Ping");
                "InvalidMessage".to_owned()
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(&got, want, "{}", String::from_utf8_lossy(body));
        assert!(err.is_peer_fault());
    }
}

/// A long unknown type is cut before it reaches an error message.
#[test]
fn unknown_type_echo_is_bounded() {
    let body = format!(r#"{{"type":"{}"}}"#, "é".repeat(1000));
    match from_json::<ToMaster>(body.as_bytes()) {
        Err(ProtoError::UnknownType(ty)) => assert!(ty.len() <= MAX_TYPE_ECHO + 3, "{ty}"),
        other => panic!("unexpected {other:?}"),
    }
}

/// A `Hello` of another version is a version mismatch, whether or not
/// its fields still fit.
#[test]
fn hello_version_mismatch() {
    let ToWorker::Hello(mut hello) = to_worker_samples().remove(0) else {
        panic!("first sample is Hello");
    };
    hello.protocol = PROTOCOL_VERSION + 1;
    let json = to_json(&ToWorker::from(hello)).expect("encode");
    match from_json::<ToWorker>(&json) {
        Err(ProtoError::VersionMismatch { ours, theirs }) => {
            assert_eq!((ours, theirs), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
        }
        other => panic!("unexpected {other:?}"),
    }
    let future = format!(
        r#"{{"type":"Hello","protocol":{},"spec":{{}}}}"#,
        PROTOCOL_VERSION + 1
    );
    assert!(matches!(
        from_json::<ToWorker>(future.as_bytes()),
        Err(ProtoError::VersionMismatch { .. })
    ));
    let same = format!(r#"{{"type":"Hello","protocol":{PROTOCOL_VERSION}}}"#);
    assert!(matches!(
        from_json::<ToWorker>(same.as_bytes()),
        Err(ProtoError::InvalidMessage { ty: "Hello", .. })
    ));
}

/// Checks one direction's golden files: each sample has
/// `tests/data/<dir>/<type>.json`, the file still decodes to the sample, and
/// the sample still encodes to the file's JSON. `DROVER_BLESS=1` rewrites
/// them; do that only together with a `PROTOCOL_VERSION` bump.
fn check_golden<M: Message + PartialEq>(dir: &str, samples: &[M]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir);
    let bless = std::env::var_os("DROVER_BLESS").is_some();
    for msg in samples {
        let path = root.join(format!("{}.json", msg.kind()));
        if bless {
            std::fs::create_dir_all(&root).expect("create tests/data");
            let mut text = serde_json::to_string_pretty(msg).expect("encode");
            text.push('\n');
            std::fs::write(&path, text).expect("write golden file");
        }
        let text = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let decoded: M = from_json(&text)
            .unwrap_or_else(|err| panic!("{} no longer decodes: {err}", path.display()));
        assert_eq!(
            &decoded,
            msg,
            "{} decodes to something else",
            path.display()
        );
        let file: serde_json::Value = serde_json::from_slice(&text).expect("golden file is JSON");
        let ours = serde_json::to_value(msg).expect("encode");
        assert_eq!(
            ours,
            file,
            "{}: the wire format changed; bump PROTOCOL_VERSION and bless",
            path.display()
        );
    }
    let files = std::fs::read_dir(&root).expect("tests/data dir").count();
    assert_eq!(
        files,
        samples.len(),
        "stray or missing files in {}",
        root.display()
    );
}

/// The golden files of both directions still decode and still match what
/// this build sends (STYLE §2).
#[test]
fn golden_files() {
    check_golden("to_worker", &to_worker_samples());
    check_golden("to_master", &to_master_samples());
}
