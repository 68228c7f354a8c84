//! Property tests of the tunnel wire's framing (issue 8):
//!
//! 1. UDP frames (`udp_frame`): any sequence of datagrams of 0..=65535
//!    bytes, written one frame each and read back from the concatenated
//!    stream (delivered in arbitrary pieces), comes back datagram for
//!    datagram: same bytes, same boundaries, then a clean end.
//! 2. A stream cut anywhere yields a prefix of the datagrams and then an
//!    end or an error, never a partial or merged datagram.
//! 3. Too large a datagram is refused before anything is written; a frame
//!    larger than the reader's buffer is an error, not a panic.
//! 4. The fixed-size frames (`Control`, `SessionConfig`) decode to what was
//!    encoded.
//!
//! Case counts are modest (CI runs on 2 cores); `PROPTEST_CASES` raises them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use drover_worker::tunnel::wire::{Control, Flow, SessionConfig, udp_frame};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

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

/// A reader that hands out `data` in pieces ending at `cuts` (offsets), as
/// a TCP stream may deliver it.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    cuts: Vec<usize>,
}

impl Pieces {
    fn new(data: Vec<u8>, cuts: &[usize]) -> Self {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        Self { data, at: 0, cuts }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let at = self.at;
        let next_cut = self
            .cuts
            .iter()
            .copied()
            .find(|c| *c > at)
            .unwrap_or(self.data.len());
        let n = (next_cut - at).min(buf.remaining());
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// `len` bytes that differ with `seed` (cheaper than a strategy per byte:
/// a 64 KiB datagram is one value, not 65535).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Datagram sizes: mostly small, some at and near the 65535 limit.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        4 => 0..64usize,
        2 => 64..2048usize,
        1 => udp_frame::MAX - 16..=udp_frame::MAX,
    ];
    (len, any::<u64>()).prop_map(|(len, seed)| bytes(len, seed))
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Writes each datagram as one frame, concatenated.
async fn encode_all(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for d in datagrams {
        udp_frame::write(&mut out, &mut scratch, d)
            .await
            .expect("a datagram within the limit is written");
    }
    out
}

/// Reads frames until the end or an error; returns them and how it ended.
async fn decode_all(mut r: impl AsyncRead + Unpin) -> (Vec<Vec<u8>>, io::Result<()>) {
    let mut buf = vec![0u8; udp_frame::MAX];
    let mut got = Vec::new();
    // Bounded: every frame takes at least its 2 header bytes off the stream.
    for _ in 0..100_000 {
        match udp_frame::read(&mut r, &mut buf).await {
            Ok(Some(d)) => got.push(d.to_vec()),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
    panic!("more frames than bytes");
}

proptest! {
    #![proptest_config(cases(256))]

    /// Datagrams come back one for one, byte-exact, with their boundaries,
    /// however the stream is cut into reads; then a clean end.
    #[test]
    fn udp_frames_round_trip(
        datagrams in vec(datagram(), 0..12),
        cuts in vec(any::<usize>(), 0..16),
    ) {
        let stream = block_on(encode_all(&datagrams));
        let expected_len: usize = datagrams.iter().map(|d| 2 + d.len()).sum();
        prop_assert_eq!(stream.len(), expected_len);
        let (got, end) = block_on(decode_all(Pieces::new(stream, &cuts)));
        prop_assert!(end.is_ok(), "{:?}", end);
        prop_assert_eq!(got, datagrams);
    }

    /// A stream cut short gives back a prefix of the datagrams, each whole
    /// and exact, and then ends; the datagram the cut went through is never
    /// delivered in part.
    #[test]
    fn truncated_stream_never_yields_a_partial_datagram(
        datagrams in vec(datagram(), 1..8),
        cut in any::<usize>(),
    ) {
        let stream = block_on(encode_all(&datagrams));
        let cut = cut % stream.len();
        let (got, _end) = block_on(decode_all(&stream[..cut]));
        // Frames wholly before the cut.
        let mut whole = 0;
        let mut at = 0;
        for d in &datagrams {
            at += 2 + d.len();
            if at > cut {
                break;
            }
            whole += 1;
        }
        prop_assert_eq!(&got[..], &datagrams[..whole]);
    }

    /// A frame longer than the reader's buffer is an error (not a panic, not
    /// a truncated datagram).
    #[test]
    fn frame_larger_than_the_buffer_is_an_error(len in 1usize..4096, short in 1usize..4096) {
        let short = short.min(len) - 1;
        let stream = block_on(encode_all(&[vec![7u8; len]]));
        let mut buf = vec![0u8; short];
        let res = block_on(udp_frame::read(&mut &stream[..], &mut buf));
        prop_assert_eq!(res.expect_err("too long for the buffer").kind(), io::ErrorKind::InvalidData);
    }

    /// Fixed-size control frames and the session config decode to what was
    /// encoded.
    #[test]
    fn fixed_frames_round_trip(
        kind in 0u8..3,
        value in any::<u64>(),
        forward in any::<bool>(),
        max in any::<u32>(),
        tcp in any::<bool>(),
        udp in any::<bool>(),
        id in any::<[u8; 16]>(),
    ) {
        let c = match kind {
            0 => Control::Ping(value),
            1 => Control::Pong(value),
            _ => Control::Starved(value),
        };
        prop_assert_eq!(Control::decode(c.encode()).expect("decodes"), c);
        let flow = if forward { Flow::Forward } else { Flow::Reverse };
        let cfg = SessionConfig { flow, max, tcp, udp, id };
        prop_assert_eq!(SessionConfig::decode(&cfg.encode()).expect("decodes"), cfg);
    }
}

proptest! {
    #![proptest_config(cases(8))]

    /// A datagram over 65535 bytes is refused and nothing is written.
    #[test]
    fn oversize_datagram_is_refused(extra in 1usize..4096) {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let big = vec![0u8; udp_frame::MAX + extra];
        let err = block_on(udp_frame::write(&mut out, &mut scratch, &big)).expect_err("too big");
        prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        prop_assert!(out.is_empty());
    }
}
