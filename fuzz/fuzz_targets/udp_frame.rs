//! UDP datagrams on a tunnel link (`wire::udp_frame`): 2-byte big-endian
//! length + payload. The reader is checked against a model of the format,
//! frame for frame, and what it returns re-encodes to the bytes it read.
//!
//! The first input byte picks the read buffer: even → the full 65535 bytes
//! the worker uses, odd → `byte` bytes, so "frame larger than the buffer"
//! is reached too.
#![no_main]

use drover_fuzz::ready;
use drover_worker::tunnel::wire::udp_frame;
use libfuzzer_sys::fuzz_target;

/// What a reader of the format must do next with `rest`.
#[derive(Debug, PartialEq, Eq)]
enum Next<'a> {
    /// A datagram and the bytes after it.
    Frame(&'a [u8], &'a [u8]),
    /// Fewer than 2 bytes left: the reader calls it the end of the stream
    /// (a lone byte cannot start a frame, so it is not worth an error).
    End,
    /// A length over the buffer, or a payload cut short.
    Error,
}

fn model(rest: &[u8], buf_len: usize) -> Next<'_> {
    let Some((len, tail)) = rest.split_first_chunk::<2>() else {
        return Next::End;
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if len > buf_len || tail.len() < len {
        return Next::Error;
    }
    Next::Frame(&tail[..len], &tail[len..])
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let buf_len = if pick & 1 == 0 {
        udp_frame::MAX
    } else {
        usize::from(pick)
    };
    let mut buf = vec![0u8; buf_len];
    let mut encoded = Vec::new();
    loop {
        let expected = model(rest, buf_len);
        let got = ready(udp_frame::read(&mut rest, &mut buf));
        match (expected, got) {
            (Next::Frame(want, after), Ok(Some(datagram))) => {
                assert_eq!(datagram, want);
                assert_eq!(rest, after, "the reader consumed the wrong amount");
                let mut frame = Vec::new();
                ready(udp_frame::write(&mut encoded, &mut frame, datagram))
                    .expect("a datagram read back must write");
            }
            (Next::End, Ok(None)) | (Next::Error, Err(_)) => break,
            (expected, got) => panic!("expected {expected:?}, reader gave {got:?}"),
        }
    }
    assert!(
        data[1..].starts_with(&encoded),
        "the datagrams read do not re-encode to the input"
    );
});
