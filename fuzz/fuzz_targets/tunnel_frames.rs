//! A TCP session's frames on a tunnel link (`framed`): 4-byte big-endian
//! tags, `0` = end of the direction, `u32::MAX` = raw from here, else that
//! many bytes of the stream. What the receiver delivers, and what it keeps
//! for the next session, is checked against a model of the format.
#![no_main]

use std::io::ErrorKind;

use drover_fuzz::ready;
use drover_worker::tunnel::framed::{self, EOF, MAX_FRAME, RAW};
use libfuzzer_sys::fuzz_target;

/// How a receiver must end over `input`, and what it must have delivered.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// An end-of-direction tag; the bytes after it belong to the next session.
    Ended {
        kept: Vec<u8>,
    },
    /// A raw tag: everything after it is stream.
    Raw,
    Error(ErrorKind),
}

fn model(input: &[u8]) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        let Some((tag, after)) = rest.split_first_chunk::<4>() else {
            return (Outcome::Error(ErrorKind::UnexpectedEof), out);
        };
        rest = after;
        match u32::from_be_bytes(*tag) {
            EOF => {
                return (
                    Outcome::Ended {
                        kept: rest.to_vec(),
                    },
                    out,
                );
            }
            RAW => {
                out.extend_from_slice(rest);
                return (Outcome::Raw, out);
            }
            n if n > MAX_FRAME => return (Outcome::Error(ErrorKind::InvalidData), out),
            n => {
                let n = n as usize;
                let have = n.min(rest.len());
                out.extend_from_slice(&rest[..have]);
                if have < n {
                    return (Outcome::Error(ErrorKind::UnexpectedEof), out);
                }
                rest = &rest[n..];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (want, want_out) = model(data);
    let mut out = Vec::new();
    let mut kept = Vec::new();
    let got = match ready(framed::receive_any(data, &mut out, &mut kept)) {
        Ok(true) => Outcome::Ended { kept },
        Ok(false) => Outcome::Raw,
        Err(e) => Outcome::Error(e.kind()),
    };
    assert_eq!(got, want);
    assert!(out == want_out, "delivered bytes differ from the model");
});
