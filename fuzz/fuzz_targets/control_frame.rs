//! The control protocol's decoders, both directions, without a socket:
//!
//! 1. the input as a stream of frames (`frame::check` / `frame::decode`),
//!    walked as the channel walks it: a whole frame with a bad body is
//!    skipped, a bad header ends the stream;
//! 2. the input as one message body (`message::from_json`), so the JSON
//!    decoder is reached without a valid header in front.
//!
//! Whatever decodes must re-encode (as a frame) and decode to itself, name
//! a known `type`; errors must format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::message::{self, Message};
use proto::{ProtoError, ToMaster, ToWorker, frame};

fn round_trip<M: Message + PartialEq>(msg: &M) {
    assert!(M::TYPES.contains(&msg.kind()), "{msg:?}");
    let _ = msg.fd_count();
    let bytes = match frame::encode(msg) {
        Ok(bytes) => bytes,
        Err(ProtoError::FrameTooLarge { .. }) => return,
        Err(e) => panic!("{msg:?} decoded but does not encode: {e}"),
    };
    let (again, used) = frame::decode::<M>(&bytes)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is whole");
    assert_eq!(used, bytes.len());
    assert_eq!(&again, msg);
}

fn body<M: Message + PartialEq>(bytes: &[u8]) {
    match message::from_json::<M>(bytes) {
        Ok(msg) => round_trip(&msg),
        Err(e) => {
            let _ = (e.to_string(), e.is_peer_fault());
        }
    }
}

fn frames<M: Message + PartialEq>(mut rest: &[u8]) {
    loop {
        let len = match frame::check(rest) {
            Ok(Some(len)) => len,
            Ok(None) => {
                assert!(matches!(frame::decode::<M>(rest), Ok(None)));
                return;
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        match frame::decode::<M>(rest) {
            Ok(Some((msg, used))) => {
                assert_eq!(used, len);
                round_trip(&msg);
            }
            Ok(None) => panic!("check found a whole frame, decode did not"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
        rest = &rest[len..];
    }
}

fuzz_target!(|data: &[u8]| {
    frames::<ToWorker>(data);
    frames::<ToMaster>(data);
    body::<ToWorker>(data);
    body::<ToMaster>(data);
});
