//! Helpers shared by the fuzz targets (`fuzz_targets/*.rs`) and the seed
//! writer (`examples/seeds.rs`).
//!
//! 1. [`ready`] runs a decoder future over in-memory I/O (`&[u8]` reads,
//!    `tokio::io::sink()` writes) to completion with one poll: no runtime.
//! 2. [`Segments`] is the input layout of `control_fds`: which direction to
//!    decode, then the `sendmsg` calls to make, each with its own fd count.
//! 3. [`check_prefix_stable`] is the gateway peek's contract: once the bytes
//!    so far decide an identity, more bytes never change it.
//!
//! The gateway's peek parser is compiled in from its source file
//! ([`identify`]) rather than through the `drover` crate: it needs only std,
//! tokio and nix, while the master's dependencies (actix-web, sled, utoipa,
//! …) would more than double what every fuzz build compiles.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

#[path = "../../master/src/gateway/identify.rs"]
pub mod identify;

use identify::Parse;

/// Polls `fut` once and returns its output: in-memory I/O never waits, so a
/// decoder that returns `Pending` over it is a bug in the target.
pub fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a decoder over in-memory bytes returned Pending"),
    }
}

/// Most fds the fuzzer may attach to one `sendmsg`: a few over
/// [`proto::fdpass::MAX_FDS`], so the receiver's `MSG_CTRUNC` path runs too.
pub const FUZZ_MAX_FDS: usize = proto::fdpass::MAX_FDS + 4;

/// Most `sendmsg` calls per input: each queued one costs kernel memory, and
/// all of them are written before anything is read.
pub const MAX_SEGMENTS: usize = 64;

/// One `sendmsg` of `control_fds`: bytes with `fds` fds on the first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub fds: usize,
    pub bytes: &'a [u8],
}

/// The input of `control_fds`:
///
/// ```text
/// dir: u8 (even: the worker's side decodes ToWorker; odd: the master's side decodes ToMaster)
/// then up to MAX_SEGMENTS of: fds: u8 (mod FUZZ_MAX_FDS + 1) | len: u16 BE | len bytes
/// ```
///
/// A last segment shorter than its `len` keeps what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments<'a> {
    pub to_master: bool,
    pub segments: Vec<Segment<'a>>,
}

impl<'a> Segments<'a> {
    /// Splits fuzz input; anything goes, nothing is an error.
    pub fn parse(data: &'a [u8]) -> Self {
        let Some((&dir, mut rest)) = data.split_first() else {
            return Self {
                to_master: false,
                segments: Vec::new(),
            };
        };
        let mut segments = Vec::new();
        while let [fds, hi, lo, tail @ ..] = rest {
            if segments.len() == MAX_SEGMENTS {
                break;
            }
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
            segments.push(Segment {
                fds: usize::from(*fds) % (FUZZ_MAX_FDS + 1),
                bytes: &tail[..len],
            });
            rest = &tail[len..];
        }
        Self {
            to_master: dir & 1 == 1,
            segments,
        }
    }

    /// The input that [`Segments::parse`] turns into `self` (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.to_master)];
        for s in &self.segments {
            let len = u16::try_from(s.bytes.len()).expect("a segment fits in u16");
            out.push(u8::try_from(s.fds).expect("fd count fits in u8"));
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.bytes);
        }
        out
    }
}

/// Asserts the peek loop's assumption (`identify::identify` stops at the
/// first `Done`): whatever `buf` minus its last byte decided, `buf` decides
/// the same. Checking one byte back suffices: the fuzzer tries every length.
pub fn check_prefix_stable(buf: &[u8]) {
    let Some((_, shorter)) = buf.split_last() else {
        return;
    };
    if let Parse::Done(before) = identify::parse(shorter) {
        let after = identify::parse(buf);
        assert_eq!(
            after,
            Parse::Done(before),
            "one more byte changed a decided identity: {:?}",
            String::from_utf8_lossy(buf)
        );
    }
}
