//! Framing: a 4-byte big-endian body length, then the JSON body.
//!
//! ```text
//! +----------------+---------------------------+
//! | len: u32 BE    | body: `len` bytes of JSON |
//! +----------------+---------------------------+
//! ```
//!
//! `len` counts the body only, is at least 1 and at most [`MAX_FRAME`].
//! Reading is two steps (as mini-redis' `Frame::check`/`Frame::parse`):
//! 1. [`check`] looks at the buffered bytes: too few yet is `Ok(None)`, not an
//!    error; a header claiming 0 or more than [`MAX_FRAME`] bytes is an error
//!    at once, before anything of that size is allocated or awaited;
//! 2. [`decode`] (or [`crate::message::from_json`] on the body) turns a whole
//!    frame into a message.

use crate::message::{self, Message};
use crate::{MAX_FRAME, ProtoError};

/// Bytes of the length header.
pub const HEADER_LEN: usize = 4;

/// Encodes `msg` as one frame (header and body).
///
/// A body over [`MAX_FRAME`] is [`ProtoError::FrameTooLarge`]: the peer would
/// refuse it, so it is never sent.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    let mut frame = vec![0; HEADER_LEN];
    serde_json::to_writer(&mut frame, msg).map_err(|source| ProtoError::Encode {
        ty: msg.kind(),
        source,
    })?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge { len: len as u64 });
    }
    let header = u32::try_from(len).expect("MAX_FRAME fits in u32");
    frame[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(frame)
}

/// Checks whether `buf` starts with a whole frame.
///
/// `Ok(Some(n))`: the first `n` bytes (header included) are one frame.
/// `Ok(None)`: more bytes are needed. `Err`: the header is invalid; the
/// stream cannot be resynchronised, so the channel is done.
pub fn check(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header);
    if len == 0 {
        return Err(ProtoError::EmptyFrame);
    }
    // u32 always fits in u64; compare there so 32-bit targets cannot wrap.
    if u64::from(len) > MAX_FRAME as u64 {
        return Err(ProtoError::FrameTooLarge {
            len: u64::from(len),
        });
    }
    let total = HEADER_LEN + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes the first frame in `buf`: `Ok(Some((msg, n)))` with the frame's
/// length `n`, `Ok(None)` when it is not all there yet.
///
/// When the frame is whole but its body is not a valid message the error
/// comes back; [`check`] still gives its length to skip it.
pub fn decode<M: Message>(buf: &[u8]) -> Result<Option<(M, usize)>, ProtoError> {
    let Some(total) = check(buf)? else {
        return Ok(None);
    };
    let msg = message::from_json(&buf[HEADER_LEN..total])?;
    Ok(Some((msg, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::{to_master_samples, to_worker_samples};
    use crate::message::{Log, ToMaster, ToWorker};

    /// The header is exactly 4 bytes, big-endian, counting the body only.
    #[test]
    fn header_layout() {
        let frame = encode(&ToWorker::Ping { seq: 1 }).expect("encode");
        let body = br#"{"type":"Ping","seq":1}"#;
        assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], body);
        assert_eq!(frame.len(), HEADER_LEN + body.len());
    }

    /// Every message survives encode → decode as a frame.
    #[test]
    fn every_message_frames() {
        for msg in to_worker_samples() {
            let frame = encode(&msg).expect("encode");
            let (back, used) = decode::<ToWorker>(&frame).expect("valid").expect("whole");
            assert_eq!((back, used), (msg, frame.len()));
        }
        for msg in to_master_samples() {
            let frame = encode(&msg).expect("encode");
            let (back, used) = decode::<ToMaster>(&frame).expect("valid").expect("whole");
            assert_eq!((back, used), (msg, frame.len()));
        }
    }

    /// Every strict prefix of a frame is "incomplete", never an error.
    #[test]
    fn truncated_frame_is_incomplete() {
        let frame = encode(&to_worker_samples()[0]).expect("encode");
        for cut in 0..frame.len() {
            assert!(
                matches!(decode::<ToWorker>(&frame[..cut]), Ok(None)),
                "prefix of {cut} bytes"
            );
        }
    }

    /// Headers over the limit or of zero are rejected from the 4 header
    /// bytes alone: a claimed 2 GiB is refused without waiting for (or
    /// allocating) the body.
    #[test]
    fn invalid_headers() {
        let two_gib = (1u32 << 31).to_be_bytes();
        assert!(matches!(
            check(&two_gib),
            Err(ProtoError::FrameTooLarge { len }) if len == 1 << 31
        ));
        assert!(matches!(
            check(&u32::MAX.to_be_bytes()),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let over = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            check(&over),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let at_limit = (MAX_FRAME as u32).to_be_bytes();
        assert!(matches!(check(&at_limit), Ok(None)));
        assert!(matches!(check(&[0, 0, 0, 0]), Err(ProtoError::EmptyFrame)));
    }

    /// A message that would encode over the limit is refused at the sender.
    #[test]
    fn oversize_message_is_not_encoded() {
        let msg = ToMaster::from(Log {
            level: "info".into(),
            line: "x".repeat(MAX_FRAME),
        });
        assert!(
            matches!(encode(&msg), Err(ProtoError::FrameTooLarge { len }) if len > MAX_FRAME as u64)
        );
    }

    /// Several frames in one buffer decode one after another, the last one
    /// partial.
    #[test]
    fn several_frames_in_one_buffer() {
        let msgs = to_master_samples();
        let mut buf = Vec::new();
        for msg in &msgs {
            buf.extend(encode(msg).expect("encode"));
        }
        buf.extend(&encode(&msgs[0]).expect("encode")[..5]);
        let mut rest = &buf[..];
        let mut got = Vec::new();
        while let Some((msg, used)) = decode::<ToMaster>(rest).expect("valid") {
            got.push(msg);
            rest = &rest[used..];
        }
        assert_eq!(got, msgs);
        assert_eq!(rest.len(), 5);
    }

    /// A whole frame with a bad body reports the body's error, and `check`
    /// still gives its length.
    #[test]
    fn bad_body_in_whole_frame() {
        let mut frame = 7u32.to_be_bytes().to_vec();
        frame.extend(b"garbage");
        assert!(matches!(
            decode::<ToWorker>(&frame),
            Err(ProtoError::NotJson(_))
        ));
        assert_eq!(check(&frame).expect("header fine"), Some(11));
        let body = br#"{"type":"Nope"} "#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend(body);
        assert!(
            matches!(decode::<ToWorker>(&frame), Err(ProtoError::UnknownType(t)) if t == "Nope")
        );
    }
}
