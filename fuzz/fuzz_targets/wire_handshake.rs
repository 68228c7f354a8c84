//! The tunnel wire's handshake and pool/session decoders
//! (`drover_worker::tunnel::wire`), fed from memory. Every decoder reads the
//! same input from its start:
//!
//! 1. the server's view of a connection: client preamble, request (control
//!    or pool), key-proof check, then session headers as on a pool link;
//! 2. the client's view: the server's offer, status, proof and session
//!    config, as `client_control` reads them;
//! 3. a session [`Header`], parsed and read (in link-sized pieces), which
//!    must agree, re-encode to exactly the header's bytes, and keep what
//!    was read past it;
//! 4. a [`SessionConfig`] and 9-byte [`Control`] frames, which must survive
//!    decode → encode → decode.
//!
//! Garbage is an error, never a panic, and the handshake readers read
//! nothing past what they need.
#![no_main]

use drover_fuzz::ready;
use drover_worker::tunnel::auth::{self, NONCE, PROOF, Purpose};
use drover_worker::tunnel::wire::{self, Control, Header, Request, SessionConfig};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, join, sink};

/// Most session headers read from one input.
const MAX_HEADERS: usize = 16;

/// Step 1: the server side of one connection.
fn server(data: &[u8]) {
    let mut conn = join(data, sink());
    let Ok(sn) = ready(wire::server_preamble(&mut conn, 0)) else {
        return;
    };
    let (mut rest, _) = conn.into_inner();
    match ready(wire::server_request(&mut rest)) {
        Ok(Request::Control { cn, proof }) => {
            let _ = auth::verify(b"key", Purpose::ClientControl, &[&sn, &cn], &proof);
        }
        Ok(Request::Pool { session, proof }) => {
            let _ = auth::verify(&session, Purpose::Pool, &[&sn], &proof);
            for _ in 0..MAX_HEADERS {
                if session_header(&mut rest).is_none() {
                    break;
                }
            }
        }
        Err(_) => {}
    }
}

/// Step 3: one header, parsed and read; `None` once the bytes no longer
/// make one.
fn session_header(rest: &mut &[u8]) -> Option<Header> {
    let before = *rest;
    let parsed = Header::parse(before);
    // Read in link-sized pieces, then what is left.
    let mut buf = Vec::new();
    let read = ready(Header::read(rest, &mut buf));
    let (header, used) = match (parsed, read) {
        (Ok(Some((header, used))), Ok(read)) => {
            assert_eq!(read, header, "read and parse disagree");
            (header, used)
        }
        (Ok(None), Err(_)) | (Err(_), Err(_)) => return None,
        (parsed, read) => panic!("parse gave {parsed:?}, read gave {read:?}"),
    };
    assert_eq!(
        header.encode(),
        &before[..used],
        "{header:?} does not re-encode to the bytes it came from"
    );
    // What was read past the header is kept, in order.
    let consumed = before.len() - rest.len();
    assert_eq!(&before[used..consumed], &buf[..]);
    *rest = &before[used..];
    Some(header)
}

/// Step 2: the client side, up to the session config.
fn client(data: &[u8]) {
    let mut conn = join(data, sink());
    if ready(wire::client_preamble(&mut conn, "fuzz")).is_err() {
        return;
    }
    let (mut rest, _) = conn.into_inner();
    let mut status = [0u8; 1];
    if ready(rest.read_exact(&mut status)).is_err() || status[0] != wire::STATUS_OK {
        return;
    }
    let mut proof = [0u8; PROOF];
    let mut cfg = [0u8; SessionConfig::LEN];
    if ready(rest.read_exact(&mut proof)).is_ok() && ready(rest.read_exact(&mut cfg)).is_ok() {
        let nonce = [0u8; NONCE];
        let _ = auth::verify(b"key", Purpose::ServerControl, &[&nonce], &proof);
        let _ = SessionConfig::decode(&cfg);
    }
}

/// Step 4: fixed-size frames.
fn fixed(data: &[u8]) {
    if let Some(cfg) = data.first_chunk::<{ SessionConfig::LEN }>()
        && let Ok(decoded) = SessionConfig::decode(cfg)
    {
        let again = SessionConfig::decode(&decoded.encode()).expect("re-encoded config");
        assert_eq!(again, decoded);
    }
    for chunk in data.chunks_exact(9) {
        let frame: [u8; 9] = chunk.try_into().expect("9 bytes");
        if let Ok(control) = Control::decode(frame) {
            assert_eq!(control.encode(), frame, "{control:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    server(data);
    client(data);
    let mut rest = data;
    let _ = session_header(&mut rest);
    fixed(data);
});
